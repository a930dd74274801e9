"""The one access policy: who may do what, decided here for every door that serves people (the API's routes, the
studio's pages).

A door reads its caller (a bearer key, a studio session) into a `Principal` or None (anonymous), then asks
`decide(runtime, rule, who, params)`; it declares each route's rule with a dependency that subclasses `Declared`,
so the rule can be read back from the route table. The rules:

- `anonymous`: anyone; a known caller is still passed on (the route may show more to it).
- `inference`: anonymous while `server.anonymous_inference` is true (anonymous answers accrue no fees), else a key.
- `key`: any signed-in caller; the packages then show each caller only what it may read.
- `role`: a caller holding one of the named roles (admin holds all), else forbidden.
- `admin`: a caller with the admin role.
- `datanet_owner`: a caller with the owner role whose account owns the datanet `{slug}`, or an admin; another
  account is forbidden (not found, for a private datanet it may not read).
- `record_reader`: the requester of the attribution record `{inference_id}`, the developer of the adapter that
  answered, or an admin; anyone else is told the record does not exist, so its existence does not leak.
- `account`: the account whose address is `{address}`, or an admin; anyone else is forbidden.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, get_args

from tally.answers.runtime import Runtime
from tally.config.errors import TallyError
from tally.identity import Principal

RuleName = Literal["anonymous", "inference", "key", "role", "admin", "datanet_owner", "record_reader", "account"]
RULE_NAMES: tuple[str, ...] = get_args(RuleName)


class PolicyError(TallyError):
    """A caller the rule turns away: `unauthenticated` (no caller where one is needed) or `forbidden`."""

    kind = "forbidden"


@dataclass(frozen=True)
class Rule:
    name: RuleName
    roles: tuple[str, ...] = ()


def make_rule(name: RuleName, *roles: str) -> Rule:
    """A checked rule: `make_rule("role", "developer", "owner")`, `make_rule("datanet_owner")`, ..."""
    if name not in RULE_NAMES:
        raise ValueError(f"unknown rule {name!r}; rules: {', '.join(RULE_NAMES)}")
    if (name == "role") != bool(roles):
        raise ValueError("the role rule names its roles, and only it does")
    return Rule(name, roles)


class Declared:
    """Base of the dependency a door declares on a route; the route table reads `rule` back."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule


def needs_caller(state: Runtime, rule: Rule) -> bool:
    """Whether the rule turns an anonymous caller away."""
    if rule.name == "anonymous":
        return False
    if rule.name == "inference":
        return not state.settings.server.anonymous_inference
    return True


def decide(state: Runtime, rule: Rule, who: Principal | None, params: Mapping[str, str]) -> Principal | None:
    """The caller the route may serve, or a `TallyError` (unauthenticated, forbidden, not found). `params` are the
    route's path parameters (`slug`, `address`, `inference_id`) the rule names."""
    if who is None:
        if needs_caller(state, rule):
            raise PolicyError("sign in first: this needs an API key", kind="unauthenticated")
        return None
    name = rule.name
    if name in ("anonymous", "inference", "key"):
        return who
    if name in ("role", "admin"):
        return _with_role(who, rule.roles or ("admin",))
    if name == "datanet_owner":
        _owns_datanet(state, who, params["slug"])
        return who
    if name == "account":
        return _is_account(who, params["address"])
    _reads_record(state, who, params["inference_id"])
    return who


def _with_role(who: Principal, roles: tuple[str, ...]) -> Principal:
    if not who.has(*roles):
        raise PolicyError(
            f"this needs the {' or '.join(roles)} role; your key has {', '.join(sorted(who.roles)) or 'no role'}",
            roles=list(roles),
        )
    return who


def is_address_of(who: Principal, address: str) -> bool:
    """Whether `address` (in any letter case) is the caller's own."""
    from tally.identity.addresses import checksum_address

    return checksum_address(address) == who.address


def _is_account(who: Principal, address: str) -> Principal:
    if "admin" not in who.roles and not is_address_of(who, address):
        raise PolicyError(f"only the account {address} itself or an admin may see this", address=address)
    return who


def _owns_datanet(state: Runtime, who: Principal, slug: str) -> None:
    from tally.datanets.service import manage

    with state.store.read() as s:
        # ownership with the owner role on the key (datanets.service.is_manager); forbidden, or not found when the
        # caller may not even read the datanet, so a private datanet's existence does not leak
        manage(s, who, slug, "manage it")


def may_read_record(who: Principal, requested_by: str | None, developer: str | None) -> bool:
    """The record's requester, the developer of the adapter that answered, or an admin."""
    return "admin" in who.roles or who.address in {requested_by, developer} - {None}


def _reads_record(state: Runtime, who: Principal, inference_id: str) -> None:
    from tally.attribution import AttributionError, get_record

    with state.store.read() as s:
        record, _ = get_record(s, inference_id)  # a missing record is not found with the same message as below
    if not may_read_record(who, record.requested_by, record.credits.developer):
        raise AttributionError(f"no attribution record for inference {inference_id!r}", kind="not_found")
