"""Fixtures for the engine tests: a tiny random Llama with a small trained tokenizer, and random PEFT adapters."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from tests.conftest import assert_close  # noqa: F401 - the engine tests' tolerance

PROJ = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "what is the capital of france? the capital of france is paris.",
    "contributors put data into datanets and the factory trains adapters",
    "every answer gets an attribution record with contributor shares",
    "hello world, hello tally, hello adapters and base models",
] * 20

# (rank, alpha, targets): ranks 4, 8 and 16 on different subsets of the seven projections
ADAPTER_SPECS: list[tuple[int, int, tuple[str, ...]]] = [
    (4, 8, ("q_proj", "v_proj")),
    (8, 16, PROJ),
    (16, 16, ("gate_proj", "up_proj", "down_proj")),
    (4, 4, ("o_proj",)),
    (8, 32, ("q_proj", "k_proj", "v_proj", "o_proj")),
    (16, 8, PROJ),
    (8, 8, ("k_proj", "down_proj")),
    (4, 16, ("up_proj", "gate_proj", "q_proj")),
    (16, 32, ("v_proj", "o_proj", "down_proj")),
]


def make_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=320, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", bos_token="<|endoftext|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_model(vocab: int, eos: int, seed: int = 0, intermediate: int = 112) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=intermediate,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=eos,
        bos_token_id=0,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # random init has tiny logits; larger weights make greedy choices well separated
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(4.0)
    return model


def make_adapter(base: Any, out: Path, rank: int, alpha: int, targets: tuple[str, ...], seed: int) -> Path:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=False, lora_dropout=0.0)
    peft_model = get_peft_model(copy.deepcopy(base), cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.mul_(4.0)  # make each adapter change the greedy path visibly
    peft_model.save_pretrained(str(out))
    return out


@dataclass
class TinySetup:
    model_dir: Path
    adapters: dict[str, Path]
    tokenizer: Any

    def base(self) -> Any:
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(str(self.model_dir), dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinySetup:
    root = tmp_path_factory.mktemp("tiny")
    tokenizer = make_tokenizer()
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model = make_model(len(tokenizer), eos)
    model.save_pretrained(str(root / "model"))
    tokenizer.save_pretrained(str(root / "model"))
    adapters = {}
    for i, (rank, alpha, targets) in enumerate(ADAPTER_SPECS):
        name = f"ad{i}-r{rank}"
        adapters[name] = make_adapter(model, root / "adapters" / name, rank, alpha, targets, seed=1000 + i)
    return TinySetup(root / "model", adapters, tokenizer)


def make_engine(tiny: TinySetup, **overrides: Any) -> Any:
    from tally.engine import Engine, EngineConfig

    cfg = {
        "max_num_seqs": 8,
        "max_model_len": 128,
        "max_tokens_per_step": 48,
        "adapter_slots": 6,
        "max_adapters_per_step": 4,
        "max_rank": 16,
        "host_cache_bytes": 1 << 24,
        "device": "cpu",
    }
    cfg.update(overrides)
    engine = Engine(tiny.base(), tiny.tokenizer, "tiny-base", EngineConfig(**cfg))
    for name, path in tiny.adapters.items():
        engine.add_adapter(name, path)
    return engine
