"""Attributing answers of an adapter trained on two contributors' rows: record, shares, ledger, withdrawn rows."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import update
from tests.factory.conftest import make_config

from tally.attribution.service import Answer, AttributionError, Attributor, commit, get_record
from tally.attribution.tables import AttributionRow, RowInfluence
from tally.datanets.tables import ContributionRow, DataRow
from tally.factory import service
from tally.ledger import decode_entry


@pytest.fixture
def trained(people, tiny_model: Path, tmp_path: Path):
    result = service.train(people.settings, people.ledger, people.dev, make_config(tiny_model, tmp_path / "lora"))
    return result


def _attributor(world, model_dir: Path, **cfg: object) -> Attributor:
    settings = world.settings.model_copy(
        update={"attribution": world.settings.attribution.model_copy(update={"span_min_tokens": 3, **cfg})}
    )
    return Attributor(settings, world.ledger.store, model_dir, "tiny")


def _answer(attributor: Attributor, trained, question: str, reply: str, rid: str = "chatcmpl-1") -> Answer:
    tok = attributor.tokenizer
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    return Answer(
        inference_id=rid, model="people-lora",
        prompt_ids=tok(prompt, add_special_tokens=False)["input_ids"],
        answer_ids=tok(reply, add_special_tokens=False)["input_ids"],
        adapter_dir=trained.out_dir, adapter_hash=trained.adapter_hash,
    )  # fmt: skip


def test_fast_record_has_every_signal_and_shares_summing_to_one(people, trained, tiny_model: Path) -> None:
    attributor = _attributor(people, tiny_model)
    answer = _answer(attributor, trained, "Who is Ilsa Varn?", "Where was Ilsa Varn born? Korvath")
    done = attributor.attribute(answer, "fast")
    record = done.record
    assert set(record.methods) == {"spans", "representation", "gradient"}
    assert record.methods["spans"].beat_null and record.methods["spans"].top[0].contributor == people.alice.address
    assert record.shares and abs(sum(s.share for s in record.shares) - 1) < 1e-9
    assert record.credits.developer == people.dev.address and record.credits.base_model
    assert record.completion_tokens == len(answer.answer_ids)
    full = attributor.attribute(answer, "full").record
    assert "datainf" in full.methods and full.methods["datainf"].top is not None


def test_commit_writes_one_ledger_event_and_the_record_reads_back(people, trained, tiny_model: Path) -> None:
    attributor = _attributor(people, tiny_model)
    done = attributor.attribute(
        _answer(attributor, trained, "Who is Tomas Quell?", "Tomas Quell is a cartographer"), "fast"
    )
    with people.tx() as s:
        appended = commit(s, people.ledger, done, actor=people.consumer.address)
    entry = decode_entry(people.ledger.entry(appended.seq))
    assert entry.type == "attribution.inference_attributed" and entry.payload["inference"] == "chatcmpl-1"
    assert entry.payload["shares"] == done.record.share_map()
    with people.ledger.store.read() as s:
        record, seq = get_record(s, "chatcmpl-1")
        assert seq == appended.seq and record == done.record
        assert s.query(RowInfluence).count() == len(done.row_influence)
        with pytest.raises(AttributionError):
            get_record(s, "chatcmpl-unknown")
    with people.tx() as s, pytest.raises(AttributionError, match="already"):
        commit(s, people.ledger, done, actor=people.consumer.address)


def test_a_contributor_whose_rows_left_the_index_gets_nothing(people, trained, tiny_model: Path) -> None:
    with people.tx() as s:
        alice_contributions = [
            c for (c,) in s.query(ContributionRow.id).filter(ContributionRow.contributor == people.alice.address)
        ]
        s.execute(update(DataRow).where(DataRow.contribution.in_(alice_contributions)).values(status="rejected"))
    attributor = _attributor(people, tiny_model, min_z=0.0)
    record = attributor.attribute(
        _answer(attributor, trained, "Where was Ilsa Varn born?", "Where was Ilsa Varn born? Korvath"), "full"
    ).record
    assert people.alice.address not in record.share_map()
    for method in ("representation", "gradient", "datainf"):
        assert all(e.contributor != people.alice.address for e in record.methods[method].top)


def test_mode_resolution(people, tiny_model: Path) -> None:
    attributor = _attributor(people, tiny_model, models={"quiet": "off"})
    assert attributor.mode_for("quiet", None) == "off" and attributor.mode_for("x", None) == "fast"
    assert attributor.mode_for("quiet", "full") == "full"
    with pytest.raises(AttributionError):
        attributor.mode_for("x", "fastest")
    with people.ledger.store.read() as s:
        assert s.query(AttributionRow).count() == 0


def test_the_mixed_batch_gives_each_adapter_its_own_gradient(people, trained, tiny_model: Path) -> None:
    import json

    import torch

    attributor = _attributor(people, tiny_model)
    a = _answer(attributor, trained, "Where was Ilsa Varn born?", "Korvath")
    projection = json.loads((trained.out_dir / "influence" / "index.json").read_text())["projection"]
    args = (trained.adapter_hash, trained.out_dir, projection, a.prompt_ids, a.answer_ids)
    real, null = attributor.query_model.signals_pair(*args)
    alone, null_alone = attributor.query_model.signals(*args), attributor.query_model.signals(*args, null=True)
    for batched, single in ((real, alone), (null, null_alone)):
        assert torch.allclose(batched.gradient, single.gradient, rtol=1e-3, atol=1e-5)
        assert torch.allclose(batched.hidden, single.hidden, atol=1e-4)
        assert abs(batched.logprob - single.logprob) < 1e-3
    assert not torch.allclose(real.gradient, null.gradient)


def test_credits_name_developer_base_model_evaluators_and_pipeline_author(people, trained) -> None:
    import json

    from tally.attribution.sources import adapter_credits
    from tally.factory.evaluation import EvalResult, record_results, refresh_adapter_files

    manifest_path = trained.out_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["pipeline"] = {"name": "people", "step": "train", "author": people.owner.address}
    manifest_path.write_text(json.dumps(manifest))
    with people.ledger.store.read() as s:
        assert adapter_credits(s, trained.out_dir, trained.adapter_hash, "tiny").evaluators == []  # not evaluated yet
    record_results(
        people.ledger, people.dev, [EvalResult("people-lora", trained.adapter_hash, "people", "x", 8, {}, [])]
    )
    with people.ledger.store.read() as s:
        refresh_adapter_files(s, trained.out_dir)
        credits = adapter_credits(s, trained.out_dir, trained.adapter_hash, "tiny")
        assert adapter_credits(s, None, None, "tiny").developer is None
        # evaluations of other weights (the directory retrained in place) credit no one
        assert adapter_credits(s, trained.out_dir, "0" * 64, "tiny").evaluators == []
    assert credits.developer == people.dev.address and credits.pipeline_author == people.owner.address
    assert set(credits.evaluators) == {people.alice.address, people.bob.address}  # the eval datanet's contributors
    assert credits.base_model == manifest["base_model"]["name"] and credits.base_model_hash


def test_an_adapter_first_used_for_context_still_answers_gradient_queries(people, trained, tiny_model: Path) -> None:
    attributor = _attributor(people, tiny_model)
    a = _answer(attributor, trained, "Where was Ilsa Varn born?", "Korvath")
    assert attributor.query_model.run(a.adapter_hash, a.adapter_dir, lambda model: 1) == 1  # loads it, no grads
    record = attributor.attribute(a, "fast").record
    assert "gradient" in record.methods


def test_the_null_is_calibrated_on_the_first_answers_then_reused(people, trained, tiny_model: Path) -> None:
    attributor = _attributor(people, tiny_model, null_probes=2, null_quantile=1.0)
    records = [
        attributor.attribute(_answer(attributor, trained, q, "Korvath", f"chatcmpl-{i}"), "full").record
        for i, q in enumerate(["Where was Ilsa Varn born?", "Who is Tomas Quell?", "Where does Ilsa Varn live?"])
    ]
    loaded = attributor._indexes[trained.adapter_hash]
    assert len(loaded.null_stats) == 2  # the third answer ran without the random twin
    for method in ("representation", "gradient", "datainf"):
        expected = max(s[method] for s in loaded.null_stats)
        assert records[-1].methods[method].null_score == round(expected, 6)
        assert records[-1].methods[method].beat_null == (
            records[-1].methods[method].score >= 2.0 and records[-1].methods[method].score > expected
        )
