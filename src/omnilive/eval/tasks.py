"""What each task sends and how it scores one reply.

`score` fills a prediction record's `extracted` (the parsed answer; the letter for options),
`score` (the item's metric: 1/0, or VQA accuracy / ANLS in [0, 1]) and `correct` (full marks).
"""

from __future__ import annotations

import random
from typing import Callable

from openai import OpenAI

from omnilive.eval import scoring_choice as choice
from omnilive.eval import scoring_text as text
from omnilive.eval.client import Sampling, ask_chat, ask_spoken, ask_transcription
from omnilive.eval.datasets import Item

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
