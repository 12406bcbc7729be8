"""Scoring of free-text answers: VQA accuracy, ANLS, word error rate, spoken-answer match.

VQA accuracy is the VQAv2/TextVQA rule as EvalAI (and lmms-eval, from mmf) computes it: the
reply and each of the ~10 human answers go through the same normalisation (lower case,
punctuation, number words → digits, articles dropped, contractions restored), then the score is
the mean over the answers of min(1, matches among the *other* answers / 3) — min(#matches/3, 1)
averaged over the 10 leave-one-out subsets. ANLS is DocVQA's: 1 − normalised edit distance to
the closest answer, 0 below 0.5. WER uses jiwer after Whisper's English normaliser (the one
lmms-eval's LibriSpeech task applies), summed over the corpus.
"""

from __future__ import annotations

import re
import unicodedata
from functools import cache
from statistics import mean

import jiwer
from rapidfuzz.distance import Levenshtein

# Contractions the VQA evaluation restores, written with their apostrophes. The evaluation's
# table maps each form with its apostrophe removed (for a form with several, any one of them)
# to the form; `_CONTRACTION_EXTRAS` holds its few irregular entries.
_CONTRACTED = (
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't "
    "haven't he'd he'd've he's how'd how'll how's I'd've I'm I've isn't it'd it'd've it'll let's ma'am "
    "mightn't mightn't've might've mustn't must've needn't not've o'clock oughtn't 'ow's'at shan't "
    "she'd've she's should've shouldn't shouldn't've somebody'd've somebody'll somebody's someone'd "
    "someone'd've someone'll someone's something'd something'd've something'll that's there'd "
    "there'd've there're there's they'd they'd've they'll they're they've 'twas wasn't we'd've we've "
    "weren't what'll what're what's what've when's where'd where's where've who'd who'd've who'll "
    "who's who've why'll why're why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've "
    "you'd you'd've you'll you're you've"
).split()
_CONTRACTION_EXTRAS = {"somebody'd": "somebodyd"}
_NOT_CONTRACTED = {"lets", "shes"}  # "let's", "she's" are in the table only as themselves


def _contractions() -> dict[str, str]:
    table = {}
    for form in _CONTRACTED:
        marks = [i for i, char in enumerate(form) if char == "'"]
        for dropped in ([marks] if len(marks) == 1 else [[m] for m in marks]):
            table["".join(c for i, c in enumerate(form) if i not in dropped)] = form
    for key in _NOT_CONTRACTED:
        del table[key]
    return {**table, **_CONTRACTION_EXTRAS}


CONTRACTIONS = _contractions()
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
                "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = {"a", "an", "the"}
_PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",",
                "?", "!"]
_COMMA_IN_NUMBER = re.compile(r"(?<=\d)(,)+(?=\d)")
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # sic: the reference's look-behind is a typo; kept for equal scores


def normalize_vqa_answer(text: str) -> str:
    """EvalAI's answer processing, quirks included, so scores equal the published ones."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    spaced = text
    for p in _PUNCTUATION:
        if p + " " in spaced or " " + p in spaced or _COMMA_IN_NUMBER.search(spaced):
            text = text.replace(p, "")
        else:
            text = text.replace(p, " ")
    text = _PERIOD.sub("", text, count=re.UNICODE)  # sic: the reference passes the flag as a count (32)
    words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
    return " ".join(CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES)


def vqa_accuracy(reply: str, answers: list[str]) -> float:
    """Mean over the human answers of min(1, matches among the others / 3)."""
    if not answers:
        return 0.0
    predicted = normalize_vqa_answer(reply)
    golds = [normalize_vqa_answer(a) for a in answers]
    return mean(min(1.0, sum(g == predicted for j, g in enumerate(golds) if j != i) / 3) for i in range(len(golds)))


def anls(reply: str, answers: list[str], threshold: float = 0.5) -> float:
    """Average Normalized Levenshtein Similarity for one question (DocVQA): lower-cased,
    whitespace-collapsed strings; the length is taken before that collapse, as the reference does."""
    predicted = " ".join(reply.strip().lower().split())
    distances = []
    for answer in answers:
        gold = " ".join(answer.strip().lower().split())
        length = max(len(answer.upper()), len(reply.upper()))
        distances.append(0.0 if length == 0 else Levenshtein.distance(gold, predicted) / length)
    score = 1 - min(distances) if distances else 0.0
    return score if score >= threshold else 0.0


@cache
def _english_normalizer():
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


@cache
def _basic_normalizer():
    from whisper_normalizer.basic import BasicTextNormalizer

    return BasicTextNormalizer()


def normalize_transcript(text: str) -> str:
    """Whisper's English normaliser, then its basic one (lmms-eval applies both for English)."""
    words = _basic_normalizer()(_english_normalizer()(text)).split(" ")
    # then the evaluation tokenizer's punctuation removal: tokens made only of punctuation go
    return " ".join(w for w in words if not all(unicodedata.category(c)[0] == "P" for c in w)).lower()


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER: all word errors over all reference words, after normalisation."""
    refs = [normalize_transcript(r) for r in references]
    hyps = [normalize_transcript(h) for h in hypotheses]
    kept = [(r, h) for r, h in zip(refs, hyps) if r]
    if not kept:
        return 0.0 if not any(hyps) else 1.0
    errors = sum(jiwer.process_words(r, h).wer * len(r.split()) if h else len(r.split()) for r, h in kept)
    return errors / sum(len(r.split()) for r, _ in kept)


def answer_in_reply(reply: str, answers: list[str]) -> bool:
    """A spoken answer is right when a reference answer's words appear, in order and whole, in
    the reply's words (both through Whisper's normaliser, so "four" matches "4")."""
    said = f" {normalize_transcript(reply)} "
    return any(f" {normalize_transcript(a)} " in said for a in answers if normalize_transcript(a))
