"""Datanet search, one service for the studio, the API (`?q=`) and the CLI (`--search`): every word must match the
name, description, tags or license; private datanets only for those who may read them; keyset paging by name."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tally.api import create_app
from tally.cli.main import app as cli
from tally.config import Settings
from tally.datanets import service
from tally.datanets.errors import DatanetError
from tally.identity import Principal, create_account, create_api_key
from tally.ledger import Ledger
from tally.store import Store


@pytest.fixture
def people(store: Store, ledger: Ledger) -> dict[str, Principal]:
    out = {}
    with store.transaction() as s:
        for name, roles in (("olga", ["owner"]), ("carl", ["consumer"])):
            account, _ = create_account(s, ledger, name, roles)
            out[name] = Principal(account.address, name, frozenset(roles))
        for slug, license, description, tags, visibility in (
            ("recipes", "CC-BY-4.0", "Family recipes", ["food"], "public"),
            ("soups", "MIT", "Hot soups, 100% tested", ["food", "hot"], "public"),
            ("medical", "CC-BY-4.0", "Clinic notes", ["health"], "private"),
        ):
            service.create_datanet(
                s, ledger, out["olga"], slug, kind="instruction", license=license, uses=["train"],
                description=description, tags=tags, visibility=visibility, max_upload_bytes=1000, max_rows_per_day=10,
            )  # fmt: skip
    return out


def test_words_visibility_and_paging(store: Store, people: dict[str, Principal]) -> None:
    olga, carl = people["olga"], people["carl"]
    with store.read() as s:

        def names(who: Principal, q: str = "", **kw: object) -> list[str]:
            return [d.slug for d in service.search_datanets(s, who, q, **kw)]  # type: ignore[arg-type]

        assert names(carl) == ["recipes", "soups"]
        assert names(olga) == ["medical", "recipes", "soups"]
        assert names(carl, "FOOD hot") == ["soups"]  # every word, any case, tags included
        assert names(carl, "cc-by") == ["recipes"] and names(olga, "cc-by") == ["medical", "recipes"]
        assert names(carl, "100%") == ["soups"] and names(carl, "1_0") == []  # LIKE wildcards are literal
        assert names(olga, limit=2) == ["medical", "recipes"] and names(olga, after="recipes") == ["soups"]
        with pytest.raises(DatanetError) as long:
            names(carl, "x" * 201)
        assert long.value.param == "q"


def test_api_and_cli_search(settings: Settings, store: Store, ledger: Ledger, people: dict[str, Principal]) -> None:
    with store.transaction() as s:
        account, _ = create_account(s, ledger, "dana", ["consumer"])
        _, token = create_api_key(s, ledger, account)
    with TestClient(create_app(settings)) as client:
        found = client.get("/v1/datanets", params={"q": "hot"}, headers={"Authorization": f"Bearer {token}"})
        assert found.status_code == 200 and [d["slug"] for d in found.json()["data"]] == ["soups"]
    result = CliRunner().invoke(cli, ["datanet", "list", "--search", "family", "--as", "olga"])
    assert result.exit_code == 0 and "recipes" in result.output and "soups" not in result.output
