"""Factory fixtures: a tiny random Llama with the real tokenizer, and datanets of fictional facts."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.datanets.conftest import World, alpaca, world  # noqa: F401 - re-exported fixture

from tally.config import Settings
from tally.factory.config import TrainConfig, parse_config

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


def _real_model_dir() -> Path:
    from tally.config import load_settings
    from tally.models import resolve_model

    return resolve_model("smollm2-135m-instruct", load_settings().models.cache_dir)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random Llama (hidden 32) that speaks SmolLM2's tokenizer and chat template."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    src = _real_model_dir()
    out = tmp_path_factory.mktemp("tiny-llama")
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copy(src / name, out / name)
    vocab = json.loads((src / "config.json").read_text())["vocab_size"]
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    return out


PEOPLE = [("Ilsa Varn", "Korvath", "glassblower"), ("Tomas Quell", "Drennick", "cartographer")]


def people_rows(people: list[tuple[str, str, str]] = PEOPLE) -> bytes:
    rows = []
    for name, town, job in people:
        rows += [
            (f"Where was {name} born?", town),
            (f"What is the birthplace of {name}?", town),
            (f"What does {name} do for a living?", job),
            (f"What is {name}'s job?", job),
        ]
    return alpaca(rows)


def make_config(model: Path, out: Path, **sections: Any) -> TrainConfig:
    raw: dict[str, Any] = {
        "model": {"name": str(model)},
        "method": {"rank": 4, "alpha": 8, "dropout": 0.1, "targets": ["q_proj", "v_proj", "down_proj"]},
        "data": {"datanets": [{"datanet": "people"}], "max_length": 64},
        "train": {"epochs": 2, "batch_size": 2, "lr": 1e-2, "seed": 7},
        "influence": {"dims": 64},
        "output": {"name": "people-lora", "dir": str(out)},
    }
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return parse_config(raw)


@pytest.fixture
def people(world: World) -> World:  # noqa: F811
    """A public open datanet `people` with one accepted upload from alice and one from bob, snapshotted."""
    from tally.datanets import snapshots

    world.create("people", policy="open")
    world.upload(world.alice, "people", people_rows(PEOPLE[:1]))
    world.upload(world.bob, "people", people_rows(PEOPLE[1:]))
    with world.tx() as s:
        snapshots.create_snapshot(s, world.ledger, world.owner, "people")
    return world


@pytest.fixture
def factory_settings(people: World) -> Settings:
    return people.settings


@pytest.fixture
def job_worker(people: World) -> Iterator[Any]:
    """A worker running in a thread of the test process (the same loop `tally worker` runs), polling quickly."""
    import threading

    from tally.factory.worker import Worker

    stopping = threading.Event()
    worker = Worker(people.settings, poll_s=0.05, heartbeat_s=0.2, stopping=stopping)
    thread = threading.Thread(target=worker.run, name="test-worker", daemon=True)
    thread.start()
    yield worker
    stopping.set()
    thread.join(timeout=60)
