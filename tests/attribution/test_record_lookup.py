"""The operator finds a record by a unique prefix of its id; the API takes whole ids only."""

from __future__ import annotations

import pytest
from tests.rewards.conftest import make_record

from tally.attribution import AttributionError, get_record
from tally.attribution.service import Attributed, commit
from tally.ledger import Ledger


def test_a_unique_prefix_finds_the_record(ledger: Ledger) -> None:
    with ledger.store.transaction() as s:
        for rid in ("ask-abc111", "ask-abc222", "ask_x%"):
            commit(s, ledger, Attributed(make_record(rid), []), actor="engine")
    with ledger.store.read() as s:
        assert get_record(s, "ask-abc1", prefix=True)[0].id == "ask-abc111"
        with pytest.raises(AttributionError, match="more than one") as many:
            get_record(s, "ask-abc", prefix=True)
        assert many.value.kind == "invalid"
        with pytest.raises(AttributionError) as whole_only:
            get_record(s, "ask-abc1")
        assert whole_only.value.kind == "not_found"
        with pytest.raises(AttributionError):  # wildcards are matched as text, not as patterns
            get_record(s, "ask%", prefix=True)
        assert get_record(s, "ask_", prefix=True)[0].id == "ask_x%"


def test_a_reader_sees_evidence_of_datanets_it_may_not_read_without_text_or_hashes() -> None:
    from tally.attribution import Evidence, MethodResult

    def evidence(datanet: str) -> Evidence:
        return Evidence(
            row_hash="ab" * 32, datanet=datanet, contribution="c1", contributor="0xC", score=3.0,
            answer_span=(0, 9), text="the vault code is amber",
        )  # fmt: skip

    record = make_record("ask-1").model_copy(
        update={"methods": {"spans": MethodResult(method="spans", top=[evidence("open"), evidence("secret")],
                                                  score=9, null_score=7, beat_null=True, seconds=0.0)}}
    )  # fmt: skip
    seen = record.seen_by({"open"}, lambda slug: f"hidden:{slug[0]}")
    shown, hidden = seen.methods["spans"].top
    assert shown == evidence("open")
    assert (hidden.datanet, hidden.row_hash, hidden.contribution, hidden.text) == ("hidden:s", "", "", None)
    assert (hidden.contributor, hidden.score) == ("0xC", 3.0) and seen.shares == record.shares
