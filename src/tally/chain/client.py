"""The connection to the configured chain, and the one way this installation sends a transaction.

`Chain` opens either the embedded EVM (py-evm in this process, its state in `<data_dir>/chain`) or any JSON-RPC
node (`chain.url`). Every transaction goes through `Chain.transact`, which makes sending safe to repeat:

1. a purpose already mined (say `anchor:<log>:<size>`) is not sent again;
2. the signed bytes are written to the journal (`chain_transactions`) and committed *before* they are sent;
3. a pending journal row is resolved before anything new is signed: its receipt is looked up, else the same bytes
   are sent again (same hash, same nonce: a node cannot execute them twice), else, when another transaction took
   its nonce, it is marked dropped.

So a crash between sending and seeing the receipt leads to exactly one transaction on chain.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from tally.chain.contracts import load_artifact
from tally.chain.errors import ChainError
from tally.chain.tables import ContractRow, TransactionRow, kept
from tally.config import Settings
from tally.ledger.events import now_ts
from tally.store import Store

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount
    from web3 import Web3
    from web3.contract import Contract

    from tally.chain.embedded import EmbeddedChain

# Deployed on first use of the embedded chain, in this order (the distributor needs the token's address).
CONTRACTS = ("LedgerAnchor", "RewardToken", "RewardDistributor", "ContributionVerifier")
PRECHECK_GAS = 5_000_000  # the dry run's gas cap (a node would otherwise charge the sender a whole block's gas)
_TRANSIENT = ("timeout", "timed out", "connection", "temporarily", "502", "503", "504", "429")
_ALREADY_SENT = ("already known", "known transaction", "already imported", "alreadyknown")


@dataclass(frozen=True)
class Sent:
    """A mined transaction of ours."""

    purpose: str
    tx_hash: str
    block_number: int
    gas_used: int
    status: int
    receipt: Any  # web3's AttributeDict

    @property
    def contract_address(self) -> str | None:
        return self.receipt.get("contractAddress")


def hex0x(value: bytes | str) -> str:
    text = value.hex() if isinstance(value, bytes | bytearray) else str(value)
    return text if text.startswith("0x") else "0x" + text


def create_address(sender: str, nonce: int) -> str:
    """The address of the contract that `sender`'s transaction number `nonce` creates (keccak(rlp([sender, nonce])))."""
    import rlp
    from eth_utils import keccak, to_bytes, to_checksum_address

    return str(to_checksum_address(keccak(rlp.encode([to_bytes(hexstr=sender), nonce]))[12:]))


def _is_transient(exc: Exception) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return any(word in text for word in _TRANSIENT)


class Chain:
    """The configured chain. Use `with chain.connect() as w3:` around each group of calls."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.config = settings.chain
        self.embedded = self.config.url is None
        self._network: str | None = None
        self._embedded_chain: EmbeddedChain | None = None
        self._embedded_lock = threading.Lock()

    def embedded_chain(self) -> EmbeddedChain:
        """The embedded EVM, opened once per Chain (opening creates it on first use)."""
        from tally.chain.embedded import EmbeddedChain

        with self._embedded_lock:
            if self._embedded_chain is None:
                self._embedded_chain = EmbeddedChain(self.settings.chain_dir, chain_id=self.settings.chain_id)
            return self._embedded_chain

    # -- connection -------------------------------------------------------------------------------------------
    @contextmanager
    def connect(self) -> Iterator[Web3]:
        """A Web3 connection. The embedded chain is held exclusively for the duration (one writer at a time across
        processes); a JSON-RPC node is shared, and sending takes this installation's send lock instead."""
        if not self.config.enabled:
            raise ChainError(
                "the chain is off (chain.enabled = false in tally.toml or TALLY_CHAIN__ENABLED): turn it on to anchor"
                " or settle",
                kind="unavailable",
            )
        if self.embedded:
            with self.embedded_chain().connect() as w3:
                self._check_chain_id(w3)
                yield w3
            return
        with self._send_lock():
            yield self._rpc()

    def _rpc(self) -> Web3:
        from web3 import HTTPProvider, Web3
        from web3.providers.rpc.utils import ExceptionRetryConfiguration

        url = self.config.url or ""
        if not url.startswith(("http://", "https://")):
            raise ChainError(f"chain.url {url!r} is not an http:// or https:// JSON-RPC URL", kind="internal")
        import requests

        transient = (requests.ConnectionError, requests.Timeout, requests.HTTPError)
        retry = ExceptionRetryConfiguration(errors=transient, retries=self.config.retries, backoff_factor=0.25)
        w3 = Web3(HTTPProvider(url, request_kwargs={"timeout": 30}, exception_retry_configuration=retry))
        try:
            self._check_chain_id(w3)
        except ChainError:
            raise
        except Exception as exc:
            raise ChainError(f"the chain node at {url} does not answer: {exc}", kind="unavailable", url=url) from exc
        return w3

    def _check_chain_id(self, w3: Web3) -> None:
        actual = w3.eth.chain_id
        if actual != self.settings.chain_id:
            raise ChainError(
                f"the chain's id is {actual} but chain_id is set to {self.settings.chain_id}: contribution signatures"
                " and payouts are bound to the chain id, so set chain_id to the node's",
                kind="internal",
                chain_id=actual,
                configured=self.settings.chain_id,
            )

    @contextmanager
    def _send_lock(self) -> Iterator[None]:
        """One sender per installation: two processes must not pick the same nonce for the operator."""
        path = self.settings.chain_dir / "send.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def network(self, w3: Web3) -> str:
        """`<chain id>/<genesis hash>`: the key of every cached row."""
        if self._network is None:
            genesis = w3.eth.get_block(0)["hash"]
            self._network = f"{w3.eth.chain_id}/{hex0x(genesis)}"
        return self._network

    # -- accounts ---------------------------------------------------------------------------------------------
    def operator(self) -> LocalAccount:
        """The account that deploys, anchors and settles."""
        from eth_account import Account

        if self.embedded:
            return Account.from_key(self.embedded_chain().operator_key)
        key = os.environ.get(self.config.private_key_env)
        if not key:
            raise ChainError(
                f"no operator key: set {self.config.private_key_env} to the hex private key of the account that pays"
                " for anchoring and settlement on the chain at chain.url",
                kind="unavailable",
            )
        try:
            return Account.from_key(key)
        except Exception as exc:
            raise ChainError(f"{self.config.private_key_env} is not a valid private key", kind="internal") from exc

    # -- contracts --------------------------------------------------------------------------------------------
    def contract(self, w3: Web3, name: str) -> Contract:
        """A deployed contract, deploying the set on the embedded chain the first time it is needed."""
        address = self.configured_address(name) or self.recorded_address(w3, name)
        if address is None:
            if not self.embedded:
                raise ChainError(
                    f"no {name} on the chain at {self.config.url}: run `tally chain deploy`, or set chain."
                    f"{_SETTING[name]} in tally.toml to an existing deployment",
                    kind="unavailable",
                )
            address = self.deploy(w3)[name]
        return w3.eth.contract(address=w3.to_checksum_address(address), abi=load_artifact(name)["abi"])

    def configured_address(self, name: str) -> str | None:
        return None if self.embedded else getattr(self.config, _SETTING[name])

    def recorded_address(self, w3: Web3, name: str) -> str | None:
        """Where `name` is deployed, if it is. On the embedded chain the contracts are the operator's first
        transactions, so their addresses follow from the chain alone (a replaced database cannot point elsewhere);
        on another chain, the address this installation recorded when it deployed."""
        if self.embedded:
            address = create_address(self.operator().address, CONTRACTS.index(name))
        else:
            with self.store.read() as s:
                row = kept(s, s.get(ContractRow, (self.network(w3), name)))
            if row is None:
                return None
            address = row.address
        if not w3.eth.get_code(w3.to_checksum_address(address)):
            return None  # never deployed here, or the chain was reset under the database
        return address

    def deploy(self, w3: Web3) -> dict[str, str]:
        """Deploy every contract not yet deployed on this network; return name -> address."""
        operator = self.operator()
        addresses: dict[str, str] = {}
        for name in CONTRACTS:
            existing = self.configured_address(name) or self.recorded_address(w3, name)
            if existing:
                addresses[name] = existing
                continue
            if self.embedded and self._nonce(w3, operator.address, "pending") != CONTRACTS.index(name):
                raise ChainError(
                    f"the embedded chain in {self.settings.chain_dir} has no {name} at the operator's transaction "
                    f"{CONTRACTS.index(name)}: the directory is not a Tally chain any more; move it away to start anew",
                    kind="internal",
                )
            artifact = load_artifact(name)
            factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
            args: tuple[Any, ...] = {
                "LedgerAnchor": (operator.address,),
                "RewardToken": self._token_arguments(operator.address),
                "RewardDistributor": (addresses.get("RewardToken"), operator.address),
                "ContributionVerifier": (),
            }[name]
            # The purpose names the bytecode: a new build deploys anew rather than reusing an older address.
            purpose = f"deploy:{name}:{hashlib.sha256(artifact['bytecode'].encode()).hexdigest()[:16]}"
            sent = self.transact(w3, purpose, factory.constructor(*args), operator, allow_repeat=True)
            if sent.contract_address is None:
                raise ChainError(f"deploying {name} returned no contract address", kind="internal")
            with self.store.transaction() as s:
                s.merge(ContractRow(network=self.network(w3), name=name, address=sent.contract_address,
                                    tx_hash=sent.tx_hash, block_number=sent.block_number))  # fmt: skip
            addresses[name] = sent.contract_address
        return addresses

    def _token_arguments(self, owner: str) -> tuple[Any, ...]:
        """The reward token speaks the fee policy's currency: its symbol and decimals."""
        from tally.rewards import effective_policy

        currency = effective_policy(self.settings)[0].currency
        return (f"Tally {currency.symbol}", currency.symbol, currency.decimals, owner)

    # -- transactions -----------------------------------------------------------------------------------------
    def transact(self, w3: Web3, purpose: str, call: Any, account: LocalAccount, *, allow_repeat: bool = False) -> Sent:
        """Sign, journal, send and await `call` (a contract function or constructor), once per purpose.

        A purpose already mined returns that transaction (unless `allow_repeat`: a redeploy after a chain reset).
        A reverted transaction raises ChainError (conflict) with the revert reason."""
        network = self.network(w3)
        self.reconcile(w3, account.address)
        if not allow_repeat:
            with self.store.read() as s:
                done = kept(s, s.execute(
                    select(TransactionRow).where(TransactionRow.network == network, TransactionRow.purpose == purpose,
                                                 TransactionRow.status == "mined")
                ).scalars().first())  # fmt: skip
            if done is not None:
                return self._sent(w3, done)
        if hasattr(call, "call"):  # a function, not a constructor: a revert is explained here, before any gas
            try:
                call.call({"from": account.address, "gas": PRECHECK_GAS})
            except Exception as exc:
                reason = revert_reason(exc)
                raise ChainError(f"{purpose} would revert: {reason}", kind="conflict", purpose=purpose) from exc
        tx = self._build(w3, call, account)
        signed = account.sign_transaction(tx)
        tx_hash = hex0x(signed.hash)
        with self.store.transaction() as s:
            s.add(TransactionRow(network=network, purpose=purpose, sender=account.address, nonce=tx["nonce"],
                                 tx_hash=tx_hash, raw=hex0x(signed.raw_transaction), status="pending",
                                 created_at=now_ts(), updated_at=now_ts()))  # fmt: skip
        self._broadcast(w3, signed.raw_transaction)
        return self._await(w3, purpose, tx_hash)

    def _build(self, w3: Web3, call: Any, account: LocalAccount) -> dict[str, Any]:
        nonce = self._nonce(w3, account.address, "pending")
        base_fee = int(self._retry(lambda: w3.eth.get_block("latest")).get("baseFeePerGas") or 0)
        try:
            priority = int(w3.eth.max_priority_fee)
        except Exception:  # a node without eth_maxPriorityFeePerGas
            priority = 10**9
        max_fee = 2 * base_fee + priority
        if max_fee > self.config.max_fee_gwei * 10**9:
            raise ChainError(
                f"the network asks up to {max_fee / 1e9:.2f} gwei per gas, above chain.max_fee_gwei "
                f"({self.config.max_fee_gwei}): wait, or raise the setting",
                kind="unavailable",
                max_fee_gwei=max_fee / 1e9,
            )
        tx: dict[str, Any] = call.build_transaction(
            {"from": account.address, "nonce": nonce, "chainId": self.settings.chain_id,
             "maxFeePerGas": max_fee, "maxPriorityFeePerGas": priority}
        )  # fmt: skip
        params: Any = {k: v for k, v in tx.items() if k != "gas"}
        estimate = self._retry(lambda: w3.eth.estimate_gas(params))
        tx["gas"] = int(estimate * self.config.gas_margin)
        return tx

    def _nonce(self, w3: Web3, address: str, block: str) -> int:
        target: Any = address
        return int(self._retry(lambda: w3.eth.get_transaction_count(target, block)))  # type: ignore[arg-type]

    def _broadcast(self, w3: Web3, raw: bytes | str) -> None:
        payload: Any = raw
        try:
            self._retry(lambda: w3.eth.send_raw_transaction(payload))
        except Exception as exc:
            if any(word in str(exc).lower() for word in _ALREADY_SENT):
                return  # the node has it already: sending the same bytes twice is the same transaction
            raise ChainError(f"the chain refused the transaction: {revert_reason(exc)}", kind="unavailable") from exc

    def _await(self, w3: Web3, purpose: str, tx_hash: str) -> Sent:
        deadline = time.monotonic() + self.config.receipt_timeout_seconds
        while True:
            receipt = self._receipt(w3, tx_hash)
            if receipt is not None:
                head = self._retry(lambda: w3.eth.block_number)
                if head - receipt["blockNumber"] + 1 >= self.config.confirmations:
                    break
            if time.monotonic() > deadline:
                raise ChainError(
                    f"{purpose}: transaction {tx_hash} has no receipt (with {self.config.confirmations} confirmations) "
                    f"after {self.config.receipt_timeout_seconds:.0f} s; it stays in the journal and is resolved on "
                    "the next chain command (tally chain status shows it)",
                    kind="unavailable",
                    tx_hash=tx_hash,
                )
            time.sleep(0.2)
        status = int(receipt["status"])
        with self.store.transaction() as s:
            row = s.execute(select(TransactionRow).where(TransactionRow.tx_hash == tx_hash)).scalar_one()
            row.status = "mined" if status == 1 else "reverted"
            row.block_number = int(receipt["blockNumber"])
            row.gas_used = int(receipt["gasUsed"])
            row.updated_at = now_ts()
        if status != 1:
            raise ChainError(f"{purpose}: transaction {tx_hash} reverted on chain", kind="conflict", tx_hash=tx_hash)
        return Sent(purpose, tx_hash, int(receipt["blockNumber"]), int(receipt["gasUsed"]), status, receipt)

    def _receipt(self, w3: Web3, tx_hash: str) -> Any:
        from web3.exceptions import TransactionNotFound

        try:
            return self._retry(lambda: w3.eth.get_transaction_receipt(tx_hash))  # type: ignore[arg-type]
        except TransactionNotFound:
            return None

    def _sent(self, w3: Web3, row: TransactionRow) -> Sent:
        receipt = self._receipt(w3, row.tx_hash)
        if receipt is None:
            raise ChainError(f"{row.purpose}: mined transaction {row.tx_hash} is no longer on chain (a reorg?)")
        return Sent(row.purpose, row.tx_hash, int(receipt["blockNumber"]), int(receipt["gasUsed"]),
                    int(receipt["status"]), receipt)  # fmt: skip

    def reconcile(self, w3: Web3, sender: str | None = None) -> list[str]:
        """Resolve every pending journal row (of `sender`, or all): mined, reverted, re-sent, or dropped. Returns
        the purposes it resolved."""
        network = self.network(w3)
        with self.store.read() as s:
            query = select(TransactionRow).where(TransactionRow.network == network,
                                                 TransactionRow.status == "pending")  # fmt: skip
            if sender is not None:
                query = query.where(TransactionRow.sender == sender)
            pending = kept(s, list(s.execute(query.order_by(TransactionRow.nonce)).scalars()))
        resolved = []
        for row in pending:
            if self._receipt(w3, row.tx_hash) is None:
                taken = self._nonce(w3, row.sender, "latest") > row.nonce
                if taken:
                    with self.store.transaction() as s:
                        stale = s.get(TransactionRow, row.id)
                        if stale is not None:
                            stale.status, stale.updated_at = "dropped", now_ts()
                    resolved.append(row.purpose)
                    continue
                self._broadcast(w3, row.raw)
            try:
                self._await(w3, row.purpose, row.tx_hash)
            except ChainError as exc:
                if exc.kind != "conflict":  # a revert is recorded; anything else stays pending
                    raise
            resolved.append(row.purpose)
        return resolved

    def pending(self) -> list[TransactionRow]:
        with self.store.read() as s:
            return kept(s, list(s.execute(select(TransactionRow).where(TransactionRow.status == "pending")).scalars()))

    def _retry(self, fn: Callable[[], Any]) -> Any:
        """Call `fn`, retrying transient transport errors with backoff (the embedded chain has none)."""
        for attempt in range(self.config.retries + 1):
            try:
                return fn()
            except Exception as exc:
                if attempt == self.config.retries or not _is_transient(exc):
                    raise
                time.sleep(min(0.25 * 2**attempt, 5.0))
        raise AssertionError("unreachable")


_SETTING = {
    "LedgerAnchor": "anchor_address",
    "RewardToken": "token_address",
    "RewardDistributor": "distributor_address",
    "ContributionVerifier": "verifier_address",
}


def revert_reason(exc: Exception) -> str:
    """A revert's custom error decoded with the contracts' ABIs (`AlreadyClaimed(3, 0)`), else the node's message.
    web3 over JSON-RPC reports the revert data as hex (`ContractCustomError.data`); eth-tester as the raw bytes."""
    data = getattr(exc, "data", None)
    if data is None and exc.args and isinstance(exc.args[0], str) and "execution reverted: b" in exc.args[0]:
        data = exc.args[0]
    raw = None
    if isinstance(data, str) and data.startswith("0x"):
        raw = data
    elif isinstance(data, str) and "execution reverted: b" in data:
        import ast

        try:
            raw = "0x" + ast.literal_eval(data.split("execution reverted: ", 1)[1]).hex()
        except (ValueError, SyntaxError):
            raw = None
    if raw is not None and len(raw) >= 10:
        decoded = decode_custom_error(raw)
        if decoded:
            return decoded
    return getattr(exc, "message", None) or str(exc)


def decode_custom_error(data: str) -> str | None:
    from eth_abi import decode
    from eth_utils import keccak

    for name in CONTRACTS:
        for item in load_artifact(name)["abi"]:
            if item.get("type") != "error":
                continue
            types = [i["type"] for i in item["inputs"]]
            if "0x" + keccak(text=f"{item['name']}({','.join(types)})")[:4].hex() == data[:10]:
                try:
                    values = decode(types, bytes.fromhex(data[10:]))
                except Exception:
                    return item["name"]
                shown = ", ".join(hex0x(v) if isinstance(v, bytes) else str(v) for v in values)
                return f"{item['name']}({shown})"
    return None
