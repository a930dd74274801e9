"""The one answer path: three doors give one answer, validation comes before generation, and attribution credits
the weights that actually answered."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests.api.test_openai_routes import make_runtime
from tests.cli.test_datanet_cli import run
from tests.datanets.conftest import World, world  # noqa: F401 - fixture
from tests.engine.conftest import TinySetup, make_engine, tiny  # noqa: F401 - fixture
from tests.factory.conftest import make_config, people, tiny_model  # noqa: F401 - fixtures

from tally import answers
from tally.answers import AnswerRequest, Sampling, build_runtime
from tally.api import create_app
from tally.config import Settings
from tally.config.errors import TallyError
from tally.engine import adapter_registry_path
from tally.engine import registry as adapter_registry
from tally.engine.files import hash_adapter
from tally.factory import service
from tally.identity import create_api_key, resolve_account

QUESTION = "Where was Ilsa Varn born?"


def _accruals(w: World, inference: str) -> list[dict[str, Any]]:
    """The fee lines the ledger holds for one answer, without the inference id."""
    entries = [json.loads(e) for e in w.ledger.entries(0, w.ledger.size())]
    [accrued] = [e for e in entries if e["type"] == "rewards.accrued" and e["payload"]["inference"] == inference]
    return sorted(accrued["payload"]["lines"], key=lambda line: (line["role"], line["account"]))


@pytest.fixture
def served(people: World, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:  # noqa: F811
    """`people-lora` trained on the people datanet and registered; the tiny model is the base model everywhere."""
    trained = service.train(people.settings, people.ledger, people.dev, make_config(tiny_model, tmp_path / "lora"))
    assert trained.finished
    # a random tiny model's answers beat no null: count every method on min_z alone, so shares are not empty
    monkeypatch.setenv("TALLY_MODELS__DEFAULT", str(tiny_model))
    monkeypatch.setenv("TALLY_ATTRIBUTION__NULL_GATED", "[]")
    monkeypatch.setenv("TALLY_ATTRIBUTION__MIN_Z", "0")
    settings = people.settings.model_copy(
        update={
            "models": people.settings.models.model_copy(update={"default": str(tiny_model)}),
            "attribution": people.settings.attribution.model_copy(update={"null_gated": [], "min_z": 0.0}),
        }
    )
    adapter_registry.add(adapter_registry_path(settings), "people-lora", trained.out_dir)
    return settings


def test_three_doors_give_one_answer_one_attribution_one_settlement(served: Settings, people: World) -> None:  # noqa: F811
    request = AnswerRequest(
        model="people-lora", messages=[{"role": "user", "content": QUESTION}],
        sampling=Sampling(max_tokens=8, temperature=0), attribution="fast", requester=people.consumer,
    )  # fmt: skip
    runtime = build_runtime(served, with_engine=True, store=people.ledger.store).start()
    try:
        direct = answers.answer(runtime, request)
    finally:
        runtime.close()

    with people.tx() as s:
        _, token = create_api_key(s, people.ledger, resolve_account(s, people.consumer.address))
    body = {"model": "people-lora", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 8,
            "temperature": 0, "attribution": "fast"}  # fmt: skip
    app = create_app(runtime=build_runtime(served, with_engine=True, store=people.ledger.store))
    with TestClient(app) as client:
        http = client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"})
    assert http.status_code == 200, http.text
    http_body = http.json()

    out = run("ask", QUESTION, "--model", "people-lora", "--max-tokens", "8", "--attribution", "fast",
              "--as", people.consumer.name)  # fmt: skip
    cli_id = next(w for w in out.split() if w.startswith("ask-"))

    assert direct.record is not None and direct.record.shares, "the fixture's adapter must credit someone"
    assert http_body["choices"][0]["message"]["content"] == direct.text
    assert any(line.endswith(direct.text.strip()) for line in out.splitlines())  # after the loading bars
    records = {}
    with people.ledger.store.read() as s:
        from tally.attribution import get_record

        for inference in (direct.id, http_body["id"], cli_id):
            records[inference] = get_record(s, inference)[0]
    shares = [records[i].share_map() for i in records]
    assert shares[0] == shares[1] == shares[2] == direct.record.share_map()
    assert {records[i].adapter_hash for i in records} == {direct.adapter_id}
    fees = [_accruals(people, i) for i in records]
    assert fees[0] == fees[1] == fees[2] and fees[0]
    assert {records[i].requested_by for i in records} == {people.consumer.address}


def test_a_fast_answer_of_an_adapter_keeps_the_engines_states(served: Settings, people: World) -> None:  # noqa: F811
    """`fast` attribution of an adapter's answer starts from the hidden states entering its top layers, kept by the
    engine while it answered; a `full` answer and the base model's keep none."""
    runtime = build_runtime(served, with_engine=True, store=people.ledger.store).start()
    engine = runtime.engine
    assert engine is not None
    layers = engine.model.config.num_hidden_layers
    assert engine.states_layer == max(0, layers - served.attribution.fast_gradient_layers)
    try:
        for model, mode, kept in (("people-lora", "fast", True), ("people-lora", "full", False),
                                  (engine.model_name, "fast", False)):  # fmt: skip
            request = AnswerRequest(
                model=model, messages=[{"role": "user", "content": QUESTION}],
                sampling=Sampling(max_tokens=6, temperature=0), attribution=mode, requester=people.consumer,
            )  # fmt: skip
            prepared = answers.prepare(runtime, request)
            generated = answers.generate(runtime, prepared)
            if kept:
                assert generated.states is not None and generated.states_layer == engine.states_layer
                ran = len(prepared.prompt_ids) + len(generated.token_ids) - 1
                assert generated.states.shape == (ran, engine.model.config.hidden_size)
            else:
                assert generated.states is None, (model, mode)
            runtime.credit_holds.release(prepared.credit_hold)
    finally:
        runtime.close()


def test_a_fast_answer_is_attributed_from_the_engines_states(served: Settings, people: World) -> None:  # noqa: F811
    """With the gradient over the top layer only, the query starts from the states the engine kept: past the null's
    calibration (whose random twin runs the whole model), the attribution model's bottom layer does not run."""
    attribution = served.attribution.model_copy(update={"fast_gradient_layers": 1, "null_probes": 1})
    settings = served.model_copy(update={"attribution": attribution})
    runtime = build_runtime(settings, with_engine=True, store=people.ledger.store).start()
    assert runtime.engine is not None and runtime.engine.states_layer == 1 and runtime.attributor is not None
    request = AnswerRequest(
        model="people-lora", messages=[{"role": "user", "content": QUESTION}],
        sampling=Sampling(max_tokens=6, temperature=0), attribution="fast", requester=people.consumer,
    )  # fmt: skip
    runs: list[int] = []
    try:
        first = answers.answer(runtime, request)  # calibrates the null: the twin in the same batch
        query = runtime.attributor.query_model
        bottom = query._peft.get_base_model().get_decoder().layers[0]
        hook = bottom.register_forward_hook(lambda *_: runs.append(1))
        try:
            second = answers.answer(runtime, request)
        finally:
            hook.remove()
    finally:
        runtime.close()
    assert runs == []
    assert first.record is not None and second.record is not None
    assert second.record.methods["gradient"].layers == 1 and second.text == first.text
    assert first.record.methods["gradient"].states_layer is None  # the twin's calibration ran the whole model
    assert second.record.methods["gradient"].states_layer == 1


@pytest.fixture
def tiny_runtime(tiny: TinySetup, settings: Settings) -> Iterator[answers.Runtime]:  # noqa: F811
    runtime = make_runtime(make_engine(tiny), settings).start()
    yield runtime
    runtime.close()


def test_every_check_runs_before_generation(tiny_runtime: answers.Runtime) -> None:
    vocab = int(tiny_runtime.engine.model.config.vocab_size)  # type: ignore[union-attr]
    bad = [
        (AnswerRequest(model="nope", prompt="x"), "not_found", "model"),
        (AnswerRequest(model="tiny-base", prompt=[1, vocab]), "invalid", "prompt"),
        (AnswerRequest(model="tiny-base", prompt=""), "invalid", "prompt"),
        (AnswerRequest(model="tiny-base", prompt="x", sampling=Sampling(max_tokens=10_000)), "invalid", "max_tokens"),
        (AnswerRequest(model="tiny-base", prompt="x", attribution="full"), "unavailable", "attribution"),
        (AnswerRequest(model="tiny-base", prompt="x", messages=[{"role": "user", "content": "x"}]), "invalid", None),
    ]
    for request, kind, param in bad:
        with pytest.raises(TallyError) as caught:
            answers.prepare(tiny_runtime, request)
        assert (caught.value.kind, caught.value.param) == (kind, param), request


def test_a_stream_with_a_bad_token_is_refused_before_it_starts(tiny_runtime: answers.Runtime) -> None:
    app = create_app(runtime=tiny_runtime)
    with TestClient(app) as client:
        r = client.post("/v1/completions", json={"model": "tiny-base", "prompt": [1, 10**9], "stream": True})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"


def test_attribution_names_the_weights_that_answered(
    tiny: TinySetup,  # noqa: F811
    settings: Settings,
    tmp_path: Path,
) -> None:
    """The adapter's files are replaced between generation and attribution, then used for the next answer: each
    record names the weights that produced its answer, never what a later lookup by name finds."""
    live = tmp_path / "live"
    shutil.copytree(tiny.adapters["ad1-r8"], live)
    first_hash = hash_adapter(live)
    engine = make_engine(tiny)
    engine.add_adapter("swapped", live)
    runtime = make_runtime(engine, settings).start()
    from tally.attribution import Attributor

    runtime.attributor = Attributor(settings, runtime.store, tiny.model_dir, "tiny-base")
    try:
        request = AnswerRequest(model="swapped", prompt="hello there", sampling=Sampling(max_tokens=4, temperature=0))
        prepared = answers.prepare(runtime, request)
        generated = answers.generate(runtime, prepared)
        for name in ("adapter_config.json", "adapter_model.safetensors"):  # replaced in place, as a redeploy does
            shutil.copy(tiny.adapters["ad2-r16"] / name, live / name)
        second_hash = hash_adapter(live)
        assert second_hash != first_hash
        first = answers.finish(runtime, prepared, generated)
        second = answers.answer(runtime, AnswerRequest(model="swapped", prompt="hello there",
                                                        sampling=Sampling(max_tokens=4, temperature=0)))  # fmt: skip
    finally:
        runtime.close()
    assert first.record is not None and second.record is not None
    assert (first.adapter_id, first.record.adapter_hash) == (first_hash, first_hash)
    assert (second.adapter_id, second.record.adapter_hash) == (second_hash, second_hash)


def test_an_adapter_that_fails_to_load_is_the_requests_fault(
    tiny_runtime: answers.Runtime,
    tiny: TinySetup,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Tensors whose shapes do not fit the base model are found only when the weights are read (in the background):
    the request gets an invalid-request error naming the adapter, not a server error."""
    import torch
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(tiny.adapters["ad1-r8"], broken)
    tensors = load_file(broken / "adapter_model.safetensors")
    name = next(k for k in sorted(tensors) if "lora_A" in k)
    tensors[name] = torch.zeros(tensors[name].shape[0], tensors[name].shape[1] + 3)
    save_file(tensors, broken / "adapter_model.safetensors")
    tiny_runtime.engine.add_adapter("broken", broken, load_now=False)  # type: ignore[union-attr]
    with pytest.raises(TallyError) as caught:
        answers.answer(tiny_runtime, AnswerRequest(model="broken", prompt="hi", sampling=Sampling(max_tokens=2)))
    assert caught.value.kind == "invalid" and "broken" in caught.value.message
    ok = answers.answer(tiny_runtime, AnswerRequest(model="ad2-r16", prompt="hi", sampling=Sampling(max_tokens=2)))
    assert ok.completion_tokens >= 1


def test_an_adapter_published_after_start_is_served_without_a_restart(
    tiny_runtime: answers.Runtime,
    tiny: TinySetup,  # noqa: F811
) -> None:
    request = AnswerRequest(model="late", prompt="hi", sampling=Sampling(max_tokens=2, temperature=0))
    with pytest.raises(TallyError) as missing:
        answers.answer(tiny_runtime, request)
    assert missing.value.kind == "not_found" and "GET /v1/models" in missing.value.message
    adapter_registry.add(adapter_registry_path(tiny_runtime.settings), "late", tiny.adapters["ad3-r4"])
    served = answers.answer(tiny_runtime, request)
    assert served.adapter_id == hash_adapter(tiny.adapters["ad3-r4"])


def test_an_unloaded_adapter_stays_unloaded_and_errors_name_no_server_path(
    tiny_runtime: answers.Runtime,
    tiny: TinySetup,  # noqa: F811
    tmp_path: Path,
) -> None:
    engine = tiny_runtime.engine
    assert engine is not None
    adapter_registry.add(adapter_registry_path(tiny_runtime.settings), "ad1-r8", tiny.adapters["ad1-r8"])
    engine.remove_adapter("ad1-r8")  # what POST /v1/unload_lora_adapter does
    request = AnswerRequest(model="ad1-r8", prompt="hi", sampling=Sampling(max_tokens=2))
    with pytest.raises(TallyError) as gone:
        answers.answer(tiny_runtime, request)
    assert gone.value.kind == "not_found"  # not picked up again from the registry file
    engine.add_adapter("ad1-r8", tiny.adapters["ad1-r8"])
    assert answers.answer(tiny_runtime, request).completion_tokens >= 1
    missing = tmp_path / "vanished"
    shutil.copytree(tiny.adapters["ad2-r16"], missing)
    adapter_registry.add(adapter_registry_path(tiny_runtime.settings), "vanished", missing)
    shutil.rmtree(missing)
    with pytest.raises(TallyError) as broken:
        answers.answer(tiny_runtime, AnswerRequest(model="vanished", prompt="hi", sampling=Sampling(max_tokens=2)))
    assert broken.value.kind == "unavailable" and str(tmp_path) not in broken.value.message


def test_a_paid_answer_needs_attribution_running(tiny_runtime: answers.Runtime) -> None:
    from tally.identity import Principal

    rewards = tiny_runtime.settings.rewards.model_copy(update={"charge_requesters": True})
    tiny_runtime.settings = tiny_runtime.settings.model_copy(update={"rewards": rewards})
    payer = Principal(address="0x" + "ab" * 20, name="payer", roles=frozenset({"consumer"}))
    with pytest.raises(TallyError) as caught:
        answers.prepare(tiny_runtime, AnswerRequest(model="tiny-base", prompt="hi", requester=payer))
    assert caught.value.kind == "unavailable" and "attribution" in caught.value.message
