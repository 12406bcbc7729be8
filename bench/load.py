"""Load: N chat completions at concurrency C against the embedded default, as several users.

Starts a real `omnilive serve` (or uses --url with --api-key, an admin key), makes --users users
through /v1/admin/users, warms up, then sends --requests short streamed chat completions from
--concurrency threads, each request as one of the users in turn. Prints p50/p95 latency (to the
last byte), time to first token, errors (target 0), and the server's resident memory before and
after the run (target: growth under 5 % once warmed up; read from /proc, so only for a server
this script started). Timings are wall clock on a shared machine: the load average is printed.

Prints, never asserts, records nothing.

    python bench/load.py [--requests 200] [--concurrency 16] [--users 4] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from openai import OpenAI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests/

from tests.server_process import ServerProcess  # noqa: E402

QUESTIONS = ["What is the capital of France?", "Name three colours.", "What is 12 times 7?",
             "Give me a synonym for happy.", "What do bees make?", "How many days are in a week?"]


def resident_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one_request(client: OpenAI, model: str, question: str, max_tokens: int) -> tuple[float, float, str | None]:
    """(seconds to the last chunk, seconds to the first content, error or None)."""
    started, first = time.perf_counter(), None
    try:
        stream = client.chat.completions.create(model=model, stream=True, max_tokens=max_tokens,
                                                messages=[{"role": "user", "content": question}])
        for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - started
    except Exception as e:  # noqa: BLE001 - counted and shown, the run goes on
        return time.perf_counter() - started, float("nan"), f"{type(e).__name__}: {str(e)[:120]}"
    return time.perf_counter() - started, first if first is not None else float("nan"), None


def run(url: str, admin_key: str, args: argparse.Namespace, server_pid: int | None) -> None:
    admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin_key}"}, timeout=60)
    keys = [admin.post("/v1/admin/users", json={"name": f"load-{i}-{uuid.uuid4().hex[:6]}"}).json()["key"]
            for i in range(args.users)]
    clients = [OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=600) for key in keys]
    model = clients[0].models.list().data[0].id
    for i in range(args.warmup):
        one_request(clients[i % len(clients)], model, QUESTIONS[i % len(QUESTIONS)], args.max_tokens)
    rss_before = resident_mb(server_pid) if server_pid else float("nan")

    started = time.perf_counter()
    with ThreadPoolExecutor(args.concurrency) as pool:
        results = list(pool.map(
            lambda i: one_request(clients[i % len(clients)], model, QUESTIONS[i % len(QUESTIONS)], args.max_tokens),
            range(args.requests)))
    wall = time.perf_counter() - started
    rss_after = resident_mb(server_pid) if server_pid else float("nan")

    ok = [r for r in results if r[2] is None]
    errors = [r[2] for r in results if r[2] is not None]
    latencies = sorted(r[0] for r in ok)
    firsts = sorted(r[1] for r in ok if r[1] == r[1])

    def pct(values: list[float], p: float) -> float:
        return values[min(len(values) - 1, int(p * len(values)))] if values else float("nan")

    print(f"{args.requests} requests, concurrency {args.concurrency}, {args.users} users, "
          f"max_tokens {args.max_tokens}: {wall:.1f} s wall, {len(ok) / wall:.2f} req/s")
    print(f"latency p50 {pct(latencies, 0.5):.2f} s  p95 {pct(latencies, 0.95):.2f} s  "
          f"(first token p50 {pct(firsts, 0.5):.2f} s  p95 {pct(firsts, 0.95):.2f} s)")
    print(f"errors {len(errors)}" + (f": {sorted(set(errors))[:3]}" if errors else ""))
    if server_pid:
        growth = (rss_after - rss_before) / rss_before * 100
        print(f"server resident memory after warm-up {rss_before:.0f} MB, after the run {rss_after:.0f} MB "
              f"({growth:+.1f} %)")
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} CPUs")
    if latencies:
        print(f"mean latency {statistics.mean(latencies):.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--url", help="a running server (then --api-key is an admin key)")
    parser.add_argument("--api-key", default="load-bench-admin")
    args = parser.parse_args()
    if args.url:
        run(args.url, args.api_key, args, None)
        return
    with tempfile.TemporaryDirectory() as data, ServerProcess(Path(data), api_key=args.api_key) as server:
        run(server.url, args.api_key, args, server.process.pid)


if __name__ == "__main__":
    main()
