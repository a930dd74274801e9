"""The Solidity contracts: the committed artifacts are what the pinned compiler makes of the sources, and each
contract behaves (and costs) as the Python side expects, on an in-memory py-evm chain."""

from __future__ import annotations

import ast
import hashlib
import shutil
import subprocess
from pathlib import Path
from typing import Any, ClassVar

import pytest
from eth_abi import encode
from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_tester.exceptions import TransactionFailed
from eth_utils import keccak
from web3 import EthereumTesterProvider, Web3

from tally.chain.contracts import (
    ARTIFACTS,
    CONTRACT_NAMES,
    CONTRIBUTION_VERIFIER,
    LEDGER_ANCHOR,
    REWARD_DISTRIBUTOR,
    REWARD_TOKEN,
    load_artifact,
)
from tally.identity.signing import contribution_typed_data, sign_contribution
from tally.ledger import Event, Ledger, merkle
from tally.rewards.merkle import payout_tree

ROOT = Path(__file__).resolve().parents[2]
ANCHOR_GAS_LIMIT = 85_000
CLAIM_GAS_LIMIT = 55_000

# ---- helpers -------------------------------------------------------------------------------------------------


@pytest.fixture
def w3() -> Web3:
    return Web3(EthereumTesterProvider())


def deploy(w3: Web3, name: str, *args: Any) -> Any:
    artifact = load_artifact(name)
    factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    receipt = w3.eth.wait_for_transaction_receipt(factory.constructor(*args).transact({"from": w3.eth.accounts[0]}))
    return w3.eth.contract(address=receipt["contractAddress"], abi=artifact["abi"])


def send(w3: Web3, call: Any, sender: str) -> int:
    """Send a transaction; its gas used."""
    receipt = w3.eth.wait_for_transaction_receipt(call.transact({"from": sender}))
    assert receipt["status"] == 1
    return int(receipt["gasUsed"])


def error_data(signature: str, types: list[str] | None = None, values: list[Any] | None = None) -> bytes:
    return keccak(text=signature)[:4] + (encode(types, values or []) if types else b"")


def reverts_with(expected: bytes, function_call: Any, tx: dict[str, Any] | None = None, *, view: bool = False) -> None:
    """Sending (or, for a view, calling) `function_call` reverts with exactly the ABI-encoded custom error
    `expected`."""
    with pytest.raises(TransactionFailed) as info:
        function_call.call(tx or {}) if view else function_call.transact(tx or {})
    message = str(info.value.args[0]) if info.value.args else str(info.value)
    prefix = "execution reverted: "
    assert message.startswith(prefix), message
    assert ast.literal_eval(message[len(prefix) :]) == expected


# ---- artifacts -----------------------------------------------------------------------------------------------


def test_artifacts_are_what_the_pinned_compiler_makes_of_the_sources(tmp_path: Path) -> None:
    node = shutil.which("node")
    assert node is not None, "node is not installed: install Node.js to recompile the contracts"
    assert (ROOT / "node_modules" / "solc").is_dir(), (
        "node_modules is missing: run `npm ci` in the repository root (`make test` installs it)"
    )
    subprocess.run([node, "contracts/compile.mjs", "--out", str(tmp_path)], cwd=ROOT, check=True, capture_output=True)
    committed = sorted(p.name for p in ARTIFACTS.glob("*.json"))
    assert sorted(p.name for p in tmp_path.glob("*.json")) == committed == sorted(f"{n}.json" for n in CONTRACT_NAMES)
    for name in committed:
        assert (tmp_path / name).read_bytes() == (ARTIFACTS / name).read_bytes(), (
            f"{name} differs from a fresh compile: run `node contracts/compile.mjs` and commit the artifacts"
        )


def test_artifacts_record_how_they_were_built() -> None:
    for name in CONTRACT_NAMES:
        artifact = load_artifact(name)
        assert list(artifact) == [
            "contractName", "abi", "bytecode", "deployedBytecode", "compiler", "settings", "sourceHashes"
        ]  # fmt: skip
        assert artifact["contractName"] == name
        assert artifact["bytecode"].startswith("0x") and len(artifact["bytecode"]) > 2
        assert artifact["settings"]["evmVersion"] == "cancun"
        source = f"contracts/{name}.sol"
        assert artifact["sourceHashes"][source] == hashlib.sha256((ROOT / source).read_bytes()).hexdigest()
    with pytest.raises(ValueError, match="unknown contract"):
        load_artifact("Nope")


# ---- LedgerAnchor --------------------------------------------------------------------------------------------


def rfc9162_proof(leaves: list[bytes], index: int) -> list[bytes]:
    """PATH(index, D[0:n]) of RFC 9162 section 2.1.3.1, from the reference ranges and the reference root."""
    return [merkle.root_of(leaves[a:b]) for a, b in merkle.inclusion_ranges(index, len(leaves))]


class ChainTestNote(Event):
    event_type: ClassVar[str] = "test.chain_note"
    text: str


def log_id(origin: str) -> bytes:
    return hashlib.sha256(origin.encode()).digest()


@pytest.fixture
def anchor(w3: Web3) -> Any:
    return deploy(w3, LEDGER_ANCHOR, w3.eth.accounts[0])


def test_anchor_sizes_only_grow_and_only_the_owner_anchors(w3: Web3, anchor: Any) -> None:
    owner, stranger = list(w3.eth.accounts)[:2]
    log = log_id("tally.example/log")
    other = log_id("other.example/log")
    r1, r2, r3 = (hashlib.sha256(bytes([i])).digest() for i in (1, 2, 3))
    assert anchor.functions.latest(log).call() == [0, b"\0" * 32]

    gas = [send(w3, anchor.functions.anchor(log, 5, r1), owner), send(w3, anchor.functions.anchor(log, 9, r2), owner)]
    gas.append(send(w3, anchor.functions.anchor(log, 10, r3), owner))
    print(f"anchor gas: first {gas[0]}, later {gas[1:]}")
    assert max(gas) <= ANCHOR_GAS_LIMIT

    assert anchor.functions.latest(log).call() == [10, r3]
    assert [anchor.functions.rootAt(log, s).call() for s in (5, 9, 10, 7, 0)] == [r1, r2, r3, b"\0" * 32, b"\0" * 32]
    assert anchor.functions.latest(other).call() == [0, b"\0" * 32]

    types = ["bytes32", "uint64", "uint64"]
    sig = "SizeNotIncreasing(bytes32,uint64,uint64)"
    reverts_with(error_data(sig, types, [log, 10, 10]), anchor.functions.anchor(log, 10, r1))
    reverts_with(error_data(sig, types, [log, 10, 6]), anchor.functions.anchor(log, 6, r1))
    reverts_with(error_data(sig, types, [other, 0, 0]), anchor.functions.anchor(other, 0, r1))
    reverts_with(error_data("EmptyRoot()"), anchor.functions.anchor(log, 11, b"\0" * 32))
    reverts_with(
        error_data("OwnableUnauthorizedAccount(address)", ["address"], [stranger]),
        anchor.functions.anchor(log, 11, r1),
        {"from": stranger},
    )
    send(w3, anchor.functions.anchor(other, 1, r1), owner)  # logs are independent
    assert anchor.functions.latest(log).call() == [10, r3]

    events = anchor.events.Anchored().get_logs(from_block=0, argument_filters={"logId": log})
    assert [(e["args"]["size"], e["args"]["root"]) for e in events] == [(5, r1), (9, r2), (10, r3)]


def test_verify_inclusion_accepts_rfc9162_proofs_and_nothing_else(w3: Web3, anchor: Any) -> None:
    owner = w3.eth.accounts[0]
    log = log_id("tally.example/pure")
    leaves = [merkle.leaf_hash(f"entry {i}".encode()) for i in range(23)]
    sizes = [1, 2, 3, 4, 5, 7, 8, 13, 16, 17, 23]
    for size in sizes:
        send(w3, anchor.functions.anchor(log, size, merkle.root_of(leaves[:size])), owner)
    verify = anchor.functions.verifyInclusion
    for size in sizes:
        for index in range(size):
            proof = rfc9162_proof(leaves[:size], index)
            merkle.verify_inclusion(index, size, leaves[index], proof, merkle.root_of(leaves[:size]))  # the reference
            assert verify(log, size, index, leaves[index], proof).call(), (size, index)
            if index not in {0, 1, size // 2, size - 2, size - 1}:
                continue  # the edges and the middle of every tree are enough for the failures
            assert not verify(log, size, index, leaves[index], [*proof, proof[-1] if proof else leaves[0]]).call()
            assert not verify(log, size, index, leaves[(index + 1) % 23], proof).call()
            if proof:
                assert not verify(log, size, index, leaves[index], proof[:-1]).call()
                for k in sorted({0, len(proof) // 2, len(proof) - 1}):
                    flipped = [*proof]
                    flipped[k] = bytes([flipped[k][0] ^ 1]) + flipped[k][1:]
                    assert not verify(log, size, index, leaves[index], flipped).call()
            if size > 1:
                assert not verify(log, size, (index + 1) % size, leaves[index], proof).call()
    proof = rfc9162_proof(leaves[:13], 6)
    assert not verify(log, 14, 6, leaves[6], proof).call()  # no root anchored at 14
    assert not verify(log, 16, 6, leaves[6], proof).call()  # another anchored size
    assert not verify(log, 13, 13, leaves[6], proof).call()  # index outside the tree
    assert not verify(log, 13, 2**256 - 1, leaves[6], proof).call()
    assert not verify(log_id("elsewhere"), 13, 6, leaves[6], proof).call()
    assert not verify(log, 13, 6, leaves[6], proof * 40).call()  # far too long: false, not a revert
    assert not verify(log, 0, 0, leaves[0], []).call()


def test_verify_inclusion_of_proofs_from_the_ledger(w3: Web3, anchor: Any, ledger: Ledger) -> None:
    with ledger.store.transaction() as s:
        ledger.append_batch(s, [(ChainTestNote(text=f"note {i}"), "alice") for i in range(40)])
    size = ledger.size()
    log = log_id(ledger.origin)
    send(w3, anchor.functions.anchor(log, size, ledger.root(size)), w3.eth.accounts[0])
    for index in (0, 1, size // 2, size - 2, size - 1):
        leaf = merkle.leaf_hash(ledger.entry(index))
        assert anchor.functions.verifyInclusion(log, size, index, leaf, ledger.inclusion_proof(index, size)).call()
        if index < 17:  # a real proof, but for another tree size than the anchored one
            other_size = ledger.inclusion_proof(index, 17)
            assert not anchor.functions.verifyInclusion(log, size, index, leaf, other_size).call()


# ---- RewardToken + RewardDistributor -------------------------------------------------------------------------


def test_rewards_are_claimed_once_each_with_the_python_payout_tree(w3: Web3) -> None:
    owner, relayer = list(w3.eth.accounts)[:2]
    token = deploy(w3, REWARD_TOKEN, "Tally Reward", "TLY", 6, owner)
    assert (token.functions.name().call(), token.functions.symbol().call(), token.functions.decimals().call()) == (
        "Tally Reward", "TLY", 6
    )  # fmt: skip
    distributor = deploy(w3, REWARD_DISTRIBUTOR, token.address, owner)
    assert distributor.functions.token().call() == token.address

    payees = [Account.create().address for _ in range(7)]
    amounts = {a: (i + 1) * 10**18 + i for i, a in enumerate(payees)}
    tree = payout_tree(amounts)
    total = sum(amounts.values())
    root = bytes.fromhex(tree.root[2:])
    epoch = 3

    send(w3, token.functions.mint(owner, 10 * total), owner)
    reverts_with(
        error_data("OwnableUnauthorizedAccount(address)", ["address"], [relayer]),
        token.functions.mint(relayer, 1),
        {"from": relayer},
    )
    send(w3, token.functions.approve(distributor.address, total), owner)
    reverts_with(
        error_data("OwnableUnauthorizedAccount(address)", ["address"], [relayer]),
        distributor.functions.setRoot(epoch, root, total, len(payees)),
        {"from": relayer},
    )
    set_root = distributor.functions.setRoot
    reverts_with(error_data("EmptyRoot()"), set_root(epoch, b"\0" * 32, total, 7))
    reverts_with(error_data("NoAccounts()"), set_root(epoch, root, total, 0))
    print(f"setRoot gas ({len(payees)} accounts): {send(w3, set_root(epoch, root, total, len(payees)), owner)}")
    assert token.functions.balanceOf(distributor.address).call() == total
    assert distributor.functions.rootOf(epoch).call() == root
    assert distributor.functions.accountsOf(epoch).call() == len(payees)
    assert distributor.functions.rootOf(epoch + 1).call() == b"\0" * 32
    send(w3, token.functions.approve(distributor.address, total), owner)
    reverts_with(
        error_data("RootAlreadySet(uint256)", ["uint256"], [epoch]),
        distributor.functions.setRoot(epoch, root, total, 7),
    )

    claim = distributor.functions.claim
    p0, p1 = tree.payouts[0], tree.payouts[1]
    reverts_with(
        error_data("UnknownEpoch(uint256)", ["uint256"], [epoch + 1]),
        claim(epoch + 1, p0.index, p0.account, p0.amount, list(p0.proof)),
    )
    invalid = error_data("InvalidProof()")
    reverts_with(invalid, claim(epoch, p0.index, p1.account, p0.amount, list(p0.proof)))
    reverts_with(invalid, claim(epoch, p0.index, p0.account, p0.amount + 1, list(p0.proof)))
    reverts_with(invalid, claim(epoch, p0.index, p0.account, p0.amount, list(p1.proof)))
    reverts_with(invalid, claim(epoch, p1.index, p0.account, p0.amount, list(p0.proof)))
    reverts_with(invalid, claim(epoch, p0.index, p0.account, p0.amount, list(p0.proof)[:-1]))
    for out_of_range in (7, 255, 256, 2**256 - 1):
        reverts_with(
            error_data("AlreadyClaimed(uint256,uint256)", ["uint256", "uint256"], [epoch, out_of_range]),
            claim(epoch, out_of_range, p0.account, p0.amount, list(p0.proof)),
        )
        assert not distributor.functions.isClaimed(epoch, out_of_range).call()

    fresh_gas = []
    for p in tree.payouts:  # anyone may submit; the tokens go to the payee
        assert not distributor.functions.isClaimed(epoch, p.index).call()
        fresh_gas.append(send(w3, claim(epoch, p.index, p.account, p.amount, list(p.proof)), relayer))
        assert distributor.functions.isClaimed(epoch, p.index).call()
        assert token.functions.balanceOf(p.account).call() == amounts[p.account]
        reverts_with(
            error_data("AlreadyClaimed(uint256,uint256)", ["uint256", "uint256"], [epoch, p.index]),
            claim(epoch, p.index, p.account, p.amount, list(p.proof)),
        )
    assert token.functions.balanceOf(distributor.address).call() == 0
    assert token.functions.balanceOf(relayer).call() == 0
    events = distributor.events.Claimed().get_logs(from_block=0)
    assert [(e["args"]["index"], e["args"]["account"], e["args"]["amount"]) for e in events] == [
        (p.index, p.account, p.amount) for p in tree.payouts
    ]

    # A second epoch pays the same accounts, who now hold the token.
    tree2 = payout_tree({a: amount * 2 for a, amount in amounts.items()})
    send(w3, token.functions.approve(distributor.address, 2 * total), owner)
    send(w3, distributor.functions.setRoot(epoch + 1, bytes.fromhex(tree2.root[2:]), 2 * total, len(payees)), owner)
    holder_gas = [
        send(w3, claim(epoch + 1, p.index, p.account, p.amount, list(p.proof)), relayer) for p in tree2.payouts
    ]
    print(f"claim gas: to a fresh holder {fresh_gas}, to an existing holder {holder_gas}")
    assert max(holder_gas[:-1]) <= CLAIM_GAS_LIMIT  # the last claim empties the distributor: cheaper still
    assert max(holder_gas) <= CLAIM_GAS_LIMIT
    assert all(token.functions.balanceOf(a).call() == 3 * amounts[a] for a in payees)


def test_set_root_marks_exactly_the_funded_indices_across_words(w3: Web3) -> None:
    owner = w3.eth.accounts[0]
    token = deploy(w3, REWARD_TOKEN, "Tally Reward", "TLY", 6, owner)
    distributor = deploy(w3, REWARD_DISTRIBUTOR, token.address, owner)
    send(w3, token.functions.mint(owner, 10**6), owner)
    send(w3, token.functions.approve(distributor.address, 10**6), owner)
    for epoch, accounts in ((1, 256), (2, 257), (3, 600)):
        send(w3, distributor.functions.setRoot(epoch, keccak(epoch.to_bytes(32, "big")), 1, accounts), owner)
        for index in (accounts - 1, accounts, 511, 512, 1023):
            claimed = error_data("AlreadyClaimed(uint256,uint256)", ["uint256", "uint256"], [epoch, index])
            reason = error_data("InvalidProof()") if index < accounts else claimed
            reverts_with(reason, distributor.functions.claim(epoch, index, owner, 1, []))


# ---- ContributionVerifier ------------------------------------------------------------------------------------


def test_contribution_signatures_verify_on_chain_as_in_python(w3: Web3) -> None:
    verifier = deploy(w3, CONTRIBUTION_VERIFIER)
    signer = Account.create()
    fields: dict[str, Any] = {
        "datanet": "medical-qa",
        "content_root": "0x" + hashlib.sha256(b"rows").hexdigest(),
        "license": "CC-BY-4.0",
        "nonce": 2**200 + 7,
        "chain_id": w3.eth.chain_id,
    }
    args = [fields["datanet"], bytes.fromhex(fields["content_root"][2:]), fields["license"], fields["nonce"]]
    expected = encode_typed_data(full_message=contribution_typed_data(**fields))
    digest = keccak(b"\x19" + expected.version + expected.header + expected.body)
    assert verifier.functions.contributionDigest(*args).call() == digest

    signature = bytes.fromhex(sign_contribution(signer.key.hex(), **fields)[2:])
    assert verifier.functions.recoverContributionSigner(*args, signature).call() == signer.address
    for k, changed in ((0, "other-net"), (1, keccak(b"other")), (2, "MIT"), (3, fields["nonce"] + 1)):
        tampered = [*args]
        tampered[k] = changed
        assert verifier.functions.recoverContributionSigner(*tampered, signature).call() != signer.address
    other_chain = sign_contribution(signer.key.hex(), **{**fields, "chain_id": 1})
    assert verifier.functions.recoverContributionSigner(*args, bytes.fromhex(other_chain[2:])).call() != signer.address
    reverts_with(
        error_data("ECDSAInvalidSignatureLength(uint256)", ["uint256"], [64]),
        verifier.functions.recoverContributionSigner(*args, signature[:64]),
        view=True,
    )
