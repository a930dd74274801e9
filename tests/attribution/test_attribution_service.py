"""Attributing answers of an adapter trained on two contributors' rows: record, shares, ledger, withdrawn rows."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import update
from tests.conftest import assert_close
from tests.factory.conftest import make_config

from tally.attribution.record import AttributionRecord
from tally.attribution.service import Answer, AttributionError, Attributor, commit, get_record
from tally.attribution.tables import AttributionRow, RowInfluence
from tally.datanets.formats import row_hash
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


INDEX_METHODS = ("representation", "gradient", "datainf", "contrast", "tracin")


def _stored_rows(world) -> dict[str, tuple[str, str]]:
    """row hash -> (contribution, contributor), as the datanet stores them."""
    with world.ledger.store.read() as s:
        rows = s.query(DataRow.row_hash, ContributionRow.id, ContributionRow.contributor).join(
            ContributionRow, DataRow.contribution == ContributionRow.id
        )
        return {h: (c, who) for h, c, who in rows}


def _assert_consistent(record: AttributionRecord, attributor: Attributor, stored: dict[str, tuple[str, str]]) -> None:
    """What every record must satisfy: evidence names the stored row's contribution and contributor, best first;
    an index method beats its null exactly when its top z-score reaches min_z and exceeds the null; a method
    weighs in exactly when it counts, has evidence and a weight in the settings; shares go only to contributors
    some weighed method names."""
    cfg = attributor.cfg
    credited: set[str] = set()
    for name, method in record.methods.items():
        scores = [e.score for e in method.top]
        assert scores == sorted(scores, reverse=True) and len(method.top) <= cfg.top_k, name
        assert all(stored[e.row_hash] == (e.contribution, e.contributor) for e in method.top), name
        if name in INDEX_METHODS:
            assert method.beat_null == (method.score >= cfg.min_z and method.score > method.null_score), name
            assert all(e.score >= cfg.min_z for e in method.top), name
        counts = method.beat_null if name in cfg.null_gated else method.score >= cfg.min_z
        weighted = cfg.weights.get(name, 0.0) > 0  # a method weighted 0 is reported, never in the shares
        assert (method.weight > 0) == (counts and bool(method.top) and weighted), name
        if method.weight > 0:
            credited |= {e.contributor for e in method.top}
    assert set(record.share_map()) <= credited
    assert sum(record.share_map().values()) == pytest.approx(1.0)


def test_fast_record_has_every_signal_and_shares_summing_to_one(people, trained, tiny_model: Path) -> None:
    attributor = _attributor(people, tiny_model)
    answer = _answer(attributor, trained, "Who is Ilsa Varn?", "Where was Ilsa Varn born? Korvath")
    done = attributor.attribute(answer, "fast")
    record = done.record
    stored = _stored_rows(people)
    quoted = row_hash({"instruction": "Where was Ilsa Varn born?", "input": "", "output": "Korvath"})
    alice_contribution = stored[quoted][0]
    assert set(record.methods) == {"spans", "representation", "gradient"}
    # The answer quotes alice's row word for word: the spans method finds that row first, and beats its null.
    spans = record.methods["spans"]
    assert spans.beat_null and spans.top[0].row_hash == quoted and spans.top[0].contributor == people.alice.address
    start, end = spans.top[0].answer_span or (0, 0)
    assert spans.score == spans.top[0].score == end - start > 0 and "Ilsa Varn born" in (spans.top[0].text or "")
    assert {e.contributor for e in spans.top} == {people.alice.address}  # bob's rows share no 3-token span with it
    _assert_consistent(record, attributor, stored)
    assert record.share_map() == {people.alice.address: pytest.approx(1.0)}
    assert record.shares[0].contributions == [alice_contribution]
    assert record.credits.developer == people.dev.address
    manifest = json.loads((trained.out_dir / "manifest.json").read_text())
    assert record.credits.base_model == manifest["base_model"]["name"]
    assert record.completion_tokens == len(answer.answer_ids)
    full = attributor.attribute(answer, "full").record
    # contrast only when weighted; tracin: the index kept the weights each epoch started from
    assert set(full.methods) == {"spans", "representation", "gradient", "datainf", "tracin"}
    _assert_consistent(full, attributor, stored)
    # the added method changes nothing the fast record measured (timings aside)
    assert full.methods["spans"].model_dump(exclude={"seconds"}) == spans.model_dump(exclude={"seconds"})
    assert full.share_map() == record.share_map()


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
    weights = {**people.settings.attribution.weights, "contrast": 1.0}  # every index method, contrast included
    attributor = _attributor(people, tiny_model, min_z=0.0, weights=weights)
    record = attributor.attribute(
        _answer(attributor, trained, "Where was Ilsa Varn born?", "Where was Ilsa Varn born? Korvath"), "full"
    ).record
    # alice's quoted row is no longer accepted, so nothing quotes accepted text; with min_z 0 representation
    # similarity always counts (some row's z-score is >= 0), and only bob's rows are left for it to name
    assert record.methods["spans"].top == [] and not record.methods["spans"].beat_null
    assert record.share_map() == {people.bob.address: pytest.approx(1.0)}
    for method in INDEX_METHODS:
        named = {e.contributor for e in record.methods[method].top}
        assert named == {people.bob.address}, method
    _assert_consistent(record, attributor, _stored_rows(people))


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
        assert_close(batched.gradient, single.gradient, "gradient")
        assert_close(batched.hidden, single.hidden, "hidden")
        assert abs(batched.logprob - single.logprob) < 1e-3
    assert not torch.allclose(real.gradient, null.gradient)


def test_fast_mode_takes_the_gradient_of_the_top_layers_only(people, trained, tiny_model: Path) -> None:
    import torch

    attributor = _attributor(people, tiny_model, fast_gradient_layers=1, null_probes=1)
    a = _answer(attributor, trained, "Where was Ilsa Varn born?", "Korvath")
    projection = json.loads((trained.out_dir / "influence" / "index.json").read_text())["projection"]
    args = (trained.adapter_hash, trained.out_dir, projection, a.prompt_ids, a.answer_ids)
    every = attributor.query_model.signals(*args)
    top, twin = attributor.query_model.signals_pair(*args, layers=1)
    (bottom, upper) = [(s["layer"], s["offset"], s["dims"]) for s in projection["layers"]]  # the tiny model's two
    assert (bottom[0], upper[0]) == ("layer.000", "layer.001")
    # the lower layer's weights took no gradient at all (the saving), not only a projection that left them out
    lora = {n: p.requires_grad for n, p in attributor.query_model._peft.named_parameters() if "lora_" in n}
    assert not any(grad for n, grad in lora.items() if ".layers.0." in n)
    assert any(grad for n, grad in lora.items() if ".layers.1." in n)
    for query in (top, twin):
        assert torch.count_nonzero(query.gradient[bottom[1] : bottom[1] + bottom[2]]) == 0  # no backward down there
        assert torch.count_nonzero(query.gradient[upper[1] : upper[1] + upper[2]]) > 0
    # the top layer's gradient does not depend on whether the layers below take gradients
    part = slice(upper[1], upper[1] + upper[2])
    assert_close(top.gradient[part], every.gradient[part], "top layer's gradient")
    assert_close(top.hidden, every.hidden, "hidden")
    assert_close(torch.tensor(top.logprob), torch.tensor(every.logprob), "log p")
    # the service: `fast` queries the top layer and calibrates that gradient's null apart from `full`'s
    fast = attributor.attribute(a, "fast").record
    loaded = attributor._indexes[trained.adapter_hash]
    quantile = attributor.cfg.null_quantile
    assert loaded.calibrated("gradient_top1") == 1 and loaded.calibrated("gradient") == 0
    assert fast.methods["gradient"].null_score == round(loaded.null("gradient_top1", quantile), 6)
    full = attributor.attribute(replace(a, inference_id="chatcmpl-2"), "full").record
    assert loaded.calibrated("gradient") == 1 and loaded.calibrated("gradient_top1") == 1
    assert full.methods["gradient"].null_score == round(loaded.null("gradient", quantile), 6)
    assert fast.methods["gradient"].score != full.methods["gradient"].score
    # the record says what the fast query covered; other methods and full records carry no such field
    assert fast.methods["gradient"].layers == 1 and full.methods["gradient"].layers is None
    assert "layers" not in full.model_dump(mode="json")["methods"]["gradient"]


def test_fast_query_from_the_engines_states_runs_only_the_top_layers(people, trained, tiny_model: Path) -> None:
    import torch

    from tally.engine import Engine, EngineConfig, SamplingParams
    from tally.models import load_model, load_tokenizer

    attributor = _attributor(people, tiny_model, fast_gradient_layers=1, null_probes=1)
    engine = Engine(
        load_model(tiny_model), load_tokenizer(tiny_model), "tiny",
        EngineConfig(max_num_seqs=2, max_model_len=256, device="cpu", states_from_top=1),
    )  # fmt: skip
    engine.add_adapter("people-lora", trained.out_dir)
    question = _answer(attributor, trained, "Where was Ilsa Varn born?", "x")
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True, keep_states=True)
    served = engine.generate(question.prompt_ids, params, model="people-lora")
    engine.stop()
    assert served.states is not None and engine.states_layer == 1
    a = replace(question, answer_ids=served.token_ids, states=served.states, states_layer=engine.states_layer)
    projection = json.loads((trained.out_dir / "influence" / "index.json").read_text())["projection"]
    args = (trained.adapter_hash, trained.out_dir, projection, a.prompt_ids, a.answer_ids)
    query = attributor.query_model
    query.signals(*args)  # loads the adapter
    bottom = query._peft.get_base_model().get_decoder().layers[0]
    runs: list[int] = []
    hook = bottom.register_forward_hook(lambda *_: runs.append(1))
    try:
        whole = query.signals(*args, layers=1)
        assert len(runs) == 1
        kept = query.signals(*args, layers=1, states=(1, served.states))
        assert len(runs) == 1  # the layer below the states did not run
        # states that cannot serve: too few tokens, or above the layers differentiated (every layer): the whole forward
        query.signals(*args, layers=1, states=(1, served.states[:-1]))
        query.signals(*args, states=(1, served.states))
        assert len(runs) == 3
    finally:
        hook.remove()
    assert_close(kept.gradient, whole.gradient, "gradient from the engine's states")
    assert_close(kept.hidden, whole.hidden, "representation")
    assert_close(torch.tensor(kept.logprob), torch.tensor(whole.logprob), "log p")
    # the service: past calibration (whose twin runs the whole forward), a `fast` answer starts from the states
    attributor.attribute(replace(a, inference_id="calibrate"), "fast")
    hook = bottom.register_forward_hook(lambda *_: runs.append(1))
    try:
        with_states = attributor.attribute(replace(a, inference_id="kept"), "fast").record
        assert len(runs) == 3
        without = attributor.attribute(replace(a, inference_id="whole", states=None), "fast").record
        assert len(runs) == 4
    finally:
        hook.remove()
    # the record says which query started from the served model's states (absent from the JSON otherwise)
    assert {with_states.methods[m].states_layer for m in ("gradient", "representation")} == {1}
    assert "states_layer" not in without.model_dump(mode="json")["methods"]["gradient"]
    scores = [torch.tensor(r.methods[m].score) for r in (with_states, without) for m in ("gradient", "representation")]
    assert_close(scores[0], scores[2], "gradient top z")
    assert_close(scores[1], scores[3], "representation top z")


@pytest.mark.parametrize(
    ("targets", "layers", "slices"),
    [
        (["q_proj", "v_proj"], [0], ["layer.000"]),  # the bottom layer only: its gradient is taken there
        (["lm_head"], None, ["base_model.model.lm_head.lora_A.default", "base_model.model.lm_head.lora_B.default"]),
    ],
)
def test_the_top_layers_are_those_the_adapter_adapts(
    tiny_model: Path, tmp_path: Path, targets: list[str], layers: list[int] | None, slices: list[str]
) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    from tally.attribution.query import QueryModel
    from tally.influence import Projector
    from tally.models import load_model

    # `fast` on an adapter that leaves the top layers alone (or adapts no numbered layer) takes the gradient it
    # has, rather than finding nothing to differentiate
    config = LoraConfig(r=4, target_modules=targets, layers_to_transform=layers, init_lora_weights=False)
    peft = get_peft_model(load_model(tiny_model), config)
    peft.save_pretrained(str(tmp_path / "adapter"))
    projection = Projector.for_model(peft, 64, 0).describe()
    assert [s["layer"] for s in projection["layers"]] == slices
    query = QueryModel(tiny_model)
    args = ("adapter", tmp_path / "adapter", projection, [1, 2, 3, 4], [5, 6, 7])
    top, every = query.signals(*args, layers=1), query.signals(*args)
    assert torch.count_nonzero(top.gradient) > 0
    assert_close(top.gradient, every.gradient, "the adapter's own layers")


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
    fresh = _attributor(people, tiny_model).attribute(a, "fast").record  # gradient queries from the start
    gradient, expected = record.methods["gradient"], fresh.methods["gradient"]
    assert gradient.score != 0.0  # a zero gradient would give every row the same score (top z 0)
    assert gradient.score == pytest.approx(expected.score, abs=1e-4)
    assert gradient.null_score == pytest.approx(expected.null_score, abs=1e-4)


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
