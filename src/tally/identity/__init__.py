"""Accounts, API keys, roles, and EIP-712 signing and verification."""

from tally.identity.accounts import (
    ROLES,
    Account,
    AccountError,
    create_account,
    get_account,
    list_accounts,
    load_local_key,
    resolve_account,
)
from tally.identity.addresses import NOT_AN_ADDRESS, checksum_address
from tally.identity.keys import (
    MAX_KEY_DAYS,
    ApiKey,
    AuthError,
    Principal,
    authenticate,
    create_api_key,
    list_api_keys,
    principal_of_key,
    revoke_api_key,
)
from tally.identity.signing import (
    SignatureError,
    consume_nonce,
    contribution_typed_data,
    recover_contribution_signer,
    sign_contribution,
)

__all__ = [
    "MAX_KEY_DAYS",
    "NOT_AN_ADDRESS",
    "ROLES",
    "Account",
    "AccountError",
    "ApiKey",
    "AuthError",
    "Principal",
    "SignatureError",
    "authenticate",
    "checksum_address",
    "consume_nonce",
    "contribution_typed_data",
    "create_account",
    "create_api_key",
    "get_account",
    "list_accounts",
    "list_api_keys",
    "load_local_key",
    "principal_of_key",
    "recover_contribution_signer",
    "resolve_account",
    "revoke_api_key",
    "sign_contribution",
]
