"""`python -m omnilive eval ...` as a user runs it, against the real embedded default server
(the session's `server` fixture), on tiny sets built offline in each public layout.

The figures are the model's, so the checks are on the harness: every item answered once per
budget, ids and fields as documented, scores that agree with rescoring the raw replies, resume
that asks only what is missing. Where the embedded default is reliable (printed words read by
OCR, espeak speech through Whisper) its quality is checked too. And the figures of these runs
equal lmms-eval's scoring of the same predictions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from omnilive.eval import scoring_choice as choice
from omnilive.eval import scoring_text
from omnilive.eval.datasets import load_items
from omnilive.eval.tasks import score
from tests.eval.eval_sets import (SIGNS, SUMS, write_docvqa, write_librispeech, write_mathvista, write_mmmu,
                                  write_spoken_qa, write_textvqa)
from tests.eval.lmms_reference import quiet, reference
from tests.server_process import REPO_SRC
from tests.speech_helpers import needs_speech_tools

pytestmark = pytest.mark.slow


def omnilive_eval(*args, server=None, check=True) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "omnilive", "eval", *map(str, args), "--no-progress"]
    if server is not None:
        command += ["--base-url", f"{server.url}/v1", "--api-key", server.api_key]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_SRC), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def predictions(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def test_a_file_in_the_wrong_layout_is_a_clear_error(tmp_path):
    mmmu = write_mmmu(tmp_path / "mmmu.parquet", SUMS[:1])
    done = omnilive_eval("mathvista", "--data", mmmu, "--out", tmp_path / "out", check=False)
    assert done.returncode == 2
    assert "wrong data layout" in done.stderr and "not a MathVista file" in done.stderr
    assert "decoded_image" in done.stderr and "pid" in done.stderr  # what is missing
    assert "Traceback" not in done.stderr

    folder = omnilive_eval("asr", "--data", mmmu, "--out", tmp_path / "out", check=False)
    assert folder.returncode == 2 and "LibriSpeech folder" in folder.stderr
    (tmp_path / "bad.jsonl").write_text('{"question": "q", "answers": ["a"], "image": "x.png"}\nnot json\n')
    broken = omnilive_eval("vqa", "--data", tmp_path / "bad.jsonl", "--out", tmp_path / "out", check=False)
    assert broken.returncode == 2 and "bad.jsonl:2: not a JSON line" in broken.stderr
    assert not (tmp_path / "out" / "predictions.jsonl").exists()


def test_a_failed_request_stops_the_run_and_keeps_the_answers(server, tmp_path):
    data = write_textvqa(tmp_path / "textvqa" / "val.jsonl", SIGNS[:2])
    (tmp_path / "textvqa" / "images" / "sign_1.png").write_bytes(b"not an image at all")
    out = tmp_path / "out"
    done = omnilive_eval("vqa", "--data", data, "--out", out, "--max-tokens", "16", server=server, check=False)
    assert done.returncode == 1, done.stderr
    assert "item 101" in done.stderr and "run again to resume" in done.stderr and "Traceback" not in done.stderr
    assert [r["id"] for r in predictions(out)] == ["100"]  # the answer before the failure is kept

    unreachable = omnilive_eval("vqa", "--data", data, "--out", tmp_path / "other", "--base-url",
                                "http://127.0.0.1:9/v1", check=False)
    assert unreachable.returncode == 1 and "cannot list the models at http://127.0.0.1:9/v1" in unreachable.stderr


@pytest.fixture(scope="module")
def textvqa_run(server, tmp_path_factory):
    """A TextVQA run stopped after 2 of 3 items, with a torn line, then resumed."""
    root = tmp_path_factory.mktemp("textvqa")
    data, out = write_textvqa(root / "textvqa" / "val.jsonl", SIGNS[:3]), root / "run"
    omnilive_eval("vqa", "--data", data, "--out", out, "--limit", "2", "--max-tokens", "32", server=server)
    first = (out / "predictions.jsonl").read_text()
    with open(out / "predictions.jsonl", "a") as torn:  # as a run killed mid-write leaves it
        torn.write('{"id": "102", "thinking_bud')
    omnilive_eval("vqa", "--data", data, "--out", out, "--max-tokens", "32", server=server)
    return data, out, first


@pytest.fixture(scope="module")
def parquet_runs(server, tmp_path_factory):
    root = tmp_path_factory.mktemp("parquet")
    runs = {"mathvista": write_mathvista(root / "testmini.parquet", SUMS[:2]),
            "mmmu": write_mmmu(root / "validation.parquet", SUMS[:2])}
    for task, data in runs.items():
        omnilive_eval(task, "--data", data, "--out", root / task, "--max-tokens", "64", server=server)
    return {task: (data, root / task) for task, data in runs.items()}


@pytest.fixture(scope="module")
def asr_run(server, tmp_path_factory):
    root = tmp_path_factory.mktemp("asr")
    data = write_librispeech(root / "LibriSpeech" / "test-clean", ASR_SENTENCES)
    omnilive_eval("asr", "--data", data, "--out", root / "out", "--thinking-budgets", "0,64", server=server)
    return data, root / "out"


ASR_SENTENCES = ["the cat sat on the mat", "please call me when you get home"]


def test_textvqa_printed_words_and_resume(server, textvqa_run):
    data, out, first = textvqa_run
    assert [json.loads(line)["id"] for line in first.splitlines()] == ["100", "101"]
    records = predictions(out)
    assert (out / "predictions.jsonl").read_text().startswith(first)  # the first two were not asked again
    assert [r["id"] for r in records] == ["100", "101", "102"]  # the torn line dropped, 102 asked
    items = {item.id: item for item in load_items("vqa", data)}
    for record in records:
        assert record["thinking_budget"] is None and record["metric"] == "vqa_accuracy"
        assert record["score"] == scoring_text.vqa_accuracy(record["prediction"], items[record["id"]].answers)
        assert record["latency_s"] > 0 and record["reasoning_tokens"] == 0  # not a thinking model
    summary = results(out)
    assert summary["task"] == "vqa" and summary["model"] == "omnilive-small"
    (entry,) = summary["results"]
    assert entry["n"] == 3 and entry["accuracy"] == pytest.approx(sum(r["score"] for r in records) / 3, abs=1e-6)
    assert entry["accuracy"] >= 2 / 3, records  # OCR reads large printed words

    other = omnilive_eval("vqa", "--data", data, "--out", out, "--model", "another-model", server=server, check=False)
    assert other.returncode == 1 and "holds predictions of another run" in other.stderr


def test_mathvista_and_mmmu_parquet(parquet_runs):
    for task, (data, out) in parquet_runs.items():
        records = predictions(out)
        items = {item.id: item for item in load_items(task, data)}
        assert sorted(r["id"] for r in records) == sorted(items)
        for record in records:
            item = items[record["id"]]
            rescored = score(task, item, {"prediction": record["prediction"]}, seed=0)
            assert (record["extracted"], record["correct"]) == (rescored["extracted"], rescored["correct"])
            if item.meta.get("question_type") == "multi_choice" or item.meta.get("multiple_choice"):
                assert record["extracted"] in ("A", "B", "C", "D")  # options: the letter
        (entry,) = results(out)["results"]
        assert entry["n"] == 2 and entry["accuracy"] == sum(r["correct"] for r in records) / 2
    assert [r["id"] for r in predictions(parquet_runs["mathvista"][1])] == ["1", "2"]  # MathVista's pid


@needs_speech_tools  # the asr run
def test_the_runs_score_as_lmms_eval_scores_the_same_predictions(textvqa_run, parquet_runs, asr_run):
    """The replies the server actually gave, rescored by lmms-eval's own functions."""
    textvqa = reference("lmms_eval.tasks.textvqa.utils")
    data, out, _ = textvqa_run
    items = {item.id: item for item in load_items("vqa", data)}
    theirs = [quiet(textvqa.textvqa_process_results, {"question_id": r["id"], "answers": list(items[r["id"]].answers)},
                    [r["prediction"]])["exact_match"] for r in predictions(out)]
    assert results(out)["results"][0]["accuracy"] == pytest.approx(sum(theirs) / len(theirs), abs=1e-6)

    mmmu = reference("lmms_eval.tasks.mmmu.utils")
    data, out = parquet_runs["mmmu"]
    items = {item.id: item for item in load_items("mmmu", data)}
    for record in predictions(out):
        item = items[record["id"]]
        if item.meta["multiple_choice"]:
            index2ans, letters = mmmu.get_multi_choice_info(item.meta["options"])
            parsed = mmmu.parse_multi_choice_response(record["prediction"], letters, index2ans)
            assert record["correct"] == mmmu.eval_multi_choice(item.answers[0], parsed)
        else:
            assert record["correct"] == mmmu.eval_open(item.answers[0], mmmu.parse_open_response(record["prediction"]))

    evaluator = reference("lmms_eval.tasks.mathvista.mathvista_evals").MathVistaEvaluator()
    data, out = parquet_runs["mathvista"]
    items = {item.id: item for item in load_items("mathvista", data)}
    for record in predictions(out):
        meta = items[record["id"]].meta
        extraction = choice.extract_mathvista(record["prediction"], meta["question_type"], meta["answer_type"],
                                              meta["choices"])  # the judge-free extraction (docs/evals.md)
        normalized = evaluator.normalize_extracted_answer(extraction, meta["choices"], meta["question_type"],
                                                          meta["answer_type"], meta["precision"] or 0)
        assert record["correct"] == evaluator.safe_equal(normalized, items[record["id"]].answers[0])

    librispeech = reference("lmms_eval.tasks.librispeech.utils")
    _, out = asr_run
    records = predictions(out)
    theirs = quiet(librispeech.compute_wer, [librispeech.remove_sp(s.upper(), "en") for s in ASR_SENTENCES],
                   [librispeech.remove_sp(r["prediction"], "en") for r in records], "en")
    assert results(out)["results"][0]["wer"] == pytest.approx(theirs, abs=1e-6)


def test_docvqa_is_scored_with_anls(server, tmp_path):
    data = write_docvqa(tmp_path / "docvqa.parquet", SIGNS[:2])
    omnilive_eval("vqa", "--data", data, "--out", tmp_path / "out", "--max-tokens", "32", server=server)
    records = predictions(tmp_path / "out")
    assert {r["metric"] for r in records} == {"anls"}
    for record, word in zip(records, SIGNS):
        assert record["score"] == scoring_text.anls(record["prediction"], [word, word.lower()])


@needs_speech_tools
def test_asr_on_a_librispeech_folder(asr_run):
    _, out = asr_run
    records = predictions(out)
    assert [r["id"] for r in records] == ["1089-134686-0000", "1089-134686-0001"]  # utterance ids
    assert {r["thinking_budget"] for r in records} == {None}  # transcription has no thinking
    (entry,) = results(out)["results"]
    assert set(entry) >= {"thinking_budget", "n", "wer"} and "accuracy" not in entry
    expected = scoring_text.word_error_rate([s.upper() for s in ASR_SENTENCES], [r["prediction"] for r in records])
    assert entry["wer"] == pytest.approx(expected, abs=1e-6) and entry["wer"] < 0.35


@needs_speech_tools
def test_spoken_qa_scores_the_answer_its_speech_and_first_audio(server, tmp_path):
    data = write_spoken_qa(tmp_path / "spoken" / "questions.jsonl", [("What is the capital of France?", ["Paris"])])
    out = tmp_path / "out"
    omnilive_eval("spoken-qa", "--data", data, "--out", out, "--max-tokens", "48", server=server)
    (record,) = predictions(out)
    assert record["prediction"] and record["speech_transcript"] and record["speech_s"] > 0.5
    assert 0 < record["ttft_s"] <= record["ttfa_s"] <= record["latency_s"]
    assert record["correct"] == scoring_text.answer_in_reply(record["prediction"], ["Paris"])
    assert record["speech_wer"] < 0.3, record  # hibari's speech, heard back by Whisper
    (entry,) = results(out)["results"]
    assert entry["with_audio"] == 1 and entry["median_ttfa_s"] == record["ttfa_s"]
    assert entry["speech_wer"] == record["speech_wer"]
