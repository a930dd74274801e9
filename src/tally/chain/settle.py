"""Settlement: a closed epoch's payout root posted to `RewardDistributor` and funded; claims; on-chain balances.

The operator settles (approve the distributor for the epoch's total, then `setRoot`, which pulls the total), and
each contributor claims with the proof `tally rewards proof` gives, signed by the contributor's own key. On the
embedded chain the operator owns the reward token and mints what an epoch needs; on a real chain the operator must
hold the token already.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tally.chain.client import Chain, hex0x
from tally.chain.errors import ChainError
from tally.rewards import get_epoch, payout_proof
from tally.rewards.epochs import PayoutProof
from tally.rewards.tables import PayoutRow

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount
    from web3 import Web3

DISTRIBUTOR = "RewardDistributor"
TOKEN = "RewardToken"
ZERO_ROOT = b"\x00" * 32
CLAIM_GAS_FUNDING = 10**17  # wei the embedded chain's operator gives a claimant short of ETH (0.1 ETH)


@dataclass(frozen=True)
class Settlement:
    epoch: int
    root: str
    total: int
    accounts: int
    tx_hash: str | None  # None: the chain already held this epoch's root
    block_number: int | None
    gas_used: int | None

    def as_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "root": self.root, "total": str(self.total), "accounts": self.accounts,
                "transaction": self.tx_hash, "block_number": self.block_number, "gas_used": self.gas_used}  # fmt: skip


def settle_epoch(chain: Chain, epoch: int) -> Settlement:
    """Post epoch `epoch`'s payout root to the distributor and fund it with the epoch's total."""
    with chain.store.read() as s:
        closed = get_epoch(s, epoch)
        accounts = s.query(PayoutRow).filter(PayoutRow.epoch == epoch).count()
    with chain.connect() as w3:
        distributor = chain.contract(w3, DISTRIBUTOR)
        posted = bytes(distributor.functions.rootOf(epoch).call())
        if posted != ZERO_ROOT:
            if hex0x(posted) != closed.root:
                raise ChainError(
                    f"epoch {epoch} is settled on chain with root {hex0x(posted)}, but the local epoch's root is "
                    f"{closed.root}",
                    kind="conflict", epoch=epoch, chain_root=hex0x(posted), local_root=closed.root,
                )  # fmt: skip
            return Settlement(epoch, closed.root, closed.total, accounts, None, None, None)
        operator = chain.operator()
        token = _token(chain, w3, distributor)
        held = token.functions.balanceOf(operator.address).call()
        if held < closed.total:
            if token.functions.owner().call() != operator.address:
                raise ChainError(
                    f"the operator {operator.address} holds {held} of the reward token; epoch {epoch} needs "
                    f"{closed.total}: fund the operator first",
                    kind="conflict", held=str(held), needed=str(closed.total),
                )  # fmt: skip
            chain.transact(w3, f"mint:{epoch}", token.functions.mint(operator.address, closed.total - held), operator)
        if token.functions.allowance(operator.address, distributor.address).call() < closed.total:
            call = token.functions.approve(distributor.address, closed.total)
            chain.transact(w3, f"approve:{epoch}", call, operator)
        call = distributor.functions.setRoot(epoch, bytes.fromhex(closed.root[2:]), closed.total, accounts)
        sent = chain.transact(w3, f"settle:{epoch}", call, operator)
        return Settlement(epoch, closed.root, closed.total, accounts, sent.tx_hash, sent.block_number, sent.gas_used)


def _token(chain: Chain, w3: Web3, distributor: Any) -> Any:
    from tally.chain.contracts import load_artifact

    address = distributor.functions.token().call()
    return w3.eth.contract(address=address, abi=load_artifact(TOKEN)["abi"])


@dataclass(frozen=True)
class Claim:
    epoch: int
    index: int
    account: str
    amount: int
    tx_hash: str | None  # None: already claimed
    gas_used: int | None
    balance: int

    def as_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "index": self.index, "account": self.account, "amount": str(self.amount),
                "transaction": self.tx_hash, "gas_used": self.gas_used, "balance": str(self.balance)}  # fmt: skip


def claim_payout(chain: Chain, claimant: LocalAccount, epoch: int | None = None) -> Claim:
    """Claim the claimant's payout in `epoch` (else the latest epoch that pays it), sent with its own key."""
    with chain.store.read() as s:
        proof = payout_proof(s, claimant.address, epoch)
    with chain.connect() as w3:
        distributor = chain.contract(w3, DISTRIBUTOR)
        if bytes(distributor.functions.rootOf(proof.epoch).call()) == ZERO_ROOT:
            raise ChainError(
                f"epoch {proof.epoch} is not settled on chain yet: the operator runs `tally rewards settle "
                f"{proof.epoch}` first",
                kind="conflict", epoch=proof.epoch,
            )  # fmt: skip
        token = _token(chain, w3, distributor)
        if distributor.functions.isClaimed(proof.epoch, proof.index).call():
            balance = token.functions.balanceOf(proof.account).call()
            return Claim(proof.epoch, proof.index, proof.account, proof.amount, None, None, balance)
        if chain.embedded and w3.eth.get_balance(claimant.address) < CLAIM_GAS_FUNDING // 2:
            _fund_gas(chain, w3, claimant.address)
        call = distributor.functions.claim(*claim_arguments(proof))
        sent = chain.transact(w3, f"claim:{proof.epoch}:{proof.index}", call, claimant)
        balance = token.functions.balanceOf(proof.account).call()
        return Claim(proof.epoch, proof.index, proof.account, proof.amount, sent.tx_hash, sent.gas_used, balance)


def claim_arguments(proof: PayoutProof) -> tuple[int, int, str, int, list[bytes]]:
    """`RewardDistributor.claim`'s arguments for a payout proof, in order."""
    return proof.epoch, proof.index, proof.account, proof.amount, [bytes.fromhex(p[2:]) for p in proof.proof]


def claim_transaction(chain: Chain, proof: PayoutProof) -> dict[str, Any]:
    """The unsigned call a wallet sends to claim (`to` and `data`), for a claimant who signs elsewhere."""
    with chain.connect() as w3:
        distributor = chain.contract(w3, DISTRIBUTOR)
        data = distributor.encode_abi("claim", args=claim_arguments(proof))
        return {"chain_id": chain.settings.chain_id, "to": distributor.address, "data": data,
                "proof": proof.as_json()}  # fmt: skip


def _fund_gas(chain: Chain, w3: Web3, address: str) -> None:
    """Give a claimant on the embedded chain enough ETH for its claim's gas (there is no faucet on a local chain)."""
    operator = chain.operator()
    tx: Any = {"to": address, "value": CLAIM_GAS_FUNDING, "nonce": w3.eth.get_transaction_count(operator.address),
          "chainId": chain.settings.chain_id, "gas": 21_000, "maxFeePerGas": 2 * w3.eth.gas_price + 10**9,
          "maxPriorityFeePerGas": 10**9}  # fmt: skip
    signed = operator.sign_transaction(tx)
    w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(signed.raw_transaction))


@dataclass(frozen=True)
class OnChainBalance:
    account: str
    token: str
    balance: int
    claimed: list[int]
    unclaimed: list[dict[str, Any]]

    def as_json(self) -> dict[str, Any]:
        return {"account": self.account, "token": self.token, "balance": str(self.balance), "claimed": self.claimed,
                "unclaimed": self.unclaimed}  # fmt: skip


def onchain_balance(chain: Chain, address: str) -> OnChainBalance:
    """The account's reward-token balance on chain and, per epoch that pays it, whether it was claimed."""
    from tally.rewards.statement import checksum

    account = checksum(address)
    with chain.store.read() as s:
        payouts = [(p.epoch, p.index, p.amount) for p in
                   s.query(PayoutRow).filter(PayoutRow.account == account).order_by(PayoutRow.epoch)]  # fmt: skip
    with chain.connect() as w3:
        distributor = chain.contract(w3, DISTRIBUTOR)
        token = _token(chain, w3, distributor)
        claimed, unclaimed = [], []
        for epoch, index, amount in payouts:
            if distributor.functions.isClaimed(epoch, index).call():
                claimed.append(epoch)
            else:
                settled = bytes(distributor.functions.rootOf(epoch).call()) != ZERO_ROOT
                unclaimed.append({"epoch": epoch, "amount": amount, "settled": settled})
        return OnChainBalance(account, token.address, token.functions.balanceOf(account).call(), claimed, unclaimed)
