"""Receipts: one self-contained JSON per entry that anyone can check offline.

A receipt holds the entry's exact bytes, its inclusion proof and a signed checkpoint of a tree that contains it,
plus the log's verifier key. Checking it needs no database: hash the entry, walk the proof to the checkpoint's
root, check the checkpoint's signature. Trust in the key is the reader's: compare it with the key the log
publishes (`tally ledger head`), or pass it with `--key`.
"""

from __future__ import annotations

import base64
from typing import Any

from sqlalchemy.orm import Session

from tally.config.errors import TallyError
from tally.ledger import merkle
from tally.ledger.events import Entry, LedgerFormatError, decode_entry
from tally.ledger.log import Ledger, SignedCheckpoint
from tally.ledger.notes import NoteError, Verifier, open_checkpoint

RECEIPT_FORMAT = "tally.receipt/v1"


class ReceiptError(TallyError, ValueError):
    """A receipt is malformed or does not verify. `reason` is a short stable code: bad_format, missing_field,
    bad_field, untrusted_key, bad_key, bad_checkpoint, size_mismatch, malformed_entry, sequence_mismatch, or the
    reason of the inclusion proof's ProofError (wrong_proof_size, root_mismatch, ...), whose values it carries."""

    def __init__(self, message: str, *, reason: str, **values: Any) -> None:
        super().__init__(message, **values)
        self.reason = reason


def build_receipt(
    ledger: Ledger, seq: int, session: Session | None = None, *, checkpoint: SignedCheckpoint | None = None
) -> dict[str, Any]:
    """The receipt of entry `seq`, against `checkpoint` (one that contains it; an anchored one, say), else the
    oldest signed checkpoint that contains it (signing one if needed)."""
    if checkpoint is not None and checkpoint.size <= seq:
        raise ReceiptError(f"checkpoint of size {checkpoint.size} does not contain entry {seq}", reason="bad_field")
    checkpoint = checkpoint or ledger.checkpoint_covering(seq + 1, session)
    if checkpoint is None:
        checkpoint = ledger.checkpoint()
    with ledger.store.read() as s:
        body = ledger.entry(seq, s)
        proof = ledger.inclusion_proof(seq, checkpoint.size, s)
    return {
        "format": RECEIPT_FORMAT,
        "origin": ledger.origin,
        "verifier_key": ledger.signer.verifier.encode(),
        "index": seq,
        "entry": body.decode("utf-8"),
        "tree_size": checkpoint.size,
        "inclusion_proof": [merkle.b64(h) for h in proof],
        "checkpoint": checkpoint.note,
    }


def verify_receipt(receipt: dict[str, Any], trusted_key: str | None = None) -> Entry:
    """Check a receipt offline; return its entry. Raises ReceiptError naming what failed."""
    try:
        if receipt.get("format") != RECEIPT_FORMAT:
            raise ReceiptError(
                f"format is {receipt.get('format')!r}, expected {RECEIPT_FORMAT!r}",
                reason="bad_format",
                got=receipt.get("format"),
                expected=RECEIPT_FORMAT,
            )
        key_text = trusted_key or receipt["verifier_key"]
        if trusted_key and receipt.get("verifier_key") not in (None, trusted_key):
            raise ReceiptError(
                "receipt names a different log key than the trusted one",
                reason="untrusted_key",
                key=receipt.get("verifier_key"),
                trusted=trusted_key,
            )
        try:
            verifier = Verifier.parse(key_text)
        except NoteError as exc:
            raise ReceiptError(str(exc), reason="bad_key") from exc
        if not isinstance(receipt["origin"], str):  # None would skip the origin check
            raise ReceiptError("origin must be the log's origin line (a string)", reason="bad_field", field="origin")
        try:
            checkpoint = open_checkpoint(receipt["checkpoint"], verifier, origin=receipt["origin"])
        except NoteError as exc:
            raise ReceiptError(str(exc), reason="bad_checkpoint") from exc
        index, size = receipt["index"], receipt["tree_size"]
        if not isinstance(index, int) or not isinstance(size, int):
            raise ReceiptError("index and tree_size must be integers", reason="bad_field")
        if checkpoint.size != size:
            raise ReceiptError(
                f"tree_size {size} does not match the checkpoint's size {checkpoint.size}",
                reason="size_mismatch",
                tree_size=size,
                checkpoint_size=checkpoint.size,
            )
        body = receipt["entry"].encode("utf-8")
        proof = [base64.b64decode(h, validate=True) for h in receipt["inclusion_proof"]]
        try:
            merkle.verify_inclusion(index, size, merkle.leaf_hash(body), proof, checkpoint.root)
        except merkle.ProofError as exc:
            raise ReceiptError(str(exc), reason=exc.reason, **exc.values) from exc
        try:
            entry = decode_entry(body)
        except LedgerFormatError as exc:
            raise ReceiptError(str(exc), reason="malformed_entry") from exc
    except ReceiptError:
        raise
    except KeyError as exc:
        field = exc.args[0]
        raise ReceiptError(f"receipt lacks the field {field!r}", reason="missing_field", field=field) from exc
    except (ValueError, TypeError, AttributeError) as exc:  # a field of the wrong JSON type or not base64
        raise ReceiptError(str(exc), reason="bad_field") from exc
    if entry.seq != index:
        raise ReceiptError(
            f"entry carries sequence number {entry.seq}, but the receipt proves index {index}",
            reason="sequence_mismatch",
            seq=entry.seq,
            index=index,
        )
    return entry
