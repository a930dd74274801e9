"""The payout Merkle tree, in OpenZeppelin's StandardMerkleTree format, so the root verifies on chain with
`MerkleProof.verify` and the same tree can be rebuilt with `@openzeppelin/merkle-tree`.

Leaf = keccak256(keccak256(abi.encode(uint256 index, address account, uint256 amount))) (double hashed, so a
leaf can never be mistaken for an internal node). Node = keccak256 of its two children in ascending byte order
(commutative: a proof is just the list of siblings). The tree is a complete binary tree stored as an array:
root at 0, children of i at 2i+1 and 2i+2, the leaves sorted by hash and laid out from the end of the array.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from eth_abi import encode
from eth_utils import is_address, keccak, to_checksum_address

LEAF_ENCODING = ("uint256", "address", "uint256")
UINT256_MAX = 2**256 - 1


def leaf_hash(index: int, account: str, amount: int) -> bytes:
    return keccak(keccak(encode(list(LEAF_ENCODING), [index, to_checksum_address(account), amount])))


def hash_pair(a: bytes, b: bytes) -> bytes:
    return keccak(a + b if a <= b else b + a)


def to_hex(digest: bytes) -> str:
    return "0x" + digest.hex()


def from_hex(value: str | bytes) -> bytes:
    if isinstance(value, bytes):
        return value
    raw = bytes.fromhex(value.removeprefix("0x"))
    if len(raw) != 32:
        raise ValueError(f"{value!r} is not a 32-byte hash")
    return raw


def build_tree(leaves: Sequence[bytes]) -> list[bytes]:
    """The array form of the tree over `leaves` (already sorted, as the standard format requires)."""
    if not leaves:
        raise ValueError("a Merkle tree needs at least one leaf")
    tree = [b""] * (2 * len(leaves) - 1)
    for i, leaf in enumerate(leaves):
        tree[len(tree) - 1 - i] = leaf
    for i in range(len(tree) - 1 - len(leaves), -1, -1):
        tree[i] = hash_pair(tree[2 * i + 1], tree[2 * i + 2])
    return tree


def tree_proof(tree: Sequence[bytes], position: int) -> list[bytes]:
    """Siblings from the leaf at array `position` up to (not including) the root."""
    proof = []
    while position > 0:
        proof.append(tree[position + 1 if position % 2 else position - 1])
        position = (position - 1) // 2
    return proof


@dataclass(frozen=True)
class Payout:
    index: int
    account: str
    amount: int
    proof: tuple[str, ...]


@dataclass(frozen=True)
class PayoutTree:
    root: str
    payouts: tuple[Payout, ...]  # in index order (accounts sorted by address)


def payout_tree(amounts: dict[str, int]) -> PayoutTree:
    """The payout tree of `amounts` (account -> base units): index = position of the account sorted by address."""
    accounts = sorted(amounts, key=lambda a: int(a, 16))
    for a in accounts:
        if not 0 < amounts[a] <= UINT256_MAX:
            raise ValueError(f"payout of {amounts[a]} to {a} is outside 1..2**256-1")
    leaves = [leaf_hash(i, a, amounts[a]) for i, a in enumerate(accounts)]
    order = sorted(range(len(leaves)), key=lambda i: leaves[i])
    tree = build_tree([leaves[i] for i in order])
    position = {leaf_index: len(tree) - 1 - rank for rank, leaf_index in enumerate(order)}
    payouts = tuple(
        Payout(i, to_checksum_address(a), amounts[a], tuple(to_hex(h) for h in tree_proof(tree, position[i])))
        for i, a in enumerate(accounts)
    )
    return PayoutTree(to_hex(tree[0]), payouts)


def verify_payout(root: str | bytes, index: int, account: str, amount: int, proof: Sequence[str | bytes]) -> bool:
    """Whether (index, account, amount) is a leaf of the tree with `root`, as the on-chain check decides."""
    if not (is_address(account) and 0 <= index <= UINT256_MAX and 0 <= amount <= UINT256_MAX):
        return False
    try:
        node = leaf_hash(index, account, amount)
        for sibling in proof:
            node = hash_pair(node, from_hex(sibling))
        return node == from_hex(root)
    except ValueError:
        return False
