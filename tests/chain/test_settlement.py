"""Rewards settled on chain and claimed with contributors' own keys, on the embedded EVM and on anvil."""

from __future__ import annotations

import json

import pytest
from eth_account import Account
from eth_tester.exceptions import TransactionFailed
from tests.rewards.conftest import make_record
from typer.testing import CliRunner
from web3.exceptions import ContractCustomError

from tally.chain import Chain, ChainError, claim_payout, onchain_balance, settle_epoch
from tally.chain.client import revert_reason
from tally.chain.settle import DISTRIBUTOR, claim_arguments
from tally.cli.main import app
from tally.config import Settings
from tally.ledger import open_ledger
from tally.rewards import DEFAULT_POLICY, accrue, close_epoch, payout_proof
from tally.store import open_store

runner = CliRunner()
ALICE, BOB = Account.create(), Account.create()


def closed_epoch(settings: Settings, *inferences: str) -> int:
    store = open_store(settings)
    ledger = open_ledger(settings, store)
    with store.transaction() as s:
        for i in inferences:
            accrue(s, ledger, make_record(i, {ALICE.address: 0.75, BOB.address: 0.25}), DEFAULT_POLICY)
    with store.transaction() as s:
        number = close_epoch(s, ledger).number
    store.dispose()
    return number


def gas_money(chain: Chain) -> None:
    """On anvil, claimants get ETH for gas as on a real chain they would bring their own (the embedded chain's
    operator tops up a claimant with none)."""
    if not chain.embedded:
        with chain.connect() as w3:
            for who in (ALICE, BOB):
                w3.provider.make_request("anvil_setBalance", [who.address, hex(10**18)])  # type: ignore[arg-type]


def test_settle_and_claim_with_the_python_proof(chain_settings: Settings) -> None:
    epoch = closed_epoch(chain_settings, "a-1", "a-2")
    store = open_store(chain_settings)
    chain = Chain(chain_settings, store)
    gas_money(chain)
    with pytest.raises(ChainError, match="not settled on chain yet"):
        claim_payout(chain, ALICE, epoch)
    settled = settle_epoch(chain, epoch)
    assert settled.tx_hash is not None and settled.accounts >= 2
    assert settle_epoch(chain, epoch).tx_hash is None  # settling twice sends nothing

    with store.read() as s:
        alice, bob = payout_proof(s, ALICE.address, epoch), payout_proof(s, BOB.address, epoch)
    claimed = claim_payout(chain, ALICE, epoch)
    assert claimed.tx_hash is not None and claimed.balance == alice.amount
    assert claim_payout(chain, ALICE, epoch).tx_hash is None  # already claimed: nothing sent

    # Straight to the contract, as a hostile claimant would: every bad claim reverts.
    with chain.connect() as w3:
        distributor = chain.contract(w3, DISTRIBUTOR)
        _, index, account, amount, proof = claim_arguments(bob)
        bad = {
            "AlreadyClaimed": claim_arguments(alice),  # a double claim
            "InvalidProof": (epoch, index, ALICE.address, amount, proof),  # Bob's proof for Alice's address
            "InvalidProof ": (epoch, index, account, amount + 1, proof),  # a larger amount
            "InvalidProof  ": (epoch, index, account, amount, [bytes(32), *proof[1:]]),  # a wrong proof
        }
        for error, args in bad.items():
            with pytest.raises((ContractCustomError, TransactionFailed)) as reverted:
                distributor.functions.claim(*args).call({"from": ALICE.address})
            assert revert_reason(reverted.value).startswith(error.strip() + "("), error
        # the good one, submitted by anyone, pays the account in the proof
        distributor.functions.claim(*claim_arguments(bob)).call({"from": ALICE.address})

    balance = onchain_balance(chain, BOB.address)
    assert balance.balance == 0 and balance.unclaimed == [{"epoch": epoch, "amount": str(bob.amount), "settled": True}]
    store.dispose()


def test_cli_settle_claim_and_balance(chain_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    epoch = closed_epoch(chain_settings, "c-1")
    store = open_store(chain_settings)
    gas_money(Chain(chain_settings, store))
    store.dispose()
    code = runner.invoke(app, ["rewards", "balance", BOB.address])
    assert code.exit_code == 0 and "not yet settled on chain" in code.output, code.output
    result = runner.invoke(app, ["rewards", "settle", str(epoch)])
    assert result.exit_code == 0 and f"epoch {epoch} settled" in result.output, result.output
    proof = json.loads(runner.invoke(app, ["rewards", "proof", BOB.address]).output)
    monkeypatch.setenv("BOB_KEY", BOB.key.hex())
    result = runner.invoke(app, ["rewards", "claim", BOB.address, "--key-env", "BOB_KEY"])
    assert result.exit_code == 0 and f"claimed {proof['amount']}" in result.output, result.output
    monkeypatch.setenv("ALICE_KEY", ALICE.key.hex())
    result = runner.invoke(app, ["rewards", "claim", BOB.address, "--key-env", "ALICE_KEY"])
    assert result.exit_code == 1 and "claimed with its own key" in result.output
    result = runner.invoke(app, ["rewards", "balance", BOB.address, "--json"])
    assert result.exit_code == 0
    assert json.loads(result.output)["balance"] == proof["amount"]
    assert json.loads(result.output)["claimed"] == [epoch]
