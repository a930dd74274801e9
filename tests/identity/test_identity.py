"""Accounts, API keys and EIP-712 contribution signatures."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from tally.identity import (
    AccountError,
    AuthError,
    Principal,
    SignatureError,
    authenticate,
    consume_nonce,
    create_account,
    create_api_key,
    load_local_key,
    recover_contribution_signer,
    revoke_api_key,
    sign_contribution,
)
from tally.identity.tables import ApiKeyRow
from tally.ledger import Ledger, decode_entry

FIELDS = {"datanet": "med-qa", "content_root": "ab" * 32, "license": "CC-BY-4.0", "nonce": 7, "chain_id": 31337}


def test_accounts_get_a_key_pair_kept_at_mode_0600_and_a_ledger_entry(ledger: Ledger, tmp_path: Path) -> None:
    with ledger.store.transaction() as s:
        account, key = create_account(s, ledger, "alice", ["contributor"], keys_dir=tmp_path)
    assert key and account.address.startswith("0x") and account.roles == {"contributor"}
    path = tmp_path / f"{account.address}.key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_local_key(tmp_path, account.address) == key
    entry = decode_entry(ledger.entry(ledger.size() - 1))
    assert entry.type == "identity.account_created" and entry.payload["address"] == account.address


def test_account_input_errors(ledger: Ledger) -> None:
    with ledger.store.transaction() as s:
        create_account(s, ledger, "bob", ["owner"])
    cases = [
        ("Bob!", ["owner"], None, "must be 1-64"),
        ("carol", ["wizard"], None, "unknown role 'wizard'"),
        ("carol", ["owner"], "0x123", "not an Ethereum address"),
        ("bob", ["owner"], None, "already exists"),
    ]
    for name, roles, address, message in cases:
        with pytest.raises(AccountError, match=message), ledger.store.transaction() as s:
            create_account(s, ledger, name, roles, address=address)


def test_keys_authenticate_until_revoked_or_expired(ledger: Ledger) -> None:
    with ledger.store.transaction() as s:
        account, _ = create_account(s, ledger, "dev", ["developer", "consumer"])
        key, token = create_api_key(s, ledger, account, roles=["consumer"])
        _, forever = create_api_key(s, ledger, account)
        _, short = create_api_key(s, ledger, account, expires_in=timedelta(days=1))
        stored = s.get(ApiKeyRow, key.key_id)
        assert stored is not None and token.split("_")[2].encode() not in stored.secret_hash
    with ledger.store.read() as s:
        who = authenticate(s, token)
        assert who.address == account.address and who.roles == {"consumer"}
        assert authenticate(s, forever).roles == {"developer", "consumer"}
        with pytest.raises(AuthError, match="invalid API key"):
            authenticate(s, token[:-2] + "xx")
        with pytest.raises(AuthError, match="malformed"):
            authenticate(s, "sk-123")
    with ledger.store.transaction() as s:
        revoke_api_key(s, ledger, key.key_id, by=Principal.of(account))
        s.get(ApiKeyRow, short.split("_")[1]).expires_at = "2000-01-01T00:00:00.000000Z"
    with ledger.store.read() as s:
        with pytest.raises(AuthError, match="revoked"):
            authenticate(s, token)
        with pytest.raises(AuthError, match="expired"):
            authenticate(s, short)
    with pytest.raises(AccountError, match="does not hold role 'admin'"), ledger.store.transaction() as s:
        create_api_key(s, ledger, account, roles=["admin"])


def test_eip712_signatures_recover_the_signer_and_bind_every_field() -> None:
    from eth_account import Account

    acct = Account.create()
    sig = sign_contribution(acct.key.hex(), **FIELDS)
    assert recover_contribution_signer(sig, **FIELDS) == acct.address
    for field, value in [
        ("datanet", "other"),
        ("content_root", "cd" * 32),
        ("license", "MIT"),
        ("nonce", 8),
        ("chain_id", 1),
    ]:
        assert recover_contribution_signer(sig, **{**FIELDS, field: value}) != acct.address
    with pytest.raises(SignatureError, match="65"):
        recover_contribution_signer("0x1234", **FIELDS)


def test_nonces_are_single_use(ledger: Ledger) -> None:
    with ledger.store.transaction() as s:
        consume_nonce(s, "0x" + "11" * 20, 5)
    with pytest.raises(SignatureError, match="already used"), ledger.store.transaction() as s:
        consume_nonce(s, "0x" + "11" * 20, 5)


def test_an_account_holds_a_bounded_number_of_live_keys(ledger: Ledger) -> None:
    """Rate limits are per key: minting keys must not multiply them."""
    from tally.identity.keys import MAX_LIVE_KEYS

    with ledger.store.transaction() as s:
        account, _ = create_account(s, ledger, "minter", ["consumer"])
        keys = [create_api_key(s, ledger, account)[0] for _ in range(MAX_LIVE_KEYS)]
        with pytest.raises(AccountError, match="revoke one first") as full:
            create_api_key(s, ledger, account)
        assert full.value.kind == "limit"
        revoke_api_key(s, ledger, keys[0].key_id, by=Principal.of(account))
        create_api_key(s, ledger, account)  # a revoked key frees its place
