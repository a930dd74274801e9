"""The engine on the real SmolLM2-135M-Instruct (slow; skipped when the model is not pulled)."""

from __future__ import annotations

import copy
import queue
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.engine.conftest import assert_close

from tally.engine import Engine, EngineConfig, SamplingParams
from tally.engine.sequence import RequestOutput

pytestmark = pytest.mark.slow
PROJ = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module")
def real_path() -> Path:
    from tally.config import load_settings
    from tally.models import ModelError, resolve_model

    settings = load_settings()
    try:
        return resolve_model(settings.models.default, settings.models.cache_dir)
    except ModelError as exc:
        pytest.skip(f"the real base model is not pulled ({exc}); run `tally models pull`")


def test_answers_like_the_base_model(real_path: Path) -> None:
    from tally.models import load_model, load_tokenizer

    engine = Engine(
        load_model(real_path),
        load_tokenizer(real_path),
        "smollm2",
        EngineConfig(max_num_seqs=2, max_model_len=256, device="cpu"),
    )
    prompt = engine.encode_chat([{"role": "user", "content": "What is the capital of France?"}])
    out = engine.generate(prompt, SamplingParams(max_tokens=16, temperature=0.0))
    assert "Paris" in out.text, out.text


def test_mixed_adapters_match_peft_on_the_real_model(real_path: Path, tmp_path: Path) -> None:
    from peft import LoraConfig, PeftModel, get_peft_model

    from tally.models import load_model, load_tokenizer

    base = load_model(real_path)
    specs = {"r4": (4, PROJ[:2]), "r8": (8, PROJ), "r16": (16, PROJ[4:])}
    for i, (name, (rank, targets)) in enumerate(specs.items()):
        torch.manual_seed(i)
        pm = get_peft_model(
            copy.deepcopy(base),
            LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets, init_lora_weights=False),
        )
        with torch.no_grad():
            for n, p in pm.named_parameters():
                if "lora_B" in n:
                    p.mul_(0.05)  # PEFT's A init with a random B is large on 30 layers: keep the model sane
        pm.save_pretrained(str(tmp_path / name))
    engine = Engine(
        copy.deepcopy(base),
        load_tokenizer(real_path),
        "smollm2",
        EngineConfig(max_num_seqs=4, max_model_len=128, device="cpu"),
    )
    for name in specs:
        engine.add_adapter(name, tmp_path / name)
    prompts = {name: engine.encode(f"Tell me about {name} and the sea") for name in [*specs, None]}
    params = SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True, record_logits=True)
    sinks: dict[Any, queue.Queue[RequestOutput]] = {}
    for name, prompt in prompts.items():
        sinks[name] = queue.Queue()
        engine.submit(prompt, params, sinks[name].put, model=name or "smollm2")
    engine.run_until_idle()
    peft = PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "r4"), adapter_name="r4").eval()
    for name in ("r8", "r16"):
        peft.load_adapter(str(tmp_path / name), adapter_name=name)
    for m in (base, peft.base_model.model):  # the engine runs with ignore_eos: generate must not stop at EOS
        m.generation_config.eos_token_id = None
    for name, prompt in prompts.items():
        events = [sinks[name].get() for _ in range(sinks[name].qsize())]
        tokens = [t for e in events for t in e.token_ids]
        logits = torch.stack(events[-1].logits or [])
        model: Any = base
        if name is not None:
            peft.set_adapter(name)
            model = peft
        with torch.no_grad():
            ref = model(input_ids=torch.tensor([prompt + tokens[:-1]])).logits[0, len(prompt) - 1 :]
            greedy = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=5, do_sample=False)
        assert_close(logits, ref, str(name))
        assert greedy[0, len(prompt) :].tolist() == tokens, name
