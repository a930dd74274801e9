"""Reputation: review counts per contributor, mean signed influence of their rows, and rows flagged for owners."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from tests.datanets.conftest import World, facts, world  # noqa: F401 - re-exported fixture

from tally.attribution.reputation import contributor_reputation, flagged_rows
from tally.attribution.tables import RowInfluence
from tally.datanets import review
from tally.datanets.tables import ContributionRow, DataRow
from tally.identity import Principal


def rows_of(w: World, who: Principal, slug: str) -> list[str]:
    query = (
        select(DataRow.row_hash)
        .join(ContributionRow, ContributionRow.id == DataRow.contribution)
        .where(DataRow.datanet == slug, ContributionRow.contributor == who.address)
        .order_by(DataRow.row_hash)
    )
    with w.tx() as s:
        return list(s.execute(query).scalars())


def influence(w: World, slug: str, who: Principal, row: str, values: list[float], first: int = 0) -> None:
    with w.tx() as s:
        for i, v in enumerate(values, start=first):
            s.add(RowInfluence(inference=f"inf-{i}", row_hash=row, datanet=slug, contributor=who.address, influence=v))


@pytest.fixture
def scored(world: World) -> World:  # noqa: F811
    """Two open datanets; alice has 4 accepted rows, bob 3 rows of which 2 rejected; influence on their rows."""
    world.create("med-qa", policy="open")
    world.create("law-qa", policy="open")
    world.upload(world.alice, "med-qa", facts("alice", 4))
    world.upload(world.bob, "med-qa", facts("bob", 3))
    world.upload(world.bob, "law-qa", facts("bob-law", 1))
    a, b, bl = (
        rows_of(world, world.alice, "med-qa"),
        rows_of(world, world.bob, "med-qa"),
        rows_of(world, world.bob, "law-qa"),
    )
    with world.tx() as s:
        review.review(s, world.ledger, world.owner, "med-qa", decision="reject", reason="wrong facts", rows=b[:2])
    influence(world, "med-qa", world.alice, a[0], [-0.5, -0.2, 0.1, -0.4, -0.3, -0.1])  # 6 answers, mean < 0: flagged
    influence(world, "med-qa", world.alice, a[1], [-0.9, -0.9, -0.9])  # negative but only 3 answers
    influence(world, "med-qa", world.alice, a[2], [0.6, 0.7, 0.8, 0.9, 1.0, 1.1])  # positive
    influence(world, "med-qa", world.bob, b[2], [-0.1] * 5)  # exactly min_answers: flagged
    influence(world, "law-qa", world.bob, bl[0], [-2.0] * 5, first=100)  # another datanet
    return world


def test_flagged_rows_are_per_datanet_most_negative_first(scored: World) -> None:
    a, b = rows_of(scored, scored.alice, "med-qa"), rows_of(scored, scored.bob, "med-qa")
    with scored.tx() as s:
        flagged = flagged_rows(s, "med-qa")
        assert [(f.row_hash, f.contributor, f.answers) for f in flagged] == [
            (a[0], scored.alice.address, 6),
            (b[2], scored.bob.address, 5),
        ]
        assert flagged[0].mean_influence == pytest.approx(-1.4 / 6)
        assert flagged[1].mean_influence == pytest.approx(-0.1)
        assert [f.row_hash for f in flagged_rows(s, "med-qa", min_answers=3)] == [a[1], a[0], b[2]]
        assert [f.row_hash for f in flagged_rows(s, "med-qa", min_answers=6)] == [a[0]]
        assert [f.datanet for f in flagged_rows(s, "law-qa")] == ["law-qa"]
        assert flagged_rows(s, "no-such-datanet") == []


def test_contributor_reputation(scored: World) -> None:
    a = rows_of(scored, scored.alice, "med-qa")
    with scored.tx() as s:
        alice = contributor_reputation(s, scored.alice.address.lower())  # addresses are matched checksummed
        bob = contributor_reputation(s, scored.bob.address)
        dev = contributor_reputation(s, scored.dev.address)

    assert (alice.address, alice.accepted, alice.rejected, alice.answers) == (scored.alice.address, 4, 0, 6)
    values = [-0.5, -0.2, 0.1, -0.4, -0.3, -0.1, -0.9, -0.9, -0.9, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1]
    assert alice.mean_influence == pytest.approx(sum(values) / len(values))
    assert alice.sign == "positive" and [f.row_hash for f in alice.flagged] == [a[0]]

    assert (bob.accepted, bob.rejected, bob.answers) == (2, 2, 10)  # one accepted row in each datanet
    assert bob.mean_influence == pytest.approx((-0.5 - 10.0) / 10) and bob.sign == "negative"
    assert [f.datanet for f in bob.flagged] == ["law-qa", "med-qa"]

    assert (dev.accepted, dev.rejected, dev.answers, dev.mean_influence, dev.sign, dev.flagged) == (
        0,
        0,
        0,
        0.0,
        "none",
        [],
    )
