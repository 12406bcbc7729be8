"""What the packaged small models can honestly say about an image, for a text-only LLM.

The embedded cascade has no vision encoder, so an image becomes a short, clearly labelled block
of machine-extracted facts: size, dominant colours, and the text OCR reads (rapidocr's PP-OCRv4
ONNX models, shipped in its wheel; the Debian `tesseract` CLI when rapidocr is missing).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import threading
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from omnilive.types import ImageInput

OCR_THREADS = 2  # the whole machine may have two cores: OCR must not oversubscribe them
_MIN_CONFIDENCE = 0.5
_MAX_CONTEXT_LINES = 40  # a page of text is plenty for a 0.5B model's prompt
_MAX_CONTEXT_CHARS = 2000


@dataclass(frozen=True)
class OcrLine:
    text: str
    confidence: float  # 0..1
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in image pixels


@dataclass(frozen=True)
class ImageFacts:
    width: int
    height: int
    colours: tuple[tuple[str, float], ...]  # (plain English name, share of the image), largest first
    ocr_lines: tuple[OcrLine, ...]  # in reading order
    ocr_engine: str | None  # "rapidocr", "tesseract", or None when no OCR could run
    labels: tuple[tuple[str, float], ...] = ()  # (object class, probability); empty: no classifier

    def colour_phrase(self) -> str:
        main = [name for name, share in self.colours if share >= 0.25][:2]
        some = [name for name, share in self.colours if 0.08 <= share < 0.25 and name not in main][:2]
        phrase = "mostly " + " and ".join(main) if main else "mixed colours"
        return phrase + (", with some " + " and ".join(some) if some else "")

    def as_context(self, label: str = "Image 1") -> str:
        """One block telling a text-only model what automatic tools found (they can be wrong)."""
        parts = [f"{self.width}x{self.height} pixels, {self.colour_phrase()}."]
        if self.labels:
            guesses = ", ".join(f"{name} ({p:.0%})" for name, p in self.labels)
            parts.append(f"An image classifier guesses: {guesses}.")
        if self.ocr_engine is None:
            parts.append("No OCR was available, so any text in it is unknown.")
        elif not self.ocr_lines:
            parts.append("OCR found no text.")
        else:
            lines, size = [], 0
            for line in self.ocr_lines[:_MAX_CONTEXT_LINES]:
                size += len(line.text) + 3
                if size > _MAX_CONTEXT_CHARS:
                    break
                lines.append(line.text)
            cut = " (more text cut)" if len(lines) < len(self.ocr_lines) else ""
            parts.append("Text found by OCR: " + " / ".join(f'"{t}"' for t in lines) + cut + ".")
        return f"[{label}, machine-extracted description (the image itself was not seen): {' '.join(parts)}]"


def describe_image(image: ImageInput, ocr: bool = True) -> ImageFacts:
    picture = image.image
    colours = dominant_colours(picture)
    engine_name, lines = None, ()
    if ocr:
        engine = _ocr_engine()
        if engine is not None:
            engine_name, run = engine
            lines = tuple(run(picture))
    return ImageFacts(picture.width, picture.height, colours, lines, engine_name)


# colours

# PIL hue (0..255) upper bounds → name, for saturated pixels
_HUES = (
    (10, "red"),
    (28, "orange"),
    (45, "yellow"),
    (115, "green"),
    (140, "cyan"),
    (185, "blue"),
    (210, "purple"),
    (235, "pink"),
    (256, "red"),
)


def dominant_colours(picture: Image.Image, min_share: float = 0.05) -> tuple[tuple[str, float], ...]:
    """Name every pixel of a 64x64 thumbnail with one of a dozen basic colour words; count them."""
    small = picture.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR)
    hsv = np.asarray(small.convert("HSV"), dtype=np.int32).reshape(-1, 3)
    hue, sat, val = hsv[:, 0], hsv[:, 1], hsv[:, 2]
    names = np.empty(len(hsv), dtype=object)
    names[:] = "grey"
    hue_names = np.array([name for _, name in _HUES], dtype=object)
    names = np.where(sat >= 50, hue_names[np.searchsorted([b for b, _ in _HUES], hue, side="right")], names)
    # dark oranges and reds read as brown
    names = np.where((sat >= 50) & (val < 150) & (hue >= 5) & (hue < 35), "brown", names)
    names = np.where((sat < 50) & (val >= 215), "white", names)
    names = np.where(val < 50, "black", names)
    found, counts = np.unique(names.astype(str), return_counts=True)
    shares = counts / counts.sum()
    ranked = sorted(zip(found.tolist(), shares.tolist()), key=lambda item: -item[1])
    return tuple((name, round(share, 3)) for name, share in ranked if share >= min_share)


# OCR

OcrRun = Callable[[Image.Image], list[OcrLine]]
_engine_lock = threading.Lock()  # guards creation and every call (rapidocr keeps per-call state)
_engine: tuple[str, OcrRun] | None = None
_engine_loaded = False


def _ocr_engine() -> tuple[str, OcrRun] | None:
    """rapidocr if installed, else tesseract if on PATH, else None. Created once, on first use."""
    global _engine, _engine_loaded
    with _engine_lock:
        if not _engine_loaded:
            _engine = _load_rapidocr() or _load_tesseract()
            _engine_loaded = True
        return _engine


def warm_up() -> str | None:
    """Load the OCR models now (start-up) rather than on the first image; returns the engine name."""
    engine = _ocr_engine()
    return engine[0] if engine else None


def _load_rapidocr() -> tuple[str, OcrRun] | None:
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ImportError:
        return None
    # use_cls=False: its 0°/180° line classifier flipped 3 of 20 upright lines in our tests, and
    # upside-down text is rare in images people send
    engine = RapidOCR(intra_op_num_threads=OCR_THREADS, inter_op_num_threads=1, use_cls=False)
    _recover_spaces(engine)

    def run(picture: Image.Image) -> list[OcrLine]:
        with _engine_lock:
            result, _ = engine(np.asarray(picture.convert("RGB"))[:, :, ::-1])  # it wants BGR arrays
        lines = []
        for box, text, score in result or ():
            xs, ys = [p[0] for p in box], [p[1] for p in box]
            text = _clean(text)
            if text and score >= _MIN_CONFIDENCE:
                lines.append(
                    OcrLine(text, round(float(score), 3), (int(min(xs)), int(min(ys)), int(max(xs)), int(max(ys))))
                )
        return lines

    return "rapidocr", run


def _recover_spaces(engine: object) -> None:
    """Make rapidocr keep the spaces between Latin words.

    Its recogniser was trained mostly on Chinese, so at a gap between words the blank symbol
    outranks the space symbol and "Total due" reads "Totaldue". Where blank wins but the space is
    the likeliest real symbol (and not negligible), take the space. On rendered English lines
    this lifted exact-line matches from 60 to 116 of 144 (the rest are letter errors).
    """
    decoder = engine.text_rec.postprocess_op  # type: ignore[attr-defined]
    space = len(decoder.character) - 1
    if decoder.character[space] != " ":
        return
    plain_call = decoder.__call__

    def call(preds: np.ndarray, return_word_box: bool = False, **kwargs):
        if return_word_box:
            return plain_call(preds, return_word_box, **kwargs)
        best = preds.argmax(axis=2)
        best_symbol = preds[:, :, 1:].argmax(axis=2) + 1  # ignoring the blank (index 0)
        promote = (best == 0) & (best_symbol == space) & (preds[:, :, space] > 1e-3)
        # a promoted space keeps the blank's probability as its confidence: the gap itself is
        # certain, and the space's own small probability would sink the line below text_score
        return decoder.decode(np.where(promote, space, best), preds.max(axis=2), False, is_remove_duplicate=True)

    engine.text_rec.postprocess_op = call  # type: ignore[attr-defined]  # called as self.postprocess_op(...)


def _load_tesseract() -> tuple[str, OcrRun] | None:
    binary = shutil.which("tesseract")
    if binary is None:
        return None

    def run(picture: Image.Image) -> list[OcrLine]:
        png = io.BytesIO()
        picture.convert("RGB").save(png, format="PNG")
        try:
            done = subprocess.run(
                [binary, "stdin", "stdout", "tsv"],
                input=png.getvalue(),
                capture_output=True,
                timeout=30,
                check=False,
                env={**os.environ, "OMP_THREAD_LIMIT": str(OCR_THREADS)},
            )
        except subprocess.TimeoutExpired:
            return []
        return _parse_tesseract_tsv(done.stdout.decode("utf-8", "replace")) if done.returncode == 0 else []

    return "tesseract", run


def _parse_tesseract_tsv(tsv: str) -> list[OcrLine]:
    """Word rows (level 5) grouped by (block, paragraph, line) into lines with a mean confidence."""
    lines: dict[tuple[str, str, str], list[tuple[str, float, int, int, int, int]]] = {}
    for row in tsv.splitlines()[1:]:
        cells = row.split("\t")
        if len(cells) != 12 or cells[0] != "5" or not cells[11].strip():
            continue
        left, top, width, height = (int(c) for c in cells[6:10])
        lines.setdefault((cells[2], cells[3], cells[4]), []).append(
            (cells[11].strip(), float(cells[10]) / 100.0, left, top, left + width, top + height)
        )
    result = []
    for words in lines.values():
        text = _clean(" ".join(w[0] for w in words))
        confidence = sum(w[1] for w in words) / len(words)
        if text and confidence >= _MIN_CONFIDENCE:
            box = (
                min(w[2] for w in words),
                min(w[3] for w in words),
                max(w[4] for w in words),
                max(w[5] for w in words),
            )
            result.append(OcrLine(text, round(confidence, 3), box))
    return result


def _clean(text: str) -> str:
    # NFKC folds the full-width punctuation the Chinese-trained recogniser emits (，：) to ASCII
    return " ".join(unicodedata.normalize("NFKC", text).split())
