"""A compact Llama forward over a packed, mixed-adapter token batch, reusing the Hugging Face modules' weights.

The HF modules do the per-token work (embedding, RMSNorm, rotary table, the MLP, every projection — those are our
multi-LoRA wrappers); this file does what HF's batched forward cannot: a ragged batch where each sequence has its own
cache row, its own position and its own adapter. Attention is grouped per KV head (query heads `h` of one KV head are
folded into the query length), so grouped-query attention needs no copy of the keys.

Packed layout of one step: decode tokens first (one per sequence, routed per token: BGMV), then prefill chunks
sorted by adapter slot (one segment per adapter: SGMV).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from tally.engine.kv_cache import KVCache
from tally.engine.lora_layers import LoraBatch, LoraContext, MultiLoraLinear
from tally.engine.native import DecodeOps
from tally.engine.quant import Q8Decoder, Q8Linear


@dataclass
class StepItem:
    """One sequence's share of a step: `tokens` at positions `start..`, in cache `row`, through adapter `slot`."""

    row: int
    tokens: list[int]
    start: int
    slot: int
    want_logits: bool = True  # logits of the last token (a prefill chunk that does not end the prompt needs none)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Llama's rotary embedding (cos / sin `[T, 1, D]` broadcast over heads)."""
    return x * cos + _rotate_half(x) * sin


def head_dim(config: Any) -> int:
    """Per-head width of a Llama-style config (explicit `head_dim`, else hidden size over heads)."""
    return int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)


class LlamaRunner:
    def __init__(
        self,
        model: Any,
        cache: KVCache,
        context: LoraContext,
        ops: DecodeOps | None = None,
        decoder: Q8Decoder | None = None,
    ) -> None:
        cfg = model.config
        self.model = model
        self.ops = ops  # compiled decode helpers (CPU fp32); None: torch's ops throughout
        self.decoder = decoder  # int8: a decode step's layers in one native call
        # per projection group (keyed by its first module): int8 bases, their step size, their weights; or None
        self._int8_groups: dict[int, tuple[list[Any] | None, int, list[tuple[torch.Tensor, torch.Tensor]]]] = {}
        self.silu = getattr(cfg, "hidden_act", "silu") == "silu"
        self.cache = cache
        self.context = context
        self.num_heads = int(cfg.num_attention_heads)
        self.kv_heads = int(cfg.num_key_value_heads)
        self.head_dim = head_dim(cfg)
        self.rep = self.num_heads // self.kv_heads
        self.scale = self.head_dim**-0.5
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.segment_decode_max_adapters = 4  # decode goes SGMV when the batch holds at most this many adapters
        # after a step run with `capture`: every token's hidden state entering that layer, in the step's token order
        self.states: torch.Tensor | None = None

    @torch.inference_mode()
    def forward(
        self, decode: list[StepItem], prefill: list[StepItem], all_logits: bool = False, capture: int | None = None
    ) -> tuple[torch.Tensor, list[int]]:
        """Run one step; returns the logits rows and, for each, the index of its item in `decode + prefill`.

        With `all_logits` every prefill token gets a row (used by the correctness tests), else only the last token
        of items with `want_logits`. With `capture` (a layer index), `self.states` holds every token's hidden state
        as it enters that layer.
        """
        self.states = None
        dev = self.device
        items = decode + prefill
        ids: list[int] = []
        pos: list[int] = []
        for it in items:
            ids.extend(it.tokens)
            pos.extend(range(it.start, it.start + len(it.tokens)))
        n_dec = len(decode)
        threads = torch.get_num_threads()
        ids_t = torch.tensor(ids, dtype=torch.long, device=dev)
        pos_t = torch.tensor(pos, dtype=torch.long, device=dev)
        whole = self._whole_step(decode, prefill)
        # the one-call step routes adapters itself: the wrappers' routing is only built for the layer-by-layer path
        self.context.batch = None if whole else self._lora_batch(decode, prefill)
        try:
            x = self.model.model.embed_tokens(ids_t)  # [T, H]
            cos, sin = self.model.model.rotary_emb(x[None], pos_t[None])
            cos, sin = cos[0][:, None, :], sin[0][:, None, :]  # [T, 1, D]
            native = self._native_decode(decode, cos, sin)
            dec_index = self._decode_write_index(decode) if decode and native is None else None
            dec_mask = self._decode_mask(decode) if decode and native is None else None
            layers = [] if whole else self.model.model.layers
            if not layers:
                assert self.decoder is not None and native is not None
                slots = [it.slot for it in decode]
                keep = (capture, torch.empty_like(x)) if capture is not None else None
                self.decoder.run(
                    x, *native, threads, torch.tensor(slots, dtype=torch.long) if any(slots) else None, capture=keep
                )
                self.states = keep[1] if keep is not None else None
            for index, layer in enumerate(layers):
                if index == capture:
                    self.states = x  # every op below makes a new tensor: this one stays as it is
                h = self._norm(layer.input_layernorm, x)
                attn = layer.self_attn
                q, k, v = self._project((attn.q_proj, attn.k_proj, attn.v_proj), h)
                q = q.view(-1, self.num_heads, self.head_dim)
                k = k.view(-1, self.kv_heads, self.head_dim)
                v = v.view(-1, self.kv_heads, self.head_dim)
                kc, vc = self.cache.k[index], self.cache.v[index]
                parts: list[torch.Tensor] = []
                if native is not None:
                    assert self.ops is not None
                    # rotary, the cache write and attention of the decode tokens in one call
                    cos_d, sin_d, rows_d, positions_d, longest = native
                    parts.append(
                        self.ops.decode_attention(
                            q[:n_dec], k[:n_dec], v[:n_dec], cos_d, sin_d, kc, vc, rows_d, positions_d, longest,
                            self.scale, threads,
                        )
                    )  # fmt: skip
                    if prefill:
                        q = torch.cat([q[:n_dec], _rotate(q[n_dec:], cos[n_dec:], sin[n_dec:])])
                        k = torch.cat([k[:n_dec], _rotate(k[n_dec:], cos[n_dec:], sin[n_dec:])])
                else:
                    q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
                    if decode:
                        assert dec_index is not None
                        # one index_copy_ into a flat view: advanced-index assignment is ~100x slower on CPU
                        kc.view(-1, self.head_dim).index_copy_(0, dec_index, k[:n_dec].reshape(-1, self.head_dim))
                        vc.view(-1, self.head_dim).index_copy_(0, dec_index, v[:n_dec].reshape(-1, self.head_dim))
                        parts.append(self._decode_attention(q[:n_dec], kc, vc, decode, dec_mask))
                offset = n_dec
                for it in prefill:
                    c = len(it.tokens)
                    sl = slice(offset, offset + c)
                    kc[it.row, :, it.start : it.start + c] = k[sl].transpose(0, 1)
                    vc[it.row, :, it.start : it.start + c] = v[sl].transpose(0, 1)
                    parts.append(self._prefill_attention(q[sl], kc, vc, it))
                    offset += c
                out = parts[0] if len(parts) == 1 else torch.cat(parts)
                x = x + attn.o_proj(out.reshape(-1, self.num_heads * self.head_dim))
                x = x + self._mlp(layer.mlp, self._norm(layer.post_attention_layernorm, x))
            for it in items:
                self.cache.lengths[it.row] = max(self.cache.lengths[it.row], it.start + len(it.tokens))
            rows, owners = self._logit_rows(decode, prefill, all_logits)
            hidden = self._norm(
                self.model.model.norm, x.index_select(0, torch.tensor(rows, dtype=torch.long, device=dev))
            )
            logits = self.model.lm_head(hidden)
        finally:
            self.context.batch = None
        return logits, owners

    def _whole_step(self, decode: list[StepItem], prefill: list[StepItem]) -> bool:
        """Whether the step runs every layer in one native call: decode tokens only, few enough for the int8
        kernel, their adapters (if any) in fp32 slot stacks (the layer-by-layer path computes the same products)."""
        return (
            self.decoder is not None
            and self.ops is not None
            and bool(decode)
            and not prefill
            and len(decode) <= self.decoder.max_tokens
            and (self.decoder.adapters or not any(it.slot for it in decode))
        )

    def _norm(self, norm: Any, x: torch.Tensor) -> torch.Tensor:
        """HF's Llama RMSNorm in one call (HF's module runs five ops; per decode token they add up)."""
        if self.ops is not None and x.dtype == torch.float32 and x.device.type == "cpu" and x.is_contiguous():
            return self.ops.rms_norm(x, norm.weight, norm.variance_epsilon)
        return F.rms_norm(x, norm.weight.shape, norm.weight, norm.variance_epsilon)

    def _project(self, layers: tuple[Any, ...], h: torch.Tensor) -> list[torch.Tensor]:
        """Several projections of the same `h`. Where the helpers run and every base is int8 within the kernel's
        step size, the bases go through the int8 kernel in one call and each layer's adapters are added after."""
        group = self._int8_groups.get(id(layers[0]))
        if group is None:  # worked out once per group: the modules never change after the engine is built
            found: list[Any] = [layer.base if isinstance(layer, MultiLoraLinear) else layer for layer in layers]
            fits = all(isinstance(b, Q8Linear) and b.bias is None for b in found)
            group = self._int8_groups[id(layers[0])] = (
                found if fits else None,
                min(int(b.max_tokens) for b in found) if fits else 0,
                [(b.q, b.scale) for b in found] if fits else [],
            )
        bases, max_tokens, weights = group
        fused = (
            self.ops is not None
            and bases is not None
            and h.dim() == 2
            and h.shape[0] <= max_tokens
            and h.dtype == torch.float32
            and h.is_contiguous()
        )
        if not fused:
            return [layer(h) for layer in layers]
        assert bases is not None
        outputs = bases[0].kernel.many(h, weights)
        return [
            layer.add_adapters(h, y) if isinstance(layer, MultiLoraLinear) else y
            for layer, y in zip(layers, outputs, strict=True)
        ]

    def _mlp(self, mlp: Any, h: torch.Tensor) -> torch.Tensor:
        """Llama's gated MLP, down(silu(gate(h)) * up(h)), with the middle in one call where the helpers run."""
        if self.ops is None or not self.silu or h.dtype != torch.float32 or h.device.type != "cpu":
            return mlp(h)
        gate, up = self._project((mlp.gate_proj, mlp.up_proj), h)
        if not (gate.is_contiguous() and up.is_contiguous()):
            return mlp.down_proj(F.silu(gate) * up)
        return mlp.down_proj(self.ops.silu_mul(gate, up))

    def _native_decode(
        self, decode: list[StepItem], cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int] | None:
        """The per-step arguments of the compiled decode attention (cos, sin, caches' rows and positions, longest
        context), or None where torch's ops run it (no helpers, no decode tokens, not fp32 on the CPU)."""
        if self.ops is None or not decode or self.dtype != torch.float32 or self.device.type != "cpu":
            return None
        n = len(decode)
        rows = torch.tensor([it.row for it in decode], dtype=torch.long)
        positions = torch.tensor([it.start for it in decode], dtype=torch.long)
        longest = max(it.start for it in decode) + 1
        return cos[:n, 0].contiguous(), sin[:n, 0].contiguous(), rows, positions, longest

    def _lora_batch(self, decode: list[StepItem], prefill: list[StepItem]) -> LoraBatch:
        """Routing for the wrapped layers. Decode tokens use the per-token gather (BGMV) unless they come grouped
        by adapter with few distinct adapters: then one segment per adapter (SGMV) reads each adapter once instead
        of once per token, which is what a batch dominated by one or a few adapters needs."""
        slots = frozenset(it.slot for it in (*decode, *prefill) if it.slot)
        if not slots:
            return LoraBatch()
        segments: list[tuple[int, int, int]] = []

        def add(slot: int, start: int, end: int) -> None:
            if not slot:
                return
            if segments and segments[-1][0] == slot and segments[-1][2] == start:
                segments[-1] = (slot, segments[-1][1], end)  # merge runs of one adapter
            else:
                segments.append((slot, start, end))

        gather = None
        dec_slots = [it.slot for it in decode]
        distinct = {s for s in dec_slots if s}
        grouped = all(a <= b for a, b in itertools.pairwise(dec_slots))
        if distinct and grouped and len(distinct) <= self.segment_decode_max_adapters:
            for i, slot in enumerate(dec_slots):
                add(slot, i, i + 1)
        elif distinct:
            gather = torch.tensor(dec_slots, dtype=torch.long, device=self.device)
        offset = len(decode)
        for it in prefill:
            add(it.slot, offset, offset + len(it.tokens))
            offset += len(it.tokens)
        gather_set = frozenset(dec_slots) if gather is not None else frozenset()
        return LoraBatch(len(decode) if gather is not None else 0, gather, segments, slots, gather_set)

    def _decode_write_index(self, decode: list[StepItem]) -> torch.Tensor:
        """Flat row index of (sequence, kv head) -> cache[row, head, position] in a `[-1, head_dim]` view."""
        cap = self.cache.capacity
        index = [(it.row * self.kv_heads + h) * cap + it.start for it in decode for h in range(self.kv_heads)]
        return torch.tensor(index, dtype=torch.long, device=self.device)

    def _decode_mask(self, decode: list[StepItem]) -> torch.Tensor:
        n = self.cache.live
        length = max(it.start + 1 for it in decode)
        lengths = torch.ones(n, dtype=torch.long)  # rows not decoding this step attend to one slot (no NaN)
        for it in decode:
            lengths[it.row] = it.start + 1
        mask = torch.arange(length)[None, :] < lengths[:, None]
        return mask[:, None, None, :].to(self.device)

    def _decode_attention(
        self, q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, decode: list[StepItem], mask: torch.Tensor | None
    ) -> torch.Tensor:
        """All live rows in one call over a strided view of the cache; rows without a decode token get zeros."""
        assert mask is not None
        n = self.cache.live
        length = mask.shape[-1]
        nd = len(decode)
        rows = [it.row for it in decode]
        q4 = q.view(nd, self.kv_heads, self.rep, self.head_dim)
        if rows == list(range(n)):
            qf = q4
        else:
            qf = q.new_zeros(n, self.kv_heads, self.rep, self.head_dim)
            qf[torch.tensor(rows, device=q.device)] = q4
        out = F.scaled_dot_product_attention(
            qf, kc[:n, :, :length], vc[:n, :, :length], attn_mask=mask, scale=self.scale
        )
        if rows != list(range(n)):
            out = out[torch.tensor(rows, device=q.device)]
        return out.reshape(nd, self.num_heads, self.head_dim)

    def _prefill_attention(self, q: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, it: StepItem) -> torch.Tensor:
        c, end = len(it.tokens), it.start + len(it.tokens)
        qg = (
            q.view(c, self.kv_heads, self.rep, self.head_dim)
            .permute(1, 2, 0, 3)
            .reshape(1, self.kv_heads, -1, self.head_dim)
        )
        keys = torch.arange(end, device=q.device)
        qpos = torch.arange(it.start, end, device=q.device)
        mask = (keys[None, :] <= qpos[:, None]).repeat(self.rep, 1)  # [rep * c, end]
        out = F.scaled_dot_product_attention(
            qg, kc[it.row : it.row + 1, :, :end], vc[it.row : it.row + 1, :, :end], attn_mask=mask, scale=self.scale
        )
        return (
            out.view(self.kv_heads, self.rep, c, self.head_dim)
            .permute(2, 0, 1, 3)
            .reshape(c, self.num_heads, self.head_dim)
        )

    @staticmethod
    def _logit_rows(decode: list[StepItem], prefill: list[StepItem], all_logits: bool) -> tuple[list[int], list[int]]:
        rows: list[int] = []
        owners: list[int] = []
        offset = 0
        for i, it in enumerate([*decode, *prefill]):
            c = len(it.tokens)
            if all_logits and i >= len(decode):
                rows.extend(range(offset, offset + c))
                owners.extend([i] * c)
            elif it.want_logits:
                rows.append(offset + c - 1)
                owners.append(i)
            offset += c
        return rows, owners
