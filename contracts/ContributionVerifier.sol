// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";
import {MessageHashUtils} from "@openzeppelin/contracts/utils/cryptography/MessageHashUtils.sol";

/// @title ContributionVerifier
/// @notice Stateless check of contributors' EIP-712 signatures over
/// Contribution(string datanet,bytes32 contentRoot,string license,uint256 nonce), under the chain-bound domain
/// EIP712Domain(string name,string version,uint256 chainId) with name "Tally", version "1" and this chain's id
/// (no verifyingContract: the same signature verifies off chain and on any contract of this chain).
contract ContributionVerifier {
    bytes32 private constant DOMAIN_TYPEHASH = keccak256("EIP712Domain(string name,string version,uint256 chainId)");
    bytes32 private constant CONTRIBUTION_TYPEHASH =
        keccak256("Contribution(string datanet,bytes32 contentRoot,string license,uint256 nonce)");
    bytes32 private constant NAME_HASH = keccak256("Tally");
    bytes32 private constant VERSION_HASH = keccak256("1");

    /// @notice The EIP-712 digest a contributor signs for this contribution on this chain.
    function contributionDigest(
        string calldata datanet,
        bytes32 contentRoot,
        string calldata license,
        uint256 nonce
    ) external view returns (bytes32) {
        return _digest(datanet, contentRoot, license, nonce);
    }

    /// @notice The address whose key made `signature` (65 bytes r, s, v) over this contribution. Reverts on a
    /// malformed signature (OpenZeppelin ECDSA); a signature over other fields recovers another address.
    function recoverContributionSigner(
        string calldata datanet,
        bytes32 contentRoot,
        string calldata license,
        uint256 nonce,
        bytes calldata signature
    ) external view returns (address) {
        return ECDSA.recoverCalldata(_digest(datanet, contentRoot, license, nonce), signature);
    }

    function _digest(string calldata datanet, bytes32 contentRoot, string calldata license, uint256 nonce)
        private
        view
        returns (bytes32)
    {
        bytes32 domainSeparator = keccak256(abi.encode(DOMAIN_TYPEHASH, NAME_HASH, VERSION_HASH, block.chainid));
        bytes32 structHash = keccak256(
            abi.encode(CONTRIBUTION_TYPEHASH, keccak256(bytes(datanet)), contentRoot, keccak256(bytes(license)), nonce)
        );
        return MessageHashUtils.toTypedDataHash(domainSeparator, structHash);
    }
}
