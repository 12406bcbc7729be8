"""The embedded default under load: latency and throughput at 1, 4 and 8 concurrent clients.

Every level does the same work on its own fresh server: a real `omnilive serve`
(OMNILIVE_MAX_BATCH=8, so 8 requests decode in one batch), warmed up with one request, then
the same list of questions (4 x the highest level, at least 4), sent by `c` simulated clients
(threads with the official openai client) back to back. A question is a typed request for two
or three sentences on a topic, streaming text+audio, greedy, max_tokens 64. Each level starts
on a fresh server so no level finds another's prompts in the prefix cache, and all levels
speak the same replies: TTFA depends on how long a reply's first clause is, so levels asking
different questions would compare content, not load. Prints, never asserts. Per level:
  - TTFT p50/p95: request sent → first text delta
  - TTFA p50/p95: request sent → first audio delta (the first clause spoken by hibari)
  - throughput: completion tokens of all requests / wall time of the level
Then TTFA(c=4)/TTFA(c=1) (what a user waits extra when others talk too) and
throughput(c=8)/throughput(c=1) (what batching buys).

    python bench/concurrency.py [--levels 1 4 8] [--llm qwen2.5-coder-0.5b|smollm2-135m]
"""

from __future__ import annotations

import argparse
import base64
import os
import platform
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from openai import OpenAI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests/
from tests.server_process import ServerProcess  # noqa: E402

MAX_TOKENS = 64
TTFA_RATIO_TARGET = 1.5  # TTFA(c=4) / TTFA(c=1) at most
THROUGHPUT_RATIO_TARGET = 4.0  # tokens/s(c=8) / tokens/s(c=1) at least
TOPICS = (  # within a level every request asks about another topic: a repeat would be served from cache
    "how a bicycle stays upright", "why the sea is salty", "how bees make honey", "why leaves change colour",
    "how a rainbow forms", "why the moon has phases", "how a refrigerator keeps food cold",
    "why bread rises", "how volcanoes erupt", "why cats purr", "how airplanes fly", "why we dream",
    "how a compass works", "why the sky is blue", "how tides work", "why ice floats",
    "how plants drink water", "why thunder follows lightning", "how a battery stores energy",
    "why onions make you cry", "how glass is made", "why zebras have stripes", "how a camera works",
    "why some birds migrate", "how soap cleans", "why the desert is cold at night", "how coral reefs grow",
    "why we yawn", "how an elevator works", "why rust forms", "how a piano makes sound",
    "why the earth has seasons", "how paper is recycled", "why owls hunt at night",
    "how a microwave heats food", "why the ocean has waves", "how a seed becomes a tree",
    "why metal feels cold", "how a submarine dives", "why popcorn pops", "how a lock and key work",
)


@dataclass
class Timing:
    ttft: float | None
    ttfa: float | None
    completion_tokens: int
    audio_s: float


def timed_request(client: OpenAI, topic: str) -> Timing:
    t0 = time.perf_counter()
    ttft = ttfa = None
    tokens, audio_bytes = 0, 0
    stream = client.chat.completions.create(
        model="omnilive-small",
        messages=[{"role": "user", "content": f"In two or three sentences, explain {topic}."}],
        modalities=["text", "audio"],
        audio={"voice": "heart", "format": "pcm16"},
        temperature=0,
        max_tokens=MAX_TOKENS,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        if ttft is None and delta.content:
            ttft = time.perf_counter() - t0
        if delta.audio and delta.audio.data:
            audio_bytes += len(base64.b64decode(delta.audio.data))
            if ttfa is None:
                ttfa = time.perf_counter() - t0
    return Timing(ttft, ttfa, tokens, audio_bytes / 2 / 24_000)


def run_level(client: OpenAI, concurrency: int, topics: list[str]) -> tuple[list[Timing], float]:
    """`concurrency` clients asking the questions on `topics` in turn, each client back to back."""
    barrier = threading.Barrier(concurrency)
    queue = iter(topics)
    lock = threading.Lock()

    def client_loop(_: int) -> list[Timing]:
        barrier.wait()
        timings = []
        while True:
            with lock:
                topic = next(queue, None)
            if topic is None:
                return timings
            timings.append(timed_request(client, topic))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(client_loop, range(concurrency)))
    return [t for timings in results for t in timings], time.perf_counter() - t0


def percentiles(values: list[float | None]) -> tuple[float, float]:
    present = [v for v in values if v is not None]
    if not present:
        return float("nan"), float("nan")
    return float(np.percentile(present, 50)), float(np.percentile(present, 95))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--llm", default="qwen2.5-coder-0.5b")
    ap.add_argument("--max-batch", type=int, default=8)
    args = ap.parse_args()
    # four rounds of the highest level: throughput measured mostly at full load, not ramp-down
    questions = max(4, 4 * max(args.levels))
    if questions + 1 > len(TOPICS):
        raise SystemExit(f"not enough distinct topics for levels {args.levels}")
    warm_up, topics = TOPICS[0], list(TOPICS[1 : questions + 1])

    rows = {}
    for concurrency in args.levels:
        data_dir = Path(tempfile.mkdtemp(prefix=f"omnilive-bench-c{concurrency}-"))
        server = ServerProcess(data_dir, args=["--llm", args.llm], env={"OMNILIVE_MAX_BATCH": str(args.max_batch)})
        with server:
            client = OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=600)
            timed_request(client, warm_up)  # first-use costs are not load
            rows[concurrency] = run_level(client, concurrency, topics)

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; llm={args.llm} max_batch={args.max_batch} "
          f"max_tokens={MAX_TOKENS}, streaming text+audio, typed questions")
    print(f"{'clients':>7} {'requests':>8} {'TTFT p50':>8} {'TTFT p95':>8} {'TTFA p50':>8} {'TTFA p95':>8} "
          f"{'tokens':>6} {'wall s':>7} {'tok/s':>6} {'audio s':>7}")
    summary = {}
    for concurrency, (timings, wall) in rows.items():
        ttft, ttfa = percentiles([t.ttft for t in timings]), percentiles([t.ttfa for t in timings])
        tokens = sum(t.completion_tokens for t in timings)
        summary[concurrency] = (ttfa[0], tokens / wall)
        print(f"{concurrency:>7} {len(timings):>8} {ttft[0]:>8.2f} {ttft[1]:>8.2f} {ttfa[0]:>8.2f} {ttfa[1]:>8.2f} "
              f"{tokens:>6} {wall:>7.1f} {tokens / wall:>6.1f} {sum(t.audio_s for t in timings):>7.1f}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (the clients run on this machine too)")
    print("issue targets:")
    if 1 in summary and 4 in summary:
        ratio = summary[4][0] / summary[1][0]
        print(f"  TTFA p50 c=4 / c=1       = {ratio:.2f}  (target <= {TTFA_RATIO_TARGET}: {_verdict(ratio <= TTFA_RATIO_TARGET)})")
    if 1 in summary and 8 in summary:
        ratio = summary[8][1] / summary[1][1]
        print(f"  throughput c=8 / c=1     = {ratio:.2f}  (target >= {THROUGHPUT_RATIO_TARGET}: "
              f"{_verdict(ratio >= THROUGHPUT_RATIO_TARGET)})")


def _verdict(met: bool) -> str:
    return "met" if met else "NOT met"


if __name__ == "__main__":
    main()
