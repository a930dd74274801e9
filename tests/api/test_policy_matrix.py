"""The authorization matrix, generated from the app's route table: every route is called as anonymous, each role,
the owner of a datanet and another owner, and the answer is compared with the rule the route declares. A route
that declares no rule fails here.

The expectations below are written out on their own (not computed by `tally.api.policy`), so a wrong decision in
the policy module shows up as a mismatch rather than agreeing with itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi.routing import APIRoute, RouteContext
from fastapi.testclient import TestClient

from tally.api import create_app, policy
from tally.attribution import AttributionRecord, Credits
from tally.attribution.tables import AttributionRow
from tally.config import Settings
from tally.datanets import service
from tally.identity import Principal, create_account, create_api_key
from tally.ledger import open_ledger
from tally.store import open_store

ACTORS: dict[str, list[str]] = {
    "admin": ["admin"],
    "owner": ["owner"],  # owns the datanet `dn` the routes are called on
    "other_owner": ["owner"],  # owns another datanet
    "contributor": ["contributor"],
    "developer": ["developer"],  # developed the adapter of the record `rec-1`
    "consumer": ["consumer"],  # requested the record `rec-1`
}
RECORD = "rec-1"


@dataclass
class World:
    client: TestClient
    headers: dict[str, dict[str, str]]  # actor -> headers; "anonymous" sends none
    addresses: dict[str, str]


def _world(settings: Settings) -> Iterator[World]:
    store = open_store(settings)
    ledger = open_ledger(settings, store)
    headers: dict[str, dict[str, str]] = {"anonymous": {}}
    addresses: dict[str, str] = {}
    with store.transaction() as s:
        for name, roles in ACTORS.items():
            account, _ = create_account(s, ledger, name.replace("_", "-"), roles)
            _, token = create_api_key(s, ledger, account)
            headers[name], addresses[name] = {"Authorization": f"Bearer {token}"}, account.address
        for owner, slug in (("owner", "dn"), ("other_owner", "other-dn")):
            service.create_datanet(
                s, ledger, Principal(addresses[owner], owner, frozenset({"owner"})), slug, kind="instruction",
                license="MIT", uses=["train"], max_upload_bytes=10_000, max_rows_per_day=10,
            )  # fmt: skip
        record = AttributionRecord(
            id=RECORD, mode="fast", model="m", adapter_hash=None, prompt_hash="0" * 64, answer_hash="0" * 64,
            prompt_tokens=1, completion_tokens=1, methods={}, shares=[],
            credits=Credits(developer=addresses["developer"]), requested_by=addresses["consumer"], created_at="t",
        )  # fmt: skip
        s.add(
            AttributionRow(
                id=RECORD, model="m", adapter_hash=None, record=record.model_dump(mode="json"), record_hash="0" * 64,
                created_at="t", ledger_seq=0,
            )
        )  # fmt: skip
    store.dispose()
    with TestClient(create_app(settings)) as client:  # no engine: inference routes answer 503 once allowed
        yield World(client, headers, addresses)


@pytest.fixture
def world(settings: Settings) -> Iterator[World]:
    yield from _world(settings)


def _path(route: RouteContext, w: World) -> str:
    values = {
        "slug": "dn", "datanet": "dn", "inference_id": RECORD, "address": w.addresses["contributor"], "seq": "0",
        "number": "1", "job_id": "ftjob-none", "key_id": "none", "request_id": "1", "decision": "grant",
        "snapshot": "latest",
    }  # fmt: skip
    return str(route.path_format).format(**{name: values.get(name, "x") for name in route.param_convertors})


def allowed(rule: policy.Rule, actor: str, anonymous_inference: bool = False) -> bool:
    if rule.name == "anonymous" or (rule.name == "inference" and anonymous_inference):
        return True
    if actor == "anonymous":
        return False
    return {
        "inference": True,
        "key": True,
        "admin": actor == "admin",
        "role": actor == "admin" or bool(set(ACTORS[actor]) & set(rule.roles)),
        "datanet_owner": actor in ("admin", "owner"),
        "record_reader": actor in ("admin", "developer", "consumer"),
        "account": actor in ("admin", "contributor"),  # `{address}` is the contributor's
    }[rule.name]


def _call(w: World, method: str, path: str, actor: str) -> int:
    kwargs: dict[str, object] = {"headers": w.headers[actor]}
    if method in ("POST", "PUT", "PATCH"):
        kwargs["json"] = {}
    return w.client.request(method, path, **kwargs).status_code  # type: ignore[arg-type]


def _check_route(w: World, route: RouteContext, rule: policy.Rule, anonymous_inference: bool = False) -> list[str]:
    wrong = []
    path = _path(route, w)
    for method in sorted(set(route.methods or ()) - {"HEAD"}):
        for actor in ["anonymous", *ACTORS]:
            status = _call(w, method, path, actor)
            denied = status in (401, 403) or (rule.name == "record_reader" and status == 404)
            expected = allowed(rule, actor, anonymous_inference)
            if status == 500 or denied == expected:
                wrong.append(f"{method} {path} as {actor}: {status} ({rule.name}{list(rule.roles) or ''})")
            elif denied and actor == "anonymous" and status != 401:
                wrong.append(f"{method} {path} as anonymous: {status}, expected 401")
            elif rule.name == "record_reader" and expected and status != 200:
                wrong.append(f"{method} {path} as {actor}: {status}, expected the record")
    return wrong


def test_every_route_declares_a_rule(world: World) -> None:
    routes = policy.routes_of(world.client.app)
    assert len(routes) > 40
    missing = [r.path for r in routes if policy.rule_of(r) is None]
    assert not missing, f"routes without an access rule (declare one with Depends(policy.allow(...))): {missing}"


def test_the_matrix_matches_the_declared_rules(world: World) -> None:
    wrong = []
    for route in policy.routes_of(world.client.app):
        rule = policy.rule_of(route)
        if isinstance(route.original_route, APIRoute) and rule is not None:
            wrong += _check_route(world, route, rule)
    assert not wrong, "\n".join(wrong)


def test_inference_is_open_only_when_an_operator_opens_it(settings: Settings) -> None:
    assert settings.server.anonymous_inference is False  # the default: a key is needed (the matrix above)
    opened = settings.model_copy(update={"server": settings.server.model_copy(update={"anonymous_inference": True})})
    checked = 0
    for w in _world(opened):
        for route in policy.routes_of(w.client.app):
            rule = policy.rule_of(route)
            if isinstance(route.original_route, APIRoute) and rule is not None and rule.name == "inference":
                assert not _check_route(w, route, rule, anonymous_inference=True)
                checked += 1
    assert checked == 3  # /v1/models, /v1/completions, /v1/chat/completions


def test_docs_list_every_route_with_its_rule(world: World) -> None:
    """docs/security.md's table is written from `policy_table`: a route added or a rule changed shows up here."""
    from pathlib import Path

    docs = (Path(__file__).parents[2] / "docs" / "security.md").read_text()
    section = docs.split("## Who may do what", 1)[1].split("\n## ", 1)[0]
    listed = {line for line in section.splitlines() if line.startswith("| `") and " /" in line.split("|")[1]}
    expected = set()
    for methods, path, rule in policy.policy_table(world.client.app):
        assert rule is not None, path
        roles = " (" + ", ".join(rule.roles) + ")" if rule.roles else ""
        expected.add(f"| `{methods} {path}` | {rule.name}{roles} |")
    assert listed == expected, f"missing in docs: {sorted(expected - listed)}; stale: {sorted(listed - expected)}"
