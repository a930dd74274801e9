"""The engine facade: one base model, many adapters, a background step loop, and the request API the server uses.

Thread model: one engine thread runs `step()` while there is work; request threads (or the asyncio loop) only put
requests into an inbox and read events from their sinks. Adapter loads from disk run on the store's thread pool.
Tests may drive `step()` themselves instead of starting the thread.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import queue
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tally.engine.adapters import BaseSpec
from tally.engine.errors import AdapterNotFoundError, EngineBusyError, EngineClosedError, RequestValidationError
from tally.engine.kv_cache import KVCache
from tally.engine.lora_layers import PROJECTIONS, LoraKernels, wrap_model
from tally.engine.metrics import EngineMetrics
from tally.engine.native import DecodeOps, KernelUnavailable, default_kernel_dir
from tally.engine.prefix_cache import PrefixCache
from tally.engine.quant import WEIGHT_FORMATS, Q8Decoder
from tally.engine.registry import read_registry, registry_path
from tally.engine.runner import LlamaRunner, head_dim
from tally.engine.sampling import SamplingParams, make_generator, sample
from tally.engine.scheduler import Scheduler, SchedulerConfig
from tally.engine.sequence import Detokenizer, RequestOutput, SeqState, Sequence
from tally.engine.store import AdapterEntry, AdapterStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    """Sizes of everything the engine allocates up front; see docs/engine.md for the memory arithmetic."""

    max_num_seqs: int = 16  # KV cache rows
    max_model_len: int = 1024  # tokens per row (prompt + output)
    max_tokens_per_step: int = 512
    adapter_slots: int = 16
    max_adapters_per_step: int = 16
    max_rank: int = 64
    targets: tuple[str, ...] = PROJECTIONS
    host_cache_bytes: int = 1 << 30
    fairness_steps: int = 8
    load_workers: int = 1
    threads: int = 0  # torch intra-op threads; 0 leaves torch's default (all cores)
    max_waiting: int = 256  # requests queued for a KV cache row; more are refused (EngineBusyError), never queued
    # base weights: fp32, int8 (quant.py: faster decode on a CPU, a measured quality cost), or auto (int8 where its
    # kernel builds on this CPU, else fp32)
    weights: str = "fp32"
    int8_max_tokens: int = 16  # steps of at most this many tokens use the int8 kernel; larger ones fp32 GEMM
    kernel_dir: Path | None = None  # where compiled kernels are built (None: next to the model cache)
    native_decode: bool = True  # a decode step's norms, rotary and attention in compiled C (CPU, fp32; native.py)
    prefix_cache_bytes: int = 0  # keys and values of prompt prefixes kept for reuse (prefix_cache.py); 0: off
    # requests with keep_states get the hidden states entering this many layers from the top (attribution's
    # top-layer gradient runs only those layers from them); 0: no states are kept
    states_from_top: int = 0
    device: str = field(default_factory=lambda: "cuda" if torch.cuda.is_available() else "cpu")

    def __post_init__(self) -> None:
        if self.max_num_seqs < 1:  # 0 ("auto") is a setting; build_engine resolves it before an engine exists
            raise ValueError(f"max_num_seqs must be at least 1, got {self.max_num_seqs}")
        if self.states_from_top < 0:
            raise ValueError(f"states_from_top must be at least 0, got {self.states_from_top}")
        if self.weights not in ("auto", *WEIGHT_FORMATS):
            raise ValueError(f"weights must be auto, fp32 or int8, got {self.weights!r}")

    def scheduler(self) -> SchedulerConfig:
        return SchedulerConfig(
            max_num_seqs=self.max_num_seqs,
            max_tokens_per_step=max(self.max_tokens_per_step, self.max_num_seqs),
            max_adapters_per_step=min(self.max_adapters_per_step, self.adapter_slots),
            fairness_steps=self.fairness_steps,
        )


@dataclass
class GenerationResult:
    request_id: str
    text: str
    token_ids: list[int]
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    logits: list[torch.Tensor] | None = None
    error: str | None = None
    adapter_id: str | None = None  # the weights that ran (None: the base model)
    adapter_path: Path | None = None
    states: torch.Tensor | None = None  # with keep_states: [tokens run, hidden] entering `Engine.states_layer`


class Engine:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        model_name: str,
        config: EngineConfig | None = None,
        kernels: LoraKernels | None = None,
    ) -> None:
        self.config = config = config or EngineConfig()
        self.model_name = model_name
        self.tokenizer = tokenizer
        self.device = torch.device(config.device)
        self.model = model.to(self.device).eval()
        self.metrics = EngineMetrics()
        self.weights = self._base_weights(config)  # what runs: "int8", "fp32" (or a model's own other dtype)
        self.context, self.layers = wrap_model(self.model, config.targets, config.adapter_slots, kernels)
        self.spec = BaseSpec.from_model(self.model, config.targets, config.max_rank)
        mcfg = self.model.config
        dtype = next(self.model.parameters()).dtype
        self.cache = KVCache(
            mcfg.num_hidden_layers,
            config.max_num_seqs,
            mcfg.num_key_value_heads,
            config.max_model_len,
            head_dim(mcfg),
            dtype,
            self.device,
        )
        ops = self._decode_ops(config)
        self.runner = LlamaRunner(self.model, self.cache, self.context, ops, self._decoder(config, ops))
        self.store = AdapterStore(
            self.spec,
            self.layers,
            config.adapter_slots,
            config.host_cache_bytes,
            self.metrics,
            load_workers=config.load_workers,
        )
        layers = int(mcfg.num_hidden_layers)
        # the layer whose input hidden states requests may keep (None: none kept)
        self.states_layer = max(0, layers - config.states_from_top) if config.states_from_top else None
        self.prefixes = PrefixCache(self.cache, config.prefix_cache_bytes)
        self.scheduler = Scheduler(config.scheduler(), self.cache, self.store, self.metrics, self.prefixes)
        self.detok = Detokenizer(tokenizer, _eos_ids(model, tokenizer))
        self._inbox: list[Sequence] = []
        self._by_id: dict[str, Sequence] = {}
        self._cancel: set[str] = set()
        self._unloaded: set[str] = set()  # names an admin unloaded (see `was_unloaded`)
        self._deliveries: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopDelivery] = (
            weakref.WeakKeyDictionary()
        )
        self._wake = threading.Condition()
        self.store.on_loaded = self._notify
        self._thread: threading.Thread | None = None
        self._closed = False
        self._ids = itertools.count()
        self.created = int(time.time())

    def _decode_ops(self, config: EngineConfig) -> DecodeOps | None:
        """The compiled decode helpers where they apply (CPU, fp32) and build; else torch's ops, with a warning."""
        if not config.native_decode or self.device.type != "cpu" or self.cache.k[0].dtype != torch.float32:
            return None
        try:
            return DecodeOps.load(config.kernel_dir or default_kernel_dir())
        except KernelUnavailable as exc:
            logger.warning("decode steps use torch's ops: %s", exc)
            return None

    def _decoder(self, config: EngineConfig, ops: DecodeOps | None) -> Q8Decoder | None:
        """With int8 weights and the helpers: decode steps through every layer in one native call."""
        if ops is None or self.weights != "int8":
            return None
        try:
            return Q8Decoder.for_model(ops.library.parent, self.model, self.cache, config.int8_max_tokens)
        except KernelUnavailable as exc:
            logger.warning("decode steps run layer by layer: %s", exc)
            return None

    def _base_weights(self, config: EngineConfig) -> str:
        """Quantise the base weights where `config.weights` asks; returns the format that runs. `auto` is int8 on a
        CPU whose int8 kernel builds (AVX2, FMA and a C compiler), else fp32, saying why; an explicit `int8` that
        cannot run refuses to start instead."""
        dtype = next(self.model.parameters()).dtype
        own = "fp32" if dtype == torch.float32 else str(dtype).removeprefix("torch.")
        if config.weights == "fp32":
            return own
        if own != "fp32":  # int8 replaces fp32 weights; a model loaded in another dtype stays as it is
            if config.weights == "int8":
                raise RequestValidationError(
                    f"engine.weights = int8 needs a model loaded in float32, this one is {own}", param="weights"
                )
            logger.info("engine.weights = auto: the model's own %s weights (int8 replaces fp32 ones)", own)
            return own
        if config.weights == "auto" and self.device.type != "cpu":
            logger.info("engine.weights = auto: fp32 base weights (the int8 kernel is for CPUs)")
            return "fp32"
        try:
            self._quantize(config)
        except KernelUnavailable as exc:
            if config.weights == "int8":
                raise
            logger.warning("engine.weights = auto: fp32 base weights, the int8 kernel is unavailable: %s", exc)
            return "fp32"
        return "int8"

    def _quantize(self, config: EngineConfig) -> None:
        from tally.engine.quant import Q8Kernel, quantize_model

        if self.device.type != "cpu":
            raise RequestValidationError("engine.weights = int8 is a CPU kernel; use fp32 on a GPU", param="weights")
        kernel_dir = config.kernel_dir or default_kernel_dir()
        replaced = quantize_model(self.model, Q8Kernel.load(kernel_dir), config.int8_max_tokens)
        logger.info("int8 base weights: %d linear layers", replaced)

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def start(self) -> Engine:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="tally-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._closed = True
        self._notify()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        for seq in list(self.scheduler.running) + list(self.scheduler.waiting) + self._drain_inbox():
            self._finish(seq, "cancelled", error="the engine stopped")
        self.store.close()

    def _notify(self) -> None:
        with self._wake:
            self._wake.notify_all()

    def _loop(self) -> None:
        while not self._closed:
            with self._wake:
                if not (self._inbox or self._cancel or self.scheduler.has_work):
                    self._wake.wait(timeout=0.5)
            if self._closed:
                break
            try:
                progressed = self.step()
            except Exception as exc:  # a bug must not hang every client: fail the running requests, keep serving
                logger.exception("engine step failed; failing %d running requests", len(self.scheduler.running))
                for seq in list(self.scheduler.running):
                    self._finish(seq, "error", error=f"engine error ({type(exc).__name__}); the server log has it")
                progressed = True
            if not progressed:
                with self._wake:  # only sequences waiting for an adapter load: sleep until it lands
                    self._wake.wait(timeout=0.005)

    # -- adapters -------------------------------------------------------------------------------------------------
    def add_adapter(self, name: str, path: Path | str, *, pinned: bool = False, load_now: bool = True) -> AdapterEntry:
        if name == self.model_name:
            raise RequestValidationError(f"adapter name {name!r} is the base model's name")
        entry = self.store.register(name, path, pinned=pinned, load_now=load_now)
        self._unloaded.discard(name)
        return entry

    def remove_adapter(self, name: str) -> AdapterEntry:
        entry = self.store.unregister(name)
        self._unloaded.add(name)
        return entry

    def was_unloaded(self, name: str) -> bool:
        """Unloaded by an admin since start: not picked up again from the registry file until loaded again."""
        return name in self._unloaded

    def adapters(self) -> list[AdapterEntry]:
        return self.store.entries()

    def adapter_tier(self, name: str) -> str:
        """The cache tier holding a registered adapter's weights: "slot", "host" or "disk"."""
        return self.store.tier(name)

    def check_model(self, model: str) -> str | None:
        """The adapter name for `model` (None for the base model); AdapterNotFoundError for anything else."""
        if model == self.model_name:
            return None
        self.store.resolve(model)
        return model

    # -- requests -------------------------------------------------------------------------------------------------
    def encode_chat(self, messages: list[dict[str, Any]]) -> list[int]:
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return [int(i) for i in ids]

    def encode(self, text: str) -> list[int]:
        return [int(i) for i in self.tokenizer(text, add_special_tokens=False)["input_ids"]]

    def waiting(self) -> int:
        """Requests accepted but not yet running (the inbox and the scheduler's queue)."""
        return len(self._inbox) + len(self.scheduler.waiting)

    def validate(self, prompt: list[int], params: SamplingParams, model: str | None = None) -> str | None:
        """Every check a request must pass, in one place: callers run it before they answer (a streamed response
        must not start and then fail), `submit` runs it again as the engine's own guard. Returns the adapter name
        (None for the base model)."""
        if self._closed:
            raise EngineClosedError("the engine is stopped")
        waiting = self.waiting()
        if waiting >= self.config.max_waiting:
            raise EngineBusyError(
                f"the engine is busy: {waiting} requests are waiting (max_waiting {self.config.max_waiting}); "
                "retry shortly", waiting=waiting, max_waiting=self.config.max_waiting, retry_after=1,
            )  # fmt: skip
        adapter = self.check_model(model) if model is not None else None
        if not prompt:
            raise RequestValidationError("the prompt is empty", param="prompt")
        if len(prompt) + params.max_tokens > self.config.max_model_len:
            raise RequestValidationError(
                f"prompt ({len(prompt)} tokens) + max_tokens ({params.max_tokens}) exceeds the model's context of "
                f"{self.config.max_model_len} tokens",
                param="max_tokens", prompt_tokens=len(prompt), max_tokens=params.max_tokens,
                max_model_len=self.config.max_model_len,
            )  # fmt: skip
        vocab = int(self.model.config.vocab_size)
        bad = next((t for t in prompt if t < 0 or t >= vocab), None)
        if bad is not None:
            raise RequestValidationError(
                f"prompt token ids must be in [0, {vocab}); got {bad}", param="prompt", token=bad, vocab=vocab
            )
        return adapter

    def submit(
        self,
        prompt: list[int],
        params: SamplingParams,
        sink: Callable[[RequestOutput], None],
        model: str | None = None,
        request_id: str | None = None,
    ) -> str:
        """Queue one request; events go to `sink` (called on the engine thread). Unknown `model` raises here."""
        adapter = self.validate(prompt, params, model)
        request_id = request_id or f"req-{next(self._ids)}-{uuid.uuid4().hex[:8]}"
        seq = Sequence(request_id, adapter, list(prompt), params, sink)
        seq.keep_states = params.keep_states and self.states_layer is not None
        seq.generator = make_generator(params, self.device)
        with self._wake:
            self._inbox.append(seq)
            self._by_id[request_id] = seq
            self._wake.notify_all()
        return request_id

    def cancel(self, request_id: str) -> None:
        with self._wake:
            self._cancel.add(request_id)
            self._wake.notify_all()

    def generate(
        self, prompt: list[int], params: SamplingParams, model: str | None = None, timeout: float = 600.0
    ) -> GenerationResult:
        """Blocking convenience: submit and collect (the engine thread must run, or call `run_until_idle`)."""
        return self.collect(self.stream_sync(prompt, params, model, timeout))

    def stream_sync(
        self, prompt: list[int], params: SamplingParams, model: str | None = None, timeout: float = 600.0
    ) -> Iterator[RequestOutput]:
        q: queue.Queue[RequestOutput] = queue.Queue()
        request_id = self.submit(prompt, params, q.put, model)
        try:
            while True:
                if self._thread is None:
                    self.step()
                    if q.empty():
                        continue
                out = q.get(timeout=timeout)
                yield out
                if out.finish_reason is not None:
                    return
        finally:
            if request_id in self._by_id:  # the caller stopped reading early
                self.cancel(request_id)

    async def stream(
        self, prompt: list[int], params: SamplingParams, model: str | None = None
    ) -> AsyncIterator[RequestOutput]:
        """Events for one request on the running asyncio loop; leaving early (client gone) cancels it. Events that
        queued up while the loop was busy come merged into one, so a loop that falls behind catches up in fewer,
        larger chunks instead of paying its per-event cost for every token."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[RequestOutput] = asyncio.Queue()
        delivery = self._delivery_for(loop)
        request_id = self.submit(prompt, params, lambda out: delivery.post(q, out), model)
        finished = False
        try:
            while True:
                out = await q.get()
                while out.finish_reason is None and not q.empty():
                    out = _merge(out, q.get_nowait())
                yield out
                if out.finish_reason is not None:
                    finished = True
                    return
        finally:
            if not finished:
                self.cancel(request_id)

    def _delivery_for(self, loop: asyncio.AbstractEventLoop) -> _LoopDelivery:
        with self._wake:
            delivery = self._deliveries.get(loop)
            if delivery is None:
                delivery = self._deliveries[loop] = _LoopDelivery(loop)
            return delivery

    @staticmethod
    def collect(events: Iterator[RequestOutput]) -> GenerationResult:
        text, tokens = [], []
        last: RequestOutput | None = None
        for out in events:
            text.append(out.text)
            tokens.extend(out.token_ids)
            last = out
        assert last is not None and last.usage is not None
        return GenerationResult(
            last.request_id,
            "".join(text),
            tokens,
            last.finish_reason,
            last.usage.prompt_tokens,
            last.usage.completion_tokens,
            last.logits,
            last.error,
            last.adapter_id,
            last.adapter_path,
            last.states,
        )

    def run_until_idle(self, max_steps: int = 1_000_000) -> None:
        """Step in the calling thread until nothing is left (tests and benchmarks without the engine thread)."""
        for _ in range(max_steps):
            if not (self._inbox or self._cancel or self.scheduler.has_work):
                return
            if not self.step():
                time.sleep(0.001)

    # -- the step -------------------------------------------------------------------------------------------------
    def _drain_inbox(self) -> list[Sequence]:
        with self._wake:
            new, self._inbox = self._inbox, []
        return new

    def step(self) -> bool:
        """One scheduling step and forward pass; False when nothing could run (waiting on adapter loads)."""
        for seq in self._drain_inbox():
            self.scheduler.add(seq)
        with self._wake:
            cancels, self._cancel = self._cancel, set()
        for request_id in cancels:
            target = self._by_id.get(request_id)
            if target is not None and target.state is not SeqState.FINISHED:
                self._finish(target, "cancelled")
        plan, failed = self.scheduler.schedule()
        for seq, failure in failed:  # the request's own fault (a broken or unloaded adapter), kind kept
            self._finish(seq, "error", error=str(failure), error_kind=failure.kind)
        if plan.empty:
            return bool(failed or cancels)
        decode = [item for _, item in plan.decode]
        prefill = [item for _, item in plan.prefill]
        seqs = [s for s, _ in plan.decode] + [s for s, _ in plan.prefill]
        capture = self.states_layer if any(s.keep_states for s in seqs) else None
        logits, owners = self.runner.forward(decode, prefill, capture=capture)
        kept = self.runner.states.to("cpu") if self.runner.states is not None else None  # one copy off a device
        offset = 0
        for i, (s, item) in enumerate(zip(seqs, decode + prefill, strict=True)):
            s.computed = item.start + len(item.tokens)
            if s.keep_states and kept is not None and not s.cancelled:
                s.states.append(kept[offset : offset + len(item.tokens)].clone())
            offset += len(item.tokens)
            if i >= len(decode) and not s.in_prefill:
                self.metrics.prompt_tokens.inc(len(s.prompt))
                if s.keep_states and s.states:  # the prompt's chunks as one tensor, for the cache and the answer
                    s.states[:] = [torch.cat(s.states)]
                states = s.states[0] if s.keep_states and s.states else None
                self.prefixes.store(s.adapter_id, s.params.cache_salt, s.prompt, item.row, states)
        new_tokens = 0
        greedy = torch.argmax(logits, dim=-1).tolist()  # one op and one device sync for every greedy row
        for row, owner in enumerate(owners):
            seq = seqs[owner]
            if seq.cancelled:  # its consumer broke (see `_emit`): end it, or it would run on with nobody reading
                if seq.state is not SeqState.FINISHED:
                    self._finish(seq, "cancelled")
                continue
            row_logits = logits[row]
            if seq.params.record_logits:
                seq.logits.append(row_logits.detach().float().clone())
            token = greedy[row] if seq.params.greedy else sample(row_logits, seq.params, seq.generator)
            if seq.first_token_at is None:
                seq.first_token_at = time.monotonic()
            new_tokens += 1
            out = self.detok.append(seq, token)
            if out is not None:
                self._emit(seq, out)
        self.metrics.record_step(new_tokens)
        return True

    def _emit(self, seq: Sequence, out: RequestOutput) -> None:
        if out.finish_reason is not None:
            self.scheduler.finish(seq)
            self._by_id.pop(seq.request_id, None)
            self.metrics.requests.labels(finish_reason=out.finish_reason).inc()
        try:
            seq.sink(out)
        except Exception:  # a broken consumer (closed loop) must not stop the engine
            seq.cancelled = True

    def _finish(self, seq: Sequence, reason: str, error: str | None = None, error_kind: str | None = None) -> None:
        seq.cancelled = reason == "cancelled"
        delta = seq.text[seq.emitted :] if reason != "error" else ""
        self._emit(seq, Detokenizer.final(seq, delta, [], reason=reason, error=error, error_kind=error_kind))


class _LoopDelivery:
    """Hands engine events to one asyncio loop with one wake-up for everything posted before the loop runs: a step
    that yields a token for 32 streams wakes the loop once, not 32 times."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.Queue[RequestOutput], RequestOutput]] = []
        self._scheduled = False

    def post(self, q: asyncio.Queue[RequestOutput], out: RequestOutput) -> None:
        with self._lock:
            self._pending.append((q, out))
            if self._scheduled:
                return
            self._scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._deliver)
        except RuntimeError:  # the loop is closed: nobody is left to read; the engine cancels the request
            with self._lock:
                self._scheduled = False
            raise

    def _deliver(self) -> None:
        with self._lock:
            pending, self._pending, self._scheduled = self._pending, [], False
        for q, out in pending:
            q.put_nowait(out)


def _merge(first: RequestOutput, then: RequestOutput) -> RequestOutput:
    """Two consecutive events of one request as one (text and tokens joined; the later one's ending and usage)."""
    return dataclasses.replace(then, text=first.text + then.text, token_ids=first.token_ids + then.token_ids)


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    return ids


def build_engine(
    settings: Any, config: EngineConfig | None = None, model: str | None = None, states_from_top: int = 0
) -> Engine:
    """The engine for the server: the default base model from settings, adapters from the CLI's registry file,
    sizes from the `[engine]` section of the settings; `states_from_top` as in `EngineConfig` (a given `config`
    carries its own)."""
    from tally.engine.sizing import auto_threads, resolve_num_seqs
    from tally.models import load_model, load_tokenizer, resolve_model

    name = model or settings.models.default
    path = resolve_model(name, settings.models.cache_dir)
    if config is None:
        sizes = settings.engine.model_dump()
        sizes["max_num_seqs"] = resolve_num_seqs(sizes["max_num_seqs"], path, sizes["max_model_len"])
        sizes["threads"] = sizes["threads"] or auto_threads()
        config = EngineConfig(**sizes, kernel_dir=settings_kernel_dir(settings), states_from_top=states_from_top)
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    engine = Engine(load_model(path), load_tokenizer(path), name, config)
    logger.info("engine: %d sequences, %d threads, %s weights", config.max_num_seqs, config.threads, engine.weights)
    for entry in read_registry(adapter_registry_path(settings)).values():
        try:
            engine.add_adapter(entry.name, entry.path, pinned=entry.pinned, load_now=False)
        except Exception as exc:  # one broken adapter must not keep the server from starting
            logger.warning("skipping registered adapter %r: %s", entry.name, exc)
    return engine


def settings_kernel_dir(settings: Any) -> Path:
    """Where the server builds its compiled kernels: beside the settings' model cache."""
    return Path(settings.models.cache_dir).parent / "kernels"


def adapter_registry_path(settings: Any) -> Path:
    """Where `tally adapters add` keeps name -> path (read by the engine at start)."""
    return registry_path(settings.data_dir)


__all__ = ["AdapterNotFoundError", "Engine", "EngineConfig", "GenerationResult", "build_engine", "settings_kernel_dir"]
