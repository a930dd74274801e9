"""The embedded chain: a py-evm chain in SQLite that keeps its state across reopening, processes and SIGKILL."""

from __future__ import annotations

import fcntl
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import keccak
from web3 import Web3
from web3.exceptions import TransactionNotFound

from tally.chain.embedded import FUNDED_BALANCE, EmbeddedChain, EmbeddedChainError

# A contract by hand: any call logs Ping(42) (LOG1: topic keccak("Ping(uint256)"), data 42) and returns 42.
PING_TOPIC = keccak(text="Ping(uint256)")
RUNTIME = bytes.fromhex("602a600052" + "7f" + PING_TOPIC.hex() + "60206000a1" + "60206000f3")
# Init code: CODECOPY the runtime (which follows these 11 bytes) to memory 0 and RETURN it.
INIT = bytes([0x60, len(RUNTIME), 0x80, 0x60, 11, 0x60, 0x00, 0x39, 0x60, 0x00, 0xF3]) + RUNTIME
PING_ABI = [
    {
        "type": "event",
        "name": "Ping",
        "anonymous": False,
        "inputs": [{"name": "value", "type": "uint256", "indexed": False}],
    }
]

# For subprocesses: sign and send one transaction, as the tests below do.
SEND_SOURCE = """
def send(w3, account, chain_id, **tx):
    tx.setdefault("gas", 21_000)
    tx.setdefault("value", 0)
    base_fee = int(w3.eth.get_block("latest")["baseFeePerGas"])
    tip = int(w3.eth.max_priority_fee)
    tx.update(
        chainId=chain_id,
        nonce=w3.eth.get_transaction_count(account.address, "pending"),
        maxFeePerGas=2 * base_fee + tip,
        maxPriorityFeePerGas=tip,
    )
    return w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)
"""
namespace: dict[str, Any] = {}
exec(SEND_SOURCE, namespace)


def send(w3: Web3, account: LocalAccount, chain_id: int = 31337, **tx: Any) -> Any:
    """Sign `tx` (EIP-1559 fees from the chain) with `account`, send it raw, return its receipt."""
    tx_hash = namespace["send"](w3, account, chain_id, **tx)
    receipt = w3.eth.get_transaction_receipt(tx_hash)
    assert receipt["status"] == 1, receipt
    return receipt


def child(code: str, *args: str) -> subprocess.Popen[str]:
    source = SEND_SOURCE + textwrap.dedent(code)
    return subprocess.Popen(
        [sys.executable, "-c", source, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def test_transfers_contract_and_logs_survive_reopening(tmp_path: Path) -> None:
    alice, bob = Account.create(), Account.create()
    chain = EmbeddedChain(tmp_path / "chain", chain_id=31337, fund=[alice.address])
    key_file = tmp_path / "chain" / "operator.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert Account.from_key(chain.operator_key).address == chain.operator_address

    with chain.connect() as w3:
        assert w3.eth.chain_id == 31337
        assert w3.eth.block_number == 0
        assert w3.eth.get_balance(alice.address) == FUNDED_BALANCE
        assert w3.eth.get_balance(chain.operator_address) > FUNDED_BALANCE
        latest = w3.eth.get_block("latest")
        assert latest["gasLimit"] == 30_000_000
        assert w3.eth.gas_price >= latest["baseFeePerGas"] > 0
        assert w3.eth.max_priority_fee > 0

        first = send(w3, alice, to=bob.address, value=10**18)
        second = send(w3, alice, to=bob.address, value=2 * 10**18)
        deploy = send(w3, alice, data=INIT, gas=w3.eth.estimate_gas({"from": alice.address, "data": INIT}))
        contract = deploy["contractAddress"]
        assert w3.eth.get_code(contract) == RUNTIME
        assert int.from_bytes(w3.eth.call({"to": contract}), "big") == 42
        gas = w3.eth.estimate_gas({"from": alice.address, "to": contract})
        ping = send(w3, alice, to=contract, gas=gas)
        assert len(ping["logs"]) == 1
        assert w3.eth.get_transaction_count(alice.address, "pending") == 4
        assert w3.eth.block_number == 4

    reopened = EmbeddedChain(tmp_path / "chain", chain_id=31337)
    assert reopened.operator_key == chain.operator_key
    assert reopened.genesis_hash == chain.genesis_hash
    with reopened.connect() as w3:
        assert w3.eth.block_number == 4
        assert w3.eth.get_balance(bob.address) == 3 * 10**18
        assert w3.eth.get_transaction_count(alice.address) == 4
        assert w3.eth.get_transaction_count(alice.address, "pending") == 4
        old = w3.eth.get_transaction_receipt(first["transactionHash"])
        assert old["blockNumber"] == 1 and old["status"] == 1
        assert w3.eth.get_transaction(second["transactionHash"])["value"] == 2 * 10**18
        assert w3.eth.get_code(contract) == RUNTIME
        assert int.from_bytes(w3.eth.call({"to": contract}), "big") == 42
        logs = w3.eth.get_logs({"fromBlock": 0, "toBlock": "latest"})
        assert [(log["address"], log["topics"][0], log["transactionHash"]) for log in logs] == [
            (contract, PING_TOPIC, ping["transactionHash"])
        ]
        assert w3.eth.get_logs({"fromBlock": 0, "toBlock": "latest", "address": bob.address}) == []
        events = w3.eth.contract(address=contract, abi=PING_ABI).events.Ping.get_logs(from_block=0)
        assert [e["args"]["value"] for e in events] == [42]
        with pytest.raises(TransactionNotFound):
            w3.eth.get_transaction_receipt(b"\x01" * 32)

        # the chain goes on from where it was, with strictly increasing timestamps
        send(w3, alice, to=contract, gas=gas)
        stamps = [w3.eth.get_block(n)["timestamp"] for n in range(w3.eth.block_number + 1)]
        assert stamps == sorted(set(stamps))
        assert len(w3.eth.get_logs({"fromBlock": 0, "toBlock": "latest", "address": contract})) == 2

    carol = Account.create().address
    reopened.fund(carol, 5 * 10**18)
    with chain.connect() as w3:  # the first object sees what the second one mined
        assert w3.eth.get_balance(carol) == 5 * 10**18
        assert w3.eth.block_number == 6


def test_another_chain_id_is_refused(tmp_path: Path) -> None:
    EmbeddedChain(tmp_path / "chain", chain_id=31337)
    with pytest.raises(EmbeddedChainError) as caught:
        EmbeddedChain(tmp_path / "chain", chain_id=8453)
    message = str(caught.value)
    assert str(tmp_path / "chain") in message and "31337" in message and "8453" in message
    assert caught.value.values["stored_chain_id"] == 31337
    other = EmbeddedChain(tmp_path / "other", chain_id=8453)
    with other.connect() as w3:
        assert w3.eth.chain_id == 8453


def test_one_connection_at_a_time(tmp_path: Path) -> None:
    chain = EmbeddedChain(tmp_path / "chain")
    with chain.connect(), pytest.raises(EmbeddedChainError, match="already connected in this thread"), chain.connect():
        pass
    fd = os.open(tmp_path / "chain" / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # as another process would
        with pytest.raises(EmbeddedChainError, match="in use") as caught, chain.connect(timeout=0.2):
            pass
        assert caught.value.kind == "unavailable"
    finally:
        os.close(fd)

    # threads of one process take turns
    accounts = [Account.create() for _ in range(3)]
    for account in accounts:
        chain.fund(account.address, 10**18)
    errors: list[BaseException] = []

    def work(account: LocalAccount) -> None:
        try:
            for _ in range(3):
                with chain.connect() as w3:
                    send(w3, account, to=chain.operator_address, value=1)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(a,)) for a in accounts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with chain.connect() as w3:
        assert [w3.eth.get_transaction_count(a.address) for a in accounts] == [3, 3, 3]


def test_two_processes_share_the_chain(tmp_path: Path) -> None:
    n = 20
    mine, theirs = Account.create(), Account.create()
    directory = tmp_path / "chain"
    chain = EmbeddedChain(directory, fund=[mine.address, theirs.address])
    proc = child(
        """
        import sys
        from pathlib import Path
        from eth_account import Account
        from tally.chain.embedded import EmbeddedChain
        chain = EmbeddedChain(Path(sys.argv[1]))
        account = Account.from_key(sys.argv[2])
        print("ready", flush=True)
        for i in range(int(sys.argv[3])):
            with chain.connect() as w3:
                print(send(w3, account, 31337, to=chain.operator_address, value=i).to_0x_hex(), flush=True)
        """,
        str(directory),
        theirs.key.to_0x_hex(),
        str(n),
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read() if proc.stderr else ""
    my_hashes = []
    for i in range(n):
        with chain.connect() as w3:
            my_hashes.append(send(w3, mine, to=chain.operator_address, value=i)["transactionHash"])
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    their_hashes = out.split()
    assert len(their_hashes) == n
    with chain.connect() as w3:
        assert w3.eth.block_number == 2 * n
        assert w3.eth.get_transaction_count(mine.address) == n
        assert w3.eth.get_transaction_count(theirs.address) == n
        blocks = {w3.eth.get_transaction_receipt(h)["blockNumber"] for h in [*my_hashes, *their_hashes]}
        assert blocks == set(range(1, 2 * n + 1))
        # they took turns: neither process kept the chain to itself while the other waited
        my_blocks = sorted(w3.eth.get_transaction_receipt(h)["blockNumber"] for h in my_hashes)
        assert my_blocks[-1] - my_blocks[0] > n - 1, my_blocks
        # nonces in order for each sender
        for account, hashes in ((mine, my_hashes), (theirs, their_hashes)):
            assert [w3.eth.get_transaction(h)["nonce"] for h in hashes] == list(range(n))
            assert all(w3.eth.get_transaction(h)["from"] == account.address for h in hashes)


def test_sigkill_loses_no_acknowledged_transaction(tmp_path: Path) -> None:
    sender = Account.create()
    directory = tmp_path / "chain"
    EmbeddedChain(directory, fund=[sender.address])
    proc = child(
        """
        import sys
        from pathlib import Path
        from eth_account import Account
        from tally.chain.embedded import EmbeddedChain
        chain = EmbeddedChain(Path(sys.argv[1]))
        account = Account.from_key(sys.argv[2])
        with chain.connect() as w3:
            while True:
                print(send(w3, account, 31337, to=chain.operator_address, value=1).to_0x_hex(), flush=True)
        """,
        str(directory),
        sender.key.to_0x_hex(),
    )
    assert proc.stdout is not None
    acknowledged = []
    try:
        while len(acknowledged) < 8:
            line = proc.stdout.readline()
            assert line, proc.stderr.read() if proc.stderr else "child ended"
            acknowledged.append(line.strip())
        time.sleep(random.uniform(0.0, 0.02))  # somewhere inside a later transaction
        os.kill(proc.pid, signal.SIGKILL)
        rest, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    acknowledged += rest.split()
    assert proc.returncode == -signal.SIGKILL

    conn = sqlite3.connect(directory / "chain.sqlite")
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    conn.close()
    reopened = EmbeddedChain(directory)
    with reopened.connect(timeout=10) as w3:
        mined = w3.eth.get_transaction_count(sender.address)
        assert mined >= len(acknowledged)
        assert w3.eth.block_number == mined
        for tx_hash in acknowledged:
            assert w3.eth.get_transaction_receipt(tx_hash)["status"] == 1
        receipt = send(w3, sender, to=reopened.operator_address, value=1)
        assert receipt["blockNumber"] == mined + 1
        assert w3.eth.get_transaction_count(sender.address) == mined + 1


def test_connect_is_fast_on_an_existing_chain(tmp_path: Path) -> None:
    chain = EmbeddedChain(tmp_path / "chain")
    for _ in range(20):
        chain.fund(Account.create().address, 1)
    started = time.perf_counter()
    reopened = EmbeddedChain(tmp_path / "chain")
    with reopened.connect() as w3:
        assert w3.eth.block_number == 20
    assert time.perf_counter() - started < 1.0  # typically ~0.01 s


def test_refused_transactions_change_nothing(tmp_path: Path) -> None:
    alice = Account.create()
    chain = EmbeddedChain(tmp_path / "chain", fund=[alice.address])
    with chain.connect() as w3:
        send(w3, alice, to=chain.operator_address, value=1)
        for tx in (
            {"chainId": 1, "nonce": 1},  # signed for another chain: a replay
            {"chainId": 31337, "nonce": 0},  # nonce already used
            {"chainId": 31337, "nonce": 1, "value": 10**30},  # more than alice has
        ):
            raw = alice.sign_transaction(
                {"to": chain.operator_address, "value": 1, "gas": 21_000, "gasPrice": w3.eth.gas_price, **tx}
            ).raw_transaction
            with pytest.raises(Exception, match="chain id 1|nonce|balance|funds"):
                w3.eth.send_raw_transaction(raw)
        assert w3.eth.block_number == 1
        assert w3.eth.get_transaction_count(alice.address, "pending") == 1
    with chain.connect() as w3:
        assert w3.eth.block_number == 1
        assert send(w3, alice, to=chain.operator_address, value=1)["blockNumber"] == 2
