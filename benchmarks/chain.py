"""Gas and speed of anchoring, settlement and claims, on the embedded EVM and on anvil, in one run.

For each backend, in a fresh data directory: N anchors of a growing log (the first anchor of the log, then the
median of the later ones; wall time of `anchor_head` alone, the appends between anchors are not timed); two epochs
of payouts to `--accounts` contributors, settled (mint + approve + setRoot); claims by accounts that hold no reward
token yet and by accounts that already hold it (they claimed epoch 1, then claim epoch 2), with the proof length.
Ledger entries per attributed answer are measured with `tally.rewards.settle.settle_answer` (the production path)
for an anonymous answer, a requester's answer at the default settings and one charged to its requester's credit;
the amortised gas per answer is a later anchor's gas x entries per answer / `chain.anchor_every_entries`.
Prints one JSON document, then one summary line.

    python benchmarks/chain.py [--anchors 30] [--between 50] [--accounts 50] [--claims 5]
                               [--backend embedded|anvil|both] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak, to_checksum_address
from sqlalchemy import select

from tally.attribution import AttributionRecord, Credits, Share
from tally.chain import Chain, anchor_head, claim_payout, settle_epoch
from tally.chain.anvil import ANVIL_DEV_KEY, AnvilNode, find_anvil, native_binary
from tally.chain.settle import CLAIM_GAS_FUNDING
from tally.chain.tables import TransactionRow
from tally.config import load_settings
from tally.ledger import Event, Ledger, open_ledger
from tally.rewards import DEFAULT_POLICY, accrue, add_credit, close_epoch, payout_proof
from tally.store import Store, open_store

GOALS = {"anchor_gas": 85_000, "claim_gas_existing_holder": 55_000, "amortised_gas_per_answer": 100}
DEVELOPER = to_checksum_address("0x" + "de" * 20)
REQUESTER = to_checksum_address("0x" + "c0" * 20)  # as `Principal.address` gives it


class BenchEntry(Event):
    event_type: ClassVar[str] = "bench.entry"
    n: int


def make_record(inference: str, shares: Mapping[str, float], requested_by: str | None = None) -> AttributionRecord:
    return AttributionRecord(
        id=inference, mode="fast", model="bench-lora", adapter_hash="ab" * 32, prompt_hash="01" * 32,
        answer_hash="02" * 32, prompt_tokens=300, completion_tokens=200, methods={},
        shares=[Share(account=a, share=s) for a, s in shares.items()],
        credits=Credits(developer=DEVELOPER, base_model="smollm2-135m-instruct"), requested_by=requested_by,
        created_at="2026-12-06T10:00:00.000000Z",
    )  # fmt: skip


def claimant(i: int) -> LocalAccount:
    return Account.from_key(keccak(text=f"tally-benchmark-claimant-{i}"))


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem = round(int(line.split()[1]) / 2**20, 1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"cpu": model, "arch": platform.machine(), "cores": os.cpu_count(), "memory_gib": mem,
            "load_average_1m_at_start": round(load, 2) if load is not None else None}  # fmt: skip


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("py-evm", "eth-tester", "web3"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[package] = importlib.metadata.version(package)
    with contextlib.suppress(Exception):
        done = subprocess.run([str(native_binary(find_anvil())), "--version"], capture_output=True, text=True,
                              timeout=30)  # fmt: skip
        found["anvil"] = done.stdout.strip().splitlines()[0]
    return found


# -- ledger entries per attributed answer ---------------------------------------------------------------------
def entries_per_answer(workdir: Path) -> tuple[dict[str, int], dict[str, list[str]]]:
    """How many ledger entries one attributed answer adds, measured through `settle_answer` (record + event, the
    requester's charge, the accrual, in one transaction) for the three kinds of answer."""
    from tally.attribution.service import Attributed
    from tally.rewards.settle import settle_answer

    settings = load_settings(data_dir=workdir / "entries", chain={"enabled": False})
    store = open_store(settings)
    ledger = open_ledger(settings, store)
    with store.transaction() as s:
        add_credit(s, ledger, REQUESTER, 10**9, by="bench")
    shares: dict[str, float] = {claimant(0).address: 0.75, claimant(1).address: 0.25}
    cases = {
        "anonymous": (None, False),
        "requester_default_settings": (REQUESTER, False),
        "requester_charged": (REQUESTER, True),  # rewards.charge_requesters = true (a public deployment)
    }
    counts, kinds = {}, {}
    for name, (requester, charged) in cases.items():
        before = ledger.size()
        attributed = Attributed(make_record(f"entries-{name}", shares, requester), [])
        settle_answer(ledger, attributed, DEFAULT_POLICY, actor="bench", charge_requester=charged)
        counts[name] = ledger.size() - before
        kinds[name] = [json.loads(e)["type"] for e in ledger.entries(before, counts[name])]
    store.dispose()
    return counts, kinds


# -- one backend ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def backend(name: str, workdir: Path) -> Iterator[tuple[Store, Ledger, Chain]]:
    """A fresh data directory with the chain on: the embedded EVM in it, or a fresh anvil node deployed to and
    configured by address, as the operator of a JSON-RPC chain does."""
    data_dir = workdir / name
    if name == "embedded":
        settings = load_settings(data_dir=data_dir, chain={"enabled": True})
        store = open_store(settings)
        chain = Chain(settings, store)
        with chain.connect() as w3:
            chain.deploy(w3)  # the embedded chain deploys on first use: do it before anything is timed
        try:
            yield store, open_ledger(settings, store), chain
        finally:
            store.dispose()
        return
    previous_key = os.environ.get("TALLY_CHAIN_PRIVATE_KEY")
    os.environ["TALLY_CHAIN_PRIVATE_KEY"] = ANVIL_DEV_KEY
    try:
        with AnvilNode() as node:
            first = load_settings(data_dir=data_dir, chain={"enabled": True, "url": node.url})
            store = open_store(first)
            with Chain(first, store).connect() as w3:
                addresses = Chain(first, store).deploy(w3)
            settings = load_settings(data_dir=data_dir, chain={
                "enabled": True, "url": node.url, "anchor_address": addresses["LedgerAnchor"],
                "token_address": addresses["RewardToken"], "distributor_address": addresses["RewardDistributor"],
                "verifier_address": addresses["ContributionVerifier"],
            })  # fmt: skip
            try:
                yield store, open_ledger(settings, store), Chain(settings, store)
            finally:
                store.dispose()
    finally:
        if previous_key is None:
            os.environ.pop("TALLY_CHAIN_PRIVATE_KEY", None)
        else:
            os.environ["TALLY_CHAIN_PRIVATE_KEY"] = previous_key


def append_entries(ledger: Ledger, count: int) -> None:
    start = ledger.size()
    with ledger.store.transaction() as s:
        ledger.append_batch(s, [(BenchEntry(n=start + i), "bench") for i in range(count)])


def measure_anchors(ledger: Ledger, chain: Chain, anchors: int, between: int) -> dict[str, Any]:
    gas, wall = [], []
    sizes_added_by_anchoring = 0
    for _ in range(anchors):
        append_entries(ledger, between)
        before = ledger.size()
        t = time.perf_counter()
        outcome = anchor_head(chain, ledger)
        wall.append(time.perf_counter() - t)
        sizes_added_by_anchoring += ledger.size() - before
        assert outcome.anchor is not None and outcome.anchor.gas_used is not None
        gas.append(outcome.anchor.gas_used)
    later = gas[1:] or gas
    return {
        "anchors": anchors,
        "entries_between_anchors": between,
        "log_size_at_end": ledger.size(),
        "gas_first": gas[0],
        "gas_later_median": int(statistics.median(later)),
        "gas_later_min_max": [min(later), max(later)],
        "wall_ms_median": round(statistics.median(wall) * 1e3, 2),
        "wall_ms_first": round(wall[0] * 1e3, 2),
        "anchors_per_s": round(anchors / sum(wall), 2),
        "ledger_entries_added_by_anchoring": sizes_added_by_anchoring,
    }


def close_paid_epoch(store: Store, ledger: Ledger, accounts: Sequence[str], tag: str) -> int:
    """One answer per account, its data share all to that account; then close the epoch over them."""
    with store.transaction() as s:
        for i, account in enumerate(accounts):
            accrue(s, ledger, make_record(f"{tag}-{i}", {account: 1.0}), DEFAULT_POLICY, actor="bench")
        return close_epoch(s, ledger, actor="bench").number


def transaction_gas(chain: Chain, purpose: str) -> int | None:
    with chain.store.read() as s:
        row = s.execute(
            select(TransactionRow.gas_used).where(TransactionRow.purpose == purpose, TransactionRow.status == "mined")
        ).first()  # fmt: skip
    return int(row[0]) if row is not None and row[0] is not None else None


def settle(chain: Chain, epoch: int) -> dict[str, Any]:
    t = time.perf_counter()
    settled = settle_epoch(chain, epoch)
    wall = time.perf_counter() - t
    parts = {"mint": transaction_gas(chain, f"mint:{epoch}"), "approve": transaction_gas(chain, f"approve:{epoch}"),
             "set_root": settled.gas_used}  # fmt: skip
    return (
        {"epoch": epoch, "accounts_in_tree": settled.accounts, "total": str(settled.total)}
        | {f"gas_{k}": v for k, v in parts.items()}
        | {"gas_total": sum(v or 0 for v in parts.values()), "wall_ms": round(wall * 1e3, 1)}
    )


def fund(chain: Chain, addresses: Sequence[str]) -> None:
    """ETH for the claimants' gas, from the operator (a plain transfer each, not measured; on the embedded chain
    `claim_payout` would otherwise do it inside the claim's wall time)."""
    operator = chain.operator()
    with chain.connect() as w3:
        nonce = w3.eth.get_transaction_count(operator.address, "pending")
        for k, address in enumerate(addresses):
            tx: Any = {"to": address, "value": CLAIM_GAS_FUNDING, "nonce": nonce + k, "gas": 21_000,
                       "chainId": chain.settings.chain_id, "maxFeePerGas": 2 * w3.eth.gas_price + 10**9,
                       "maxPriorityFeePerGas": 10**9}  # fmt: skip
            w3.eth.wait_for_transaction_receipt(
                w3.eth.send_raw_transaction(operator.sign_transaction(tx).raw_transaction)
            )


def claim(chain: Chain, who: LocalAccount, epoch: int) -> tuple[int, int, float]:
    with chain.store.read() as s:
        proof_len = len(payout_proof(s, who.address, epoch).proof)
    t = time.perf_counter()
    done = claim_payout(chain, who, epoch)
    wall = time.perf_counter() - t
    assert done.gas_used is not None and done.balance > 0
    return done.gas_used, proof_len, wall


def measure_settlement(store: Store, ledger: Ledger, chain: Chain, n_accounts: int, n_claims: int) -> dict[str, Any]:
    people = [claimant(i) for i in range(n_accounts)]
    addresses = [p.address for p in people]
    fund(chain, addresses[: 2 * n_claims])
    epoch1 = close_paid_epoch(store, ledger, addresses, "epoch1")
    settle1 = settle(chain, epoch1)
    epoch2 = close_paid_epoch(store, ledger, addresses, "epoch2")
    settle2 = settle(chain, epoch2)

    holders, fresh = people[:n_claims], people[n_claims : 2 * n_claims]
    first = [claim(chain, p, epoch1) for p in holders]  # epoch 1: none holds the token yet
    existing, fresh2 = [], []
    for h, f in zip(holders, fresh, strict=True):  # epoch 2, alternating: holders of epoch 1's payout, newcomers
        existing.append(claim(chain, h, epoch2))
        fresh2.append(claim(chain, f, epoch2))

    def summary(rows: list[tuple[int, int, float]]) -> dict[str, Any]:
        gas = [g for g, _, _ in rows]
        return {"claims": len(rows), "gas_median": int(statistics.median(gas)), "gas_min_max": [min(gas), max(gas)],
                "proof_lengths": sorted({p for _, p, _ in rows}),
                "wall_ms_median": round(statistics.median(w for _, _, w in rows) * 1e3, 2)}  # fmt: skip

    return {
        "settle": [settle1, settle2],
        "claim_fresh_holder_epoch1": summary(first),
        "claim_fresh_holder_epoch2": summary(fresh2),
        "claim_existing_holder_epoch2": summary(existing),
    }


def run_backend(name: str, workdir: Path, args: argparse.Namespace, per_answer: dict[str, int]) -> dict[str, Any]:
    with backend(name, workdir) as (store, ledger, chain):
        anchors = measure_anchors(ledger, chain, args.anchors, args.between)
        settlement = measure_settlement(store, ledger, chain, args.accounts, args.claims)
        every = chain.config.anchor_every_entries
    amortised = {case: round(anchors["gas_later_median"] * entries / every, 1) for case, entries in per_answer.items()}
    return {"anchor": anchors, **settlement, "anchor_every_entries": every,
            "amortised_gas_per_answer": amortised}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--anchors", type=int, default=30, help="anchors of the growing log, per backend")
    parser.add_argument("--between", type=int, default=50, help="new ledger entries before each anchor")
    parser.add_argument("--accounts", type=int, default=50, help="contributors paid in each epoch")
    parser.add_argument("--claims", type=int, default=5, help="claims of each kind")
    parser.add_argument("--backend", choices=["embedded", "anvil", "both"], default="both")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    if args.anchors < 2 or args.between < 1 or args.claims < 1 or args.accounts < 2 * args.claims:
        parser.error("need --anchors >= 2, --between >= 1, --claims >= 1 and --accounts >= 2 x --claims")
    names = ["embedded", "anvil"] if args.backend == "both" else [args.backend]

    results: dict[str, Any] = {"meta": {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(), "versions": versions(),
    }}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        per_answer, kinds = entries_per_answer(Path(tmp))
        results["ledger_entries_per_attributed_answer"] = per_answer
        results["ledger_entry_types_per_attributed_answer"] = kinds
        results["backends"] = {name: run_backend(name, Path(tmp), args, per_answer) for name in names}
    results["goals"] = GOALS
    print(json.dumps(results, indent=2))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")

    parts = []
    for name, r in results["backends"].items():
        a, s = r["anchor"], r["settle"][0]
        am = r["amortised_gas_per_answer"]
        parts.append(
            f"{name}: anchor {a['gas_first']:,} first / {a['gas_later_median']:,} later gas (goal <= 85,000), "
            f"{a['anchors_per_s']:.1f} anchors/s; settle {s['gas_total']:,} gas for {s['accounts_in_tree']} accounts; "
            f"claim {r['claim_existing_holder_epoch2']['gas_median']:,} gas by a holder (goal <= 55,000), "
            f"{r['claim_fresh_holder_epoch2']['gas_median']:,} by a first-time holder, proof "
            f"{r['claim_existing_holder_epoch2']['proof_lengths']}; per answer "
            f"{am['requester_default_settings']} gas ({per_answer['requester_default_settings']} entries), "
            f"{am['requester_charged']} charged ({per_answer['requester_charged']} entries) (goal <= 100)"
        )
    print("chain: " + " | ".join(parts))


if __name__ == "__main__":
    main()
