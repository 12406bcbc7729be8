"""Scale-out on Ray Serve: what going through Ray costs and what replicas and stages buy.

Each configuration runs on its own fresh `omnilive serve` (a real subprocess; with --ray a local
Ray cluster that omnilive starts and stops), warmed up with one request, then:
  - c=1: the same questions one after another: TTFT (request sent → first text delta) p50 and,
    for spoken replies, TTFA (→ first audio delta) p50;
  - c=C: the same number of questions from C clients (threads with the official openai
    client): throughput = completion tokens of all / wall time.
Every configuration asks the same questions, greedy, so all of them do the same work.

Text (the embedded default, smollm2-135m, 1 thread per replica): the plain server, Ray with 1
replica, Ray with 2 replicas. The overhead of Ray on one machine is TTFT(Ray, 1 replica, c=1) /
TTFT(plain, c=1) - 1 (issue 15's target: at most 10 %).
Speech (a tiny random Qwen2.5-Omni checkpoint, float32): the plain server vs
`--stages thinker=1,speech=1` (the talker and token2wav in their own deployment).

Prints the machine and the numbers; asserts nothing. On a 2-core machine two replicas share
the two cores with Ray's own processes, so throughput cannot double there.

    python bench/scale.py [--questions 8] [--concurrency 4] [--max-tokens 32] [--skip-speech]
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


@dataclass
class Level:
    name: str
    ttft_p50: float
    ttfa_p50: float | None
    throughput: float


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


def measure(name: str, args: list[str], questions: int, concurrency: int, max_tokens: int,
            voice: str | None) -> Level:
    with tempfile.TemporaryDirectory() as data, ServerProcess(Path(data), args=args) as server:
        if "--ray" in args:  # /health answers with the first replica; all of them are up after this line
            deadline = time.monotonic() + 300
            while "omnilive on Ray Serve" not in server.log_path.read_text(errors="replace"):
                if time.monotonic() > deadline:
                    raise RuntimeError(server.log_tail())
                time.sleep(0.5)
        client = OpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=300)
        model = client.models.list().data[0].id
        ask(client, model, "why water is wet", max_tokens, voice)  # warm-up
        topics = [TOPICS[i % len(TOPICS)] for i in range(questions)]
        alone = [ask(client, model, topic, max_tokens, voice) for topic in topics]
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            together = list(pool.map(lambda topic: ask(client, model, topic, max_tokens, voice), topics))
        wall = time.perf_counter() - started
    ttfas = [t.ttfa for t in alone if t.ttfa is not None]
    level = Level(name, statistics.median(t.ttft for t in alone), statistics.median(ttfas) if ttfas else None,
                  sum(t.tokens for t in together) / wall)
    ttfa = f", TTFA p50 {level.ttfa_p50 * 1000:.0f} ms" if level.ttfa_p50 is not None else ""
    print(f"  {name:32s} c=1 TTFT p50 {level.ttft_p50 * 1000:.0f} ms{ttfa}; "
          f"c={concurrency} {level.throughput:.1f} tok/s", flush=True)
    return level


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--skip-speech", action="store_true", help="text configurations only")
    options = parser.parse_args()
    print(f"machine: {machine()}")
    run = dict(questions=options.questions, concurrency=options.concurrency, max_tokens=options.max_tokens)

    text = ["--llm", "smollm2-135m", "--threads", "1"]
    print("text, embedded default (smollm2-135m):")
    plain = measure("plain server", text, voice=None, **run)
    one = measure("Ray Serve, 1 replica", [*text, "--ray", "--replicas", "1"], voice=None, **run)
    two = measure("Ray Serve, 2 replicas", [*text, "--ray", "--replicas", "2"], voice=None, **run)
    overhead = one.ttft_p50 / plain.ttft_p50 - 1
    print(f"  Ray's added TTFT at c=1: {overhead * 100:+.1f} % (target <= {OVERHEAD_TARGET * 100:.0f} %), "
          f"{(one.ttft_p50 - plain.ttft_p50) * 1000:+.0f} ms")
    print(f"  throughput 2 replicas / 1 replica: {two.throughput / one.throughput:.2f}x; "
          f"1 replica / plain: {one.throughput / plain.throughput:.2f}x")

    if not options.skip_speech:
        from tests.model.omni_tiny import build_tiny_omni

        checkpoint = Path(tempfile.mkdtemp(prefix="scale-omni-"))
        build_tiny_omni(checkpoint, seed=2)
        omni = ["--model", str(checkpoint), "--dtype", "float32", "--threads", "1"]
        print("speech, tiny random Qwen2.5-Omni (float32):")
        whole = measure("plain server", omni, voice="Ethan", **run)
        split = measure("Ray Serve, stages thinker=1,speech=1", [*omni, "--ray", "--stages", "thinker=1,speech=1"],
                        voice="Ethan", **run)
        print(f"  stages / plain: TTFT {split.ttft_p50 / whole.ttft_p50:.2f}x, TTFA "
              f"{split.ttfa_p50 / whole.ttfa_p50:.2f}x, throughput {split.throughput / whole.throughput:.2f}x")
    print(f"machine after: {machine()}")


if __name__ == "__main__":
    main()
