"""The anvil launcher: a real anvil answers JSON-RPC, takes a signed transaction, and stops."""

from __future__ import annotations

from pathlib import Path

import pytest
from eth_account import Account
from web3 import Web3

from tally.chain.anvil import ANVIL_DEV_ADDRESS, ANVIL_DEV_KEY, AnvilError, AnvilNode, find_anvil


def test_anvil_is_installed() -> None:
    """Not skipped when absent: `npm ci` (run by `make test`) installs it, and the chain tests need it."""
    path = find_anvil()
    assert path.exists(), f"{path} is missing: run `npm ci`"


def test_dev_key_is_account_zero() -> None:
    assert Account.from_key(ANVIL_DEV_KEY).address == ANVIL_DEV_ADDRESS


def test_start_send_and_stop(anvil_node: AnvilNode) -> None:
    w3 = Web3(Web3.HTTPProvider(anvil_node.url))
    assert w3.eth.chain_id == 31337
    assert w3.eth.block_number == 0
    dev = Account.from_key(ANVIL_DEV_KEY)
    to = Account.create().address
    signed = dev.sign_transaction(
        {
            "chainId": 31337,
            "nonce": w3.eth.get_transaction_count(dev.address, "pending"),
            "to": to,
            "value": 12345,
            "gas": 21_000,
            "maxFeePerGas": 2 * int(w3.eth.get_block("latest")["baseFeePerGas"]) + w3.eth.max_priority_fee,
            "maxPriorityFeePerGas": w3.eth.max_priority_fee,
        }
    )
    receipt = w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(signed.raw_transaction), timeout=10)
    assert receipt["status"] == 1
    assert w3.eth.get_balance(to) == 12345
    assert w3.eth.block_number == 1
    url = anvil_node.url
    anvil_node.stop()
    assert not anvil_node.running
    with pytest.raises(AnvilError):
        anvil_node.url  # noqa: B018
    with pytest.raises(Exception):  # noqa: B017  # nothing listens there any more
        Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": 2})).eth.block_number  # noqa: B018


def test_other_chain_id_and_state_file(tmp_path: Path) -> None:
    state = tmp_path / "anvil-state.json"
    dev = Account.from_key(ANVIL_DEV_KEY)
    to = Account.create().address
    with AnvilNode(chain_id=4242, state=state) as node:
        w3 = Web3(Web3.HTTPProvider(node.url))
        assert w3.eth.chain_id == 4242
        signed = dev.sign_transaction(
            {"chainId": 4242, "nonce": 0, "to": to, "value": 7, "gas": 21_000, "gasPrice": w3.eth.gas_price}
        )
        w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(signed.raw_transaction), timeout=10)
    assert state.exists()  # written when anvil stopped
    with AnvilNode(chain_id=4242, state=state) as node:
        w3 = Web3(Web3.HTTPProvider(node.url))
        assert w3.eth.get_balance(to) == 7
        assert w3.eth.get_transaction_count(dev.address) == 1


def test_missing_binary_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TALLY_ANVIL", str(tmp_path / "no-such-anvil"))
    with pytest.raises(AnvilError, match="TALLY_ANVIL"):
        find_anvil()


def test_failed_start_names_the_command(tmp_path: Path) -> None:
    fake = tmp_path / "anvil"
    fake.write_text("#!/bin/sh\necho 'cannot start: broken on purpose' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(AnvilError) as caught:
        AnvilNode(binary=fake, start_timeout=5).start()
    assert str(fake) in str(caught.value)
    assert "broken on purpose" in str(caught.value)
