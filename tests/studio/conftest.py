"""Studio page tests: the real app (no engine) through FastAPI's TestClient over https://testserver, so the session
cookie (Secure) travels as a browser sends it. `site` seeds accounts, keys and a datanet; `site.as_(name)` signs the
client in as one of them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from fastapi.testclient import TestClient
from httpx import Response

from tally.api import create_app
from tally.config import Settings
from tally.datanets import service
from tally.identity import Principal, create_account, create_api_key
from tally.ledger import open_ledger
from tally.store import open_store

BASE = "https://testserver"
PEOPLE = {
    "admin": ["admin"],
    "olga": ["owner", "contributor"],  # owns the datanet `recipes`
    "oscar": ["owner"],  # owns another datanet
    "alice": ["contributor"],
    "carl": ["consumer"],
}
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class Site:
    client: TestClient
    tokens: dict[str, str]
    addresses: dict[str, str]
    who: str | None = field(default=None)

    def csrf(self, path: str = "/studio/") -> str:
        """The CSRF token of the current session, read from a page's form."""
        found = CSRF.search(self.client.get(path).text)
        assert found, f"no CSRF field on {path}"
        return found.group(1)

    def as_(self, name: str | None) -> Site:
        """Sign out, then (for a name) sign in with that person's key."""
        self.client.cookies.clear()
        self.who = name
        if name is not None:
            response = self.client.post(
                "/studio/sign-in", data={"api_key": self.tokens[name], "csrf": self.csrf("/studio/sign-in")},
                follow_redirects=False,
            )  # fmt: skip
            assert response.status_code == 303, response.text
        return self

    def post(self, path: str, data: dict[str, object] | None = None, **kwargs: object) -> Response:
        """A form POST with the session's CSRF token."""
        token = self.csrf()
        return self.client.post(path, data={"csrf": token, **(data or {})}, **kwargs)  # type: ignore[arg-type]


def make_site(settings: Settings) -> Iterator[Site]:
    store = open_store(settings)
    ledger = open_ledger(settings, store)
    tokens, addresses = {}, {}
    with store.transaction() as s:
        for name, roles in PEOPLE.items():
            account, _ = create_account(s, ledger, name, roles)
            _, tokens[name] = create_api_key(s, ledger, account)
            addresses[name] = account.address
        for owner, slug, visibility in (("olga", "recipes", "public"), ("oscar", "secrets", "private")):
            service.create_datanet(
                s, ledger, Principal(addresses[owner], owner, frozenset(PEOPLE[owner])), slug, kind="instruction",
                license="CC-BY-4.0", uses=["train", "rag"], visibility=visibility, description=f"{slug} for tests",
                max_upload_bytes=100_000, max_rows_per_day=1000,
            )  # fmt: skip
    store.dispose()
    with TestClient(create_app(settings), base_url=BASE) as client:
        yield Site(client, tokens, addresses)


@pytest.fixture
def site(settings: Settings) -> Iterator[Site]:
    yield from make_site(settings)
