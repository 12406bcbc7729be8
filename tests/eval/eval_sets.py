"""Tiny benchmark files in each public layout, built offline: printed sums and words drawn with
Pillow, spoken questions and LibriSpeech-style utterances from espeak-ng.

    write_mathvista(tmp / "testmini.parquet", SUMS)
    write_librispeech(tmp / "LibriSpeech", SENTENCES)

Also a script: `python -m tests.eval.eval_sets DIR` writes every set under DIR (docs/evals.md).
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile
from PIL import Image, ImageDraw, ImageFont

from tests.speech_helpers import espeak_wav

# (a, b): "a + b = ?" printed; the answer is a + b
SUMS = [(7, 5), (12, 30), (8, 9), (41, 16), (3, 4), (25, 25), (60, 7), (14, 19)]
# words printed on a sign, asked about as TextVQA asks
SIGNS = ["STOP", "EXIT", "OPEN", "HOTEL", "PIZZA", "TAXI", "BANK", "SALE"]
SENTENCES = [
    "the cat sat on the mat",
    "she sells sea shells by the sea shore",
    "a quick brown fox jumps over the lazy dog",
    "please call me when you get home",
    "the weather is sunny and warm today",
    "we will meet at the library tomorrow",
]
# spoken arithmetic and knowledge: (question, answers)
SPOKEN = [
    ("What is two plus three?", ["5"]),
    ("What is four times two?", ["8"]),
    ("What is ten minus seven?", ["3"]),
    ("What is the capital of France?", ["Paris"]),
    ("How many legs does a spider have?", ["8"]),
    ("What colour is the sky on a clear day?", ["blue"]),
]

# knowledge and arithmetic, asked as MMMU open questions without images (any text model)
KNOWLEDGE = [
    ("What is the capital of Australia?", "Canberra"), ("Which planet is the largest in the solar system?", "Jupiter"),
    ("What is the capital of France?", "Paris"), ("What is the chemical symbol for gold?", "Au"),
    ("How many continents are there on Earth?", "7"), ("Who wrote the play Romeo and Juliet?", "Shakespeare"),
    ("What is the boiling point of water at sea level in degrees Celsius?", "100"),
    ("Which planet is closest to the Sun?", "Mercury"), ("What is the largest ocean on Earth?", "Pacific"),
    ("What is the capital of Japan?", "Tokyo"), ("What is 17 + 25?", "42"), ("What is 9 times 8?", "72"),
    ("What is 100 minus 37?", "63"), ("What is 144 divided by 12?", "12"), ("What is 15% of 200?", "30"),
    ("If a train travels 60 km per hour for 3 hours, how many km does it travel?", "180"),
]


def font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.truetype("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf", size)
    except OSError:
        return ImageFont.load_default(size=size)


def printed_png(text: str, size=(480, 160)) -> bytes:
    image = Image.new("RGB", size, "white")
    ImageDraw.Draw(image).text((24, 40), text, fill="black", font=font(64))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_mathvista(path: Path, sums=SUMS) -> Path:
    """MathVista testmini columns; even items free-form integers, odd ones multiple choice."""
    rows = []
    for i, (a, b) in enumerate(sums):
        total = a + b
        question = "What is the value of the sum shown in the image?"
        if i % 2:
            choices = [str(total - 2), str(total), str(total + 3), str(total + 10)]
            choices = choices[i % 4:] + choices[: i % 4]  # the right option at different letters
            listed = "\n".join(f"({chr(65 + k)}) {c}" for k, c in enumerate(choices))
            query = ("Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, "
                     f"at the end.\nQuestion: {question}\nChoices:\n{listed}")
            kind, answer_type = "multi_choice", "text"
        else:
            choices, kind, answer_type = None, "free_form", "integer"
            query = ("Hint: Please answer the question requiring an integer answer and provide the final value, "
                     f"e.g., 1, 2, 3, at the end.\nQuestion: {question}")
        rows.append({"pid": str(i + 1), "question": question, "image": f"images/{i + 1}.png",
                     "decoded_image": {"bytes": printed_png(f"{a} + {b} = ?"), "path": f"{i + 1}.png"},
                     "choices": choices, "unit": None, "precision": None, "answer": str(total),
                     "question_type": kind, "answer_type": answer_type, "query": query})
    pd.DataFrame(rows).to_parquet(path)
    return path


def write_mmmu(path: Path, sums=SUMS, with_images: bool = True) -> Path:
    """MMMU columns: options as the list's Python repr, image_1..image_7 as {bytes, path} or None."""
    rows = []
    for i, (a, b) in enumerate(sums):
        total = a + b
        options = [str(total + 1), str(total), str(total - 3), str(total + 5)]
        multiple = i % 2 == 0
        image = {"bytes": printed_png(f"{a} + {b} = ?"), "path": None} if with_images else None
        question = ("<image 1> What is the value of the sum in the image?" if with_images
                    else f"What is {a} plus {b}?")
        rows.append({"id": f"validation_Math_{i + 1}", "question": question,
                     "options": repr(options) if multiple else "[]", "explanation": "",
                     **{f"image_{k}": (image if k == 1 else None) for k in range(1, 8)},
                     "answer": "B" if multiple else str(total),
                     "question_type": "multiple-choice" if multiple else "open"})
    pd.DataFrame(rows).to_parquet(path)
    return path


def write_knowledge(path: Path, questions=KNOWLEDGE) -> Path:
    rows = [{"id": f"validation_Knowledge_{i + 1}", "question": question, "options": "[]", "explanation": "",
             **{f"image_{k}": None for k in range(1, 8)}, "answer": answer, "question_type": "open"}
            for i, (question, answer) in enumerate(questions)]
    pd.DataFrame(rows).to_parquet(path)
    return path


def write_textvqa(path: Path, signs=SIGNS) -> Path:
    """TextVQA-style jsonl: image files beside it, ten human answers each."""
    (path.parent / "images").mkdir(parents=True, exist_ok=True)
    with open(path, "w") as out:
        for i, word in enumerate(signs):
            image = f"images/sign_{i}.png"
            (path.parent / image).write_bytes(printed_png(word))
            answers = [word.lower()] * 8 + [f"{word.lower()} sign", "sign"]
            out.write(json.dumps({"question_id": 100 + i, "question": "What word is written on the sign?",
                                  "image": image, "answers": answers}) + "\n")
    return path


def write_docvqa(path: Path, signs=SIGNS) -> Path:
    """DocVQA-style parquet (questionId, image struct, answers): scored with ANLS."""
    rows = [{"questionId": str(500 + i), "question": "What word is printed in the document?",
             "image": {"bytes": printed_png(word), "path": None}, "answers": [word, word.lower()]}
            for i, word in enumerate(signs)]
    pd.DataFrame(rows).to_parquet(path)
    return path


def write_librispeech(root: Path, sentences=SENTENCES, speaker: str = "1089", chapter: str = "134686") -> Path:
    """SPEAKER/CHAPTER/SPEAKER-CHAPTER-NNNN.flac + SPEAKER-CHAPTER.trans.txt (upper-case text)."""
    folder = root / speaker / chapter
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, sentence in enumerate(sentences):
        utterance = f"{speaker}-{chapter}-{i:04d}"
        soundfile.write(folder / f"{utterance}.flac", espeak_wav(sentence, 16_000), 16_000, format="FLAC")
        lines.append(f"{utterance} {sentence.upper()}")
    (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    return root


def write_spoken_qa(path: Path, questions=SPOKEN) -> Path:
    (path.parent / "audio").mkdir(parents=True, exist_ok=True)
    with open(path, "w") as out:
        for i, (question, answers) in enumerate(questions):
            audio = f"audio/q{i}.wav"
            samples = np.concatenate([espeak_wav(question, 16_000), np.zeros(4000, np.float32)])
            soundfile.write(path.parent / audio, samples, 16_000, subtype="PCM_16")
            out.write(json.dumps({"id": f"q{i}", "question": question, "audio": audio, "answers": answers}) + "\n")
    return path


def write_all(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    write_mathvista(root / "mathvista_sums.parquet")
    write_mmmu(root / "mmmu_sums.parquet")
    write_knowledge(root / "knowledge_qa.parquet")
    write_textvqa(root / "textvqa_signs" / "val.jsonl")
    write_docvqa(root / "docvqa_signs.parquet")
    write_librispeech(root / "LibriSpeech" / "espeak-clean")
    write_spoken_qa(root / "spoken_qa" / "questions.jsonl")


if __name__ == "__main__":
    write_all(Path(sys.argv[1]))
