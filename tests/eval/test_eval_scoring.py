"""Our scoring against lmms-eval's own functions on the same replies: equal figures.

lmms-eval (0.7.3) is the reference harness: its VQA answer processor and TextVQA accuracy, its
MMMU parsers and checks, its MathVista normalisation and comparison, its LibriSpeech WER. The
MathVista *extraction* differs on purpose (the reference asks a GPT judge; ours is rule-based), so
it is compared only where the reference extracts without a judge, and checked on known replies.
ANLS lives in lmms-eval's metrics module, which imports its model registry; it is checked on
values worked out from the published formula instead.
"""

from __future__ import annotations

import random
from statistics import mean

import pytest

from omnilive.eval import scoring_choice as choice
from omnilive.eval import scoring_text as text
from tests.eval.lmms_reference import quiet, reference

VQA_REPLIES = [
    "The Cat.", "two dogs", "dont know", "yes, it is", "3.5", "1,000", "a-b c", "Couldnt've", "its 10 o'clock!",
    "somebody'd", "lets go", "Coca-Cola", "no", "No.", "  STOP\n", "hes here", "the (red) car", "it's 5:30 p.m.",
    "ten", "x/y", "#1", "a", "The answer is 42?", "wont", "yall'd've", "e.g. this", "1.5.", "$20",
]


def test_vqa_answer_normalisation_equals_lmms_eval():
    processor = reference("lmms_eval.tasks._task_utils.vqa_eval_metric").EvalAIAnswerProcessor()
    for reply in VQA_REPLIES:
        assert text.normalize_vqa_answer(reply) == processor(reply), reply
    assert len(text.CONTRACTIONS) >= 115


def test_vqa_accuracy_equals_lmms_eval_textvqa():
    textvqa = reference("lmms_eval.tasks.textvqa.utils")
    answers = ["stop", "stop", "Stop.", "stop sign", "stop", "halt", "STOP", "stop", "the stop", "stop"]
    cases = [("stop", answers), ("Stop sign", answers), ("halt", answers), ("go", answers),
             ("two", ["2", "2", "two", "3"]), ("coca cola", ["coca-cola", "coca cola", "coke"])]
    ours, theirs = [], []
    for reply, golds in cases:
        expected = quiet(textvqa.textvqa_process_results, {"question_id": 1, "answers": list(golds)}, [reply])
        ours.append(text.vqa_accuracy(reply, golds))
        theirs.append(expected["exact_match"])
        assert ours[-1] == pytest.approx(theirs[-1]), (reply, golds)
    assert mean(ours) == pytest.approx(mean(theirs))
    assert text.vqa_accuracy("x", []) == 0.0  # (the reference fails on a question without answers)
    assert text.vqa_accuracy("stop", answers) == 1.0 and text.vqa_accuracy("halt", answers) == pytest.approx(0.3)


def test_anls_follows_the_published_formula():
    assert text.anls("Hello", ["hello"]) == 1.0  # case and spacing do not count
    assert text.anls(" new  york ", ["New York"]) == 1.0
    assert text.anls("kitten", ["sitting"]) == pytest.approx(1 - 3 / 7)  # 3 edits over the longer length
    assert text.anls("abc", ["xyz"]) == 0.0  # similarity under 0.5 → 0
    assert text.anls("1998", ["1999", "nineteen"]) == pytest.approx(0.75)  # the closest answer counts
    assert text.anls("", [""]) == 1.0


MMMU_OPTIONS = ["12 cm", "15 cm", "20 cm", "25 cm"]
MMMU_CHOICE_REPLIES = [
    "B", "(C)", "The answer is (D).", "A. 12 cm", "I think it is C because the side is 20 cm long.",
    "Between (A) and (B), (B) is right", "Answer: D", "the length is 25 cm so that is the one we pick",
    "C.", "It's B or C, I choose C ", "A B", "(A) (C)",
]
MMMU_OPEN_REPLIES = [
    "42", "The answer is 42.", "So the total is 1,234 dollars", "x = 3.14159", "therefore the result is blue",
    "It is 6.0e3 joules", "Thus the speed is 12.5 m/s.\nFinal answer: 12.5", "red", "The value could be -7",
]


def test_mmmu_parsing_and_checks_equal_lmms_eval():
    mmmu = reference("lmms_eval.tasks.mmmu.utils")
    index2ans, letters = mmmu.get_multi_choice_info(MMMU_OPTIONS)
    for reply in MMMU_CHOICE_REPLIES:
        ours = choice.parse_mmmu_choice(reply, MMMU_OPTIONS, random.Random(0))
        assert ours == mmmu.parse_multi_choice_response(reply, letters, index2ans), reply
        for gold in ("A", "C", ["B", "C"]):
            assert choice.mmmu_choice_correct(gold, ours) == mmmu.eval_multi_choice(gold, ours)
    for reply in MMMU_OPEN_REPLIES:
        ours = choice.parse_mmmu_open(reply)
        theirs = mmmu.parse_open_response(reply)
        assert sorted(map(str, ours)) == sorted(map(str, theirs)), reply
        for gold in ("42", "1234", "3.14", "blue", "6000", "12.5", "Red", "-7", ["7", "-7"]):
            assert choice.mmmu_open_correct(gold, ours) == mmmu.eval_open(gold, theirs), (reply, gold)


def test_mmmu_without_a_letter_guesses_reproducibly():
    picks = {choice.parse_mmmu_choice("no idea", MMMU_OPTIONS, random.Random(f"7:{i}")) for i in range(40)}
    assert picks == {"A", "B", "C", "D"}
    assert (choice.parse_mmmu_choice("no idea", MMMU_OPTIONS, random.Random("7:x"))
            == choice.parse_mmmu_choice("no idea", MMMU_OPTIONS, random.Random("7:x")))


MATHVISTA_PROBLEMS = [
    # (reply, question_type, answer_type, choices, precision, answer)
    ("B", "multi_choice", "text", ["3", "4", "5"], None, "4"),
    ("4", "multi_choice", "text", ["3", "4", "5"], None, "4"),
    ("The answer is (C).", "multi_choice", "text", ["3", "4", "5"], None, "5"),
    ("Looking at the figure, the answer is C", "multi_choice", "text", ["red", "green", "blue"], None, "blue"),
    ("A triangle has three sides, so the answer is B.", "multi_choice", "text", ["2", "3"], None, "3"),
    ("The shape is green.", "multi_choice", "text", ["red", "green", "blue"], None, "green"),
    ("12", "free_form", "integer", [], None, "12"),
    ("The sum is 7 + 5 = 12.", "free_form", "integer", [], None, "12"),
    ("Answer: 1,024", "free_form", "integer", [], None, "1024"),
    ("3.14159", "free_form", "float", [], 2, "3.14"),
    ("The ratio is about 0.667, so the answer is 0.67", "free_form", "float", [], 2, "0.67"),
    ("It is 2.5", "free_form", "float", [], 1, "2.5"),
    ('The answer is "[1, 2, 3]".', "free_form", "list", [], None, "[1, 2, 3]"),
    ("The coordinates are [2, 5]", "free_form", "list", [], None, "[2, 5]"),
    ("I cannot tell", "free_form", "integer", [], None, "3"),
]


def test_mathvista_extraction_of_known_replies():
    for reply, question_type, answer_type, choices, precision, answer in MATHVISTA_PROBLEMS[:-1]:
        extracted = choice.extract_mathvista(reply, question_type, answer_type, choices)
        normalized = choice.normalize_mathvista(extracted, choices, question_type, answer_type, precision)
        assert choice.mathvista_equal(normalized, answer), (reply, extracted, normalized)
    reply, question_type, answer_type, choices, precision, answer = MATHVISTA_PROBLEMS[-1]
    extracted = choice.extract_mathvista(reply, question_type, answer_type, choices)
    assert choice.normalize_mathvista(extracted, choices, question_type, answer_type, precision) is None


def test_mathvista_normalisation_and_comparison_equal_lmms_eval():
    evaluator = reference("lmms_eval.tasks.mathvista.mathvista_evals").MathVistaEvaluator()
    for reply, question_type, answer_type, choices, precision, answer in MATHVISTA_PROBLEMS:
        extracted = choice.extract_mathvista(reply, question_type, answer_type, choices)
        ours = choice.normalize_mathvista(extracted, choices, question_type, answer_type, precision)
        theirs = evaluator.normalize_extracted_answer(extracted, choices, question_type, answer_type, precision or 0)
        assert ours == theirs, reply
        assert choice.mathvista_equal(ours, answer) == evaluator.safe_equal(theirs, answer)
        problem = {"question_type": question_type, "answer_type": answer_type, "choices": choices, "query": ""}
        if reply in choices or _bare_number(reply) or reply.startswith('The answer is "'):
            # the replies the reference extracts without its judge: the same extraction
            assert extracted == evaluator.extract_answer(reply, problem, quick_extract=True), reply


def _bare_number(reply: str) -> bool:
    try:
        float(reply)
        return True
    except ValueError:
        return False


LIBRISPEECH = [
    ("HE HOPED THERE WOULD BE STEW FOR DINNER TURNIPS AND CARROTS", "He hoped there would be stew for dinner, turnips and carrots."),
    ("MISTER QUILTER IS THE APOSTLE OF THE MIDDLE CLASSES", "Mr. Quilter is the apostle of the middle classes!"),
    ("THE COLOUR OF THE SKY", "the color of sky"),
    ("IT COST TWENTY DOLLARS", "It cost $20."),
    ("NOTHING WAS HEARD", ""),
]


def test_wer_equals_lmms_eval_librispeech():
    librispeech = reference("lmms_eval.tasks.librispeech.utils")
    refs, hyps = [r for r, _ in LIBRISPEECH], [h for _, h in LIBRISPEECH]
    theirs = quiet(librispeech.compute_wer, [librispeech.remove_sp(r, "en") for r in refs],
                   [librispeech.remove_sp(h, "en") for h in hyps], "en")
    assert text.word_error_rate(refs, hyps) == pytest.approx(theirs)
    assert 0.1 < theirs < 0.5
    for r, h in LIBRISPEECH:  # and one pair at a time
        assert text.word_error_rate([r], [h]) == pytest.approx(
            quiet(librispeech.compute_wer, [librispeech.remove_sp(r, "en")], [librispeech.remove_sp(h, "en")], "en"))


def test_spoken_answers_match_whole_words():
    assert text.answer_in_reply("The answer is four.", ["4"])
    assert text.answer_in_reply("Paris is the capital of France.", ["Paris"])
    assert not text.answer_in_reply("It is fourteen.", ["4"])
    assert not text.answer_in_reply("Sydney.", ["Canberra"])
