// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";

/// @title LedgerAnchor
/// @notice Append-only checkpoints of Tally's RFC 9162 transparency logs: for each log (logId =
/// sha256 of the log's origin line) the owner anchors (size, root) pairs with strictly increasing sizes.
/// One root per size, never overwritten. The anchored sizes are enumerated from the `Anchored` events.
contract LedgerAnchor is Ownable {
    /// @notice A checkpoint's size must be above the latest anchored size of its log.
    error SizeNotIncreasing(bytes32 logId, uint64 latestSize, uint64 size);
    /// @notice The zero hash is not a root.
    error EmptyRoot();

    event Anchored(bytes32 indexed logId, uint64 indexed size, bytes32 root);

    mapping(bytes32 logId => uint64) private _latestSize;
    mapping(bytes32 logId => mapping(uint64 size => bytes32)) private _roots;

    constructor(address initialOwner) Ownable(initialOwner) {}

    /// @notice Anchor the root of the log `logId` at tree size `size`.
    function anchor(bytes32 logId, uint64 size, bytes32 root) external onlyOwner {
        if (root == bytes32(0)) revert EmptyRoot();
        uint64 latestSize = _latestSize[logId];
        if (size <= latestSize) revert SizeNotIncreasing(logId, latestSize, size);
        _latestSize[logId] = size;
        _roots[logId][size] = root;
        emit Anchored(logId, size, root);
    }

    /// @notice The latest anchored checkpoint of `logId`; (0, 0) when none.
    function latest(bytes32 logId) external view returns (uint64 size, bytes32 root) {
        size = _latestSize[logId];
        root = _roots[logId][size];
    }

    /// @notice The root anchored for `logId` at exactly `size`; zero when none.
    function rootAt(bytes32 logId, uint64 size) external view returns (bytes32) {
        return _roots[logId][size];
    }

    /// @notice Whether `proof` (RFC 9162 section 2.1.3.2, SHA-256) shows the leaf hash `leafHash`
    /// (sha256(0x00 || entry)) at `index` in the tree of `size` leaves whose root was anchored for `logId`.
    /// False when no root is anchored at `size` and for any malformed proof; never reverts on bad input.
    function verifyInclusion(
        bytes32 logId,
        uint64 size,
        uint256 index,
        bytes32 leafHash,
        bytes32[] calldata proof
    ) external view returns (bool) {
        bytes32 root = _roots[logId][size];
        if (root == bytes32(0) || index >= size) return false;
        uint256 fn = index;
        uint256 sn = uint256(size) - 1;
        bytes32 r = leafHash;
        for (uint256 i = 0; i < proof.length; ++i) {
            if (sn == 0) return false; // the proof is longer than the path
            if (fn & 1 == 1 || fn == sn) {
                r = _nodeHash(proof[i], r);
                while (fn & 1 == 0 && fn != 0) {
                    fn >>= 1;
                    sn >>= 1;
                }
            } else {
                r = _nodeHash(r, proof[i]);
            }
            fn >>= 1;
            sn >>= 1;
        }
        return sn == 0 && r == root;
    }

    /// @dev sha256(0x01 || left || right) through the SHA-256 precompile, in scratch memory.
    function _nodeHash(bytes32 left, bytes32 right) private view returns (bytes32 h) {
        assembly ("memory-safe") {
            let p := mload(0x40)
            mstore8(p, 0x01)
            mstore(add(p, 0x01), left)
            mstore(add(p, 0x21), right)
            if iszero(staticcall(gas(), 0x02, p, 0x41, 0x00, 0x20)) {
                revert(0, 0)
            }
            h := mload(0x00)
        }
    }
}
