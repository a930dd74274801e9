"""The embedded chain: a real EVM (py-evm, driven through eth-tester) in this process, kept on disk.

No node runs anywhere: `EmbeddedChain(directory).connect()` yields a `web3.Web3` whose requests execute in-process
against a py-evm chain whose database is one SQLite file, `<directory>/chain.sqlite`. The chain survives restarts,
including a SIGKILL:

- every database write goes into one open SQLite transaction, committed right after each block is mined (eth-tester
  mines one block per transaction), so the file always holds whole blocks: after a crash the chain is at the last
  block that was fully mined, and a transaction whose hash was returned to the caller is in it;
- SQLite runs in WAL mode with `synchronous=FULL`, so a commit survives a power cut too.

One process at a time: `connect()` holds an exclusive `flock` on `<directory>/lock` for as long as its `with` block
runs (so `tally serve` and a `tally chain ...` command take turns, queueing on `<directory>/lock.queue` so neither
starves the other), and re-reads the chain head from the database each time, so it sees the blocks the other
process mined. Hold a connection for one unit of work, not for a process's lifetime.

Block timestamps are real time but strictly increasing: a burst of transactions (one block each) within a second
stamps its blocks a second apart, running ahead of the clock until the burst ends.

The first open creates the chain: a genesis block that funds the operator account (a fresh private key, written to
`<directory>/operator.key`, mode 0600) and any extra addresses given, at Tally's chain id. The chain id and a
format version are stored in the database; a directory made for another chain id is refused.

What lives only in memory, per connection (eth-tester keeps it in the `EthereumTester` object): log, block and
pending-transaction filters (`eth_newFilter` and friends; `eth_getLogs` reads the chain and works across restarts),
snapshots (`evm_snapshot`), and pending transactions when auto-mining is switched off (lost, never half-written, if
the connection closes before they are mined).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from eth.abc import SignedTransactionAPI, VirtualMachineAPI
from eth.chains.base import MiningChain
from eth.constants import BLANK_ROOT_HASH
from eth.db.atomic import AtomicDB
from eth.db.backends.base import BaseDB
from eth.exceptions import TransactionNotFound as EVMTransactionNotFound
from eth.vm.forks import PragueVM
from eth_account import Account
from eth_bloom import BloomFilter
from eth_keys import KeyAPI
from eth_tester import EthereumTester, PyEVMBackend
from eth_tester.backends.pyevm.main import ZERO_ADDRESS, get_default_genesis_params
from eth_tester.backends.pyevm.serializers import serialize_transaction, serialize_transaction_receipt
from eth_tester.exceptions import TransactionNotFound, ValidationError
from eth_tester.utils.filters import Filter, check_if_log_matches
from eth_typing import Address, BlockNumber, Hash32
from eth_utils import ValidationError as EthValidationError
from eth_utils import encode_hex, is_address, to_canonical_address, to_checksum_address
from web3 import EthereumTesterProvider, Web3
from web3.providers.eth_tester.defaults import API_ENDPOINTS

from tally.config.errors import TallyError

FORMAT_VERSION = 1
DEFAULT_CHAIN_ID = 31337
GAS_LIMIT = 30_000_000  # every block's gas limit, kept constant
PRIORITY_FEE = 10**9  # wei per gas: what eth_maxPriorityFeePerGas suggests
OPERATOR_BALANCE = 10**9 * 10**18  # wei: one billion ETH
FUNDED_BALANCE = 10**6 * 10**18  # wei: one million ETH for each extra address funded at genesis
DB_FILE = "chain.sqlite"
KEY_FILE = "operator.key"
LOCK_FILE = "lock"
QUEUE_FILE = "lock.queue"


class EmbeddedChainError(TallyError):
    """The embedded chain's directory cannot be used as asked."""

    kind = "conflict"


class SQLiteDB(BaseDB):
    """py-evm's key-value store on one SQLite table; writes stay in one open transaction until `commit()`.

    Reads inside the transaction see its writes. `rollback()` drops them, and so does closing (or a crash) without a
    commit.
    """

    def __init__(self, path: Path, *, timeout: float = 30.0) -> None:
        self.path = path
        self._conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID")
            self._conn.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        except BaseException:
            self._conn.close()
            raise

    # py-evm's BaseDB

    def __getitem__(self, key: bytes) -> bytes:
        row = self._conn.execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
        if row is None:
            raise KeyError(key)
        return bytes(row[0])

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self._begin()
        self._conn.execute("INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)", (key, value))

    def __delitem__(self, key: bytes) -> None:
        self._begin()
        if self._conn.execute("DELETE FROM kv WHERE k = ?", (key,)).rowcount == 0:
            raise KeyError(key)

    def _exists(self, key: bytes) -> bool:
        return self._conn.execute("SELECT 1 FROM kv WHERE k = ?", (key,)).fetchone() is not None

    # metadata and transactions

    def is_empty(self) -> bool:
        return self._conn.execute("SELECT 1 FROM kv LIMIT 1").fetchone() is None

    def get_meta(self) -> dict[str, str]:
        return {name: value for name, value in self._conn.execute("SELECT name, value FROM meta")}

    def set_meta(self, name: str, value: str) -> None:
        self._begin()
        self._conn.execute("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", (name, value))

    @property
    def in_transaction(self) -> bool:
        return self._conn.in_transaction

    def commit(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("COMMIT")

    def rollback(self) -> None:
        if self._conn.in_transaction:
            self._conn.execute("ROLLBACK")

    def close(self) -> None:
        """Close, dropping any writes not committed."""
        try:
            self.rollback()
        finally:
            self._conn.close()

    def _begin(self) -> None:
        if not self._conn.in_transaction:
            self._conn.execute("BEGIN IMMEDIATE")


def chain_class(chain_id: int) -> type[MiningChain]:
    """A py-evm chain like eth-tester's tester chain: the latest VM from genesis, a constant gas limit, `chain_id`;
    it refuses transactions signed for another chain id (unprotected legacy ones, signed for none, pass)."""

    class TallyChain(MiningChain):
        vm_configuration: tuple[tuple[BlockNumber, type[VirtualMachineAPI]], ...] = ((BlockNumber(0), PragueVM),)

        def create_header_from_parent(self, parent_header: Any, **header_params: Any) -> Any:
            return super().create_header_from_parent(
                parent_header, **{**header_params, "gas_limit": parent_header.gas_limit}
            )

        def get_transaction_builder(self) -> Any:
            return self.get_vm().get_transaction_builder()

        def apply_transaction(self, transaction: SignedTransactionAPI) -> Any:
            # py-evm executes a transaction signed for any chain; a node refuses one signed for another (a replay)
            signed_for = getattr(transaction, "chain_id", None)
            if signed_for is not None and signed_for != self.chain_id:
                raise EthValidationError(
                    f"transaction signed for chain id {signed_for}, but this chain's id is {self.chain_id}"
                )
            return super().apply_transaction(transaction)

    TallyChain.chain_id = chain_id
    return TallyChain


class PersistentPyEVMBackend(PyEVMBackend):
    """eth-tester's py-evm backend over a chain kept in a `SQLiteDB`: each mined block is committed to the file.

    Block timestamps are real time, but strictly increasing (a block mined within a second of its parent is stamped
    one second after it). Transactions are found by their hash through py-evm's index (not by scanning blocks).
    """

    def __init__(self, chain: MiningChain, db: SQLiteDB, account_keys: Sequence[Any] = ()) -> None:
        # No super().__init__(): it would build a fresh in-memory chain from a genesis.
        self.chain = chain
        self.db = db
        self.account_keys = tuple(account_keys)

    def reset_to_genesis(self, *args: Any, **kwargs: Any) -> None:
        raise ValidationError("the embedded chain is kept on disk: remove its directory to start a new chain")

    # Mining: commit after each block

    def mine_blocks(self, num_blocks: int = 1, coinbase: bytes = ZERO_ADDRESS) -> tuple[bytes, ...]:
        hashes: list[bytes] = []
        for _ in range(num_blocks):
            self._stamp_pending_block()
            hashes.extend(super().mine_blocks(1, coinbase))
            self.db.commit()
        return tuple(hashes)

    def apply_withdrawals(self, withdrawals_list: list[dict[str, int | str]]) -> None:
        self._stamp_pending_block()
        super().apply_withdrawals(withdrawals_list)
        self.db.commit()

    def revert_to_snapshot(self, snapshot: bytes) -> None:
        super().revert_to_snapshot(snapshot)
        self.db.commit()

    # Sending: stamp the (empty) pending block with the current time first; drop stray writes of a refused one

    def send_raw_transaction(self, raw_transaction: bytes) -> bytes:
        return self._send(super().send_raw_transaction, raw_transaction)

    def send_signed_transaction(self, signed_transaction: Any, block_number: Any = "latest") -> bytes:
        return self._send(super().send_signed_transaction, signed_transaction, block_number)

    def send_transaction(self, transaction: Any) -> bytes:
        return self._send(super().send_transaction, transaction)

    def _send(self, send: Any, *args: Any) -> bytes:
        empty = self._pending_block_is_empty()
        if empty:
            self._stamp_pending_block()
        try:
            return bytes(send(*args))
        except BaseException:
            if empty and self._pending_block_is_empty():
                self.db.rollback()  # nothing of a mined block is pending: whatever was written is garbage
            raise

    def _pending_block_is_empty(self) -> bool:
        return bool(self.chain.header.transaction_root == BLANK_ROOT_HASH)

    def _stamp_pending_block(self) -> None:
        if self._pending_block_is_empty():
            now = int(time.time())
            if now > self.chain.header.timestamp:
                self.chain.set_header_timestamp(now)

    # Transactions by hash, through the index py-evm keeps for the canonical chain

    def _find_transaction(self, transaction_hash: bytes) -> tuple[Any, Any, int]:
        chain = self.chain
        if not self._pending_block_is_empty():
            pending = chain.get_block()
            for index, transaction in enumerate(pending.transactions):
                if transaction.hash == transaction_hash:
                    return pending, transaction, index
        try:
            number, index = chain.chaindb.get_transaction_index(Hash32(transaction_hash))
        except EVMTransactionNotFound:
            raise TransactionNotFound(
                f"No transaction found for transaction hash: {encode_hex(transaction_hash)}"
            ) from None
        block = chain.get_canonical_block_by_number(number)
        return block, block.transactions[index], index

    def get_transaction_by_hash(self, transaction_hash: bytes) -> Any:
        block, transaction, index = self._find_transaction(transaction_hash)
        is_pending = block.number == self.chain.get_block().number
        return serialize_transaction(block, transaction, index, is_pending)

    def get_transaction_receipt(self, transaction_hash: bytes) -> Any:
        block, transaction, index = self._find_transaction(transaction_hash)
        is_pending = block.number == self.chain.get_block().number
        receipts = block.get_receipts(self.chain.chaindb)
        return serialize_transaction_receipt(block, receipts, transaction, index, is_pending, self.chain.get_vm())


class PersistentEthereumTester(EthereumTester):
    """eth-tester whose `eth_getLogs` reads only the blocks whose header bloom may hold a matching log.

    eth-tester reads every block of the range and every receipt in it; over a long chain, for a contract that
    logs rarely, the header's bloom filter rules most blocks out with one header read each.
    """

    def get_logs(self, from_block: Any = None, to_block: Any = None, address: Any = None, topics: Any = None) -> Any:
        self.validator.validate_inbound_filter_params(
            from_block=from_block, to_block=to_block, address=address, topics=topics
        )
        raw_from, raw_to, raw_address, raw_topics = self.normalizer.normalize_inbound_filter_params(
            from_block=from_block, to_block=to_block, address=address, topics=topics
        )
        params = {"from_block": raw_from, "to_block": raw_to, "addresses": raw_address, "topics": raw_topics}
        log_filter = Filter(filter_params=params, filter_fn=functools.partial(check_if_log_matches, **params))
        lower = raw_from if isinstance(raw_from, int) else self.get_block_by_number(raw_from or "latest")["number"]
        upper = raw_to if isinstance(raw_to, int) else self.get_block_by_number(raw_to or "latest")["number"]
        chain = self.backend.chain
        if upper >= chain.header.block_number:
            self.get_block_by_number(upper)  # not mined yet: eth-tester's BlockNotFound, as without this class
        for number in range(lower, upper + 1):
            if not _bloom_may_match(chain.get_canonical_block_header_by_number(number).bloom, raw_address, raw_topics):
                continue
            for transaction_hash in self.get_block_by_number(number)["transactions"]:
                for log_entry in self.get_transaction_receipt(transaction_hash)["logs"]:
                    log_filter.add(self.normalizer.normalize_inbound_log_entry(log_entry))
        return tuple(self.normalizer.normalize_outbound_log_entry(item) for item in log_filter.get_all())


def _bloom_may_match(bloom: int, addresses: Any, topics: Any) -> bool:
    """False only when a block with this logs bloom can hold no log that the filter matches."""
    if bloom == 0:
        return False
    filter_ = BloomFilter(bloom)
    if addresses is not None:
        wanted = addresses if isinstance(addresses, tuple) else (addresses,)
        if not any(a in filter_ for a in wanted):
            return False
    for position in topics or ():
        if position is None:
            continue
        choices = position if isinstance(position, tuple) else (position,)
        if None not in choices and not any(t in filter_ for t in choices):
            return False
    return True


class EmbeddedChain:
    """An EVM chain kept under `directory`: open it once, `connect()` for each unit of work.

    `fund`: extra addresses given a balance (`FUNDED_BALANCE`) in the genesis block, for tests and development; used
    only when the directory is new (later, `fund(address, wei)` sends ETH from the operator).
    """

    def __init__(self, directory: Path, chain_id: int = DEFAULT_CHAIN_ID, fund: Sequence[str] = ()) -> None:
        if chain_id < 1:
            raise EmbeddedChainError(f"chain id must be positive, not {chain_id}", kind="invalid", chain_id=chain_id)
        bad = [a for a in fund if not is_address(a)]
        if bad:
            raise EmbeddedChainError(f"not an address: {', '.join(map(str, bad))}", kind="invalid", addresses=bad)
        self.directory = Path(directory)
        self.chain_id = chain_id
        self._genesis_fund = tuple(to_checksum_address(a) for a in fund)
        self._chain_class = chain_class(chain_id)
        self._holders: set[int] = set()  # threads inside connect()
        self.directory.mkdir(parents=True, exist_ok=True)
        with self._locked(timeout=60.0):
            self._operator_key, self.genesis_hash = self._open_or_create()

    @property
    def db_path(self) -> Path:
        return self.directory / DB_FILE

    @property
    def key_path(self) -> Path:
        return self.directory / KEY_FILE

    @property
    def operator_key(self) -> str:
        """The operator's private key, hex with 0x (it signs Tally's own transactions on this chain)."""
        return self._operator_key

    @property
    def operator_address(self) -> str:
        return str(Account.from_key(self._operator_key).address)

    @contextlib.contextmanager
    def connect(self, timeout: float = 60.0) -> Iterator[Web3]:
        """A `Web3` on this chain, valid inside the `with` block, which holds the chain for this process alone.

        Waits up to `timeout` seconds for another process (or thread) to let go of the chain.
        """
        with self._locked(timeout):
            db = SQLiteDB(self.db_path)
            try:
                stored = db.get_meta().get("chain_id")
                if stored != str(self.chain_id):
                    raise EmbeddedChainError(
                        f"the chain database {self.db_path} is gone or was replaced (chain id {stored}, not "
                        f"{self.chain_id}) since this process opened it",
                        path=str(self.db_path),
                        chain_id=self.chain_id,
                        stored_chain_id=stored,
                    )
                chain = self._chain_class(AtomicDB(db))
                keys = (KeyAPI().PrivateKey(bytes.fromhex(self._operator_key[2:])),)
                backend = PersistentPyEVMBackend(chain, db, keys)
                yield Web3(EthereumTesterProvider(PersistentEthereumTester(backend), self._endpoints()))
            finally:
                db.close()  # drops only writes of transactions that were not mined

    def _endpoints(self) -> dict[str, dict[str, Any]]:
        """eth-tester's JSON-RPC methods, with this chain's id and a gas price that follows the base fee."""
        endpoints = {namespace: dict(methods) for namespace, methods in API_ENDPOINTS.items()}
        chain_id = self.chain_id
        endpoints["eth"]["chainId"] = lambda tester, params: chain_id
        endpoints["eth"]["maxPriorityFeePerGas"] = lambda tester, params: PRIORITY_FEE
        endpoints["eth"]["gasPrice"] = lambda tester, params: tester.backend.get_base_fee("pending") + PRIORITY_FEE
        return endpoints

    def fund(self, address: str, wei: int) -> str:
        """Send `wei` from the operator to `address` (a development or test account); returns the transaction hash.

        It connects by itself, so call it outside `connect()`.
        """
        if not is_address(address):
            raise EmbeddedChainError(f"not an address: {address}", kind="invalid", address=address)
        operator = Account.from_key(self._operator_key)
        with self.connect() as w3:
            base_fee = int(w3.eth.get_block("latest")["baseFeePerGas"])
            tip = PRIORITY_FEE
            signed = operator.sign_transaction(
                {
                    "chainId": self.chain_id,
                    "nonce": w3.eth.get_transaction_count(operator.address, "pending"),
                    "to": to_checksum_address(address),
                    "value": wei,
                    "gas": 21_000,
                    "maxPriorityFeePerGas": tip,
                    "maxFeePerGas": 2 * base_fee + tip,
                }
            )
            tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
            receipt = w3.eth.get_transaction_receipt(tx_hash)
            if receipt["status"] != 1:
                raise EmbeddedChainError("funding transfer failed", kind="internal", tx_hash=tx_hash.to_0x_hex())
            return str(tx_hash.to_0x_hex())

    # opening

    def _open_or_create(self) -> tuple[str, str]:
        db = SQLiteDB(self.db_path)
        try:
            meta = db.get_meta()
            if not meta:
                if not db.is_empty():
                    raise EmbeddedChainError(
                        f"{self.db_path} holds data but no chain metadata: not a Tally chain database",
                        path=str(self.db_path),
                    )
                return self._create(db)
            return self._check(meta)
        finally:
            db.close()

    def _check(self, meta: dict[str, str]) -> tuple[str, str]:
        version = int(meta.get("format_version", "0"))
        if version != FORMAT_VERSION:
            raise EmbeddedChainError(
                f"{self.db_path} has chain format version {version}; this Tally reads version {FORMAT_VERSION}",
                path=str(self.db_path),
                format_version=version,
                expected_format_version=FORMAT_VERSION,
            )
        stored = int(meta["chain_id"])
        if stored != self.chain_id:
            raise EmbeddedChainError(
                f"the chain in {self.directory} was made for chain id {stored}, not {self.chain_id}: "
                "set the chain id back, or use another directory",
                path=str(self.directory),
                chain_id=self.chain_id,
                stored_chain_id=stored,
            )
        if not self.key_path.exists():
            raise EmbeddedChainError(
                f"the operator key {self.key_path} of the chain in {self.directory} is missing",
                path=str(self.key_path),
                operator_address=meta["operator_address"],
            )
        key = self._read_key()
        address = Account.from_key(key).address
        if address != meta["operator_address"]:
            raise EmbeddedChainError(
                f"the operator key {self.key_path} is for {address}, but the chain in {self.directory} was made "
                f"for operator {meta['operator_address']}",
                path=str(self.key_path),
                operator_address=meta["operator_address"],
                key_address=address,
            )
        return key, meta["genesis_hash"]

    def _create(self, db: SQLiteDB) -> tuple[str, str]:
        key = self._read_key() if self.key_path.exists() else self._write_new_key()
        operator = Address(to_canonical_address(Account.from_key(key).address))
        state: dict[Address, Any] = {
            Address(to_canonical_address(a)): {"balance": FUNDED_BALANCE, "nonce": 0, "code": b"", "storage": {}}
            for a in self._genesis_fund
        }
        state[operator] = {"balance": OPERATOR_BALANCE, "nonce": 0, "code": b"", "storage": {}}
        params = get_default_genesis_params({"gas_limit": GAS_LIMIT, "timestamp": int(time.time())})
        chain = self._chain_class.from_genesis(AtomicDB(db), params, state)
        genesis_hash = encode_hex(chain.get_canonical_block_header_by_number(BlockNumber(0)).hash)
        db.set_meta("format_version", str(FORMAT_VERSION))
        db.set_meta("chain_id", str(self.chain_id))
        db.set_meta("operator_address", to_checksum_address(operator))
        db.set_meta("genesis_hash", genesis_hash)
        db.set_meta("created_at", str(int(time.time())))
        db.commit()
        return key, genesis_hash

    def _read_key(self) -> str:
        text = self.key_path.read_text().strip()
        try:
            raw = bytes.fromhex(text.removeprefix("0x"))
        except ValueError:
            raw = b""
        if len(raw) != 32:
            raise EmbeddedChainError(
                f"{self.key_path} does not hold a 32-byte hex private key", path=str(self.key_path), kind="invalid"
            )
        return "0x" + raw.hex()

    def _write_new_key(self) -> str:
        key = "0x" + secrets.token_bytes(32).hex()
        fd = os.open(self.key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, (key + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        return key

    # locking: one thread of one process at a time

    @contextlib.contextmanager
    def _locked(self, timeout: float) -> Iterator[None]:
        """Hold `<directory>/lock` (flock, exclusive) for this thread alone.

        Waiters queue on a turnstile, `<directory>/lock.queue`, taken before the lock and let go once it is held: a
        holder that lets go and asks again waits behind whoever was already waiting, so a busy process cannot starve
        another. Each call opens its own descriptors, so threads of one process exclude each other the same way.
        """
        me = threading.get_ident()
        if me in self._holders:
            raise EmbeddedChainError(
                f"the chain in {self.directory} is already connected in this thread: use that connection",
                path=str(self.directory),
            )
        deadline = time.monotonic() + timeout
        lock_fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            queue_fd = os.open(self.directory / QUEUE_FILE, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                self._flock(queue_fd, deadline, timeout)
                self._flock(lock_fd, deadline, timeout)
            finally:
                os.close(queue_fd)  # lets go of the turnstile
            self._holders.add(me)
            try:
                yield
            finally:
                self._holders.discard(me)
                fcntl.flock(lock_fd, fcntl.LOCK_UN)
        finally:
            os.close(lock_fd)

    def _flock(self, fd: int, deadline: float, timeout: float) -> None:
        delay = 0.001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise self._busy(timeout) from None
                time.sleep(delay)
                delay = min(delay * 2, 0.01)

    def _busy(self, timeout: float) -> EmbeddedChainError:
        return EmbeddedChainError(
            f"the chain in {self.directory} is in use by another process (lock {self.directory / LOCK_FILE}) "
            f"and was not let go within {timeout:g} s",
            kind="unavailable",
            path=str(self.directory),
        )


__all__ = [
    "DEFAULT_CHAIN_ID",
    "FORMAT_VERSION",
    "EmbeddedChain",
    "EmbeddedChainError",
    "PersistentEthereumTester",
    "PersistentPyEVMBackend",
    "SQLiteDB",
    "chain_class",
]
