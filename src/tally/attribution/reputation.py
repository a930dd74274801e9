"""Contributor reputation: how much of their data was accepted, and which way their rows pull the answers.

Why both: review counts say whether owners trusted the data; influence says what the data did once trained on. A
row whose signed influence averages below zero over several answers keeps pushing answers the wrong way (mislabelled,
stale or adversarial), so it is flagged for the datanet's owner to look at. A few answers are not evidence, hence
`min_answers`.

Influence is averaged per (row, answer) pair, so a contributor's mean does not grow with the number of rows they
uploaded; `answers` counts the distinct answers any of their rows influenced.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict
from sqlalchemy import ColumnElement, func, select, true
from sqlalchemy.orm import Session

from tally.attribution.tables import RowInfluence
from tally.datanets.service import manage, readable_slugs
from tally.datanets.tables import ContributionRow, DataRow
from tally.identity import Principal
from tally.identity.addresses import checksum_address

Sign = Literal["positive", "negative", "none"]


class FlaggedRow(BaseModel):
    model_config = ConfigDict(extra="forbid")

    datanet: str
    row_hash: str
    contributor: str
    answers: int
    mean_influence: float


class Reputation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    address: str
    accepted: int
    rejected: int
    answers: int  # distinct attributed answers their rows influenced
    mean_influence: float  # over (row, answer) pairs; 0.0 when there are none
    sign: Sign
    flagged: list[FlaggedRow]


def _sign(value: float) -> Sign:
    return "positive" if value > 0 else "negative" if value < 0 else "none"


def _flagged(session: Session, where: ColumnElement[bool], min_answers: int) -> list[FlaggedRow]:
    answers, mean = func.count(RowInfluence.inference), func.avg(RowInfluence.influence)
    query = (
        select(RowInfluence.datanet, RowInfluence.row_hash, RowInfluence.contributor, answers, mean)
        .where(where)
        .group_by(RowInfluence.datanet, RowInfluence.row_hash, RowInfluence.contributor)
        .having(answers >= min_answers, mean < 0)
        .order_by(mean, RowInfluence.row_hash)
    )
    return [
        FlaggedRow(datanet=d, row_hash=r, contributor=c, answers=n, mean_influence=float(m))
        for d, r, c, n, m in session.execute(query)
    ]


def flagged_rows(session: Session, datanet: str, min_answers: int = 5) -> list[FlaggedRow]:
    """Rows of `datanet` with a negative mean influence over at least `min_answers` answers, most negative first."""
    return _flagged(session, RowInfluence.datanet == datanet, min_answers)


def readable_datanets(session: Session, viewer: Principal | None) -> list[str]:
    """The datanets `viewer` may read: public ones for an anonymous caller."""
    return sorted(readable_slugs(session, viewer))


def contributor_reputation(
    session: Session, address: str, min_answers: int = 5, *, datanets: list[str] | None = None
) -> Reputation:
    """Review counts, mean signed influence of the contributor's rows, and their flagged rows, over `datanets`
    (None: all, for the operator). The API passes `readable_datanets` of its caller, so a private datanet's rows
    never show to someone who may not read it."""
    address = checksum_address(address) or address  # stored checksummed
    readable = DataRow.datanet.in_(datanets) if datanets is not None else true()
    influenced = RowInfluence.datanet.in_(datanets) if datanets is not None else true()
    reviewed = (
        select(DataRow.status, func.count())
        .join(ContributionRow, ContributionRow.id == DataRow.contribution)
        .where(ContributionRow.contributor == address, readable)
        .group_by(DataRow.status)
    )
    counts = {status: n for status, n in session.execute(reviewed).tuples()}
    mine = (RowInfluence.contributor == address) & influenced
    answers, mean = session.execute(
        select(
            func.count(RowInfluence.inference.distinct()), func.coalesce(func.avg(RowInfluence.influence), 0.0)
        ).where(mine)
    ).one()
    return Reputation(
        address=address,
        accepted=counts.get("accepted", 0),
        rejected=counts.get("rejected", 0),
        answers=answers,
        mean_influence=float(mean),
        sign=_sign(float(mean)),
        flagged=_flagged(session, mine, min_answers),
    )


def flagged_rows_for_owner(
    session: Session, principal: Principal, datanet: str, min_answers: int = 5
) -> list[FlaggedRow]:
    """`flagged_rows` for the datanet's owner (or an admin): others get the datanets' own Forbidden/NotFound."""
    manage(session, principal, datanet, "see its flagged rows")
    return flagged_rows(session, datanet, min_answers)
