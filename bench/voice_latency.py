"""Voice-chat latency over the Realtime API: end of the user's turn → first audio of the answer.

Starts a real `omnilive serve` (or uses --url) and speaks espeak-ng questions into one Realtime
session the way a microphone would: 20 ms PCM16 frames in real time, silence between turns,
server VAD on. The clock starts when the client has sent the audio that closes the VAD's
silence window (`audio_end_ms` of speech_stopped) and stops at the first audio delta. Split:

    VAD wait     window closed (sent)         → input_audio_buffer.speech_stopped received
    ASR          speech_stopped               → transcription.completed received
    first token  transcription.completed      → first LLM token (server's /metrics TTFT)
    first audio  first LLM token              → first response audio delta received

When the early transcript is in before the window closes, the server starts the answer then
(held back until the turn ends): ASR and first token are then ~0 and "first audio" is what is
left of making the first spoken clause. Timings are wall clock on a shared machine, so the
load average is printed with them.

Prints, never asserts, records nothing.

    python bench/voice_latency.py [--utterances 5] [--url http://127.0.0.1:8000 --api-key KEY]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for tests/
from tests.server_process import ServerProcess  # noqa: E402
from tests.speech_helpers import espeak_wav, wer  # noqa: E402

QUESTIONS = [
    "What is the capital of France?",
    "How many days are there in a week?",
    "What colour is the sky on a clear day?",
    "Name a fruit that is yellow.",
    "What do bees make?",
    "Which planet do we live on?",
    "What is two plus three?",
]
RATE = 24_000
FRAME = RATE // 50  # 20 ms
SILENCE_BEFORE_S, SILENCE_AFTER_S = 0.6, 1.0


class Microphone:
    """Sends 20 ms frames in real time; silence unless an utterance is queued. Records send times."""

    def __init__(self, ws):
        self.ws, self.sent = ws, 0  # samples sent so far
        self.sent_at: list[float] = []  # wall time after each frame
        self._queue: list[np.ndarray] = []

    def say(self, samples: np.ndarray) -> None:
        self._queue.append(samples)

    def time_of(self, ms: int) -> float:
        """When the frame holding session time `ms` had been sent."""
        index = min(len(self.sent_at) - 1, (ms * RATE // 1000) // FRAME)
        return self.sent_at[index]

    async def run(self) -> None:
        start = time.perf_counter()
        pending = np.zeros(0, np.float32)
        while True:
            if not len(pending) and self._queue:
                pending = self._queue.pop(0)
            frame, pending = (pending[:FRAME], pending[FRAME:]) if len(pending) else (np.zeros(FRAME, np.float32), pending)
            frame = np.pad(frame, (0, FRAME - len(frame)))
            pcm = (np.clip(frame, -1, 1) * 32767).astype("<i2").tobytes()
            await self.ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": base64.b64encode(pcm).decode()}))
            self.sent += FRAME
            self.sent_at.append(time.perf_counter())
            await asyncio.sleep(max(0.0, start + self.sent / RATE - time.perf_counter()))


MAX_OUTPUT_TOKENS = 96


async def metric(http: httpx.AsyncClient, name: str) -> float:
    text = (await http.get("/metrics")).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


async def one_turn(ws, mic: Microphone, http: httpx.AsyncClient, question: str) -> dict:
    speech = espeak_wav(question, RATE)
    ttft_sum = await metric(http, "omnilive_time_to_first_token_seconds_sum")
    mic.say(np.concatenate([np.zeros(int(SILENCE_BEFORE_S * RATE), np.float32), speech,
                            np.zeros(int(SILENCE_AFTER_S * RATE), np.float32)]))
    seen: dict[str, float] = {}
    transcript = answer = ""
    async for message in ws:
        event, now = json.loads(message), time.perf_counter()
        kind = event["type"]
        seen.setdefault(kind, now)
        if kind == "input_audio_buffer.speech_stopped":
            window_closed = mic.time_of(event["audio_end_ms"])
        elif kind == "conversation.item.input_audio_transcription.completed":
            transcript = event["transcript"]
        elif kind == "response.output_audio_transcript.delta":
            answer += event["delta"]
        elif kind == "error":
            raise RuntimeError(event["error"])
        elif kind == "response.done":
            break
    ttft = await metric(http, "omnilive_time_to_first_token_seconds_sum") - ttft_sum  # from response start
    stopped = seen["input_audio_buffer.speech_stopped"]
    asr = seen["conversation.item.input_audio_transcription.completed"] - stopped
    first_audio = seen["response.output_audio.delta"]
    return {
        "question": question, "transcript": transcript, "wer": wer(question, transcript), "answer": answer.strip(),
        "total": first_audio - window_closed, "vad": stopped - window_closed, "asr": asr,
        "first_token": max(0.0, ttft - asr), "first_audio": first_audio - stopped - ttft,
    }


async def run(url: str, api_key: str, utterances: int) -> None:
    ws_url = url.replace("http", "ws", 1) + "/v1/realtime"
    headers = {"Authorization": f"Bearer {api_key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers) as http, \
            websockets.connect(ws_url, additional_headers=headers, max_size=None) as ws:
        await ws.send(json.dumps({"type": "session.update", "session": {
            "type": "realtime", "audio": {"input": {"turn_detection": {"type": "server_vad"}}},
            "max_output_tokens": MAX_OUTPUT_TOKENS}}))  # a sampled reply may ramble: cap its length
        mic = Microphone(ws)
        sender = asyncio.create_task(mic.run())
        rows = []
        try:
            for question in (QUESTIONS * 2)[:utterances]:
                row = await one_turn(ws, mic, http, question)
                rows.append(row)
                print(f"{row['total'] * 1000:6.0f} ms  vad {row['vad'] * 1000:4.0f}  asr {row['asr'] * 1000:4.0f}  "
                      f"token {row['first_token'] * 1000:4.0f}  audio {row['first_audio'] * 1000:4.0f}  "
                      f"wer {row['wer']:.2f}  {row['transcript']!r} → {row['answer'][:60]!r}")
        finally:
            sender.cancel()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nmedian over {len(rows)} turns (end of VAD silence window → first audio delta), load average {load}:")
    for key in ("total", "vad", "asr", "first_token", "first_audio"):
        print(f"  {key:12s} {statistics.median(r[key] for r in rows) * 1000:6.0f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--utterances", type=int, default=5)
    parser.add_argument("--url", help="a running server (default: start one)")
    parser.add_argument("--api-key", default="")
    args = parser.parse_args()
    if args.url:
        asyncio.run(run(args.url.rstrip("/"), args.api_key, args.utterances))
        return
    with tempfile.TemporaryDirectory() as data_dir, ServerProcess(Path(data_dir), api_key="bench-key") as server:
        asyncio.run(run(server.url, server.api_key, args.utterances))


if __name__ == "__main__":
    main()
