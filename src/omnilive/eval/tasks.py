"""What each task sends and how it scores one reply.

Requests go through the official openai client; each returns a plain dict that goes into
predictions.jsonl: the raw reply, token counts and timings. The thinking budget travels as
`max_thinking_tokens` (omnilive's extension, in `extra_body`); a server that ignores it still
answers. `score` then fills a record's `extracted` (the parsed answer; the letter for options),
`score` (the item's metric: 1/0, or VQA accuracy / ANLS in [0, 1]) and `correct` (full marks).
"""

from __future__ import annotations

import base64
import io
import random
import time
import wave
from dataclasses import dataclass
from typing import Callable

from openai import OpenAI

from omnilive.eval import scoring_choice as choice
from omnilive.eval import scoring_text as text
from omnilive.eval.datasets import Item

SPEECH_SAMPLE_RATE = 24_000  # streamed chat audio: base64 PCM16 mono at 24 kHz


@dataclass(frozen=True)
class Sampling:
    model: str
    temperature: float = 0.0
    seed: int | None = 0
    max_answer_tokens: int = 512  # on top of the thinking budget
    asr_model: str = "whisper-1"
    voice: str = "alloy"
    language: str | None = "en"


def image_mime(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data[:3] == b"GIF":
        return "image/gif"
    return "image/png"


def user_content(item: Item) -> str | list[dict]:
    """Plain text for a text-only question (any chat template takes it), else images then text."""
    if not item.images:
        return item.prompt
    parts = [{"type": "image_url",
              "image_url": {"url": f"data:{image_mime(d)};base64,{base64.b64encode(d).decode()}"}}
             for d in item.images]
    return [*parts, {"type": "text", "text": item.prompt}]


def _budget_fields(budget: int | None, sampling: Sampling) -> dict:
    fields = {"max_tokens": (budget or 0) + sampling.max_answer_tokens}
    if budget is not None:
        fields["extra_body"] = {"max_thinking_tokens": budget}
    return fields


def _reasoning_tokens(usage) -> int | None:
    details = getattr(usage, "completion_tokens_details", None) if usage is not None else None
    return getattr(details, "reasoning_tokens", None)


def ask_chat(client: OpenAI, item: Item, budget: int | None, sampling: Sampling) -> dict:
    started = time.perf_counter()
    response = client.chat.completions.create(
        model=sampling.model, messages=[{"role": "user", "content": user_content(item)}],
        temperature=sampling.temperature, seed=sampling.seed, **_budget_fields(budget, sampling),
    )
    message = response.choices[0].message
    return {
        "prediction": message.content or "",
        "reasoning_tokens": _reasoning_tokens(response.usage),
        "completion_tokens": response.usage.completion_tokens if response.usage else None,
        "finish_reason": response.choices[0].finish_reason,
        "latency_s": round(time.perf_counter() - started, 4),
    }


def transcribe(client: OpenAI, audio: bytes, name: str, sampling: Sampling) -> str:
    extra = {"language": sampling.language} if sampling.language else {}
    return client.audio.transcriptions.create(model=sampling.asr_model, file=(name, audio), temperature=0,
                                              **extra).text


def ask_transcription(client: OpenAI, item: Item, budget: int | None, sampling: Sampling) -> dict:
    started = time.perf_counter()
    heard = transcribe(client, item.audio, item.audio_name, sampling)
    return {"prediction": heard, "reasoning_tokens": None, "latency_s": round(time.perf_counter() - started, 4)}


def pcm16_wav(pcm: bytes, sample_rate: int = SPEECH_SAMPLE_RATE) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(pcm)
    return buffer.getvalue()


def ask_spoken(client: OpenAI, item: Item, budget: int | None, sampling: Sampling) -> dict:
    """A spoken question in, text and speech out, streamed: the reply, time to first text and
    first audio, and the reply's speech transcribed back (to score the model's own speech)."""
    audio_format = item.audio_name.rsplit(".", 1)[-1].lower() if "." in item.audio_name else "wav"
    content = [{"type": "input_audio",
                "input_audio": {"data": base64.b64encode(item.audio).decode(), "format": audio_format}}]
    started = time.perf_counter()
    stream = client.chat.completions.create(
        model=sampling.model, messages=[{"role": "user", "content": content}],
        modalities=["text", "audio"], audio={"voice": sampling.voice, "format": "pcm16"},
        temperature=sampling.temperature, seed=sampling.seed, stream=True, stream_options={"include_usage": True},
        **_budget_fields(budget, sampling),
    )
    written, transcript, pcm, usage = [], [], [], None
    first_text = first_audio = None
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            delta = choice.delta
            if delta.content:
                written.append(delta.content)
                first_text = first_text or time.perf_counter() - started
            audio = getattr(delta, "audio", None)  # not in the client's typed delta: a dict
            if audio:
                audio = audio if isinstance(audio, dict) else audio.model_dump()
                if audio.get("data"):
                    pcm.append(base64.b64decode(audio["data"]))
                    first_audio = first_audio or time.perf_counter() - started
                transcript.append(audio.get("transcript") or "")
    latency = time.perf_counter() - started
    reply = "".join(written) or "".join(transcript)
    speech = b"".join(pcm)
    heard = transcribe(client, pcm16_wav(speech), "reply.wav", sampling) if speech else ""
    return {
        "prediction": reply,
        "speech_transcript": heard,
        "speech_s": round(len(speech) / 2 / SPEECH_SAMPLE_RATE, 3),
        "reasoning_tokens": _reasoning_tokens(usage),
        "ttft_s": round(first_text, 4) if first_text is not None else None,
        "ttfa_s": round(first_audio, 4) if first_audio is not None else None,
        "latency_s": round(latency, 4),
    }


Ask = Callable[[OpenAI, Item, "int | None", Sampling], dict]
ASK: dict[str, Ask] = {"mathvista": ask_chat, "mmmu": ask_chat, "vqa": ask_chat, "asr": ask_transcription,
                       "spoken-qa": ask_spoken}
BUDGETED = {"mathvista", "mmmu", "vqa", "spoken-qa"}  # asr sends no chat request: no thinking


def score_mathvista(item: Item, reply: str, seed: int | None) -> dict:
    meta = item.meta
    extraction = choice.extract_mathvista(reply, meta["question_type"], meta["answer_type"], meta["choices"])
    normalized = choice.normalize_mathvista(extraction, meta["choices"], meta["question_type"], meta["answer_type"],
                                            meta["precision"])
    right = choice.mathvista_equal(normalized, item.answers[0])
    shown = choice.letter_of(normalized, meta["choices"]) if meta["question_type"] == "multi_choice" else normalized
    return {"extracted": shown, "correct": right, "score": float(right)}


def score_mmmu(item: Item, reply: str, seed: int | None) -> dict:
    meta = item.meta
    answer = item.answers if meta["answer_is_list"] else item.answers[0]
    if meta["multiple_choice"]:
        rng = random.Random(f"{seed}:{item.id}")  # the benchmark guesses when no letter is found
        letter = choice.parse_mmmu_choice(reply, meta["options"], rng)
        right = choice.mmmu_choice_correct(answer, letter)
        return {"extracted": letter, "correct": right, "score": float(right)}
    candidates = choice.parse_mmmu_open(reply)
    right = choice.mmmu_open_correct(answer, candidates)
    return {"extracted": [str(c) for c in candidates], "correct": right, "score": float(right)}


def score_vqa(item: Item, reply: str, seed: int | None, metric: str = "auto") -> dict:
    use_anls = metric == "anls" or (metric == "auto" and item.meta.get("docvqa"))
    value = text.anls(reply, item.answers) if use_anls else text.vqa_accuracy(reply, item.answers)
    extracted = reply.strip() if use_anls else text.normalize_vqa_answer(reply)
    return {"extracted": extracted, "correct": value == 1.0, "score": value,
            "metric": "anls" if use_anls else "vqa_accuracy"}


def score_asr(item: Item, reply: str, seed: int | None) -> dict:
    wer = text.word_error_rate(item.answers, [reply])
    return {"extracted": text.normalize_transcript(reply), "correct": wer == 0.0, "score": 1.0 - min(wer, 1.0),
            "wer": round(wer, 6), "reference": item.answers[0]}


def score_spoken(item: Item, reply: str, seed: int | None) -> dict:
    right = text.answer_in_reply(reply, item.answers)
    return {"extracted": text.normalize_transcript(reply), "correct": right, "score": float(right)}


def score(task: str, item: Item, record: dict, seed: int | None, vqa_metric: str = "auto") -> dict:
    reply = record["prediction"]
    if task == "vqa":
        scored = score_vqa(item, reply, seed, vqa_metric)
    else:
        scored = {"mathvista": score_mathvista, "mmmu": score_mmmu, "asr": score_asr,
                  "spoken-qa": score_spoken}[task](item, reply, seed)
    if task == "spoken-qa" and record.get("speech_transcript") is not None and reply:
        # the model's own speech against its own text: did it say what it wrote?
        scored["speech_wer"] = round(text.word_error_rate([reply], [record["speech_transcript"]]), 6)
    return scored
