"""EIP-712 signatures over contributions: (datanet, content root, license, nonce) under a chain-bound domain."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from tally.config.errors import TallyError
from tally.identity.addresses import NOT_AN_ADDRESS, checksum_address
from tally.identity.tables import UsedNonce

DOMAIN_NAME = "Tally"
DOMAIN_VERSION = "1"
MAX_UINT256 = 2**256 - 1


class SignatureError(TallyError, ValueError):
    """A signature is malformed or was made by someone else (invalid), or was already used (conflict)."""


def contribution_typed_data(datanet: str, content_root: str, license: str, nonce: int, chain_id: int) -> dict[str, Any]:
    if not 0 <= nonce <= MAX_UINT256:
        raise SignatureError("nonce must be a uint256")
    root = content_root.removeprefix("0x")
    if len(root) != 64:
        raise SignatureError("content root must be 32 bytes of hex")
    return {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
            ],
            "Contribution": [
                {"name": "datanet", "type": "string"},
                {"name": "contentRoot", "type": "bytes32"},
                {"name": "license", "type": "string"},
                {"name": "nonce", "type": "uint256"},
            ],
        },
        "primaryType": "Contribution",
        "domain": {"name": DOMAIN_NAME, "version": DOMAIN_VERSION, "chainId": chain_id},
        "message": {"datanet": datanet, "contentRoot": "0x" + root, "license": license, "nonce": nonce},
    }


def sign_contribution(private_key: str, **fields: Any) -> str:
    from eth_account import Account as EthAccount  # slow to import: paid only by commands that sign or verify
    from eth_account.messages import encode_typed_data

    signed = EthAccount.sign_message(encode_typed_data(full_message=contribution_typed_data(**fields)), private_key)
    return "0x" + signed.signature.hex().removeprefix("0x")


def recover_contribution_signer(signature: str, **fields: Any) -> str:
    from eth_account import Account as EthAccount
    from eth_account.messages import encode_typed_data

    try:
        raw = bytes.fromhex(signature.removeprefix("0x"))
    except ValueError as exc:
        raise SignatureError("signature is not hex") from exc
    if len(raw) != 65:
        raise SignatureError(f"signature is {len(raw)} bytes; an EIP-712 signature is 65")
    try:
        return EthAccount.recover_message(
            encode_typed_data(full_message=contribution_typed_data(**fields)), signature=raw
        )
    except Exception as exc:  # eth-keys raises several types for invalid curve points
        raise SignatureError(f"signature does not recover to an address: {exc}") from exc


def consume_nonce(session: Session, address: str, nonce: int) -> None:
    """Record a signer's nonce as used, inside the caller's transaction; a second use is refused."""
    signer = checksum_address(address)
    if signer is None:
        raise SignatureError(f"signer {address!r} {NOT_AN_ADDRESS}")
    key = (signer, str(nonce))
    if session.get(UsedNonce, key) is not None:
        raise SignatureError(
            f"nonce {nonce} of {key[0]} was already used (replayed signature)", kind="conflict", param="nonce"
        )
    session.add(UsedNonce(address=key[0], nonce=key[1]))
    session.flush()
