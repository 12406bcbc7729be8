"""What the packaged OCR and colour naming say about images we render ourselves."""

from __future__ import annotations

import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image, ImageDraw, ImageFont

from omnilive.backends import vision
from omnilive.backends.vision import ImageFacts, OcrLine, describe_image, dominant_colours
from omnilive.types import ImageInput


def font(size: int) -> ImageFont.ImageFont:
    found = (
        shutil.which("fc-match")
        and subprocess.run(
            ["fc-match", "-f", "%{file}", "DejaVuSans"], capture_output=True, text=True, check=False
        ).stdout
    )
    if found and found.endswith(".ttf"):
        return ImageFont.truetype(found, size)
    return ImageFont.load_default(size=size)  # Pillow's own scalable font


def page(lines: list[tuple[str, tuple[int, int, int]]], size=(640, 480), background="white") -> ImageInput:
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    for row, (text, colour) in enumerate(lines):
        draw.text((40, 50 + row * 90), text, fill=colour, font=font(34))
    return ImageInput(image)


def test_ocr_reads_printed_lines_in_order_with_their_spaces():
    facts = describe_image(
        page([("Invoice 2024-117", (0, 0, 0)), ("Total due: 42.50 EUR", (0, 0, 0)), ("Thank you!", (200, 0, 0))])
    )
    assert facts.ocr_engine in ("rapidocr", "tesseract")
    assert [line.text for line in facts.ocr_lines] == ["Invoice 2024-117", "Total due: 42.50 EUR", "Thank you!"]
    assert all(0.5 <= line.confidence <= 1.0 for line in facts.ocr_lines)
    first = facts.ocr_lines[0].box
    assert 30 <= first[0] <= 50 and 40 <= first[1] <= 70  # where we drew it
    assert (facts.width, facts.height) == (640, 480)


def test_context_block_is_labelled_and_carries_the_facts():
    facts = describe_image(page([("Meeting at 10:30 in room 4B", (0, 0, 0))]))
    context = facts.as_context(label="Image 2")
    assert context.startswith("[Image 2, machine-extracted") and context.endswith("]")
    assert "640x480 pixels" in context and "mostly white" in context
    assert '"Meeting at 10:30 in room 4B"' in context


def test_image_without_text_says_so():
    facts = describe_image(ImageInput(Image.new("RGB", (300, 200), (20, 60, 200))))
    assert facts.ocr_lines == ()
    assert "OCR found no text" in facts.as_context() and "mostly blue" in facts.as_context()
    assert "text in it is unknown" in describe_image(ImageInput(Image.new("RGB", (9, 9))), ocr=False).as_context()


def test_colours_are_named_with_their_shares():
    image = Image.new("RGB", (200, 100), (220, 30, 30))
    image.paste((30, 160, 40), (100, 0, 200, 100))
    named = dict(dominant_colours(image))
    assert set(named) == {"red", "green"} and named["red"] == pytest.approx(0.5, abs=0.03)
    checks = {
        (0, 0, 0): "black",
        (255, 255, 255): "white",
        (128, 128, 128): "grey",
        (250, 220, 20): "yellow",
        (255, 140, 0): "orange",
        (120, 70, 20): "brown",
        (130, 40, 200): "purple",
        (255, 105, 180): "pink",
        (20, 200, 210): "cyan",
    }
    for rgb, name in checks.items():
        assert dominant_colours(Image.new("RGB", (8, 8), rgb))[0][0] == name, rgb


def test_context_stays_short_for_pages_of_text():
    lines = tuple(OcrLine(f"line number {i} " + "x" * 60, 0.9, (0, i, 10, i + 1)) for i in range(200))
    context = ImageFacts(800, 600, (("white", 0.9),), lines, "rapidocr").as_context()
    assert len(context) < 2400 and "(more text cut)" in context


def test_concurrent_calls_share_one_engine_safely():
    image = page([("Concurrent reading works", (0, 0, 0))])
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: describe_image(image).ocr_lines, range(3)))
    assert all(r == results[0] for r in results) and results[0][0].text == "Concurrent reading works"


@pytest.mark.skipif(shutil.which("tesseract") is None, reason="tesseract not installed")
def test_tesseract_fallback_reads_the_same_page():
    name, run = vision._load_tesseract()
    lines = run(page([("Total due: 42.50 EUR", (0, 0, 0)), ("Thank you!", (0, 0, 0))]).image)
    assert name == "tesseract" and [line.text for line in lines] == ["Total due: 42.50 EUR", "Thank you!"]
    assert all(line.confidence > 0.5 for line in lines)
