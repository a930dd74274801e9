"""What `tally chain status` shows: which chain, the contracts, the operator, the anchors, pending transactions."""

from __future__ import annotations

from typing import Any

from tally.chain.anchor import LOG_ANCHOR, log_id
from tally.chain.client import CONTRACTS, Chain, hex0x
from tally.ledger import Ledger


def chain_status(chain: Chain, ledger: Ledger, *, deploy: bool = True) -> dict[str, Any]:
    """The chain's state as it concerns this installation. `deploy` (the operator's command, not the public route):
    resolve pending transactions and deploy the contracts on the embedded chain if this is its first use; without
    it, status only reads."""
    with chain.connect() as w3:
        if deploy:
            chain.reconcile(w3)
        operator = chain.operator()
        contracts = {}
        for name in CONTRACTS:
            if deploy or chain.recorded_address(w3, name) or chain.configured_address(name):
                contracts[name] = chain.contract(w3, name).address
        anchored_size, anchored_root = 0, b""
        if LOG_ANCHOR in contracts:
            anchored_size, anchored_root = chain.contract(w3, LOG_ANCHOR).functions.latest(log_id(ledger.origin)).call()
        size = ledger.size()
        log = {"origin": ledger.origin, "log_id": hex0x(log_id(ledger.origin)), "size": size,
               "anchored_size": int(anchored_size),
               "anchored_root": hex0x(bytes(anchored_root)) if anchored_size else None,
               "unanchored_entries": size - int(anchored_size)}  # fmt: skip
        pending = [{"purpose": t.purpose, "tx_hash": t.tx_hash, "nonce": t.nonce} for t in chain.pending()]
        return {
            "backend": "embedded" if chain.embedded else "json-rpc",
            "url": None if chain.embedded else chain.config.url,
            "chain_id": w3.eth.chain_id,
            "network": chain.network(w3),
            "block_number": w3.eth.block_number,
            "operator": operator.address,
            "operator_balance_wei": str(w3.eth.get_balance(operator.address)),
            "contracts": contracts,
            "log": log,
            "pending_transactions": pending,
        }
