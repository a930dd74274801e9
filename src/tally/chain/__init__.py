"""The chain: contracts, the embedded EVM or any JSON-RPC node, anchoring and settlement."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tally.config.lazy import lazy_exports

if TYPE_CHECKING:
    from tally.chain.anchor import (
        Anchor,
        AnchorOutcome,
        AnchorReport,
        anchor_head,
        anchored_receipt,
        check_receipt_anchor,
        log_id,
        recorded_anchors,
        verify_anchors,
    )
    from tally.chain.client import Chain, Sent
    from tally.chain.errors import ChainDivergence, ChainError
    from tally.chain.settle import Claim, Settlement, claim_payout, claim_transaction, onchain_balance, settle_epoch
    from tally.chain.status import chain_status

_WHERE = {
    "Anchor": "anchor", "AnchorOutcome": "anchor", "AnchorReport": "anchor", "anchor_head": "anchor",
    "anchored_receipt": "anchor", "check_receipt_anchor": "anchor", "log_id": "anchor", "verify_anchors": "anchor",
    "recorded_anchors": "anchor",
    "Chain": "client", "Sent": "client", "ChainDivergence": "errors", "ChainError": "errors",
    "Claim": "settle", "Settlement": "settle", "claim_payout": "settle", "claim_transaction": "settle",
    "onchain_balance": "settle", "settle_epoch": "settle", "chain_status": "status",
}  # fmt: skip
__getattr__ = lazy_exports(__name__, _WHERE)
__all__ = [
    "Anchor",
    "AnchorOutcome",
    "AnchorReport",
    "Chain",
    "ChainDivergence",
    "ChainError",
    "Claim",
    "Sent",
    "Settlement",
    "anchor_head",
    "anchored_receipt",
    "chain_status",
    "check_receipt_anchor",
    "claim_payout",
    "claim_transaction",
    "log_id",
    "onchain_balance",
    "recorded_anchors",
    "settle_epoch",
    "verify_anchors",
]
