"""A small world of accounts for datanet tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from tally.config import Settings
from tally.datanets import contribute as contrib
from tally.datanets import service
from tally.identity import Principal, create_account
from tally.ledger import Ledger


@dataclass
class World:
    ledger: Ledger
    settings: Settings
    keys: Path
    owner: Principal
    alice: Principal
    bob: Principal
    dev: Principal
    consumer: Principal
    admin: Principal

    def tx(self):
        return self.ledger.store.transaction()

    def create(self, slug: str = "med-qa", **kw: object) -> service.Datanet:
        args: dict = {
            "kind": "instruction", "license": "CC-BY-4.0", "uses": ["train", "rag", "eval"],
            "max_upload_bytes": self.settings.datanets.max_upload_bytes,
            "max_rows_per_day": self.settings.datanets.max_rows_per_day,
        }  # fmt: skip
        args.update(kw)
        with self.tx() as s:
            return service.create_datanet(s, self.ledger, self.owner, slug, **args)

    def upload(self, who: Principal, slug: str, data: bytes, filename: str = "data.jsonl", **kw: object):
        with self.tx() as s:
            args: dict = {"settings": self.settings.datanets, "chain_id": self.settings.chain_id, **kw}
            return contrib.contribute(s, self.ledger, who, slug, data, filename, **args)


def alpaca(rows: list[tuple[str, str]]) -> bytes:
    return "".join(json.dumps({"instruction": q, "input": "", "output": a}) + "\n" for q, a in rows).encode()


def facts(prefix: str, n: int) -> bytes:
    return alpaca(
        [(f"{prefix}: where was person {i} of {prefix} born?", f"In town {i * 7} of {prefix}.") for i in range(n)]
    )


@pytest.fixture
def world(ledger: Ledger, settings: Settings, tmp_path: Path) -> World:
    keys = tmp_path / "account-keys"
    people = {}
    with ledger.store.transaction() as s:
        for name, roles in [
            ("owner", ["owner", "contributor"]), ("alice", ["contributor"]), ("bob", ["contributor"]),
            ("dev", ["developer"]), ("consumer", ["consumer"]), ("admin", ["admin"]),
        ]:  # fmt: skip
            account, _ = create_account(s, ledger, name, roles, keys_dir=keys)
            people[name] = Principal.of(account)
    return World(ledger, settings, keys, **people)
