"""Answer extraction and scoring for MathVista and MMMU, as their reference harnesses score.

MathVista: the official evaluation (and lmms-eval's copy) first *extracts* the answer from the
reply — with a GPT judge unless the reply is already bare — then normalises it to the answer
type (option text, int, float rounded to the item's precision, list) and compares strings.
We cannot call a judge, so `extract_mathvista` is rule-based (the reply's last option letter,
number or list, after an "answer is" cue when there is one); `normalize_mathvista` and the
comparison are the reference's own rules, checked against lmms-eval in tests/eval.

MMMU: the benchmark's own eval_utils (also lmms-eval's): an option letter parsed from the reply
(a random letter when none is found, seeded here), open answers compared as numbers rounded to
2 places or as lower-case substrings.
"""

from __future__ import annotations

import random
import re

from rapidfuzz.distance import Levenshtein

# --- MathVista -------------------------------------------------------------------------------

_ANSWER_CUE = re.compile(r"(?:final answer|answer)\s*(?:is|:)?\s*[:\-]?\s*(.*)", re.IGNORECASE | re.DOTALL)
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")
_LIST = re.compile(r"\[[^\[\]]*\]")


def option_letters(choices: list[str]) -> list[str]:
    return [chr(ord("A") + i) for i in range(len(choices))]


def _after_cue(reply: str) -> str:
    """The text after the last "answer is" / "Answer:", where a reply states its answer."""
    matches = list(_ANSWER_CUE.finditer(reply))
    return matches[-1].group(1) if matches and matches[-1].group(1).strip() else reply


def _reference_quick_extract(reply: str, question_type: str, answer_type: str, choices: list[str]) -> str | None:
    """The reference's judge-free shortcuts: a bare choice, a bare number, 'The answer is "x".'"""
    if question_type == "multi_choice" and reply in choices:
        return reply
    if answer_type == "integer":
        try:
            return str(int(reply))
        except ValueError:
            pass
    if answer_type == "float":
        try:
            return str(float(reply))
        except ValueError:
            pass
    quoted = re.search(r'The answer is "(.*)"\.', reply)
    return quoted.group(1) if quoted else None


def extract_mathvista(reply: str, question_type: str, answer_type: str, choices: list[str]) -> str:
    """The answer stated in `reply`: an option letter, a number or a list, as text."""
    reply = reply.strip()
    if not reply:
        return ""
    quick = _reference_quick_extract(reply, question_type, answer_type, choices)
    if quick is not None:
        return quick
    tail = _after_cue(reply)
    if question_type == "multi_choice":
        letters = option_letters(choices)
        # "(B)" first; else a capital standing alone ("B", "B.", "B:") — not the article "A ..."
        for pattern in (r"\(([A-Z])\)", r"(?:^|[\s:*])([A-Z])(?=$|[\s.,:;)*])(?!\s+[a-z])"):
            found = [letter for letter in re.findall(pattern, tail) if letter in letters]
            if found:
                return found[-1]
        # the reply names an option's text instead of its letter: the last one named
        named = [(tail.lower().rfind(c.lower()), c) for c in choices if c and c.lower() in tail.lower()]
        if named:
            return max(named)[1]
        return tail.strip()
    if answer_type == "list":
        lists = _LIST.findall(tail) or _LIST.findall(reply)
        return lists[-1] if lists else tail.strip()
    numbers = _NUMBER.findall(tail) or _NUMBER.findall(reply)
    return numbers[-1].replace(",", "") if numbers else tail.strip()


def _most_similar(text: str, choices: list[str]) -> str:
    distances = [Levenshtein.distance(text, choice) for choice in choices]
    return choices[distances.index(min(distances))]


def normalize_mathvista(extraction: str, choices: list[str], question_type: str, answer_type: str,
                        precision: int | None) -> str | None:
    """The reference's normalisation: option letter → option text (else the most similar option
    by edit distance), int, float rounded to `precision`, list as text; None if unparsable."""
    if question_type == "multi_choice":
        extraction = str(extraction).strip()
        letter = re.findall(r"\(([a-zA-Z])\)", extraction)
        if letter:
            extraction = letter[0].upper()
        letters = option_letters(choices)
        if extraction in letters:
            return choices[letters.index(extraction)]
        return _most_similar(extraction, choices)
    if answer_type == "integer":
        try:
            return str(int(float(extraction)))
        except (TypeError, ValueError, OverflowError):
            return None
    if answer_type == "float":
        try:
            return str(round(float(extraction), int(precision or 0)))
        except (TypeError, ValueError, OverflowError):
            return None
    if answer_type == "list":
        return str(extraction)
    return extraction


def mathvista_equal(prediction: str | None, answer: str) -> bool:
    return str(prediction).strip() == str(answer).strip()


def letter_of(option_text: str | None, choices: list[str]) -> str | None:
    return option_letters(choices)[choices.index(option_text)] if option_text in choices else None


# --- MMMU ------------------------------------------------------------------------------------

MMMU_CHOICE_PROMPT = "Answer with the option's letter from the given choices directly."
MMMU_OPEN_PROMPT = "Answer the question using a single word or phrase."


def mmmu_prompt(question: str, options: list[str], multiple_choice: bool) -> str:
    """lmms-eval's default MMMU prompt (the `<image k>` placeholders stay in the text)."""
    if multiple_choice:
        listed = "\n".join(f"{letter}. {option}" for letter, option in zip(option_letters(options), options))
        return f"{question}\n{listed}\n\n{MMMU_CHOICE_PROMPT}"
    return f"{question}\n\n{MMMU_OPEN_PROMPT}"


def parse_mmmu_choice(reply: str, options: list[str], rng: random.Random) -> str:
    """The option letter a reply gives: "(B)", "B ", "B.", else an option's text in a long reply;
    the last one mentioned wins; none → a random letter (the benchmark's rule)."""
    letters = option_letters(options)
    for char in ",.!?;:'":
        reply = reply.strip(char)
    reply = f" {reply} "
    candidates = [c for c in letters if f"({c})" in reply]
    bracketed, by_letter = bool(candidates), True
    if not candidates:
        candidates = [c for c in letters if f"{c} " in reply]
    if not candidates:
        candidates = [c for c in letters if f"{c}." in reply]
    if not candidates and len(reply.split()) > 5:
        candidates = [c for c, option in zip(letters, options) if option.lower() in reply.lower()]
        by_letter = False
    if not candidates:
        return rng.choice(letters)
    if len(candidates) == 1:
        return candidates[0]
    if not by_letter:
        starts = [reply.lower().rfind(options[letters.index(c)].lower()) for c in candidates]
    else:
        starts = [reply.rfind(f"({c})" if bracketed else f" {c} ") for c in candidates]
    return candidates[starts.index(max(starts))]  # the first of equal maxima, as numpy's argmax


def _extract_numbers(text: str) -> list[str]:
    with_commas = re.findall(r"-?\b\d{1,3}(?:,\d{3})+\b", text)
    scientific = re.findall(r"-?\d+(?:\.\d+)?[eE][+-]?\d+", text)
    simple = re.findall(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])", text)
    return with_commas + scientific + simple


def _normalize_open(text: str) -> list[str | float]:
    text = text.strip()
    try:
        return [round(float(text.replace(",", "")), 2)]
    except ValueError:
        text = text.lower()
        return [" " + text, text + " "] if len(text) == 1 else [text]


def parse_mmmu_open(reply: str) -> list[str | float]:
    """Candidate answers of an open reply: the tail after an answer cue in each sentence, and
    every number in it, normalised (numbers as floats rounded to 2 places, text lower-case)."""
    reply = reply.strip().strip(".").lower()
    sentences = re.split(r"\.\s(?=[A-Z])|\n", reply)
    cues = ["could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result "]
    keys = []
    for index, sentence in enumerate(sentences):
        if index == len(sentences) - 1:
            cues.append("=")  # the last sentence may be just an equation
        shortest = None
        for cue in cues:
            if cue in sentence:
                tail = sentence.split(cue)[-1].strip()
                if not shortest or len(tail) < len(shortest):
                    shortest = tail
        if shortest and shortest.strip() not in (":", ",", ".", "!", "?", ";", "'"):
            keys.append(shortest)
    keys = keys or [reply]
    candidates = keys + [number for key in keys for number in _extract_numbers(key)]
    return list({value: None for text in candidates for value in _normalize_open(text)})


def mmmu_open_correct(answer: str | list[str], candidates: list[str | float]) -> bool:
    golds = [g for a in (answer if isinstance(answer, list) else [answer]) for g in _normalize_open(a)]
    for candidate in candidates:
        if isinstance(candidate, str):
            if any(isinstance(g, str) and g in candidate for g in golds):
                return True
        elif candidate in golds:
            return True
    return False


def mmmu_choice_correct(answer: str | list[str], letter: str) -> bool:
    return letter in answer if isinstance(answer, list) else letter == answer
