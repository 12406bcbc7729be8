"""Latency of the embedded default on this machine: spoken question in, spoken answer out.

Starts a real `omnilive serve` on a free port and drives it with the official openai client.
Prints, never asserts. For each spoken question (made with espeak-ng):
  - TTFT: request sent → first text delta       (streaming, text+audio out)
  - TTFA: request sent → first audio delta
  - total: request sent → stream finished
  - whole-reply time to audio: the same request without streaming, where the first audio
    arrives with the whole reply — the ratio TTFA / that is what streaming buys.
Then the real-time factors of ASR (Whisper base) and TTS (hibari) on their own.

    python bench/latency.py [--questions 5] [--llm qwen2.5-coder-0.5b|smollm2-135m]
"""

from __future__ import annotations

import argparse
import base64
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from openai import OpenAI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests/
from tests.server_process import ServerProcess  # noqa: E402

QUESTIONS = [
    "What is the capital of France?",
    "How many days are there in a week?",
    "What colour is the sky on a clear day?",
    "Name a fruit that is yellow.",
    "What is two plus three?",
    "Which planet do we live on?",
    "Tell me three facts about the moon.",
]


def espeak_wav(text: str, words_per_minute: int = 175) -> bytes:
    with tempfile.NamedTemporaryFile(suffix=".wav") as f:
        subprocess.run(["espeak-ng", "-s", str(words_per_minute), "-w", f.name, text], check=True)
        return Path(f.name).read_bytes()


LONG_QUESTION = "Explain in five sentences how a bicycle works."  # a reply of several sentences


def spoken_request(wav: bytes | str) -> dict:
    """A spoken question (wav bytes), or a typed one (str); the answer comes as text and speech."""
    if isinstance(wav, str):
        content, max_tokens = wav, 200
    else:
        content = [{"type": "input_audio", "input_audio": {"data": base64.b64encode(wav).decode(), "format": "wav"}}]
        max_tokens = 80
    return dict(
        model="omnilive-small",
        messages=[{"role": "user", "content": content}],
        modalities=["text", "audio"],
        audio={"voice": "heart", "format": "wav"},
        temperature=0,
        max_tokens=max_tokens,
    )


def time_streaming(client: OpenAI, wav: bytes | str) -> dict:
    t0 = time.perf_counter()
    ttft = ttfa = None
    audio_bytes = 0
    for chunk in client.chat.completions.create(stream=True, **spoken_request(wav)):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        now = time.perf_counter() - t0
        if ttft is None and (delta.content or getattr(delta, "audio", None)):
            ttft = now
        audio = getattr(delta, "audio", None)
        if audio and (audio.get("data") if isinstance(audio, dict) else getattr(audio, "data", None)):
            data = audio["data"] if isinstance(audio, dict) else audio.data
            audio_bytes += len(base64.b64decode(data))
            if ttfa is None:
                ttfa = now
    total = time.perf_counter() - t0
    return {"ttft": ttft, "ttfa": ttfa, "total": total, "audio_s": audio_bytes / 2 / 24000}


def time_whole(client: OpenAI, wav: bytes | str) -> float:
    t0 = time.perf_counter()
    client.chat.completions.create(**spoken_request(wav))
    return time.perf_counter() - t0


def real_time_factors(clips: list[bytes]) -> tuple[float, float]:
    from omnilive.backends import assets
    from omnilive.backends.asr import WhisperASR
    from omnilive.backends.tts import HibariTTS
    from omnilive.media.decode import decode_audio
    from omnilive.media.limits import MediaLimits

    asr = WhisperASR(assets.whisper_base_dir(None), cpu_threads=2)
    tts = HibariTTS()
    audios = [decode_audio(c, MediaLimits()) for c in clips]
    asr.transcribe(audios[0])  # warm-up
    t0 = time.perf_counter()
    for a in audios:
        asr.transcribe(a, language="en")
    asr_rtf = (time.perf_counter() - t0) / sum(a.duration_s for a in audios)
    tts.synthesize("Warm up.")
    t0, spoken = time.perf_counter(), 0.0
    for q in QUESTIONS:
        spoken += len(tts.synthesize(q)) / 24000
    tts_rtf = (time.perf_counter() - t0) / spoken
    return asr_rtf, tts_rtf


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", type=int, default=len(QUESTIONS))
    ap.add_argument("--llm", default="qwen2.5-coder-0.5b")
    args = ap.parse_args()
    clips = [espeak_wav(q) for q in QUESTIONS[: args.questions]]
    # the same questions spoken a little slower: the engine caches each clip's transcript, so
    # the whole-reply request must not reuse the streaming request's clip
    other_clips = [espeak_wav(q, 165) for q in QUESTIONS[: args.questions]]
    data_dir = Path(os.environ.get("OMNILIVE_DATA_DIR") or tempfile.mkdtemp(prefix="omnilive-bench-"))
    with ServerProcess(data_dir, args=["--llm", args.llm]) as server:
        client = OpenAI(base_url=server.url + "/v1", api_key="unused")
        time_streaming(client, espeak_wav("Hello, can you hear me?"))  # warm-up: first-use costs are not latency
        rows = []
        for wav, other in zip(clips, other_clips):
            row = time_streaming(client, wav)
            row["whole"] = time_whole(client, other)
            rows.append(row)
        long_row = time_streaming(client, LONG_QUESTION)
        long_row["whole"] = time_whole(client, LONG_QUESTION)
    asr_rtf, tts_rtf = real_time_factors(clips)

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.processor() or ''}; llm={args.llm}")
    print(f"{'question':>8} {'TTFT s':>7} {'TTFA s':>7} {'total s':>8} {'whole s':>8} {'TTFA/whole':>10} {'audio s':>8}")
    for i, r in enumerate(rows):
        ratio = r["ttfa"] / r["whole"] if r["ttfa"] else float("nan")
        print(f"{i + 1:>8} {r['ttft']:>7.2f} {r['ttfa'] or float('nan'):>7.2f} {r['total']:>8.2f} {r['whole']:>8.2f} {ratio:>10.2f} {r['audio_s']:>8.1f}")
    med = lambda k: statistics.median(r[k] for r in rows if r[k] is not None)  # noqa: E731
    print(f"median   TTFT {med('ttft'):.2f} s  TTFA {med('ttfa'):.2f} s  total {med('total'):.2f} s  "
          f"whole-reply {med('whole'):.2f} s  TTFA/whole {med('ttfa') / med('whole'):.2f}")
    r = long_row
    print(f"typed, long reply ({LONG_QUESTION!r}): TTFT {r['ttft']:.2f} s  TTFA {r['ttfa']:.2f} s  "
          f"total {r['total']:.2f} s  whole-reply {r['whole']:.2f} s  TTFA/whole {r['ttfa'] / r['whole']:.2f}  "
          f"audio {r['audio_s']:.1f} s")
    print(f"ASR real-time factor {asr_rtf:.3f}  TTS real-time factor {tts_rtf:.3f}")


if __name__ == "__main__":
    main()
