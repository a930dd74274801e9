"""Anchoring: the ledger's signed checkpoints, committed to `LedgerAnchor` many entries per transaction.

One anchor = (log id, size, root) where log id = SHA-256 of the log's origin line and root is the RFC 9162 root of
the first `size` entries, the same root the checkpoint at that size signs. Anchoring is idempotent: the chain's
latest size is read first, and a checkpoint at or below it is never sent. `verify_anchors` reads every anchor back
from the chain's events and checks each against the local log, and each consecutive pair with a consistency proof.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from tally.chain.client import Chain, hex0x
from tally.chain.errors import ChainDivergence, ChainError
from tally.chain.tables import AnchorRow, ContractRow, kept
from tally.ledger import Ledger, ProofError, build_receipt
from tally.ledger import merkle as log_merkle
from tally.ledger.events import now_ts
from tally.store import Store

if TYPE_CHECKING:
    from web3 import Web3

LOG_ANCHOR = "LedgerAnchor"


def log_id(origin: str) -> bytes:
    """The log's id on chain: SHA-256 of its origin line (computable with nothing but hashlib)."""
    return hashlib.sha256(origin.encode("utf-8")).digest()


@dataclass(frozen=True)
class Anchor:
    size: int
    root: str  # 0x hex of the SHA-256 root
    tx_hash: str
    block_number: int
    block_hash: str
    contract: str
    gas_used: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "size": self.size, "root": self.root, "transaction": self.tx_hash, "block_number": self.block_number,
            "block_hash": self.block_hash, "contract": self.contract, "gas_used": self.gas_used,
        }  # fmt: skip


@dataclass(frozen=True)
class AnchorOutcome:
    """What `anchor_head` did: `anchor` is the new anchor, or None when the chain already held this size."""

    size: int
    anchored_size: int
    anchor: Anchor | None

    def as_json(self) -> dict[str, Any]:
        return {"log_size": self.size, "anchored_size": self.anchored_size,
                "anchor": self.anchor.as_json() if self.anchor else None}  # fmt: skip


def anchor_head(chain: Chain, ledger: Ledger) -> AnchorOutcome:
    """Anchor the log's current head (signing its checkpoint) unless the chain already holds this size or more."""
    size = ledger.size()
    if size == 0:
        raise ChainError("the log is empty: nothing to anchor", kind="conflict")
    lid = log_id(ledger.origin)
    with chain.connect() as w3:
        chain.reconcile(w3)  # a transaction journaled by a process that died is settled first, never re-signed
        contract = chain.contract(w3, LOG_ANCHOR)
        chain_size, chain_root = contract.functions.latest(lid).call()
        if chain_size:  # never extend a chain of anchors that the local log no longer matches
            _check_root(ledger, chain_size, chain_root)
        if chain_size >= size:
            return AnchorOutcome(size, chain_size, None)
        checkpoint = ledger.checkpoint()  # signed at the head: the anchored root is one the log signed
        purpose = f"anchor:{lid.hex()}:{checkpoint.size}"
        sent = chain.transact(
            w3, purpose, contract.functions.anchor(lid, checkpoint.size, checkpoint.root), chain.operator()
        )
        anchor = Anchor(checkpoint.size, hex0x(checkpoint.root), sent.tx_hash, sent.block_number,
                        hex0x(sent.receipt["blockHash"]), contract.address, sent.gas_used)  # fmt: skip
        _record(chain, w3, lid, anchor)
        return AnchorOutcome(size, checkpoint.size, anchor)


def _record(chain: Chain, w3: Web3, lid: bytes, anchor: Anchor) -> None:
    network = chain.network(w3)
    with chain.store.transaction() as s:
        exists = s.execute(
            select(AnchorRow.id).where(AnchorRow.network == network, AnchorRow.log_id == hex0x(lid),
                                       AnchorRow.size == anchor.size)
        ).first()  # fmt: skip
        if exists is None:
            s.add(AnchorRow(network=network, contract=anchor.contract, log_id=hex0x(lid), size=anchor.size,
                            root=anchor.root, tx_hash=anchor.tx_hash, block_number=anchor.block_number,
                            block_hash=anchor.block_hash, anchored_at=now_ts()))  # fmt: skip


def _check_root(ledger: Ledger, size: int, root: bytes) -> None:
    if size > ledger.size():
        raise ChainDivergence(
            f"the chain holds an anchor at size {size} but the local log has only {ledger.size()} entries: the local "
            "log lost entries (restore it from a backup)",
            anchored_size=size, local_size=ledger.size(),
        )  # fmt: skip
    local = ledger.root(size)
    if local != bytes(root):
        raise ChainDivergence(
            f"at size {size} the chain anchors root {hex0x(bytes(root))} but the local log's root is {hex0x(local)}: "
            "the local log was rewritten after it was anchored",
            size=size, anchored_root=hex0x(bytes(root)), local_root=hex0x(local),
        )  # fmt: skip


def chain_anchors(chain: Chain, w3: Web3, origin: str) -> list[Anchor]:
    """Every anchor of this log on chain, oldest first, read from the contract's events."""
    contract = chain.contract(w3, LOG_ANCHOR)
    with chain.store.read() as s:
        row = kept(s, s.get(ContractRow, (chain.network(w3), LOG_ANCHOR)))
    start = row.block_number if row is not None else 0
    lid = log_id(origin)
    logs = contract.events.Anchored().get_logs(from_block=start, argument_filters={"logId": lid})
    return [
        Anchor(int(e["args"]["size"]), hex0x(e["args"]["root"]), hex0x(e["transactionHash"]), int(e["blockNumber"]),
               hex0x(e["blockHash"]), contract.address)
        for e in sorted(logs, key=lambda e: (e["blockNumber"], e["logIndex"]))
    ]  # fmt: skip


@dataclass
class AnchorReport:
    anchors: list[Anchor] = field(default_factory=list)
    log_size: int = 0
    unanchored: int = 0  # entries after the newest anchor

    def as_json(self) -> dict[str, Any]:
        latest = self.anchors[-1].as_json() if self.anchors else None
        return {"ok": True, "log_size": self.log_size, "anchors": len(self.anchors), "latest": latest,
                "unanchored": self.unanchored}  # fmt: skip


def verify_anchors(chain: Chain, ledger: Ledger) -> AnchorReport:
    """Check every on-chain anchor of this log against the local log; raise ChainDivergence at the first that
    disagrees, naming both sizes and roots. Also refreshes the local cache of anchors."""
    with chain.connect() as w3:
        anchors = chain_anchors(chain, w3, ledger.origin)
        lid = log_id(ledger.origin)
        previous: Anchor | None = None
        for anchor in anchors:
            _check_root(ledger, anchor.size, bytes.fromhex(anchor.root[2:]))
            if previous is not None:
                _check_consistency(ledger, previous, anchor)
            _record(chain, w3, lid, anchor)
            previous = anchor
    size = ledger.size()
    return AnchorReport(anchors, size, size - (anchors[-1].size if anchors else 0))


def _check_consistency(ledger: Ledger, old: Anchor, new: Anchor) -> None:
    proof = ledger.consistency_proof(old.size, new.size)
    try:
        log_merkle.verify_consistency(old.size, new.size, bytes.fromhex(old.root[2:]), bytes.fromhex(new.root[2:]),
                                      proof)  # fmt: skip
    except ProofError as exc:
        raise ChainDivergence(
            f"anchors at sizes {old.size} (root {old.root}) and {new.size} (root {new.root}) are not consistent: "
            f"{exc}",
            old_size=old.size, old_root=old.root, new_size=new.size, new_root=new.root,
        ) from exc  # fmt: skip


def latest_local_anchor(chain: Chain, ledger: Ledger) -> AnchorRow | None:
    """The newest anchor recorded locally for this log (any network this installation anchored on)."""
    with chain.store.read() as s:
        return kept(s, s.execute(
            select(AnchorRow).where(AnchorRow.log_id == hex0x(log_id(ledger.origin)))
            .order_by(AnchorRow.size.desc()).limit(1)
        ).scalar())  # fmt: skip


def recorded_anchors(
    store: Store, ledger: Ledger, *, below_size: int | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    """This log's anchors as recorded locally (read back from the chain's receipts when they were sent), newest
    first, `limit` at a time below tree size `below_size`: no chain connection."""
    query = select(AnchorRow).where(AnchorRow.log_id == hex0x(log_id(ledger.origin)))
    if below_size is not None:
        query = query.where(AnchorRow.size < below_size)
    with store.read() as s:
        rows = s.execute(query.order_by(AnchorRow.size.desc(), AnchorRow.id.desc()).limit(limit)).scalars().all()
        return [
            {
                "network": r.network, "contract": r.contract, "size": r.size, "root": r.root,
                "transaction": r.tx_hash, "block_number": r.block_number, "block_hash": r.block_hash,
                "anchored_at": r.anchored_at,
            }
            for r in rows
        ]  # fmt: skip


def anchored_receipt(store: Store, ledger: Ledger, seq: int) -> dict[str, Any]:
    """The receipt of entry `seq`, against the oldest anchored checkpoint that contains it when there is one, with
    an `anchor` section naming the chain, contract, transaction and block; else the plain receipt. Reads only the
    local record of anchors: no chain connection."""
    with store.read() as s:
        row = kept(s, s.execute(
            select(AnchorRow).where(AnchorRow.log_id == hex0x(log_id(ledger.origin)), AnchorRow.size > seq)
            .order_by(AnchorRow.size).limit(1)
        ).scalar())  # fmt: skip
    checkpoint = ledger.checkpoint_covering(row.size) if row is not None else None
    if row is None or checkpoint is None or checkpoint.size != row.size:
        return build_receipt(ledger, seq)
    receipt = build_receipt(ledger, seq, checkpoint=checkpoint)
    chain_id = int(row.network.split("/", 1)[0])
    receipt["anchor"] = {
        "chain_id": chain_id, "contract": row.contract, "log_id": row.log_id, "tree_size": row.size,
        "root": row.root, "transaction": row.tx_hash, "block_number": row.block_number, "block_hash": row.block_hash,
    }  # fmt: skip
    return receipt


def check_receipt_anchor(receipt: dict[str, Any], w3: Web3) -> dict[str, Any]:
    """Check a receipt's `anchor` against a chain: the contract holds the receipt's checkpoint root at its size,
    and the named transaction is in the named block. Call after `verify_receipt` (which checks the proof and the
    checkpoint's signature). Raises ChainDivergence naming what differs, ChainError (invalid) for a malformed anchor."""
    try:
        return _check_receipt_anchor(receipt, w3)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ChainError(f"the receipt's anchor section is malformed: {exc!r}", kind="invalid") from exc


def _check_receipt_anchor(receipt: dict[str, Any], w3: Web3) -> dict[str, Any]:
    from tally.chain.contracts import load_artifact
    from tally.ledger.notes import Checkpoint

    anchor = receipt.get("anchor")
    if not isinstance(anchor, dict):
        raise ChainError("the receipt has no anchor section (its entry was not anchored when it was made)",
                         kind="not_found")  # fmt: skip
    checkpoint = Checkpoint.parse_text(receipt["checkpoint"].partition("\n\n")[0] + "\n")
    if checkpoint.size != anchor["tree_size"] or hex0x(checkpoint.root) != anchor["root"]:
        raise ChainDivergence("the receipt's anchor is not its checkpoint (size or root differ)",
                              checkpoint_size=checkpoint.size, anchor_size=anchor["tree_size"])  # fmt: skip
    if log_id(receipt["origin"]).hex() != anchor["log_id"].removeprefix("0x"):
        raise ChainDivergence("the anchor's log id is not the SHA-256 of the receipt's origin", log_id=anchor["log_id"])
    if w3.eth.chain_id != anchor["chain_id"]:
        raise ChainDivergence(f"the node is chain {w3.eth.chain_id}, the anchor is on chain {anchor['chain_id']}")
    contract = w3.eth.contract(address=w3.to_checksum_address(anchor["contract"]),
                               abi=load_artifact(LOG_ANCHOR)["abi"])  # fmt: skip
    on_chain = bytes(contract.functions.rootAt(bytes.fromhex(anchor["log_id"][2:]), anchor["tree_size"]).call())
    if on_chain != checkpoint.root:
        raise ChainDivergence(
            f"the chain anchors root {hex0x(on_chain)} at size {anchor['tree_size']}, the receipt's checkpoint signs "
            f"{hex0x(checkpoint.root)}",
            size=anchor["tree_size"], anchored_root=hex0x(on_chain), receipt_root=hex0x(checkpoint.root),
        )  # fmt: skip
    tx = w3.eth.get_transaction_receipt(anchor["transaction"])
    if int(tx["blockNumber"]) != anchor["block_number"] or int(tx["status"]) != 1:
        raise ChainDivergence("the anchor's transaction is not in the named block", transaction=anchor["transaction"])
    return {"chain_id": anchor["chain_id"], "tree_size": anchor["tree_size"], "block_number": anchor["block_number"],
            "confirmations": w3.eth.block_number - anchor["block_number"] + 1}  # fmt: skip
