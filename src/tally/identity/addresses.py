"""Ethereum addresses: the one check and normal form (EIP-55 checksum) that every package uses.

eth_utils is imported only once a value has an address's shape: importing it costs about a quarter of a second,
which commands that never see an address (`tally ledger head`, `--as NAME`) should not pay.
"""

from __future__ import annotations

import re

NOT_AN_ADDRESS = "is not an Ethereum address (0x followed by 40 hex digits)"
_SHAPE = re.compile(r"(0x)?[0-9a-f]{40}", re.IGNORECASE)  # what eth_utils.is_address accepts as text


def checksum_address(value: str) -> str | None:
    """`value` in EIP-55 checksum form, or None when it is not an Ethereum address (40 hex digits, 0x optional)."""
    if not isinstance(value, str) or _SHAPE.fullmatch(value) is None:
        return None
    from eth_utils import is_address, to_checksum_address

    if not is_address(value):
        return None
    return str(to_checksum_address(value))
