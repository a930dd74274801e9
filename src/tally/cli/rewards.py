"""`tally rewards policy|statement|balances|proof|credit|credits|settle|claim|balance|epoch close|epoch list`.

Mount in tally.cli.main:
    app.add_typer(rewards.app, name="rewards")
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from tally.cli.common import cli_errors, console, fail, load_cli_settings, opened_ledger

if TYPE_CHECKING:
    from tally.rewards import Credit

app = typer.Typer(
    help="Rewards: the fee policy, contributor statements, epochs and payout proofs.", no_args_is_help=True
)
epoch_app = typer.Typer(help="Payout epochs: close one, list them.", no_args_is_help=True)
app.add_typer(epoch_app, name="epoch")
JSON = typer.Option(False, "--json", help="print JSON instead of a table")


ACCOUNT = typer.Argument(..., metavar="ACCOUNT", help="an address, or the name of an account registered here")


def _address(session: object, who: str) -> str:
    """Earnings belong to addresses (many have no account here); a registered account's name works too."""
    from tally.identity import resolve_account
    from tally.identity.addresses import checksum_address

    return checksum_address(who) or resolve_account(session, who).address  # type: ignore[arg-type]


def _units(symbol: str, decimals: int) -> str:
    return f"amounts in base units: 1 {symbol} = 10^{decimals}"


@app.command("policy")
def policy_cmd() -> None:
    """Show the effective fee policy (the configured file, or the built-in one) and its hash."""
    from tally.rewards import effective_policy

    with cli_errors():
        policy, source = effective_policy(load_cli_settings())
    console.print_json(
        json.dumps({"source": source, "hash": policy.digest(), "policy": policy.model_dump(mode="json")})
    )


@app.command("statement")
def statement_cmd(address: str = ACCOUNT, as_json: bool = JSON) -> None:
    """A contributor's earnings, answer by answer: role, share, amount, and the epoch that paid it."""
    from tally.rewards import effective_policy, statement

    settings = load_cli_settings()
    with cli_errors(), opened_ledger(settings) as (store, _), store.read() as s:
        st = statement(s, _address(s, address))
        policy, _ = effective_policy(settings)
    if as_json:
        console.print_json(json.dumps(st.as_json()))
        return
    table = Table("inference", "model", "time", "role", "share", "amount", "epoch",
                  title=f"{st.account}", caption=_units(policy.currency.symbol, policy.currency.decimals))  # fmt: skip
    for i in st.items:
        share = "-" if i.share is None else f"{i.share:.4f}"
        table.add_row(i.inference, i.model, i.time, i.role, share, str(i.amount), str(i.epoch or "unpaid"))
    console.print(table)
    console.print(f"accrued {st.accrued}  paid {st.paid}  unpaid {st.unpaid}", highlight=False)
    if st.credit is not None:
        _print_credit(st.credit)


def _print_credit(credit: Credit) -> None:
    table = Table(
        "time", "kind", "amount", "balance", "inference / by", "ledger entry", title=f"credit of {credit.account}"
    )
    for m in credit.moves:
        table.add_row(m.time, m.kind, str(m.amount), str(m.balance), m.inference or m.by or "-", str(m.ledger_seq))
    console.print(table)
    console.print(f"balance {credit.balance}  credited {credit.credited}  charged {credit.charged}", highlight=False)


@app.command("credit")
def credit_cmd(
    account: str = ACCOUNT,
    amount: int = typer.Argument(..., metavar="AMOUNT", help="base units to add (see `tally rewards policy`)"),
) -> None:
    """Add prepaid credit to a requester's account; its answers are charged to it."""
    from tally.rewards import add_credit

    with cli_errors(), opened_ledger() as (store, ledger), store.transaction() as s:
        move = add_credit(s, ledger, _address(s, account), amount, by="cli")
    console.print(f"credited {move.amount}: balance {move.balance} (ledger entry {move.ledger_seq})", highlight=False)


@app.command("credits")
def credits_cmd(account: str = ACCOUNT, as_json: bool = JSON) -> None:
    """A requester's prepaid credit: balance, what was credited and charged, and every move."""
    from tally.rewards import credit_of

    with cli_errors(), opened_ledger() as (store, _), store.read() as s:
        credit = credit_of(s, _address(s, account))
    if as_json:
        console.print_json(json.dumps(credit.as_json()))
        return
    _print_credit(credit)


@app.command("balances")
def balances_cmd(as_json: bool = JSON) -> None:
    """Every credited account's accrued, paid (in a closed epoch) and unpaid totals."""
    from tally.rewards import balances

    with cli_errors(), opened_ledger() as (store, _), store.read() as s:
        rows = balances(s)
    if as_json:
        console.print_json(json.dumps([b.as_json() for b in rows]))
        return
    table = Table("account", "accrued", "paid", "unpaid")
    for b in rows:
        table.add_row(b.account, str(b.accrued), str(b.paid), str(b.unpaid))
    console.print(table)


@app.command("proof")
def proof_cmd(
    address: str = ACCOUNT,
    epoch: int = typer.Option(None, "--epoch", help="epoch number (default: the latest paying this account)"),
) -> None:
    """The payout proof to claim with: index, account, amount, proof and the epoch's root (JSON)."""
    from tally.rewards import payout_proof

    with cli_errors(), opened_ledger() as (store, _), store.read() as s:
        proof = payout_proof(s, _address(s, address), epoch)
    console.print_json(json.dumps(proof.as_json()))


@epoch_app.command("close")
def epoch_close() -> None:
    """Close the next epoch: every unpaid amount goes into one payout Merkle tree whose root is recorded."""
    from tally.rewards import close_epoch

    with cli_errors(), opened_ledger() as (store, ledger), store.transaction() as s:
        epoch = close_epoch(s, ledger, actor="cli")
    console.print(f"epoch {epoch.number} closed: {epoch.accounts} accounts, total {epoch.total}, root {epoch.root}",
                  highlight=False)  # fmt: skip
    console.print(f"ledger entry {epoch.ledger_seq}", highlight=False)


@epoch_app.command("list")
def epoch_list(as_json: bool = JSON) -> None:
    """Closed epochs, oldest first."""
    from tally.rewards import list_epochs

    with cli_errors(), opened_ledger() as (store, _), store.read() as s:
        epochs = list_epochs(s)
    if as_json:
        console.print_json(json.dumps([e.as_json() for e in epochs]))
        return
    table = Table("epoch", "closed", "accounts", "accruals", "total", "root")
    for e in epochs:
        table.add_row(str(e.number), e.created_at, str(e.accounts), str(e.accruals), str(e.total), e.root)
    console.print(table)


@app.command("settle")
def settle_cmd(epoch: int = typer.Argument(..., help="a closed epoch's number (tally rewards epoch list)")) -> None:
    """Post a closed epoch's payout root to the chain's RewardDistributor and fund it with the epoch's total."""
    from tally.chain import Chain, settle_epoch

    settings = load_cli_settings()
    with cli_errors(), opened_ledger(settings) as (store, _):
        done = settle_epoch(Chain(settings, store), epoch)
    if done.tx_hash is None:
        console.print(f"epoch {epoch} was already settled on chain (root {done.root})", highlight=False)
        return
    console.print(f"epoch {epoch} settled: root {done.root}, {done.total} to {done.accounts} accounts, transaction "
                  f"{done.tx_hash} (block {done.block_number}, {done.gas_used} gas)", highlight=False)  # fmt: skip


@app.command("claim")
def claim_cmd(
    address: str = ACCOUNT,
    epoch: int = typer.Option(None, "--epoch", help="epoch number (default: the latest paying this account)"),
    key_env: str = typer.Option(
        None,
        "--key-env",
        help="environment variable holding the claimant's hex private key (default: the key "
        "`tally accounts create` saved for this account)",
    ),
) -> None:
    """Claim a payout on chain with the contributor's own key and the proof `tally rewards proof` shows."""
    import os

    from eth_account import Account as EthAccount

    from tally.chain import Chain, claim_payout
    from tally.identity import load_local_key

    settings = load_cli_settings()
    with cli_errors(), opened_ledger(settings) as (store, _):
        with store.read() as s:
            account = _address(s, address)
        if key_env:
            if not os.environ.get(key_env):
                raise fail(f"--key-env {key_env}: that environment variable is empty or unset")
            key = os.environ[key_env]
        else:
            key = load_local_key(settings.account_keys_dir, account)
        claimant = EthAccount.from_key(key)
        if claimant.address != account:
            raise fail(f"the key is {claimant.address}'s, not {account}'s: a payout is claimed with its own key")
        done = claim_payout(Chain(settings, store), claimant, epoch)
    if done.tx_hash is None:
        console.print(f"epoch {done.epoch}'s payout to {done.account} was already claimed; balance {done.balance}",
                      highlight=False)  # fmt: skip
        return
    console.print(f"claimed {done.amount} for {done.account} from epoch {done.epoch} in transaction {done.tx_hash} "
                  f"({done.gas_used} gas); balance on chain {done.balance}", highlight=False)  # fmt: skip


@app.command("balance")
def balance_cmd(address: str = ACCOUNT, as_json: bool = JSON) -> None:
    """An account's reward-token balance on chain, and which of its payouts are claimed, settled or waiting."""
    from tally.chain import Chain, onchain_balance

    settings = load_cli_settings()
    with cli_errors(), opened_ledger(settings) as (store, _):
        with store.read() as s:
            account = _address(s, address)
        balance = onchain_balance(Chain(settings, store), account)
    if as_json:
        console.print_json(json.dumps(balance.as_json()))
        return
    console.print(f"{balance.account}: {balance.balance} on chain (token {balance.token})", highlight=False)
    for epoch in balance.claimed:
        console.print(f"  epoch {epoch}: claimed", highlight=False)
    for payout in balance.unclaimed:
        state = "settled, claim with `tally rewards claim`" if payout["settled"] else "not yet settled on chain"
        console.print(f"  epoch {payout['epoch']}: {payout['amount']} unclaimed ({state})", highlight=False)
