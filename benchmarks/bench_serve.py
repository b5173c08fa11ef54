"""Load test of `dlm serve` on loopback: throughput, p50/p95 latency, time to first frame and errors for 1, 8 and
32 concurrent clients, and the server's RSS after 100 and after 1,000 requests.

    python benchmarks/bench_serve.py [--model builtin] [--requests 32] [--max-tokens 64] [--json]

It starts `dlm serve` in a subprocess on 127.0.0.1 (a free port), waits for /health, then for each concurrency
c runs `--requests` requests (at least 2c) from c client threads. Every request is a streamed
`/v1/dlm/denoise` call with `ignore_eos` (so every request generates exactly max_tokens tokens):
- time to first frame: from sending the request to receiving its first denoising-step event;
- latency: to its final event; throughput: all generated tokens / wall time of the phase.
Then a memory phase sends 1,000 short requests (8 tokens, 8 clients) and reads the server's VmRSS after the
first 100 and after all 1,000. Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from common import machine, print_table

PROMPTS = [
    "def fibonacci(n):\n",
    "import os\nimport sys\n\n",
    "class Stack:\n",
    "def read_config(path):\n",
    "for i in range(10):\n",
    "def parse_args(argv=None):\n",
    "with open(filename) as f:\n",
    "def merge(a, b):\n",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def one(client: httpx.Client, url: str, model: str, i: int, max_tokens: int) -> dict:
    body = {"model": model, "prompt": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens, "ignore_eos": True,
            "seed": i}  # fmt: skip
    t0 = time.perf_counter()
    first = None
    try:
        with client.stream("POST", url + "/v1/dlm/denoise", json=body) as r:
            if r.status_code != 200:
                r.read()
                return {"error": f"{r.status_code} {r.text[:100]}"}
            for line in r.iter_lines():
                if not line.startswith("data: "):
                    continue
                ev = json.loads(line[6:])
                if first is None:
                    first = time.perf_counter() - t0
                if "error" in ev:
                    return {"error": ev["error"].get("message", "error")}
                if ev.get("done"):
                    return {"ttff": first, "latency": time.perf_counter() - t0, "tokens": max_tokens}
    except httpx.HTTPError as e:
        return {"error": f"{type(e).__name__}: {e}"}
    return {"error": "stream ended without a final event"}


def phase(url: str, model: str, clients: int, n: int, max_tokens: int) -> dict:
    results = []
    lock = threading.Lock()
    counter = iter(range(n))

    def worker():
        with httpx.Client(timeout=600) as c:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                r = one(c, url, model, i, max_tokens)
                with lock:
                    results.append(r)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as ex:
        for f in [ex.submit(worker) for _ in range(clients)]:
            f.result()
    wall = time.perf_counter() - t0
    ok = [r for r in results if "error" not in r]
    lat = sorted(r["latency"] for r in ok) or [float("nan")]
    ttff = sorted(r["ttff"] for r in ok) or [float("nan")]
    q = lambda xs, p: xs[min(len(xs) - 1, int(p * len(xs)))]  # noqa: E731
    return {
        "clients": clients,
        "requests": len(results),
        "errors": len(results) - len(ok),
        "tok_s": sum(r["tokens"] for r in ok) / wall,
        "p50_latency_s": statistics.median(lat),
        "p95_latency_s": q(lat, 0.95),
        "p50_ttff_ms": 1000 * statistics.median(ttff),
        "p95_ttff_ms": 1000 * q(ttff, 0.95),
        "wall_s": wall,
        "first_error": next((r["error"] for r in results if "error" in r), None),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="builtin")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests", type=int, default=32, help="requests per concurrency level (at least 2 x clients)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--memory-requests", type=int, default=1000)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "dlm.cli", "serve", "--model", a.model, "--port", str(port),
           "--max-batch", str(max(a.clients)), "--max-queue", "1024"]  # fmt: skip
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ})
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            raise SystemExit(f"server did not start: {server.stderr.read().decode()[-2000:]}")
        phase(url, a.model, 1, 2, a.max_tokens)  # warm-up
        rows = [phase(url, a.model, c, max(a.requests, 2 * c), a.max_tokens) for c in a.clients]
        base = rows[0]["tok_s"]
        for r in rows:
            r["x_one_client"] = r["tok_s"] / base
        mem = {}
        if a.memory_requests:
            phase(url, a.model, 8, 100, 8)
            mem["rss_mb_after_100"] = rss_mb(server.pid)
            phase(url, a.model, 8, a.memory_requests - 100, 8)
            mem["rss_mb_after_all"] = rss_mb(server.pid)
            mem["requests"] = a.memory_requests
            mem["growth"] = mem["rss_mb_after_all"] / mem["rss_mb_after_100"] - 1
    finally:
        server.terminate()
        server.wait(timeout=30)
    out = {"machine": machine(), "model": a.model, "max_tokens": a.max_tokens, "rows": rows, "memory": mem}
    if a.json:
        print(json.dumps(out))
    else:
        print_table(rows)
        print(json.dumps(mem))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
