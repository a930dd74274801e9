"""Soak: a real `tally serve` under a mixed load for a bounded time, then the ledger and the state audit checked.

A fresh temporary data directory; accounts and keys made through the Python API (an admin, a datanet owner, 4
contributors, one consumer per client); an open instruction datanet created over HTTP by its owner; `--adapters`
random rank-8 LoRA adapters for the base model written as PEFT directories (adapter_config.json +
adapter_model.safetensors, all seven projections) and loaded with `POST /v1/load_lora_adapter` as the admin. The
server runs as a subprocess (`tally serve`) with `factory.workers = 0` (no job workers: no jobs are submitted) and
the chain as `--chain` says (on: the embedded EVM, anchoring as configured). The per-key rate limit is raised
(`server.rate_limit_per_minute`, `server.rate_limit_burst`) so that 429s are rare; 429 and 503 (the engine's full
queue) are counted apart, as intended refusals.

Then, for `--minutes`, `--clients` closed-loop clients each send one request at a time. Half of them ask for answers
with no pause between them:
  chat            POST /v1/chat/completions on a random adapter, `max_tokens` 16, temperature 0, attribution as
                  `--attribution` says (default `fast`), non-streaming
  chat_stream     the same, streamed (SSE; the stream must end with [DONE] and carry no error event)
the other half upload and read, pausing `--think-ms` (100) between requests, in equal shares:
  contribution    POST /v1/datanets/{slug}/contributions: 10 new Alpaca rows from one of the contributors
  ledger_*        GET checkpoint (keyed and anonymous), an entry, a receipt (mostly an answer's X-Tally-Receipt),
                  an inclusion proof and a consistency proof
Per route: count, statuses, p50/p99 latency. The server's resident memory (psutil; the server has no children with
`factory.workers = 0`) and the load average are sampled every 10 s; the drift is measured from minute 2 to the end
(from the middle of a run shorter than 4 minutes). After the run the server is stopped with SIGTERM and
`tally ledger verify` and `tally audit` run on the data directory. Prints one JSON document and one summary line.

    .venv/bin/python benchmarks/soak.py [--minutes 10] [--adapters 100] [--clients 16] [--attribution fast]
    .venv/bin/python benchmarks/soak.py --minutes 1        # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

RANK = 8
CONTRIBUTORS = 4
ROWS_PER_UPLOAD = 10
MAX_TOKENS = 16
INTENDED = {429, 503}
# Half the clients ask for answers (chat, half of them streamed); the other half upload rows and read the ledger,
# with `--think-ms` between requests. A client of either kind picks its next request by these weights.
INFERENCE_MIX = {"chat": 1, "chat_stream": 1}
DATA_MIX = {
    "contribution": 2,
    "ledger_checkpoint": 2,
    "ledger_entry": 2,
    "ledger_receipt": 2,
    "ledger_inclusion": 2,
    "ledger_consistency": 2,
}
PROMPTS = [
    "Say hello in one short sentence.",
    "What is the capital of France?",
    "Name a prime number.",
    "Give me one word that rhymes with cat.",
    "What colour is the sky on a clear day?",
    "Write a haiku about rain.",
    "How many legs does a spider have?",
    "Suggest a name for a small boat.",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def _make_accounts(env: dict[str, str], clients: int) -> dict[str, Any]:
    """Accounts and keys through the Python API, before the server starts (same data directory)."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        from tally.config import load_settings
        from tally.identity import create_account, create_api_key
        from tally.ledger import open_ledger
        from tally.store import open_store

        settings = load_settings()
        store = open_store(settings)
        ledger = open_ledger(settings, store)

        def one(s: Any, name: str, roles: list[str]) -> str:
            account, _ = create_account(s, ledger, name, roles)
            return str(create_api_key(s, ledger, account)[1])

        with store.transaction() as s:
            keys = {
                "admin": one(s, "soak-admin", ["admin"]),
                "owner": one(s, "soak-owner", ["owner"]),
                "contributors": [one(s, f"soak-contributor-{i}", ["contributor"]) for i in range(CONTRIBUTORS)],
                "consumers": [one(s, f"soak-consumer-{i}", ["consumer"]) for i in range(clients)],
            }
        store.dispose()
        return keys
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _base_shapes(env: dict[str, str]) -> tuple[str, int, dict[str, tuple[int, int]]]:
    """The base model's name, layer count and (in, out) of each projection, from its config.json."""
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        from tally.config import load_settings
        from tally.models import resolve_model

        settings = load_settings()
        resolved = resolve_model(settings.models.default, settings.models.cache_dir)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    path = Path(resolved)
    cfg = json.loads((path / "config.json").read_text())
    hidden, inter = cfg["hidden_size"], cfg["intermediate_size"]
    head_dim = cfg.get("head_dim") or hidden // cfg["num_attention_heads"]
    kv = cfg.get("num_key_value_heads", cfg["num_attention_heads"]) * head_dim
    shapes = {
        "q_proj": (hidden, cfg["num_attention_heads"] * head_dim),
        "k_proj": (hidden, kv),
        "v_proj": (hidden, kv),
        "o_proj": (cfg["num_attention_heads"] * head_dim, hidden),
        "gate_proj": (hidden, inter),
        "up_proj": (hidden, inter),
        "down_proj": (inter, hidden),
    }
    return settings.models.default, int(cfg["num_hidden_layers"]), shapes


def _make_adapters(root: Path, count: int, base: str, layers: int, shapes: dict[str, tuple[int, int]]) -> list[Path]:
    """`count` PEFT LoRA directories, rank 8 on all seven projections, small random weights (fp32)."""
    import torch
    from safetensors.torch import save_file

    dirs = []
    for n in range(count):
        g = torch.Generator().manual_seed(n)
        tensors = {}
        for layer in range(layers):
            for proj, (d_in, d_out) in shapes.items():
                part = "self_attn" if proj in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
                key = f"base_model.model.model.layers.{layer}.{part}.{proj}"
                tensors[f"{key}.lora_A.weight"] = torch.randn(RANK, d_in, generator=g) / d_in**0.5
                tensors[f"{key}.lora_B.weight"] = torch.randn(d_out, RANK, generator=g) * 0.01
        d = root / f"soak-{n:03d}"
        d.mkdir(parents=True)
        save_file(tensors, str(d / "adapter_model.safetensors"))
        config = {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": base,
            "r": RANK,
            "lora_alpha": 2 * RANK,
            "lora_dropout": 0.0,
            "target_modules": list(shapes),
            "bias": "none",
        }
        (d / "adapter_config.json").write_text(json.dumps(config, indent=2))
        dirs.append(d)
    return dirs


def _start_server(env: dict[str, str], port: int, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "tally.cli.main", "serve", "--port", str(port), "--log-level", "WARNING"]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    proc.kill()
    raise RuntimeError("the server did not start within 300 s")


class Stats:
    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.statuses: dict[str, Counter[str]] = defaultdict(Counter)
        self.failures: list[str] = []
        self.first_token: list[float] = []

    def record(self, route: str, status: str, ms: float, detail: str = "") -> None:
        self.statuses[route][status] += 1
        if status.startswith("2"):
            self.latency[route].append(ms)
        elif not (status.isdigit() and int(status) in INTENDED) and len(self.failures) < 50:
            self.failures.append(f"{route}: {status} {detail[:300]}")

    def table(self) -> dict[str, Any]:
        out = {}
        for route in sorted(self.statuses):
            counts = self.statuses[route]
            lat = self.latency[route]
            out[route] = {
                "count": sum(counts.values()),
                "ok": sum(v for k, v in counts.items() if k.startswith("2")),
                "statuses": dict(sorted(counts.items())),
                "intended_refusals": sum(v for k, v in counts.items() if k.isdigit() and int(k) in INTENDED),
                "errors": sum(
                    v for k, v in counts.items() if not k.startswith("2") and not (k.isdigit() and int(k) in INTENDED)
                ),
                "p50_ms": _pct(lat, 0.5),
                "p99_ms": _pct(lat, 0.99),
                "max_ms": round(max(lat), 1) if lat else None,
            }
        return out


class Soak:
    def __init__(self, args: argparse.Namespace, base: str, keys: dict[str, Any], adapters: list[str], port: int):
        self.args = args
        self.base_url = f"http://127.0.0.1:{port}"
        self.keys = keys
        self.adapters = adapters
        self.stats = Stats()
        self.ledger_size = 1
        self.receipts: list[int] = []
        self.slug = "soak-data"
        self.rng = random.Random(args.seed)
        self.words = ["".join(self.rng.choices(string.ascii_lowercase, k=self.rng.randint(3, 9))) for _ in range(3000)]
        self.base = base
        self.inference_clients = max(1, args.clients // 2)

    def _auth(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    async def setup(self, http: httpx.AsyncClient) -> dict[str, Any]:
        r = await http.post(
            "/v1/datanets",
            headers=self._auth(self.keys["owner"]),
            json={
                "name": self.slug,
                "kind": "instruction",
                "license": "CC-BY-4.0",
                "uses": ["train", "rag", "eval"],
                "policy": "open",
                "description": "soak benchmark rows",
                "max_rows_per_day": 10**9,
            },
        )
        r.raise_for_status()
        start = time.perf_counter()
        load_ms = []
        for i, name in enumerate(self.adapters):
            t0 = time.perf_counter()
            r = await http.post(
                "/v1/load_lora_adapter",
                headers=self._auth(self.keys["admin"]),
                json={"lora_name": name, "lora_path": str(self.args.adapter_dirs[i])},
            )
            if r.status_code != 200:
                raise RuntimeError(f"load_lora_adapter {name}: {r.status_code} {r.text[:500]}")
            load_ms.append((time.perf_counter() - t0) * 1000)
        models = (await http.get("/v1/models", headers=self._auth(self.keys["consumers"][0]))).json()
        served = {m["id"] for m in models["data"]}
        missing = sorted(set(self.adapters) - served)
        if missing:
            raise RuntimeError(f"adapters not listed by /v1/models: {missing[:5]}")
        return {
            "adapters_loaded": len(self.adapters),
            "load_seconds": round(time.perf_counter() - start, 1),
            "load_p50_ms": _pct(load_ms, 0.5),
            "load_p99_ms": _pct(load_ms, 0.99),
        }

    def _rows(self) -> bytes:
        lines = []
        for _ in range(ROWS_PER_UPLOAD):
            words = " ".join(self.rng.choices(self.words, k=self.rng.randint(6, 20)))
            row = {
                "instruction": f"Explain {self.rng.choice(self.words)} {uuid.uuid4().hex[:12]}.",
                "input": "",
                "output": f"{words.capitalize()}.",
            }
            lines.append(json.dumps(row))
        return ("\n".join(lines) + "\n").encode()

    async def _chat(self, http: httpx.AsyncClient, token: str, stream: bool) -> tuple[str, str]:
        body = {
            "model": self.rng.choice(self.adapters),
            "messages": [{"role": "user", "content": self.rng.choice(PROMPTS)}],
            "max_tokens": MAX_TOKENS,
            "temperature": 0,
            "attribution": self.args.attribution,
            "stream": stream,
        }
        headers = self._auth(token)
        if not stream:
            r = await http.post("/v1/chat/completions", headers=headers, json=body)
            if r.status_code == 200:
                data = r.json()
                if not data.get("choices") or data["choices"][0].get("message") is None:
                    return "bad-body", r.text
                self._note_receipt(r.headers.get("x-tally-receipt"))
            return str(r.status_code), r.text if r.status_code != 200 else ""
        start = time.perf_counter()
        async with http.stream("POST", "/v1/chat/completions", headers=headers, json=body) as r:
            if r.status_code != 200:
                return str(r.status_code), (await r.aread()).decode(errors="replace")
            done, first = False, None
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                payload = line[6:]
                if payload == "[DONE]":
                    done = True
                    continue
                event = json.loads(payload)
                if "error" in event:
                    return "stream-error", payload
                choices = event.get("choices") or [{}]
                if first is None and (choices[0].get("delta") or {}).get("content"):
                    first = (time.perf_counter() - start) * 1000
                summary = event.get("attribution")
                if isinstance(summary, dict):
                    self._note_receipt(summary.get("receipt"))
            if first is not None:
                self.stats.first_token.append(first)
            return ("200" if done else "no-done"), ""

    def _note_receipt(self, value: Any) -> None:
        try:
            seq = int(value)
        except (TypeError, ValueError):
            return
        self.receipts.append(seq)
        if len(self.receipts) > 1000:
            del self.receipts[:500]

    async def _ledger(self, http: httpx.AsyncClient, token: str, route: str) -> tuple[str, str]:
        size = max(1, self.ledger_size)
        if route == "ledger_checkpoint":
            keyed = self.rng.random() < 0.5
            r = await http.get("/v1/ledger/checkpoint", headers=self._auth(token) if keyed else {})
            if r.status_code == 200:
                self.ledger_size = max(self.ledger_size, int(r.json()["size"]))
        elif route == "ledger_entry":
            r = await http.get(f"/v1/ledger/entries/{self.rng.randrange(size)}")
        elif route == "ledger_receipt":
            use_answer = self.receipts and self.rng.random() < 0.7
            seq = self.rng.choice(self.receipts) if use_answer else self.rng.randrange(size)
            r = await http.get(f"/v1/ledger/entries/{seq}/receipt")
        elif route == "ledger_inclusion":
            r = await http.get("/v1/ledger/proofs/inclusion", params={"index": self.rng.randrange(size), "size": size})
        else:
            r = await http.get("/v1/ledger/proofs/consistency", params={"first": self.rng.randint(1, size)})
        return str(r.status_code), r.text if r.status_code >= 300 else ""

    async def _upload(self, http: httpx.AsyncClient, token: str) -> tuple[str, str]:
        files = {"file": ("rows.jsonl", self._rows(), "application/jsonl")}
        r = await http.post(f"/v1/datanets/{self.slug}/contributions", headers=self._auth(token), files=files)
        return str(r.status_code), r.text if r.status_code >= 300 else ""

    async def client(self, http: httpx.AsyncClient, n: int, deadline: float) -> None:
        token = self.keys["consumers"][n]
        contributor = self.keys["contributors"][n % CONTRIBUTORS]
        inference = n < self.inference_clients
        mix = INFERENCE_MIX if inference else DATA_MIX
        if not inference and not self.args.contributions:
            mix = {k: v for k, v in mix.items() if k != "contribution"}
        routes, weights = list(mix), list(mix.values())
        while time.monotonic() < deadline:
            route = self.rng.choices(routes, weights)[0]
            start = time.perf_counter()
            try:
                if route in ("chat", "chat_stream"):
                    status, detail = await self._chat(http, token, route == "chat_stream")
                elif route == "contribution":
                    status, detail = await self._upload(http, contributor)
                else:
                    status, detail = await self._ledger(http, token, route)
            except (httpx.HTTPError, json.JSONDecodeError) as exc:
                status, detail = f"exception:{type(exc).__name__}", str(exc)
            ms = (time.perf_counter() - start) * 1000
            self.stats.record(route, status, ms, detail)
            if status == "429" or status == "503":
                await asyncio.sleep(0.5)
            elif not inference and self.args.think_ms:
                await asyncio.sleep(self.args.think_ms / 1000)

    def _rows_added(self) -> int:
        return sum(v for k, v in self.stats.statuses["contribution"].items() if k.startswith("2")) * ROWS_PER_UPLOAD

    async def sampler(self, http: httpx.AsyncClient, pid: int, t0: float, stop: asyncio.Event) -> list[dict[str, Any]]:
        proc = psutil.Process(pid)
        samples = []
        while True:
            rss = proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
            cache = None
            try:
                text = (await http.get("/metrics", timeout=10)).text
                for line in text.splitlines():
                    if line.startswith("tally_engine_adapter_host_cache_bytes"):
                        cache = int(float(line.split()[-1]))
            except httpx.HTTPError:
                pass
            samples.append(
                {
                    "t_s": round(time.monotonic() - t0, 1),
                    "rss_mib": round(rss / 2**20, 1),
                    "adapter_host_cache_mib": round(cache / 2**20, 1) if cache is not None else None,
                    "load_1m": round(os.getloadavg()[0], 2),
                    "rows_added": self._rows_added(),
                }
            )
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.args.sample_seconds)
                return samples
            except TimeoutError:
                pass

    async def run(self, pid: int) -> dict[str, Any]:
        # A pooled connection is dropped after 2 s idle, before the server closes it (uvicorn's keep-alive is 5 s,
        # httpx's default expiry too): reusing one the server is closing at that moment fails with no response.
        limits = httpx.Limits(
            max_connections=self.args.clients * 2 + 4,
            max_keepalive_connections=self.args.clients * 2,
            keepalive_expiry=2.0,
        )
        async with httpx.AsyncClient(base_url=self.base_url, timeout=300, limits=limits) as http:
            setup = await self.setup(http)
            t0 = time.monotonic()
            deadline = t0 + self.args.minutes * 60
            stop = asyncio.Event()
            sampler = asyncio.create_task(self.sampler(http, pid, t0, stop))
            await asyncio.gather(*(self.client(http, n, deadline) for n in range(self.args.clients)))
            elapsed = time.monotonic() - t0
            stop.set()
            samples = await sampler
            size = (await http.get("/v1/ledger/checkpoint", headers=self._auth(self.keys["admin"]))).json()["size"]
        return {"setup": setup, "seconds": round(elapsed, 1), "samples": samples, "ledger_size_at_end": size}


def _drift(samples: list[dict[str, Any]], minutes: float) -> dict[str, Any]:
    from_s = 120.0 if minutes >= 4 else minutes * 30.0
    later = [s for s in samples if s["t_s"] >= from_s]
    if len(later) < 2:
        return {"from_s": from_s, "drift_pct": None}
    first, last = later[0], later[-1]
    rows = last["rows_added"] - first["rows_added"]
    return {
        "rows_added_meanwhile": rows,
        "kib_per_row_added": round((last["rss_mib"] - first["rss_mib"]) * 1024 / rows, 1) if rows else None,
        "from_s": first["t_s"],
        "to_s": last["t_s"],
        "rss_from_mib": first["rss_mib"],
        "rss_to_mib": last["rss_mib"],
        "rss_max_mib": max(s["rss_mib"] for s in samples),
        "drift_pct": round((last["rss_mib"] - first["rss_mib"]) / first["rss_mib"] * 100, 2),
        "goal_pct": 5.0,
    }


def _check(env: dict[str, str], *args: str) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "tally.cli.main", *args]
    start = time.perf_counter()
    done = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True, timeout=1800)
    return {
        "command": "tally " + " ".join(args),
        "exit": done.returncode,
        "seconds": round(time.perf_counter() - start, 1),
        "output": (done.stdout + done.stderr)[-1500:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the load phase")
    parser.add_argument("--adapters", type=int, default=100)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--attribution", choices=["off", "fast", "full"], default="fast", help="per chat request")
    parser.add_argument("--chain", choices=["on", "off"], default="on", help="chain.enabled on the server")
    parser.add_argument(
        "--no-contributions",
        dest="contributions",
        action="store_false",
        help="data clients only read the ledger (tells the memory that grows with the datanet from the rest)",
    )
    parser.add_argument("--think-ms", type=float, default=100.0, help="pause between a data client's requests")
    parser.add_argument("--sample-seconds", type=float, default=10.0, help="memory sampling interval")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary data directory")
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="tally-soak-"))
    (tmp / "tally.toml").write_text("")  # no tally.toml from the working directory: defaults and the env below
    env = {
        "TALLY_DATA_DIR": str(tmp / "data"),
        "TALLY_CONFIG": str(tmp / "tally.toml"),
        "TALLY_FACTORY__WORKERS": "0",
        "TALLY_CHAIN__ENABLED": "true" if args.chain == "on" else "false",
        "TALLY_SERVER__RATE_LIMIT_PER_MINUTE": "100000",
        "TALLY_SERVER__RATE_LIMIT_BURST": "2000",
        "TALLY_LOG__LEVEL": "WARNING",
    }
    load_before = os.getloadavg()
    try:
        keys = _make_accounts(env, args.clients)
        base, layers, shapes = _base_shapes(env)
        t = time.perf_counter()
        args.adapter_dirs = _make_adapters(tmp / "adapters", args.adapters, base, layers, shapes)
        make_s = time.perf_counter() - t
        names = [d.name for d in args.adapter_dirs]
        port = _free_port()
        t = time.perf_counter()
        server = _start_server(env, port, tmp / "server.log")
        start_s = time.perf_counter() - t
        soak = Soak(args, base, keys, names, port)
        try:
            result = asyncio.run(soak.run(server.pid))
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                stopped = server.wait(timeout=120)
            except subprocess.TimeoutExpired:
                server.kill()
                stopped = server.wait()
        log_tail = (tmp / "server.log").read_text(errors="replace")[-3000:]
        verify = _check(env, "ledger", "verify")
        audit = _check(env, "audit")
        routes = soak.stats.table()
        loads = [s["load_1m"] for s in result["samples"]]
        total = {
            "requests": sum(r["count"] for r in routes.values()),
            "ok": sum(r["ok"] for r in routes.values()),
            "intended_refusals_429_503": sum(r["intended_refusals"] for r in routes.values()),
            "errors": sum(r["errors"] for r in routes.values()),
        }
        out = {
            "benchmark": "soak",
            "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
            f"{psutil.virtual_memory().total / 2**30:.1f} GiB, Python {platform.python_version()}",
            "load_average_1m": {
                "before": round(load_before[0], 2),
                "min": min(loads) if loads else None,
                "mean": round(statistics.mean(loads), 2) if loads else None,
                "max": max(loads) if loads else None,
            },
            "settings": {
                "minutes": args.minutes,
                "clients": args.clients,
                "adapters": args.adapters,
                "rank": RANK,
                "max_tokens": MAX_TOKENS,
                "attribution": args.attribution,
                "chain": args.chain,
                "factory_workers": 0,
                "rate_limit_per_minute": 100000,
                "rate_limit_burst": 2000,
                "inference_clients": max(1, args.clients // 2),
                "data_clients": args.clients - max(1, args.clients // 2),
                "inference_mix": INFERENCE_MIX,
                "data_mix": DATA_MIX
                if args.contributions
                else {k: v for k, v in DATA_MIX.items() if k != "contribution"},
                "think_ms_data_clients": args.think_ms,
                "rows_per_upload": ROWS_PER_UPLOAD,
                "base_model": base,
            },
            "adapters_written_seconds": round(make_s, 1),
            "server_start_seconds": round(start_s, 1),
            **result["setup"],
            "load_phase_seconds": result["seconds"],
            "totals": total,
            "throughput_per_s": round(total["requests"] / result["seconds"], 2),
            "routes": routes,
            "chat_stream_first_token_p50_ms": _pct(soak.stats.first_token, 0.5),
            "chat_stream_first_token_p99_ms": _pct(soak.stats.first_token, 0.99),
            "failures": soak.stats.failures,
            "memory": _drift(result["samples"], args.minutes),
            "samples": result["samples"],
            "ledger_size_at_end": result["ledger_size_at_end"],
            "datanet_rows_added": routes.get("contribution", {}).get("ok", 0) * ROWS_PER_UPLOAD,
            "server_exit": stopped,
            "server_log_tail": log_tail if stopped not in (0, 143, -15) or total["errors"] else "",
            "ledger_verify": verify,
            "audit": audit,
            "data_dir": str(tmp / "data") if args.keep else None,
        }
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    doc = json.dumps(out, indent=2)
    print(doc)
    if args.out:
        args.out.write_text(doc + "\n")
    chat, stream, mem = routes.get("chat", {}), routes.get("chat_stream", {}), out["memory"]
    print(
        f"soak: {result['seconds'] / 60:.1f} min, {args.clients} clients, {args.adapters} adapters: "
        f"{total['requests']:,} requests ({out['throughput_per_s']}/s), {total['errors']} errors, "
        f"{total['intended_refusals_429_503']} intended 429/503; chat p50/p99 {chat.get('p50_ms')}/"
        f"{chat.get('p99_ms')} ms, stream {stream.get('p50_ms')}/{stream.get('p99_ms')} ms; "
        f"RSS drift {mem.get('drift_pct')}% from {mem.get('from_s')} s (goal <= 5%); "
        f"ledger verify exit {verify['exit']}, audit exit {audit['exit']}; "
        f"load average {out['load_average_1m']['mean']}"
    )


if __name__ == "__main__":
    main()
