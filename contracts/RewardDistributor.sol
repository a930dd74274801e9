// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {Ownable} from "@openzeppelin/contracts/access/Ownable.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";

/// @title RewardDistributor
/// @notice Pays each reward epoch from a Merkle root of (index, account, amount) payouts, in OpenZeppelin's
/// StandardMerkleTree format: leaf = keccak256(bytes.concat(keccak256(abi.encode(index, account, amount)))).
/// The owner funds an epoch once with `setRoot`; anyone may then submit a claim, and the tokens always go to the
/// claim's `account`.
/// @dev Claims are tracked in an *unclaimed* bitmap: `setRoot` sets the bits of indices 0..accounts-1, a claim
/// clears its bit. A claim therefore only ever rewrites a non-zero word (or clears it), and never pays for a
/// zero-to-non-zero store; the operator pays that once per 256 accounts when funding the epoch.
contract RewardDistributor is Ownable {
    using SafeERC20 for IERC20;

    error RootAlreadySet(uint256 epoch);
    error EmptyRoot();
    error NoAccounts();
    error UnknownEpoch(uint256 epoch);
    error AlreadyClaimed(uint256 epoch, uint256 index);
    error InvalidProof();

    event EpochFunded(uint256 indexed epoch, bytes32 root, uint256 total, uint256 accounts);
    event Claimed(uint256 indexed epoch, uint256 index, address indexed account, uint256 amount);

    IERC20 private immutable _token;

    mapping(uint256 epoch => bytes32) private _roots;
    mapping(uint256 epoch => uint256) private _accounts;
    mapping(uint256 epoch => mapping(uint256 word => uint256)) private _unclaimed;

    constructor(IERC20 token_, address initialOwner) Ownable(initialOwner) {
        _token = token_;
    }

    /// @notice Fund `epoch`: its payout tree's `root`, the sum of its payouts `total` (pulled from the caller,
    /// who approved it) and its number of payouts `accounts` (indices 0..accounts-1).
    function setRoot(uint256 epoch, bytes32 root, uint256 total, uint256 accounts) external onlyOwner {
        if (root == bytes32(0)) revert EmptyRoot();
        if (accounts == 0) revert NoAccounts();
        if (_roots[epoch] != bytes32(0)) revert RootAlreadySet(epoch);
        _roots[epoch] = root;
        _accounts[epoch] = accounts;
        mapping(uint256 => uint256) storage bits = _unclaimed[epoch];
        uint256 full = accounts >> 8;
        for (uint256 w = 0; w < full; ++w) {
            bits[w] = type(uint256).max;
        }
        uint256 rest = accounts & 0xff;
        if (rest != 0) {
            bits[full] = (uint256(1) << rest) - 1;
        }
        _token.safeTransferFrom(msg.sender, address(this), total);
        emit EpochFunded(epoch, root, total, accounts);
    }

    /// @notice Pay `amount` to `account`, the payout at `index` of `epoch`, shown by the Merkle `proof`.
    function claim(uint256 epoch, uint256 index, address account, uint256 amount, bytes32[] calldata proof)
        external
    {
        bytes32 root = _roots[epoch];
        if (root == bytes32(0)) revert UnknownEpoch(epoch);
        mapping(uint256 => uint256) storage bits = _unclaimed[epoch];
        uint256 word = bits[index >> 8];
        uint256 mask = uint256(1) << (index & 0xff);
        if (word & mask == 0) revert AlreadyClaimed(epoch, index);
        bytes32 leaf = keccak256(bytes.concat(keccak256(abi.encode(index, account, amount))));
        if (!MerkleProof.verifyCalldata(proof, root, leaf)) revert InvalidProof();
        bits[index >> 8] = word & ~mask;
        _token.safeTransfer(account, amount);
        emit Claimed(epoch, index, account, amount);
    }

    /// @notice The token this contract pays in.
    function token() external view returns (IERC20) {
        return _token;
    }

    /// @notice The payout root of `epoch`; zero when the epoch was never funded.
    function rootOf(uint256 epoch) external view returns (bytes32) {
        return _roots[epoch];
    }

    /// @notice The number of payouts (indices 0..accounts-1) of `epoch`; zero when never funded.
    function accountsOf(uint256 epoch) external view returns (uint256) {
        return _accounts[epoch];
    }

    /// @notice Whether the payout at `index` of `epoch` was claimed: true only for an index of a funded epoch
    /// (index < accountsOf(epoch)) whose bit was cleared by a claim; false for unknown epochs and out-of-range
    /// indices (which can never be claimed).
    function isClaimed(uint256 epoch, uint256 index) external view returns (bool) {
        if (index >= _accounts[epoch]) return false;
        return _unclaimed[epoch][index >> 8] & (uint256(1) << (index & 0xff)) == 0;
    }
}
