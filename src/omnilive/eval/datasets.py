"""Benchmark files in their public layouts → `Item`s (one question each), or a `LayoutError`
that says what was expected and what the file has.

    items = load_items("mathvista", Path("testmini.parquet"))   # MathVista testmini parquet
    items = load_items("asr", Path("LibriSpeech/test-clean"))    # SPEAKER/CHAPTER/*.flac + trans.txt
"""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TASKS = ("mathvista", "mmmu", "vqa", "asr", "spoken-qa")


class LayoutError(ValueError):
    """The data file is not in the layout the task reads."""


@dataclass
class Item:
    id: str
    prompt: str = ""  # the text sent with the media
    images: list[bytes] = field(default_factory=list)  # encoded image files, in prompt order
    audio: bytes | None = None  # an encoded audio file
    audio_name: str = ""  # its file name (the server guesses the format from it)
    answers: list[str] = field(default_factory=list)  # reference answers / transcript
    meta: dict[str, Any] = field(default_factory=dict)  # task-specific: choices, answer type, ...


def read_rows(path: Path) -> list[dict]:
    """Rows of a .parquet (pandas + pyarrow) or .jsonl file, list columns as Python lists."""
    if not path.is_file():
        raise LayoutError(f"{path}: no such file")
    if path.suffix == ".parquet":
        import pandas as pd

        try:
            frame = pd.read_parquet(path)
        except Exception as e:  # pyarrow's errors have many types; all mean "not a parquet file"
            raise LayoutError(f"{path}: not a readable parquet file ({e})") from e
        return [{k: _plain(v) for k, v in row.items()} for row in frame.to_dict("records")]
    if path.suffix in (".jsonl", ".json"):
        rows = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise LayoutError(f"{path}:{number}: not a JSON line ({e.msg})") from e
        if rows and not all(isinstance(r, dict) for r in rows):
            raise LayoutError(f"{path}: each line must be a JSON object")
        return rows
    raise LayoutError(f"{path}: expected a .parquet or .jsonl file")


def _plain(value):
    """numpy arrays (parquet list columns) → lists, recursively; NaN/None → None."""
    if hasattr(value, "tolist") and not isinstance(value, (bytes, str)):
        value = value.tolist()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, float) and value != value:
        return None
    return value


def _require(path: Path, rows: list[dict], columns: set[str], layout: str) -> None:
    if not rows:
        raise LayoutError(f"{path}: no rows")
    missing = columns - set(rows[0])
    if missing:
        raise LayoutError(f"{path}: not a {layout} file: missing column(s) {', '.join(sorted(missing))} "
                          f"(expected {', '.join(sorted(columns))}; found {', '.join(sorted(rows[0]))})")


def image_bytes(value, base: Path, where: str) -> bytes:
    """An image given as {bytes, path} (Hugging Face parquet), raw bytes, or a file path."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        value = value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str) and value:
        file = Path(value) if Path(value).is_absolute() else base / value
        if file.is_file():
            return file.read_bytes()
        raise LayoutError(f"{where}: image file {file} not found")
    raise LayoutError(f"{where}: no image (expected {{bytes, path}}, bytes or a file path)")


def load_mathvista(path: Path) -> list[Item]:
    rows = read_rows(path)
    _require(path, rows, {"pid", "question", "decoded_image", "answer", "question_type", "answer_type"},
             "MathVista")
    items = []
    for row in rows:
        choices = [str(c) for c in row.get("choices") or []]
        prompt = row.get("query") or _mathvista_query(row["question"], choices, row.get("unit"))
        items.append(Item(
            id=str(row["pid"]), prompt=prompt,
            images=[image_bytes(row["decoded_image"], path.parent, f"{path} pid {row['pid']}")],
            answers=[str(row["answer"])],
            meta={"choices": choices, "question_type": row["question_type"], "answer_type": row["answer_type"],
                  "precision": row.get("precision")},
        ))
    return items


def _mathvista_query(question: str, choices: list[str], unit: str | None) -> str:
    """A prompt like the dataset's own `query` column, for files without one."""
    if choices:
        listed = "\n".join(f"({chr(65 + i)}) {c}" for i, c in enumerate(choices))
        return (f"Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, "
                f"at the end.\nQuestion: {question}\nChoices:\n{listed}")
    unit_text = f" (Unit: {unit})" if unit else ""
    return f"Hint: Please answer the question and provide the final answer at the end.\nQuestion: {question}{unit_text}"


def load_mmmu(path: Path) -> list[Item]:
    from omnilive.eval.scoring_choice import mmmu_prompt

    rows = read_rows(path)
    _require(path, rows, {"id", "question", "options", "answer", "question_type", "image_1"}, "MMMU")
    items = []
    for row in rows:
        options = row["options"]
        if isinstance(options, str):  # the published parquet keeps the list as its Python repr
            try:
                options = ast.literal_eval(options) if options.strip() else []
            except (ValueError, SyntaxError) as e:
                raise LayoutError(f"{path} id {row['id']}: options is not a list: {options[:80]!r}") from e
        options = [str(o) for o in options or []]
        multiple_choice = row["question_type"] == "multiple-choice"
        images = [image_bytes(row[f"image_{k}"], path.parent, f"{path} id {row['id']} image_{k}")
                  for k in range(1, 8) if row.get(f"image_{k}")]
        answer = row["answer"]
        if isinstance(answer, str) and answer.startswith("[") and not multiple_choice:
            try:
                answer = [str(a) for a in ast.literal_eval(answer)]
            except (ValueError, SyntaxError):
                pass
        items.append(Item(
            id=str(row["id"]), prompt=mmmu_prompt(row["question"], options, multiple_choice), images=images,
            answers=answer if isinstance(answer, list) else [str(answer)],
            meta={"options": options, "multiple_choice": multiple_choice, "answer_is_list": isinstance(answer, list)},
        ))
    return items


VQA_PROMPT = "Answer the question using a single word or phrase."


def load_vqa(path: Path) -> list[Item]:
    rows = read_rows(path)
    _require(path, rows, {"question", "answers"}, "VQA (TextVQA / DocVQA / VQAv2)")
    image_column = next((c for c in ("image", "image_path", "image_file") if c in rows[0]), None)
    id_column = next((c for c in ("question_id", "questionId", "id") if c in rows[0]), None)
    if image_column is None or id_column is None:
        raise LayoutError(f"{path}: not a VQA file: expected an image column (image, image_path or image_file) "
                          f"and an id column (question_id, questionId or id); found {', '.join(sorted(rows[0]))}")
    items = []
    for row in rows:
        answers = row["answers"] or []
        if isinstance(answers, str):
            answers = [answers]
        answers = [str(a["answer"] if isinstance(a, dict) else a) for a in answers]  # VQAv2: [{answer, ...}]
        items.append(Item(
            id=str(row[id_column]), prompt=f"{row['question']}\n{VQA_PROMPT}",
            images=[image_bytes(row[image_column], path.parent, f"{path} {id_column} {row[id_column]}")],
            answers=answers, meta={"docvqa": id_column == "questionId"},
        ))
    return items


AUDIO_SUFFIXES = (".flac", ".wav", ".mp3", ".ogg")


def load_librispeech(path: Path) -> list[Item]:
    """SPEAKER/CHAPTER/SPEAKER-CHAPTER.trans.txt lines "UTTERANCE-ID TEXT", beside UTTERANCE-ID.flac."""
    if not path.is_dir():
        raise LayoutError(f"{path}: the asr task reads a LibriSpeech folder (SPEAKER/CHAPTER/*.flac and "
                          f"SPEAKER-CHAPTER.trans.txt), not a file")
    transcripts = sorted(path.rglob("*.trans.txt"))
    if not transcripts:
        raise LayoutError(f"{path}: no SPEAKER-CHAPTER.trans.txt found: not a LibriSpeech folder "
                          f"(SPEAKER/CHAPTER/*.flac + SPEAKER-CHAPTER.trans.txt)")
    items = []
    for transcript in transcripts:
        for number, line in enumerate(transcript.read_text().splitlines(), 1):
            if not line.strip():
                continue
            utterance, _, text = line.strip().partition(" ")
            audio = next((transcript.parent / f"{utterance}{s}" for s in AUDIO_SUFFIXES
                          if (transcript.parent / f"{utterance}{s}").is_file()), None)
            if audio is None:
                raise LayoutError(f"{transcript}:{number}: no audio file {utterance}.flac beside it")
            items.append(Item(id=utterance, audio=audio.read_bytes(), audio_name=audio.name, answers=[text]))
    return items


def load_spoken_qa(path: Path) -> list[Item]:
    """jsonl: {"id", "audio": a file path (relative to the jsonl), "answers": [...], "question"?: text}."""
    rows = read_rows(path)
    _require(path, rows, {"id", "audio", "answers"}, "spoken-QA")
    items = []
    for row in rows:
        audio = Path(row["audio"]) if Path(row["audio"]).is_absolute() else path.parent / row["audio"]
        if not audio.is_file():
            raise LayoutError(f"{path} id {row['id']}: audio file {audio} not found")
        answers = row["answers"] if isinstance(row["answers"], list) else [row["answers"]]
        items.append(Item(id=str(row["id"]), audio=audio.read_bytes(), audio_name=audio.name,
                          answers=[str(a) for a in answers], meta={"question": row.get("question", "")}))
    return items


LOADERS = {"mathvista": load_mathvista, "mmmu": load_mmmu, "vqa": load_vqa, "asr": load_librispeech,
           "spoken-qa": load_spoken_qa}


def load_items(task: str, path: Path) -> list[Item]:
    if not path.exists():
        raise LayoutError(f"{path}: no such file or folder")
    if task != "asr" and path.is_dir():
        raise LayoutError(f"{path}: the {task} task reads a .parquet or .jsonl file, not a folder")
    items = LOADERS[task](path)
    seen = set()
    for item in items:
        if item.id in seen:
            raise LayoutError(f"{path}: id {item.id} appears twice (ids key the predictions and resuming)")
        seen.add(item.id)
    return items
