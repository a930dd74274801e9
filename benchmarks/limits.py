"""Limits under abuse, against a real server (uvicorn on loopback, no model needed), in one run:

  flood     one key sends as fast as `--flood-conns` connections allow to `GET /v1/accounts/me` (a database read)
            while `--keys` other keys each send 5 requests a second (under their rate). Measured: the flooder's
            429s per second, and the other keys' p99 latency during the flood against their p99 on the same server
            idle just before (the baseline). Goal: their p99 within 2x of idle, none of their requests refused.
  body      an anonymous 30 MB POST: the time from its first byte to the 413 (Content-Length over the cap, and the
            same body chunked without a length, cut at the cap). Baseline: the same body against a second server
            whose cap is raised above 30 MB, which reads and parses it before answering. Goal: under 50 ms.

Settings are the defaults (`server.rate_limit_per_minute` 600, burst 60, `server.max_request_bytes` 10 MiB).
The server runs in its own process, the flooder in another, the measuring clients in this one. Prints one JSON
document and a one-line summary.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import platform
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BODY_BYTES = 30 * 1024 * 1024
PATH = "/v1/accounts/me"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _make_keys(data_dir: Path, count: int) -> list[str]:
    os.environ["TALLY_DATA_DIR"] = str(data_dir)
    from tally.config import load_settings
    from tally.identity import create_account, create_api_key
    from tally.ledger import open_ledger
    from tally.store import open_store

    settings = load_settings()
    store = open_store(settings)
    ledger = open_ledger(settings, store)
    tokens = []
    with store.transaction() as s:
        for i in range(count):
            account, _ = create_account(s, ledger, f"bench{i}", ["consumer"])
            tokens.append(create_api_key(s, ledger, account)[1])
    store.dispose()
    return tokens


def _start_server(data_dir: Path, port: int, **env: str) -> subprocess.Popen[bytes]:
    code = (
        "import uvicorn; from tally.api import create_app; "
        f"uvicorn.run(create_app(), host='127.0.0.1', port={port}, log_level='warning', access_log=False)"
    )
    environ = {**os.environ, "TALLY_DATA_DIR": str(data_dir), "TALLY_LOG__LEVEL": "WARNING", **env}
    proc = subprocess.Popen([sys.executable, "-c", code], env=environ)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("the server did not start")


def _flood(port: int, token: str, conns: int, stop: Any, out: Any) -> None:
    """One key, `conns` keep-alive connections, as fast as they go; reports the status counts."""
    counts: Counter[int] = Counter()
    lock = threading.Lock()

    def worker() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        mine: Counter[int] = Counter()
        while not stop.is_set():
            conn.request("GET", PATH, headers={"Authorization": f"Bearer {token}"})
            r = conn.getresponse()
            r.read()
            mine[r.status] += 1
        with lock:
            counts.update(mine)

    threads = [threading.Thread(target=worker) for _ in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.put(dict(counts))


def _paced(port: int, tokens: list[str], seconds: float, per_s: float) -> tuple[list[float], Counter[int]]:
    """Each key on its own connection, `per_s` requests a second; latencies in ms."""
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    lock = threading.Lock()

    def worker(token: str, offset: float) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        time.sleep(offset)
        end = time.monotonic() + seconds
        mine, seen = [], Counter[int]()
        while (start := time.monotonic()) < end:
            t0 = time.perf_counter()
            conn.request("GET", PATH, headers={"Authorization": f"Bearer {token}"})
            r = conn.getresponse()
            r.read()
            mine.append((time.perf_counter() - t0) * 1000)
            seen[r.status] += 1
            time.sleep(max(0.0, 1 / per_s - (time.monotonic() - start)))
        with lock:
            latencies.extend(mine)
            statuses.update(seen)

    threads = [threading.Thread(target=worker, args=(t, i / (per_s * len(tokens)))) for i, t in enumerate(tokens)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies, statuses


def _p99(values: list[float]) -> float:
    return round(statistics.quantiles(values, n=100)[98], 2)


def _big_body_ms(port: int, chunked: bool) -> tuple[float, int]:
    """Time from the first byte of a 30 MB anonymous POST to the response's status line; and the status."""
    head = (
        "POST /v1/keys HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + ("Transfer-Encoding: chunked\r\n" if chunked else f"Content-Length: {BODY_BYTES}\r\n")
        + "\r\n"
    ).encode()
    piece = b"x" * (1 << 20)
    framed = b"%x\r\n" % len(piece) + piece + b"\r\n" if chunked else piece
    sock = socket.create_connection(("127.0.0.1", port))
    start = time.perf_counter()
    pending = memoryview(head + (b'{"label":"' if not chunked else b""))
    sent, reply, closed = 0, b"", False
    try:
        while b"\r\n" not in reply and not closed:
            if not pending and sent < BODY_BYTES:
                pending, sent = memoryview(framed), sent + len(piece)
            readable, writable, _ = select.select([sock], [sock] if pending else [], [], 5)
            if readable:
                data = sock.recv(65536)
                reply, closed = reply + data, not data
            elif writable:
                try:
                    pending = pending[sock.send(pending) :]
                except (BrokenPipeError, ConnectionResetError):
                    pending = memoryview(b"")
        elapsed = (time.perf_counter() - start) * 1000
    finally:
        sock.close()
    status = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/") else 0
    return round(elapsed, 2), status


def _parsed_body_ms(port: int) -> tuple[float, int]:
    """Baseline: the same 30 MB sent whole to a server that accepts it; time until its answer."""
    body = b'{"label":"' + b"x" * (BODY_BYTES - 12) + b'"}'
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    start = time.perf_counter()
    conn.request("POST", "/v1/keys", body=body, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    r.read()
    return round((time.perf_counter() - start) * 1000, 2), r.status


def run(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    tokens = _make_keys(tmp / "data", args.keys + 1)
    flooder, others = tokens[0], tokens[1:]
    port = _free_port()
    server = _start_server(tmp / "data", port)
    try:
        _paced(port, others, 1.0, args.rate)  # warm the connections and the database
        idle_lat, idle_status = _paced(port, others, args.seconds, args.rate)
        stop = mp.Event()
        out: mp.Queue[dict[int, int]] = mp.Queue()
        flood = mp.Process(target=_flood, args=(port, flooder, args.flood_conns, stop, out))
        flood.start()
        time.sleep(0.5)
        t0 = time.monotonic()
        busy_lat, busy_status = _paced(port, others, args.seconds, args.rate)
        stop.set()
        counts = out.get(timeout=30)
        flood_s = time.monotonic() - t0 + 0.5
        flood.join()
        body = {
            "content_length": [_big_body_ms(port, chunked=False) for _ in range(args.body_repeats)],
            "chunked": [_big_body_ms(port, chunked=True) for _ in range(args.body_repeats)],
        }
    finally:
        server.terminate()
        server.wait()
    port2 = _free_port()
    open_server = _start_server(tmp / "data", port2, TALLY_SERVER__MAX_REQUEST_BYTES=str(64 * 1024 * 1024))
    try:
        baseline = _parsed_body_ms(port2)
    finally:
        open_server.terminate()
        open_server.wait()
    idle_p99, busy_p99 = _p99(idle_lat), _p99(busy_lat)
    return {
        "flood": {
            "flood_connections": args.flood_conns,
            "flood_seconds": round(flood_s, 1),
            "flood_statuses": counts,
            "flood_429_per_s": round(counts.get(429, 0) / flood_s),
            "flood_200": counts.get(200, 0),
            "other_keys": args.keys,
            "other_rate_per_key_per_s": args.rate,
            "other_requests_idle": len(idle_lat),
            "other_requests_during_flood": len(busy_lat),
            "other_statuses_idle": dict(idle_status),
            "other_statuses_during_flood": dict(busy_status),
            "other_p50_ms_idle": round(statistics.median(idle_lat), 2),
            "other_p50_ms_during_flood": round(statistics.median(busy_lat), 2),
            "other_p99_ms_idle": idle_p99,
            "other_p99_ms_during_flood": busy_p99,
            "p99_ratio": round(busy_p99 / idle_p99, 2),
        },
        "body_30mb": {
            "content_length_ms": [ms for ms, _ in body["content_length"]],
            "content_length_status": sorted({s for _, s in body["content_length"]}),
            "chunked_ms": [ms for ms, _ in body["chunked"]],
            "chunked_status": sorted({s for _, s in body["chunked"]}),
            "content_length_median_ms": statistics.median(ms for ms, _ in body["content_length"]),
            "chunked_median_ms": statistics.median(ms for ms, _ in body["chunked"]),
            "baseline_parsed_ms": baseline[0],
            "baseline_status": baseline[1],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the idle and the flood phase")
    parser.add_argument("--keys", type=int, default=4, help="well-behaved keys measured")
    parser.add_argument("--rate", type=float, default=5.0, help="requests per second of each well-behaved key")
    parser.add_argument("--flood-conns", type=int, default=32, help="connections the flooding key keeps busy")
    parser.add_argument("--body-repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = run(args, Path(tmp))
    results["meta"] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}",
        "python": platform.python_version(),
    }
    doc = json.dumps(results, indent=2)
    print(doc)
    if args.out:
        args.out.write_text(doc + "\n")
    f, b = results["flood"], results["body_30mb"]
    print(
        f"limits: flood answered {f['flood_429_per_s']:,} 429/s; other keys p99 {f['other_p99_ms_during_flood']} ms "
        f"vs idle {f['other_p99_ms_idle']} ms ({f['p99_ratio']}x, goal <= 2x); 30 MB body refused in "
        f"{b['content_length_median_ms']} ms (chunked {b['chunked_median_ms']} ms; goal < 50 ms) vs "
        f"{b['baseline_parsed_ms']} ms read and parsed"
    )


if __name__ == "__main__":
    main()
