"""Who may call each route: every route declares one rule beside it, and this module decides it.

A route declares its rule with a dependency, `who: Principal = Depends(policy.allow("key"))` or
`dependencies=[Depends(policy.allow("admin"))]`; the dependency runs before the body is used, so an unauthorised
caller is refused (401/403) before any 400 or 503. The decision itself is `tally.answers.policy`'s, shared with the
studio's pages; this module reads the bearer key and declares the rules. The rules:

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

from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import RouteContext, iter_route_contexts
from starlette.routing import BaseRoute, Mount

from tally.answers import (
    RULE_NAMES,
    Declared,
    Rule,
    RuleName,
    decide,
    is_address_of,
    make_rule,
    may_read_record,
    needs_caller,
)
from tally.api.auth import optional_principal
from tally.api.auth import principal as required_principal
from tally.api.state import app_state
from tally.identity import Principal

__all__ = [
    "RULE_NAMES", "Allow", "Rule", "RuleName", "allow", "is_address_of", "may_read_record", "policy_table",
    "routes_of", "rule_of",
]  # fmt: skip

# Pages FastAPI adds itself (the schema and its viewers): public, they describe the API, not its data.
FRAMEWORK_ROUTES = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
# The studio's mount: anyone may reach it (its sign-in page); each of its pages declares its own rule, decided by
# the same policy (tally.studio, docs/studio.md).
STUDIO_MOUNT = "/studio"


class Allow(Declared):
    """The dependency a route declares; FastAPI calls it with the request before the route runs."""

    def __call__(self, request: Request) -> Principal | None:
        state = app_state(request)
        if needs_caller(state, self.rule):
            who: Principal | None = required_principal(request, state)  # 401 naming the header when none is sent
        else:
            who = optional_principal(request, state)
        return decide(state, self.rule, who, request.path_params)


def allow(name: RuleName, *roles: str) -> Allow:
    """The rule of one route: `allow("role", "developer", "owner")`, `allow("datanet_owner")`, ..."""
    return Allow(make_rule(name, *roles))


def _rules_in(dependant: Dependant) -> list[Rule]:
    found = []
    for dep in dependant.dependencies:
        if isinstance(dep.call, Declared):
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
    if isinstance(getattr(route, "original_route", route), Mount) and getattr(route, "path", None) == STUDIO_MOUNT:
        return Rule("anonymous")
    return None


def policy_table(app: FastAPI) -> list[tuple[str, str, Rule | None]]:
    """(methods, path, rule) for every route, sorted by path: the table docs/security.md shows."""
    rows = []
    for route in routes_of(app):
        methods = sorted((getattr(route, "methods", None) or {"GET"}) - {"HEAD"})
        rows.append((",".join(methods), str(getattr(route, "path", "")), rule_of(route)))
    return sorted(rows, key=lambda r: (r[1], r[0]))
