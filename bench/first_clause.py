"""How soon a spoken reply of the embedded default starts: tokens and time from its first token
to its first audio, with the speech chunker's phrase breaks on and off, in one process.

For each question (greedy, the spoken-reply prompt) the reply is generated with audio twice,
once per chunker setting, alternating which goes first; the first clause's token count comes
from the same replies (machine-independent). Then hibari on a first clause alone and beside a
decoding LLM. Prints medians and ratios measured in this run, never asserts.

    python bench/first_clause.py [--rounds 1] [--llm qwen2.5-coder-0.5b]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import time

from omnilive.backends import embedded
from omnilive.backends.embedded import EmbeddedBackend
from omnilive.engine.speech_chunker import SpeechChunker
from omnilive.server.settings import Settings
from omnilive.types import AudioChunk, EngineRequest, Message, SamplingParams, TextDelta

QUESTIONS = [
    "What is the capital of France?", "How many days are there in a week?", "What colour is the sky on a clear day?",
    "Name a fruit that is yellow.", "What do bees make?", "Which planet do we live on?", "What is two plus three?",
    "Tell me about dragons.", "Please tell me a long story about a dragon.", "Why is the sea salty?",
]
SETTINGS = {"phrase breaks off": False, "phrase breaks on": True}
CLAUSE = "The capital of France "


async def first_audio_after_first_token(backend: EmbeddedBackend, question: str, phrase_breaks: bool, n: int) -> float:
    embedded.SpeechChunker = lambda: SpeechChunker(phrase_breaks=phrase_breaks)
    request = EngineRequest(f"a{n}-{phrase_breaks}", (Message("user", (question,)),),
                            SamplingParams(max_tokens=96, temperature=0.0), modalities=("text", "audio"))
    first_token = None
    async with contextlib.aclosing(backend.generate(request)) as outputs:  # the rest of the reply is aborted
        async for out in outputs:
            if isinstance(out, TextDelta) and out.text and first_token is None:
                first_token = time.perf_counter()
            if isinstance(out, AudioChunk):
                return time.perf_counter() - first_token
    raise RuntimeError("no audio")


async def reply_tokens(backend: EmbeddedBackend, question: str, n: int) -> list[str]:
    """The greedy spoken-style reply's text, one piece per token (the first 40 tokens)."""
    chat = await backend._render_chat((Message("user", (question,)),), speak=True)
    prompt = backend._tokenizer.apply_chat_template(chat, add_generation_prompt=True)
    pieces = []
    async for out in embedded.engine_outputs(backend._llm.generate(f"t{n}", prompt, SamplingParams(max_tokens=40, temperature=0.0))):
        if isinstance(out, TextDelta):
            pieces.append(out.text)
    return pieces


def tokens_to_first_clause(pieces: list[str], phrase_breaks: bool) -> int:
    """Decode steps until the chunker releases the first clause (the end of the reply is one more step)."""
    chunker = SpeechChunker(phrase_breaks=phrase_breaks)
    for count, piece in enumerate(pieces, 1):
        if chunker.feed(piece):
            return count
    return len(pieces) + 1


async def hibari_beside_decoding(backend: EmbeddedBackend) -> tuple[float, float]:
    alone = []
    for _ in range(7):
        began = time.perf_counter()
        backend._tts.synthesize(CLAUSE)
        alone.append(time.perf_counter() - began)
    prompt = backend._tokenizer.apply_chat_template([{"role": "user", "content": "Write a long essay about the sea."}],
                                                    add_generation_prompt=True)

    async def decode():
        async for _ in backend._llm.generate("busy", prompt, SamplingParams(max_tokens=2000, temperature=0.0), None):
            pass

    task = asyncio.create_task(decode())
    await asyncio.sleep(1.0)
    beside = []
    for _ in range(7):
        began = time.perf_counter()
        await asyncio.to_thread(backend._tts.synthesize, CLAUSE)
        beside.append(time.perf_counter() - began)
    task.cancel()
    return statistics.median(alone), statistics.median(beside)


async def run(args) -> None:
    backend = EmbeddedBackend(Settings(llm=args.llm))
    await backend.start()
    tokens: dict[str, list[int]] = {name: [] for name in SETTINGS}
    times: dict[str, list[float]] = {name: [] for name in SETTINGS}
    n = 0
    for round_ in range(args.rounds):
        for i, question in enumerate(QUESTIONS):
            n += 1
            pieces = await reply_tokens(backend, question, n)
            order = list(SETTINGS) if (i + round_) % 2 == 0 else list(SETTINGS)[::-1]
            for name in order:
                times[name].append(await first_audio_after_first_token(backend, question, SETTINGS[name], n))
                if round_ == 0:
                    tokens[name].append(tokens_to_first_clause(pieces, SETTINGS[name]))
            print(f"{question[:44]:44s} " + "  ".join(
                f"{name}: {tokens[name][i]:2d} tokens {times[name][-1] * 1000:5.0f} ms" for name in SETTINGS), flush=True)
    alone, beside = await hibari_beside_decoding(backend)
    await backend.stop()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nfirst token → first audio, {len(times['phrase breaks on'])} replies each, load average {load}:")
    for name in SETTINGS:
        print(f"  {name:18s} decode steps to the first clause: median {statistics.median(tokens[name]):4.1f} "
              f"mean {statistics.mean(tokens[name]):4.1f};  time median {statistics.median(times[name]) * 1000:6.0f} ms")
    ratio = statistics.median(times["phrase breaks on"]) / statistics.median(times["phrase breaks off"])
    print(f"  on / off (time): {ratio:.2f}")
    print(f"hibari on {CLAUSE!r}: alone {alone * 1000:.0f} ms, beside a decoding LLM {beside * 1000:.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--llm", default="qwen2.5-coder-0.5b")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
