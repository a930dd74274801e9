"""RFC 9162 hashing and proofs: known answers, every mutation of a proof fails, agreement with pymerkle."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymerkle import InmemoryTree

from tally.ledger import merkle

# Known answers from transparency-dev/merkle (RFC 6962/9162 reference vectors).
LEAVES = [bytes.fromhex(h) for h in ["", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                     "606162636465666768696a6b6c6d6e6f"]]  # fmt: skip
ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
INCLUSION = [
    (1, 0, []),
    (2, 0, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"]),
    (2, 1, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"]),
    (3, 2, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (5, 1, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (8, 0, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (8, 5, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]  # fmt: skip
CONSISTENCY = [
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]  # fmt: skip


def memory_fetch(leaves: list[bytes]):
    """A fetch over an in-memory tree: the hash of any aligned perfect subtree."""
    return lambda pieces: {(s, e): merkle.root_of(leaves[s:e]) for s, e in pieces}


def prove_inclusion(leaves: list[bytes], index: int, size: int) -> list[bytes]:
    return merkle.resolve_ranges(merkle.inclusion_ranges(index, size), memory_fetch(leaves))


def prove_consistency(leaves: list[bytes], old: int, new: int) -> list[bytes]:
    return merkle.resolve_ranges(merkle.consistency_ranges(old, new), memory_fetch(leaves))


KAT_LEAVES = [merkle.leaf_hash(x) for x in LEAVES]


def test_empty_root_is_hash_of_nothing() -> None:
    assert merkle.root_of([]).hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@pytest.mark.parametrize("n", range(1, 9))
def test_known_roots(n: int) -> None:
    assert merkle.root_of(KAT_LEAVES[:n]).hex() == ROOTS[n - 1]
    assert merkle.resolve_ranges([(0, n)], memory_fetch(KAT_LEAVES))[0].hex() == ROOTS[n - 1]


@pytest.mark.parametrize(("size", "index", "expected"), INCLUSION)
def test_known_inclusion_proofs(size: int, index: int, expected: list[str]) -> None:
    proof = prove_inclusion(KAT_LEAVES, index, size)
    assert [p.hex() for p in proof] == expected
    merkle.verify_inclusion(index, size, KAT_LEAVES[index], proof, bytes.fromhex(ROOTS[size - 1]))


@pytest.mark.parametrize(("old", "new", "expected"), CONSISTENCY)
def test_known_consistency_proofs(old: int, new: int, expected: list[str]) -> None:
    proof = prove_consistency(KAT_LEAVES, old, new)
    assert [p.hex() for p in proof] == expected
    merkle.verify_consistency(old, new, bytes.fromhex(ROOTS[old - 1]), bytes.fromhex(ROOTS[new - 1]), proof)


def _leaves(n: int) -> list[bytes]:
    return [merkle.leaf_hash(i.to_bytes(4, "big")) for i in range(n)]


def _list_mutations(proof: list[bytes]) -> list[tuple[str, list[bytes]]]:
    """Every single-bit flip (the proof keeps its size: the root must differ), each element removed, an element
    inserted or appended, truncation (the size is wrong), each with the reason a verifier must give."""
    out: list[tuple[str, list[bytes]]] = []
    for i, p in enumerate(proof):
        for bit in range(256):
            flipped = bytearray(p)
            flipped[bit // 8] ^= 1 << (bit % 8)
            out.append(("root_mismatch", [*proof[:i], bytes(flipped), *proof[i + 1 :]]))
        out.append(("wrong_proof_size", proof[:i] + proof[i + 1 :]))
    extra = hashlib.sha256(b"extra").digest()
    for i in range(len(proof) + 1):
        out.append(("wrong_proof_size", [*proof[:i], extra, *proof[i:]]))
    for cut in range(len(proof)):
        out.append(("wrong_proof_size", proof[:cut]))
    return out


def _failure(check) -> merkle.ProofError:
    with pytest.raises(merkle.ProofError) as info:
        check()
    return info.value


def _inclusion_reason(index: int, size: int, proof_size: int) -> str:
    """The first check a proof of `proof_size` hashes for (index, size) fails; the ranges give the true size."""
    if not 0 <= index < size:
        return "index_out_of_range"
    return "wrong_proof_size" if len(merkle.inclusion_ranges(index, size)) != proof_size else "root_mismatch"


def _consistency_reason(old: int, new: int, proof_size: int) -> str:
    if not 0 < old <= new:
        return "size_out_of_range"
    return "wrong_proof_size" if len(merkle.consistency_ranges(old, new)) != proof_size else "root_mismatch"


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 300).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n - 1))))
def test_inclusion_proofs_verify_and_every_mutation_fails(case: tuple[int, int]) -> None:
    size, index = case
    leaves = _leaves(size)
    root = merkle.root_of(leaves)
    leaf = leaves[index]
    proof = prove_inclusion(leaves, index, size)
    merkle.verify_inclusion(index, size, leaf, proof, root)

    for bad_index in {index - 1, index + 1, index ^ 2} - {index}:
        err = _failure(lambda i=bad_index: merkle.verify_inclusion(i, size, leaf, proof, root))
        assert err.reason == _inclusion_reason(bad_index, size, len(proof))
        if err.reason != "root_mismatch":
            assert err.values["index"] == bad_index
    for bad_size in {size * 2, size // 2} - {size}:
        err = _failure(lambda s=bad_size: merkle.verify_inclusion(index, s, leaf, proof, root))
        assert err.reason == _inclusion_reason(index, bad_size, len(proof))
        if err.reason == "wrong_proof_size":
            assert (err.values["got"], err.values["expected"]) == (
                len(proof),
                len(merkle.inclusion_ranges(index, bad_size)),
            )
    for reason, bad in _list_mutations(proof):
        err = _failure(lambda p=bad: merkle.verify_inclusion(index, size, leaf, p, root))
        assert err.reason == reason
        if reason == "wrong_proof_size":
            assert (err.values["got"], err.values["expected"]) == (len(bad), len(proof))
        else:
            assert err.values["expected"] == merkle.b64(root) != err.values["computed"]
    wrong_root = merkle.root_of(leaves[:-1]) if size > 1 else hashlib.sha256(b"x").digest()
    err = _failure(lambda: merkle.verify_inclusion(index, size, leaf, proof, wrong_root))
    assert err.reason == "root_mismatch"
    assert (err.values["expected"], err.values["computed"]) == (merkle.b64(wrong_root), merkle.b64(root))
    err = _failure(lambda: merkle.verify_inclusion(index, size, merkle.leaf_hash(b"other"), proof, root))
    assert err.reason == "root_mismatch" and err.values["expected"] == merkle.b64(root)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 300).flatmap(lambda n: st.tuples(st.integers(1, n - 1), st.just(n))))
def test_consistency_proofs_verify_and_every_mutation_fails(case: tuple[int, int]) -> None:
    old, new = case
    leaves = _leaves(new)
    old_root, new_root = merkle.root_of(leaves[:old]), merkle.root_of(leaves)
    proof = prove_consistency(leaves, old, new)
    merkle.verify_consistency(old, new, old_root, new_root, proof)

    for bad_old in {old - 1, old + 1, old ^ 2} - {old}:
        err = _failure(lambda o=bad_old: merkle.verify_consistency(o, new, old_root, new_root, proof))
        assert err.reason == _consistency_reason(bad_old, new, len(proof))
        if err.reason != "root_mismatch":
            assert (err.values["old_size"], err.values["new_size"]) == (bad_old, new)
    for bad_new in {new * 2, new // 2} - {new}:
        err = _failure(lambda n=bad_new: merkle.verify_consistency(old, n, old_root, new_root, proof))
        assert err.reason == _consistency_reason(old, bad_new, len(proof))
    for reason, bad in _list_mutations(proof):
        err = _failure(lambda p=bad: merkle.verify_consistency(old, new, old_root, new_root, p))
        assert err.reason == reason
        if reason == "wrong_proof_size":
            assert (err.values["got"], err.values["expected"]) == (len(bad), len(proof))
        else:
            assert err.values["root"] in ("old", "new") and err.values["expected"] != err.values["computed"]
    err = _failure(lambda: merkle.verify_consistency(old, new, new_root, old_root, proof))
    assert err.reason == "root_mismatch"
    # a power-of-two old tree is its own seed, so only the new root can show the swap
    expected = {"old": merkle.b64(new_root), "new": merkle.b64(old_root)}
    assert err.values["expected"] == expected[err.values["root"]]


def test_a_short_proof_says_what_was_expected() -> None:
    """As in transparency-dev/merkle: the sizes and indexes involved are in the message and in `values`."""
    leaves = _leaves(8)
    proof = prove_inclusion(leaves, 5, 8)
    err = _failure(lambda: merkle.verify_inclusion(5, 8, leaves[5], proof[:2], merkle.root_of(leaves)))
    assert str(err) == "inclusion proof for index 5 in tree size 8 has 2 hashes, expected 3"
    assert err.reason == "wrong_proof_size" and err.values == {"index": 5, "size": 8, "got": 2, "expected": 3}
    assert err.kind == "invalid" and isinstance(err, ValueError)
    err = _failure(
        lambda: merkle.verify_inclusion(5, 8, leaves[5], [proof[0][:31], *proof[1:]], merkle.root_of(leaves))
    )
    assert err.reason == "wrong_hash_size" and err.values == {"position": 0, "got": 31, "expected": 32}
    err = _failure(lambda: merkle.verify_consistency(4, 4, leaves[0], leaves[1], []))
    assert err.reason == "root_mismatch"
    err = _failure(lambda: merkle.verify_consistency(4, 4, leaves[0], leaves[0], [leaves[1]]))
    assert err.reason == "wrong_proof_size" and (err.values["got"], err.values["expected"]) == (1, 0)


@pytest.mark.parametrize("n", [-1, 0, 1])
def test_split_point_is_defined_only_for_sizes_above_one(n: int) -> None:
    err = _failure(lambda: merkle.split_point(n))
    assert err.reason == "size_out_of_range" and err.values == {"size": n} and isinstance(err, ValueError)


@given(st.integers(2, 10**6))
def test_split_point_is_the_largest_power_of_two_below_n(n: int) -> None:
    k = merkle.split_point(n)
    assert k & (k - 1) == 0 and k < n <= 2 * k


def test_public_functions_refuse_sizes_and_indexes_outside_their_domain() -> None:
    h = merkle.leaf_hash(b"x")
    cases = {
        "index_out_of_range": [
            lambda: merkle.inclusion_ranges(5, 5),
            lambda: merkle.inclusion_ranges(-1, 5),
            lambda: merkle.inclusion_proof_size(0, 0),
            lambda: merkle.verify_inclusion(3, 3, h, [], h),
        ],
        "size_out_of_range": [
            lambda: merkle.perfect_pieces(-1, 3),
            lambda: merkle.perfect_pieces(4, 2),
            lambda: merkle.fold_pieces([]),
            lambda: merkle.extend([], -1, [h]),
            lambda: merkle.consistency_ranges(0, 5),
            lambda: merkle.consistency_ranges(6, 5),
            lambda: merkle.consistency_proof_size(-2, 5),
            lambda: merkle.verify_consistency(0, 5, h, h, []),
        ],
        "wrong_stack_size": [lambda: merkle.extend([], 3, [h])],
        "wrong_hash_size": [lambda: merkle.verify_inclusion(0, 1, h[:31], [], h)],
    }
    for reason, checks in cases.items():
        for check in checks:
            assert _failure(check).reason == reason
    assert _failure(lambda: merkle.inclusion_ranges(5, 5)).values == {"index": 5, "size": 5}
    assert merkle.perfect_pieces(3, 3) == [] and merkle.consistency_proof_size(5, 5) == 0


def test_proof_sizes_match_the_ranges() -> None:
    for n in range(1, 130):
        for i in range(n):
            assert merkle.inclusion_proof_size(i, n) == len(merkle.inclusion_ranges(i, n))
        for m in range(1, n + 1):
            assert merkle.consistency_proof_size(m, n) == len(merkle.consistency_ranges(m, n))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(max_size=40), min_size=1, max_size=200))
def test_roots_agree_with_pymerkle(data: list[bytes]) -> None:
    tree = InmemoryTree(algorithm="sha256")
    for d in data:
        tree.append_entry(d)
    leaves = [merkle.leaf_hash(d) for d in data]
    for n in {1, len(data) // 2 or 1, len(data)}:
        assert merkle.root_of(leaves[:n]) == tree.get_root(n)
        assert merkle.resolve_ranges([(0, n)], memory_fetch(leaves))[0] == tree.get_root(n)


def _reference_root(leaves: list[bytes]) -> bytes:
    """RFC 9162's recursive definition, split at the largest power of two below n."""
    if len(leaves) == 1:
        return leaves[0]
    k = merkle.split_point(len(leaves))
    return merkle.node_hash(_reference_root(leaves[:k]), _reference_root(leaves[k:]))


@given(st.integers(1, 300))
def test_root_of_is_the_recursive_definition(n: int) -> None:
    leaves = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(n)]
    assert merkle.root_of(leaves) == _reference_root(leaves)


@given(st.integers(0, 300), st.integers(1, 300), st.integers(1, 6))
def test_extend_gives_the_new_frontier_and_every_completed_subtree(start: int, k: int, min_level: int) -> None:
    leaves = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(start + k)]
    stack = [merkle.root_of(leaves[s:e]) for s, e in merkle.perfect_pieces(0, start)]
    new_stack, completed = merkle.extend(stack, start, leaves[start:], min_level=min_level)
    assert new_stack == [merkle.root_of(leaves[s:e]) for s, e in merkle.perfect_pieces(0, start + k)]
    expected = {
        (level, index)
        for level in range(min_level, (start + k).bit_length())
        for index in range((start + k) >> level)
        if (index + 1) << level > start  # completed by the new leaves
    }
    assert {(level, index) for level, index, _ in completed} == expected
    for level, index, h in completed:
        assert h == merkle.root_of(leaves[index << level : (index + 1) << level])
