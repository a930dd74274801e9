"""The payout tree follows OpenZeppelin's StandardMerkleTree: leaf encoding, node hashing, layout, proofs."""

from __future__ import annotations

from eth_abi import encode
from eth_utils import keccak, to_checksum_address
from hypothesis import given, settings
from hypothesis import strategies as st

from tally.rewards import leaf_hash, payout_tree, verify_payout
from tally.rewards.merkle import build_tree, to_hex

ACCOUNT = "0x1111111111111111111111111111111111111111"


def test_leaf_encoding_matches_its_definition() -> None:
    # keccak256(bytes.concat(keccak256(abi.encode(uint256 index, address account, uint256 amount)))), by hand:
    # three 32-byte words, the address right-aligned in the second.
    words = (0).to_bytes(32, "big") + bytes(12) + bytes.fromhex(ACCOUNT[2:]) + (5 * 10**18).to_bytes(32, "big")
    assert words == encode(["uint256", "address", "uint256"], [0, ACCOUNT, 5 * 10**18])
    expected = keccak(keccak(words))
    assert leaf_hash(0, ACCOUNT, 5 * 10**18) == expected
    assert expected.hex() == "006339a0971f8d293763c27967110607da32bf3548b17cce12da9fee72331612"


def test_matches_the_published_openzeppelin_dumps() -> None:
    """@openzeppelin/merkle-tree's test dumps (test/dumps/standard-v1*.json, v1.0.6): six `string` leaves a..f."""
    leaves = [keccak(keccak(encode(["string"], [c]))) for c in "abcdef"]
    assert leaves[0].hex() == "9c15a6a0eaeed500fd9eed4cbeab71f797cefcc67bfd46683e4d2e6ff7f06d1c"
    sorted_tree = build_tree(sorted(leaves))
    assert to_hex(sorted_tree[0]) == "0x6deb52b5da8fd108f79fab00341f38d2587896634c646ee52e49f845680a70c8"
    assert to_hex(sorted_tree[1]) == "0x52426e0f1f65ff7e209a13b8c29cffe82e3acaf3dad0a9b9088f3b9a61a929c3"
    unsorted_tree = build_tree(leaves)
    assert to_hex(unsorted_tree[0]) == "0x23be0977360f08bb0bd7f709a7d543d2cd779c79c66d74e0441919871647de2b"


def test_a_single_leaf_is_its_own_root_with_an_empty_proof() -> None:
    tree = payout_tree({to_checksum_address(ACCOUNT): 42})
    (p,) = tree.payouts
    assert p.proof == () and tree.root == to_hex(leaf_hash(0, ACCOUNT, 42))
    assert verify_payout(tree.root, 0, ACCOUNT, 42, [])
    assert not verify_payout(tree.root, 0, ACCOUNT, 43, [])


@settings(max_examples=60, deadline=None)
@given(
    amounts=st.dictionaries(st.binary(min_size=20, max_size=20), st.integers(1, 2**256 - 1), min_size=1, max_size=33)
)
def test_every_proof_verifies_and_tampering_does_not(amounts: dict[bytes, int]) -> None:
    by_account = {to_checksum_address(k): v for k, v in amounts.items()}
    tree = payout_tree(by_account)
    assert [p.account for p in tree.payouts] == sorted(by_account, key=lambda a: int(a, 16))
    other = to_checksum_address(b"\xee" * 20) if b"\xee" * 20 not in amounts else to_checksum_address(b"\xef" * 20)
    for p in tree.payouts:
        assert p.index == tree.payouts.index(p) and p.amount == by_account[p.account]
        assert verify_payout(tree.root, p.index, p.account, p.amount, p.proof)
        assert not verify_payout(tree.root, p.index, p.account, (p.amount + 1) % 2**256, p.proof)
        assert not verify_payout(tree.root, p.index + 1, p.account, p.amount, p.proof)
        assert not verify_payout(tree.root, p.index, other, p.amount, p.proof)
        if p.proof:
            bad = list(p.proof)
            bad[0] = "0x" + "00" * 32
            assert not verify_payout(tree.root, p.index, p.account, p.amount, bad)


def test_malformed_input_is_false_not_an_exception() -> None:
    tree = payout_tree({to_checksum_address(ACCOUNT): 1, to_checksum_address("0x" + "22" * 20): 2})
    p = tree.payouts[0]
    assert not verify_payout(tree.root, p.index, "0x12", p.amount, p.proof)
    assert not verify_payout(tree.root, -1, p.account, p.amount, p.proof)
    assert not verify_payout(tree.root, p.index, p.account, p.amount, ["0xabc"])
    assert verify_payout(bytes.fromhex(tree.root[2:]), p.index, p.account.lower(), p.amount, p.proof)
