"""The ledger's parsers on generated input: canonical JSON agrees with RFC 8785, and signed notes and receipts from
strangers fail only with their own errors (never a crash of another type)."""

from __future__ import annotations

import json
from typing import Any

import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import settings as examples
from hypothesis import strategies as st

from tally.config import Settings
from tally.ledger import Ledger, NoteError, ReceiptError, build_receipt, verify_receipt
from tally.ledger.canonical import canonical_json
from tally.ledger.notes import Signer

SAFE_INT = st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
JSON = st.recursive(
    st.none() | st.booleans() | SAFE_INT | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@examples(max_examples=300, deadline=None)
@given(JSON)
def test_canonical_json_is_rfc8785(value: Any) -> None:
    try:
        expected = rfc8785.dumps(value)
    except rfc8785.CanonicalizationError:  # lone surrogates: both must refuse
        return
    assert canonical_json(value) == expected
    assert json.loads(canonical_json(value)) == value


SIGNER = Signer("fuzz.example/log", Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
SIGNED = SIGNER.sign("fuzz.example/log\n5\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n")


@examples(max_examples=300, deadline=None)
@given(
    st.text(max_size=400)
    | st.builds(lambda i, c: SIGNED[:i] + c + SIGNED[i + 1 :], st.integers(0, 200), st.text(max_size=3))
)
def test_a_stranger_note_fails_only_as_a_note_error(note: str) -> None:
    """Random text, and the signed note with a character changed: verified, or refused as a NoteError."""
    try:
        body = SIGNER.verifier.verify(note)
    except NoteError:
        return
    assert note == SIGNED or body in SIGNED


def _mutations(receipt: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    keys = sorted(receipt)
    return st.builds(
        lambda drop, key, value: {k: (value if k == key else v) for k, v in receipt.items() if k != drop},
        st.sampled_from([None, *keys]),
        st.sampled_from(keys),
        JSON,
    )


def test_a_mutated_receipt_fails_only_as_a_receipt_error(settings: Settings, ledger: Ledger) -> None:
    from tests.conftest import append_notes

    append_notes(ledger, 5)
    receipt = build_receipt(ledger, 3)
    assert verify_receipt(receipt).seq == 3

    @examples(max_examples=300, deadline=None)
    @given(_mutations(receipt))
    def check(mutated: dict[str, Any]) -> None:
        if mutated == receipt:
            return
        try:
            verify_receipt(mutated)
        except ReceiptError:
            return
        raise AssertionError(f"a changed receipt verified: {mutated}")

    check()
