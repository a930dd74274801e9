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

from tally.ledger import merkle
from tally.ledger.events import Entry, decode_entry
from tally.ledger.log import Ledger
from tally.ledger.notes import NoteError, Verifier, open_checkpoint

RECEIPT_FORMAT = "tally.receipt/v1"


class ReceiptError(ValueError):
    """A receipt is malformed or does not verify."""


def build_receipt(ledger: Ledger, seq: int, session: Session | None = None) -> dict[str, Any]:
    """The receipt of entry `seq`, against the oldest signed checkpoint that contains it (signing one if needed)."""
    checkpoint = ledger.checkpoint_covering(seq + 1, session)
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
            raise ReceiptError(f"format is {receipt.get('format')!r}, expected {RECEIPT_FORMAT!r}")
        key_text = trusted_key or receipt["verifier_key"]
        if trusted_key and receipt.get("verifier_key") not in (None, trusted_key):
            raise ReceiptError("receipt names a different log key than the trusted one")
        verifier = Verifier.parse(key_text)
        checkpoint = open_checkpoint(receipt["checkpoint"], verifier, origin=receipt["origin"])
        index, size = receipt["index"], receipt["tree_size"]
        if not isinstance(index, int) or not isinstance(size, int):
            raise ReceiptError("index and tree_size must be integers")
        if checkpoint.size != size:
            raise ReceiptError(f"tree_size {size} does not match the checkpoint's size {checkpoint.size}")
        body = receipt["entry"].encode("utf-8")
        proof = [base64.b64decode(h, validate=True) for h in receipt["inclusion_proof"]]
        merkle.verify_inclusion(index, size, merkle.leaf_hash(body), proof, checkpoint.root)
        entry = decode_entry(body)
    except ReceiptError:
        raise
    except KeyError as exc:
        raise ReceiptError(f"receipt lacks the field {exc.args[0]!r}") from exc
    except (NoteError, merkle.ProofError, ValueError, TypeError, AttributeError) as exc:
        raise ReceiptError(str(exc)) from exc
    if entry.seq != index:
        raise ReceiptError(f"entry carries sequence number {entry.seq}, but the receipt proves index {index}")
    return entry
