"""Sentence citations on the one answer path: the measured citations are the same through the service, the HTTP
response and `tally ask`; they are in the attribution record and its hash, never in the public ledger entry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tests.cli.test_datanet_cli import run
from tests.datanets.conftest import World, facts, world  # noqa: F401 - fixture
from tests.factory.conftest import tiny_model  # noqa: F401 - fixture

from tally import answers
from tally.answers import AnswerRequest, RagOption, Sampling, build_runtime
from tally.api import create_app
from tally.attribution import get_record
from tally.attribution.service import record_hash
from tally.config import Settings
from tally.datanets import snapshots
from tally.identity import create_api_key, resolve_account

QUESTION = "where was person 3 of towns born?"
FIELDS = {
    "sentence", "chunk", "source", "row_hash", "datanet", "snapshot", "contribution", "contributor", "drop", "method",
    "measured", "marker", "marker_agrees", "quote",
}  # fmt: skip


@pytest.fixture(scope="module")
def speaking_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """The tiny model with a few word and full-stop embeddings scaled up (they are tied to the output), so its
    greedy answers are words and sentences rather than blank lines."""
    import shutil

    import torch

    from tally.models.load import load_model, load_tokenizer

    out = tmp_path_factory.mktemp("speaking-tiny")
    for f in tiny_model.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors"):
            shutil.copy(f, out / f.name)
    model, tok = load_model(tiny_model), load_tokenizer(tiny_model)
    words = " town person born in of was the Korvath harbour north. It is. Yes. 21 3"
    ids = sorted(set(tok(words, add_special_tokens=False)["input_ids"]))
    with torch.no_grad():
        model.get_input_embeddings().weight[ids] *= 40
    model.save_pretrained(out)
    return out


@pytest.fixture
def rag_settings(world: World, speaking_model: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:  # noqa: F811
    """A public `towns` datanet for rag; the tiny model answers and attributes; every non-negative drop cites (a
    random model's drops are small, and it gives every word under 10%, so each sentence would be a guess: this makes
    sure there are citations to compare)."""
    world.create("towns", policy="open", uses=["rag"])
    world.upload(world.owner, "towns", facts("towns", 6))
    with world.tx() as s:
        snapshots.create_snapshot(s, world.ledger, world.owner, "towns")
    monkeypatch.setenv("TALLY_MODELS__DEFAULT", str(speaking_model))
    monkeypatch.setenv("TALLY_ATTRIBUTION__CITATION_MIN_DROP", "0")
    monkeypatch.setenv("TALLY_ATTRIBUTION__CITATION_GUESS_NATS", "0")
    return world.settings.model_copy(
        update={
            "models": world.settings.models.model_copy(update={"default": str(speaking_model)}),
            "attribution": world.settings.attribution.model_copy(
                update={"citation_min_drop": 0.0, "citation_guess_nats": 0.0}
            ),
        }
    )


def test_the_service_the_api_and_the_cli_give_the_same_measured_citations(
    rag_settings: Settings,
    world: World,  # noqa: F811
) -> None:
    model = rag_settings.models.default
    request = AnswerRequest(
        model=model, messages=[{"role": "user", "content": QUESTION}], sampling=Sampling(max_tokens=24, temperature=0),
        rag=RagOption(datanets=["towns"], top_k=3), attribution="fast", requester=world.consumer,
    )  # fmt: skip
    runtime = build_runtime(rag_settings, with_engine=True, store=world.ledger.store).start()
    try:
        direct = answers.answer(runtime, request)
    finally:
        runtime.close()
    assert direct.record is not None and direct.citations, direct.text
    assert all(set(c) == FIELDS for c in direct.citations)
    assert [c["sentence"] for c in direct.citations] == [list(c.sentence) for c in direct.record.citations]
    for c in direct.citations:
        start, end = c["sentence"]
        assert 0 <= start < end <= len(direct.text) and direct.text[start:end].strip()
        assert c["source"] == c["chunk"] + 1 and 1 <= c["source"] <= 3 and c["method"] == "leave_one_out"
        assert c["measured"] == (c["drop"] >= 0.0) and (c["measured"] or c["marker"])
        assert c["marker_agrees"] == (c["measured"] if c["marker"] else None)

    with world.tx() as s:
        _, token = create_api_key(s, world.ledger, resolve_account(s, world.consumer.address))
    body = {"model": model, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 24,
            "temperature": 0, "rag": {"datanets": ["towns"], "top_k": 3}, "attribution": "fast"}  # fmt: skip
    with TestClient(
        create_app(runtime=build_runtime(rag_settings, with_engine=True, store=world.ledger.store))
    ) as client:
        http = client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"})
    assert http.status_code == 200, http.text
    served = http.json()
    assert served["choices"][0]["message"]["content"] == direct.text
    strip = lambda cs: [{k: v for k, v in x.items() if k != "drop"} for x in cs]  # noqa: E731
    assert strip(served["citations"]) == strip(direct.citations)
    assert [x["drop"] for x in served["citations"]] == pytest.approx([x["drop"] for x in direct.citations], abs=1e-3)

    out = run("ask", QUESTION, "--rag", "towns", "--top-k", "3", "--max-tokens", "24", "--attribution", "fast",
              "--as", world.consumer.name)  # fmt: skip
    assert "citations" in out and "drop (nats)" in out
    assert direct.citations[0]["contributor"][:10] in out

    # the record holds them and its hash covers them; the public ledger entry does not carry them
    with world.ledger.store.read() as s:
        record, seq = get_record(s, served["id"])
    assert record.citations
    assert [list(c.sentence) for c in record.citations] == [x["sentence"] for x in served["citations"]]
    entry = json.loads(world.ledger.entries(seq, seq + 1)[0])
    assert entry["payload"]["record_hash"] == record_hash(record)
    assert "citations" not in entry["payload"] and "sentence" not in json.dumps(entry["payload"])


def test_without_attribution_the_markers_are_listed_unchecked(rag_settings: Settings, world: World) -> None:  # noqa: F811
    from tally.answers.request import Prepared
    from tally.answers.service import _citations

    runtime = build_runtime(rag_settings, with_engine=True, store=world.ledger.store).start()
    try:
        request = AnswerRequest(
            model=rag_settings.models.default, messages=[{"role": "user", "content": QUESTION}],
            sampling=Sampling(max_tokens=4, temperature=0), rag=RagOption(datanets=["towns"], top_k=3),
            attribution="off", requester=world.consumer,
        )  # fmt: skip
        prepared: Prepared = answers.prepare(runtime, request)
        result = answers.finish(
            runtime, prepared, answers.Generated("Born in town 21 [2]. Sure [5].", [1, 2], "stop", 3, 2, None, None)
        )
    finally:
        runtime.close()
    assert result.record is None and result.text == "Born in town 21 [2]. Sure."
    [cited] = result.citations
    assert (cited["source"], cited["sentence"], cited["marker"]) == (2, [0, 20], True)
    assert cited["measured"] is None and cited["marker_agrees"] is None and cited["drop"] is None
    assert _citations(runtime, prepared, result) == result.citations


def test_more_chunks_than_the_leave_one_out_limit_use_the_surrogate(rag_settings: Settings, world: World) -> None:  # noqa: F811
    settings = rag_settings.model_copy(
        update={"attribution": rag_settings.attribution.model_copy(update={"citation_loo_max_chunks": 2})}
    )
    request = AnswerRequest(
        model=settings.models.default, messages=[{"role": "user", "content": QUESTION}],
        sampling=Sampling(max_tokens=24, temperature=0), rag=RagOption(datanets=["towns"], top_k=3),
        attribution="fast", requester=world.consumer,
    )  # fmt: skip
    runtime = build_runtime(settings, with_engine=True, store=world.ledger.store).start()
    try:
        result = answers.answer(runtime, request)
    finally:
        runtime.close()
    assert result.record is not None and result.citations
    assert {c["method"] for c in result.citations} == {"surrogate"}
    assert all(c["measured"] == (c["drop"] >= 0.0) for c in result.citations)
