"""The fee policy: what an answer costs and who gets which part of the fee.

A YAML file (settings `rewards.policy`) or the built-in default. Unknown keys are errors, because a typo in a
money rule must never fall back silently to a default; an error names the file, the YAML line and the field.
Amounts are integers in the currency's base units (like wei), so no money is ever lost to floating point.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from tally.config import Settings
from tally.config.yaml_errors import read_yaml, validate
from tally.identity.addresses import NOT_AN_ADDRESS, checksum_address
from tally.ledger.canonical import canonical_json
from tally.rewards.errors import PolicyError

SPLIT_TOLERANCE = 1e-9


def _address(value: str) -> str:
    address = checksum_address(value)
    if address is None:
        raise ValueError(f"{value!r} {NOT_AN_ADDRESS}")  # a ValueError, so pydantic reports the field
    return address


Address = Annotated[str, AfterValidator(_address)]
BaseUnits = Annotated[int, Field(ge=0, strict=True)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Currency(_Section):
    symbol: str = Field("TLY", pattern=r"^[A-Za-z0-9]{1,16}$")
    decimals: int = Field(6, ge=0, le=36, strict=True)


class TokenPrices(_Section):
    """Separate prices, in base units per 1000 tokens, for prompt and completion tokens."""

    prompt: BaseUnits
    completion: BaseUnits


class Split(_Section):
    """Fractions of each fee; they must sum to 1."""

    data: float = Field(ge=0, le=1)
    developer: float = Field(ge=0, le=1)
    platform: float = Field(ge=0, le=1)
    reserve: float = Field(ge=0, le=1)

    @model_validator(mode="after")
    def _sums_to_one(self) -> Split:
        total = self.data + self.developer + self.platform + self.reserve
        if abs(total - 1.0) > SPLIT_TOLERANCE:
            raise ValueError(f"the parts must sum to 1 (data + developer + platform + reserve = {total:g})")
        return self


class Accounts(_Section):
    platform: Address
    reserve: Address
    base_model: Address | None = None  # paid only when `paid.base_model` is true


class Paid(_Section):
    """Extra credited parties paid out of the platform part (see docs/rewards.md)."""

    base_model: bool = False
    evaluators: bool = False
    pipeline_author: bool = False


class FeePolicy(_Section):
    currency: Currency = Field(default_factory=Currency)
    price_per_1k_tokens: BaseUnits | TokenPrices
    split: Split
    accounts: Accounts
    paid: Paid = Field(default_factory=Paid)

    @model_validator(mode="after")
    def _paid_parties_have_accounts(self) -> FeePolicy:
        if self.paid.base_model and self.accounts.base_model is None:
            raise ValueError("paid.base_model is true: set accounts.base_model to the address that receives it")
        return self

    def prices(self) -> tuple[int, int]:
        """(prompt, completion) price in base units per 1000 tokens."""
        p = self.price_per_1k_tokens
        return (p, p) if isinstance(p, int) else (p.prompt, p.completion)

    def digest(self) -> str:
        """SHA-256 of the canonical JSON of the full policy: each accrual records which policy priced it."""
        return hashlib.sha256(canonical_json(self.model_dump(mode="json"))).hexdigest()


DEFAULT_POLICY = FeePolicy(
    price_per_1k_tokens=2000,
    split=Split(data=0.6, developer=0.2, platform=0.15, reserve=0.05),
    # Placeholders outside the EVM precompile range: set real treasury accounts before paying out on chain.
    accounts=Accounts(
        platform="0x0000000000000000000000000000000000007a11", reserve="0x000000000000000000000000000000000000fe5e"
    ),
)


def parse_policy(raw: object, source: str = "policy", *, text: str | None = None) -> FeePolicy:
    if not isinstance(raw, dict):
        raise PolicyError(f"{source}: expected a mapping with currency, price_per_1k_tokens, split, accounts, paid")
    return validate(FeePolicy, raw, source, PolicyError, text)


def load_policy(path: Path | str) -> FeePolicy:
    path = Path(path)
    raw, text = read_yaml(path, PolicyError, "fee policy file", " (settings rewards.policy)")
    return parse_policy(raw, str(path), text=text)


def effective_policy(settings: Settings) -> tuple[FeePolicy, str]:
    """The configured policy and where it came from (its path, or "built-in")."""
    path = settings.rewards.policy
    return (load_policy(path), str(path)) if path is not None else (DEFAULT_POLICY, "built-in")
