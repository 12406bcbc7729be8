"""The embedded default scored with `omnilive eval` on small sets built offline, once per
packaged LLM: the numbers of docs/evals.md.

For each `--llm` a fresh `omnilive serve` (tests/server_process.py), then every task through the
real CLI (`python -m omnilive eval ...`, concurrency 1, greedy, seed 0) on the sets of
tests/eval/eval_sets.py: printed sums (MathVista and MMMU layouts), printed words (TextVQA
jsonl, DocVQA parquet), knowledge + arithmetic questions (MMMU open, text only), espeak speech
(LibriSpeech folder) and spoken questions (spoken-QA, with speech out). Prints a markdown
table; the runs stay under OUT (predictions.jsonl and results.json per task), and a second
invocation resumes them.

    python bench/eval_embedded.py OUT [--llm qwen2.5-coder-0.5b smollm2-135m] [--tasks knowledge asr ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.eval.eval_sets import write_all  # noqa: E402
from tests.server_process import REPO_SRC, ServerProcess  # noqa: E402

# name → (task, data under the sets folder, extra flags)
RUNS = {
    "knowledge": ("mmmu", "knowledge_qa.parquet", ["--max-tokens", "64"]),
    "mathvista-sums": ("mathvista", "mathvista_sums.parquet", ["--max-tokens", "96"]),
    "mmmu-sums": ("mmmu", "mmmu_sums.parquet", ["--max-tokens", "64"]),
    "textvqa-signs": ("vqa", "textvqa_signs/val.jsonl", ["--max-tokens", "32"]),
    "docvqa-signs": ("vqa", "docvqa_signs.parquet", ["--max-tokens", "32"]),
    "asr": ("asr", "LibriSpeech/espeak-clean", []),
    "spoken-qa": ("spoken-qa", "spoken_qa/questions.jsonl", ["--max-tokens", "64"]),
}


def run_task(server: ServerProcess, name: str, sets: Path, out: Path) -> dict:
    task, data, extra = RUNS[name]
    env = {**os.environ, "PYTHONPATH": str(REPO_SRC)}
    command = [sys.executable, "-m", "omnilive", "eval", task, "--data", str(sets / data), "--out", str(out / name),
               "--base-url", f"{server.url}/v1", "--no-progress", *extra]
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / name / "results.json").read_text())["results"][0]


def cell(name: str, result: dict) -> str:
    if name == "asr":
        return f"WER {100 * result['wer']:.1f} % · {result['mean_latency_s']:.1f} s"
    text = f"{100 * result['accuracy']:.0f} % ({result['correct']}/{result['n']}) · {result['mean_latency_s']:.1f} s"
    if name == "spoken-qa":
        text += f" · TTFA {result['median_ttfa_s']:.1f} s · speech WER {100 * result['speech_wer']:.0f} %"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--llm", nargs="+", default=["qwen2.5-coder-0.5b", "smollm2-135m"])
    parser.add_argument("--tasks", nargs="+", default=list(RUNS), choices=list(RUNS))
    args = parser.parse_args()
    sets = args.out / "sets"
    if not sets.exists():
        write_all(sets)
    table = {}
    for llm in args.llm:
        with ServerProcess(args.out / f"server-{llm}", args=["--llm", llm]) as server:
            table[llm] = {name: cell(name, run_task(server, name, sets, args.out / llm)) for name in args.tasks}
            print(llm, json.dumps(table[llm]), flush=True)
    print("\n| set | " + " | ".join(args.llm) + " |\n|---|" + "---|" * len(args.llm))
    for name in args.tasks:
        print(f"| {name} | " + " | ".join(table[llm][name] for llm in args.llm) + " |")


if __name__ == "__main__":
    main()
