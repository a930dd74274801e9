"""The ledger: an RFC 9162 Merkle log of typed events with signed checkpoints and offline-checkable receipts."""

from tally.ledger.events import Entry, Event, LedgerFormatError, LogCreated, decode_entry
from tally.ledger.log import Appended, EntryNotFoundError, Ledger, LedgerError, LedgerLimitError, SignedCheckpoint
from tally.ledger.merkle import ProofError
from tally.ledger.notes import Checkpoint, NoteError, Signer, Verifier
from tally.ledger.receipts import ReceiptError, build_receipt, verify_receipt
from tally.ledger.service import open_ledger
from tally.ledger.verify import VerificationError, VerifyReport, verify_ledger

__all__ = [
    "Appended",
    "Checkpoint",
    "Entry",
    "EntryNotFoundError",
    "Event",
    "Ledger",
    "LedgerError",
    "LedgerFormatError",
    "LedgerLimitError",
    "LogCreated",
    "NoteError",
    "ProofError",
    "ReceiptError",
    "SignedCheckpoint",
    "Signer",
    "VerificationError",
    "Verifier",
    "VerifyReport",
    "build_receipt",
    "decode_entry",
    "open_ledger",
    "verify_ledger",
    "verify_receipt",
]
