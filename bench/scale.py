"""Scale-out on Ray Serve: what going through Ray costs and what replicas and stages buy.

Each configuration is a fresh `omnilive serve` (a real subprocess; with --ray a local Ray
cluster that omnilive starts and stops), warmed up with one request, then:
  - c=1: the same questions one after another: TTFT (request sent → first text delta) p50 and,
    for spoken replies, TTFA (→ first audio delta) p50. The two servers compared run side by
    side and take turns question by question, so load that drifts on a shared machine hits
    both alike;
  - c=C: the same number of questions from C clients (threads with the official openai
    client), one server at a time: throughput = completion tokens of all / wall time.
Every configuration asks the same questions, greedy, so all of them do the same work.

Text (the embedded default, --llm smollm2-135m unless told, 1 thread per replica): the plain server, Ray with 1
replica, Ray with 2 replicas. The overhead of Ray on one machine is TTFT(Ray, 1 replica, c=1) /
TTFT(plain, c=1) - 1 (issue 15's target: at most 10 %).
Speech (a tiny random Qwen2.5-Omni checkpoint, float32): the plain server vs
`--stages thinker=1,speech=1` (the talker and token2wav in their own deployment).

Prints the machine and the numbers; asserts nothing. On a 2-core machine two replicas share
the two cores with Ray's own processes, so throughput cannot double there.

    python bench/scale.py [--questions 12] [--concurrency 4] [--max-tokens 32] [--llm NAME] [--threads 1]
                          [--skip-text] [--skip-speech]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from openai import OpenAI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests/
from tests.server_process import ServerProcess  # noqa: E402

TOPICS = ("why the sea is salty", "how bees make honey", "why leaves change colour", "how a rainbow forms",
          "why the moon has phases", "how bread rises", "how volcanoes erupt", "why cats purr",
          "how airplanes fly", "why we dream", "how a compass works", "why the sky is blue",
          "how tides work", "why ice floats", "how plants drink water", "how glass is made")
OVERHEAD_TARGET = 0.10


@dataclass
class Timing:
    ttft: float
    ttfa: float | None
    tokens: int


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    flags = Path("/proc/cpuinfo").read_text()
    bf16 = "AMX" if "amx_bf16" in flags else "AVX-512 BF16" if "avx512_bf16" in flags else "no native bf16"
    return f"{model}, {os.cpu_count()} cores, {bf16}, load {os.getloadavg()[0]:.2f}"


def ask(client: OpenAI, model: str, topic: str, max_tokens: int, voice: str | None) -> Timing:
    spoken = {"modalities": ["text", "audio"], "audio": {"voice": voice, "format": "pcm16"}} if voice else {}
    started = time.perf_counter()
    ttft = ttfa = None
    tokens = 0
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": f"In two sentences, explain {topic}."}],
        temperature=0, max_tokens=max_tokens, stream=True, stream_options={"include_usage": True}, **spoken)
    for chunk in stream:
        now = time.perf_counter() - started
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        delta = chunk.choices[0].delta if chunk.choices else None
        if delta is None:
            continue
        if ttft is None and (delta.content or (getattr(delta, "audio", None) and delta.audio.transcript)):
            ttft = now
        if ttfa is None and getattr(delta, "audio", None) and delta.audio.data:
            ttfa = now
    return Timing(ttft if ttft is not None else time.perf_counter() - started, ttfa, tokens)


class Served:
    """A running `omnilive serve` (with --ray: every replica up) and a client of it."""

    def __init__(self, name: str, args: list[str]):
        self.name, self.args = name, args

    def __enter__(self) -> Served:
        self.data = tempfile.TemporaryDirectory()
        self.server = ServerProcess(Path(self.data.name), args=self.args).start()
        if "--ray" in self.args:  # /health answers with the first replica; all are up after this line
            deadline = time.monotonic() + 300
            while "omnilive on Ray Serve" not in self.server.log_path.read_text(errors="replace"):
                if time.monotonic() > deadline:
                    raise RuntimeError(self.server.log_tail())
                time.sleep(0.5)
        self.client = OpenAI(base_url=f"{self.server.url}/v1", api_key="none", max_retries=0, timeout=300)
        self.model = self.client.models.list().data[0].id
        return self

    def __exit__(self, *_) -> None:
        self.server.stop()
        self.data.cleanup()

    def ask(self, topic: str, max_tokens: int, voice: str | None) -> Timing:
        return ask(self.client, self.model, topic, max_tokens, voice)


def alone(servers: list[Served], questions: int, max_tokens: int, voice: str | None) -> list[tuple[float, float | None]]:
    """c=1 on each server, taking turns question by question (load that drifts on a shared
    machine then hits every server alike): each one's (TTFT p50, TTFA p50)."""
    for served in servers:
        served.ask("why water is wet", max_tokens, voice)  # warm-up
    timings: list[list[Timing]] = [[] for _ in servers]
    for i in range(questions):
        for k, served in enumerate(servers):
            timings[k].append(served.ask(TOPICS[i % len(TOPICS)], max_tokens, voice))
    results = []
    for served, own in zip(servers, timings):
        ttfas = [t.ttfa for t in own if t.ttfa is not None]
        result = (statistics.median(t.ttft for t in own), statistics.median(ttfas) if ttfas else None)
        ttfa = f", TTFA p50 {result[1] * 1000:.0f} ms" if result[1] is not None else ""
        print(f"  {served.name:34s} c=1 TTFT p50 {result[0] * 1000:.0f} ms{ttfa}", flush=True)
        results.append(result)
    return results


def together(served: Served, questions: int, concurrency: int, max_tokens: int, voice: str | None) -> float:
    """Throughput at c=concurrency: completion tokens of all / wall time."""
    served.ask("why water is wet", max_tokens, voice)  # warm-up
    topics = [TOPICS[i % len(TOPICS)] for i in range(questions)]
    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        timings = list(pool.map(lambda topic: served.ask(topic, max_tokens, voice), topics))
    throughput = sum(t.tokens for t in timings) / (time.perf_counter() - started)
    print(f"  {served.name:34s} c={concurrency} {throughput:.1f} tok/s", flush=True)
    return throughput


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=12)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--llm", default="smollm2-135m", help="the embedded LLM of the text configurations "
                        "(qwen2.5-coder-0.5b: the served default, whose longer TTFT makes Ray's fixed cost a smaller share)")
    parser.add_argument("--threads", type=int, default=1, help="threads per replica in the text configurations")
    parser.add_argument("--skip-text", action="store_true", help="speech configurations only")
    parser.add_argument("--skip-speech", action="store_true", help="text configurations only")
    options = parser.parse_args()
    print(f"machine: {machine()}")

    q, c, n = options.questions, options.concurrency, options.max_tokens
    if not options.skip_text:
        text_configurations(q, c, n, options.llm, options.threads)
    if not options.skip_speech:
        speech_configurations(q, c, n)
    print(f"machine after: {machine()}")


def text_configurations(q: int, c: int, n: int, llm: str, threads: int) -> None:
    text = ["--llm", llm, "--threads", str(threads)]
    print(f"text, embedded default ({llm}, {threads} thread(s) per replica):")
    with Served("plain server", text) as plain, Served("Ray Serve, 1 replica", [*text, "--ray"]) as one:
        (plain_ttft, _), (ray_ttft, _) = alone([plain, one], q, n, None)
        plain_tps, one_tps = together(plain, q, c, n, None), together(one, q, c, n, None)
    with Served("Ray Serve, 2 replicas", [*text, "--ray", "--replicas", "2"]) as two:
        two_tps = together(two, q, c, n, None)
    overhead = ray_ttft / plain_ttft - 1
    print(f"  Ray's added TTFT at c=1: {overhead * 100:+.1f} % ({(ray_ttft - plain_ttft) * 1000:+.0f} ms; "
          f"target <= {OVERHEAD_TARGET * 100:.0f} %)")
    print(f"  throughput at c={c}: 1 replica / plain {one_tps / plain_tps:.2f}x, "
          f"2 replicas / 1 replica {two_tps / one_tps:.2f}x")


def speech_configurations(q: int, c: int, n: int) -> None:
    from tests.model.omni_tiny import build_tiny_omni

    checkpoint = Path(tempfile.mkdtemp(prefix="scale-omni-"))
    build_tiny_omni(checkpoint, seed=2)
    omni = ["--model", str(checkpoint), "--dtype", "float32", "--threads", "1"]
    print("speech, tiny random Qwen2.5-Omni (float32), spoken replies:")
    with Served("plain server", omni) as whole, \
            Served("Ray Serve, stages thinker=1,speech=1", [*omni, "--ray", "--stages", "thinker=1,speech=1"]) as split:
        (whole_ttft, whole_ttfa), (split_ttft, split_ttfa) = alone([whole, split], q, n, "Ethan")
        whole_tps, split_tps = together(whole, q, c, n, "Ethan"), together(split, q, c, n, "Ethan")
    print(f"  stages / plain: TTFT {split_ttft / whole_ttft:.2f}x, TTFA {split_ttfa / whole_ttfa:.2f}x, "
          f"throughput at c={c} {split_tps / whole_tps:.2f}x")


if __name__ == "__main__":
    main()
