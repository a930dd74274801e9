"""Who may call each route: every route declares one rule beside it, and this module decides it.

A route declares its rule with a dependency, `who: Principal = Depends(policy.allow("key"))` or
`dependencies=[Depends(policy.allow("admin"))]`; the dependency runs before the body is used, so an unauthorised
caller is refused (401/403) before any 400 or 503. The rules:

- `anonymous`: anyone; a valid key is still read (the route may show more to it), an invalid one is ignored.
- `inference`: anonymous while `server.anonymous_inference` is true (anonymous answers accrue no fees), else a key.
- `key`: any valid key (401 without one); the packages then show each caller only what it may read.
- `role`: a key holding one of the named roles (admin holds all), else 403.
- `admin`: a key with the admin role.
- `datanet_owner`: a key with the owner role whose account owns the datanet `{slug}`, or an admin; another
  account gets 403 (404 for a private datanet it may not read).
- `record_reader`: the requester of the attribution record `{inference_id}`, the developer of the adapter that
  answered, or an admin; anyone else with a key gets 404, so a record's existence does not leak.
- `account`: the account whose address is the route's `{address}`, or an admin; another key gets 403.

`rule_of(route)` reads a route's rule back: the authorization matrix test and docs/security.md use it, and a route
without a rule fails the suite.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import RouteContext, iter_route_contexts
from starlette.routing import BaseRoute

from tally.answers import Runtime
from tally.api.auth import optional_principal
from tally.api.auth import principal as required_principal
from tally.api.errors import ApiError
from tally.api.state import app_state
from tally.identity import Principal

RuleName = Literal["anonymous", "inference", "key", "role", "admin", "datanet_owner", "record_reader", "account"]
RULE_NAMES: tuple[str, ...] = get_args(RuleName)

# Pages FastAPI adds itself (the schema and its viewers): public, they describe the API, not its data.
FRAMEWORK_ROUTES = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


@dataclass(frozen=True)
class Rule:
    name: RuleName
    roles: tuple[str, ...] = ()


class Allow:
    """The dependency a route declares; FastAPI calls it with the request before the route runs."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule

    def __call__(self, request: Request) -> Principal | None:
        state = app_state(request)
        name = self.rule.name
        if name == "anonymous":
            return optional_principal(request, state)
        if name == "inference":
            if state.settings.server.anonymous_inference:
                return optional_principal(request, state)
            return required_principal(request, state)
        who = required_principal(request, state)
        if name == "key":
            return who
        if name in ("role", "admin"):
            return _with_role(who, self.rule.roles or ("admin",))
        if name == "datanet_owner":
            _owns_datanet(state, who, request.path_params["slug"])
            return who
        if name == "account":
            return _is_account(who, request.path_params["address"])
        _reads_record(state, who, request.path_params["inference_id"])
        return who


def allow(name: RuleName, *roles: str) -> Allow:
    """The rule of one route: `allow("role", "developer", "owner")`, `allow("datanet_owner")`, ..."""
    if name not in RULE_NAMES:
        raise ValueError(f"unknown rule {name!r}; rules: {', '.join(RULE_NAMES)}")
    if (name == "role") != bool(roles):
        raise ValueError("the role rule names its roles, and only it does")
    return Allow(Rule(name, roles))


def _with_role(who: Principal, roles: tuple[str, ...]) -> Principal:
    if not who.has(*roles):
        raise ApiError(
            403,
            f"this needs the {' or '.join(roles)} role; your key has {', '.join(sorted(who.roles)) or 'no role'}",
            type_="permission_error",
        )
    return who


def is_address_of(who: Principal, address: str) -> bool:
    """Whether `address` (in any letter case) is the caller's own."""
    from tally.identity.addresses import checksum_address

    return checksum_address(address) == who.address


def _is_account(who: Principal, address: str) -> Principal:
    if "admin" not in who.roles and not is_address_of(who, address):
        raise ApiError(403, f"only the account {address} itself or an admin may see this", type_="permission_error")
    return who


def _owns_datanet(state: Runtime, who: Principal, slug: str) -> None:
    from tally.datanets.service import manage

    with state.store.read() as s:
        # ownership with the owner role on the key (datanets.service.is_manager); 403, or 404 when the caller may
        # not even read the datanet, so a private datanet's existence does not leak
        manage(s, who, slug, "manage it")


def may_read_record(who: Principal, requested_by: str | None, developer: str | None) -> bool:
    """The record's requester, the developer of the adapter that answered, or an admin."""
    return "admin" in who.roles or who.address in {requested_by, developer} - {None}


def _reads_record(state: Runtime, who: Principal, inference_id: str) -> None:
    from tally.attribution import AttributionError, get_record

    with state.store.read() as s:
        record, _ = get_record(s, inference_id)  # a missing record is a 404 with the same message as below
    if not may_read_record(who, record.requested_by, record.credits.developer):
        raise AttributionError(f"no attribution record for inference {inference_id!r}", kind="not_found")


def _rules_in(dependant: Dependant) -> list[Rule]:
    found = []
    for dep in dependant.dependencies:
        if isinstance(dep.call, Allow):
            found.append(dep.call.rule)
        found.extend(_rules_in(dep))
    return found


def routes_of(app: FastAPI) -> list[RouteContext]:
    """Every route the app serves, with included routers flattened (their prefixes and dependencies applied)."""
    return list(iter_route_contexts(app.routes))


def rule_of(route: BaseRoute | RouteContext) -> Rule | None:
    """The rule a route declares; None when it declares none (or more than one, which is as bad)."""
    dependant = getattr(route, "dependant", None)
    if isinstance(dependant, Dependant):
        rules = set(_rules_in(dependant))
        return rules.pop() if len(rules) == 1 else None
    if getattr(route, "path", None) in FRAMEWORK_ROUTES:
        return Rule("anonymous")
    return None


def policy_table(app: FastAPI) -> list[tuple[str, str, Rule | None]]:
    """(methods, path, rule) for every route, sorted by path: the table docs/security.md shows."""
    rows = []
    for route in routes_of(app):
        methods = sorted((getattr(route, "methods", None) or {"GET"}) - {"HEAD"})
        rows.append((",".join(methods), str(getattr(route, "path", "")), rule_of(route)))
    return sorted(rows, key=lambda r: (r[1], r[0]))
