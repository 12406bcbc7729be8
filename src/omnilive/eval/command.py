"""The `omnilive eval` subcommand: its flags, and the run.

    omnilive eval mathvista --data testmini.parquet --thinking-budgets 0,256,1024 --out runs/mv
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from omnilive.eval.datasets import TASKS, LayoutError

DEFAULT_BASE_URL = "http://127.0.0.1:8000/v1"  # a local `omnilive serve`


def budgets(text: str) -> list[int | None]:
    """"0,256,1024" → [0, 256, 1024]; "none" stands for no budget field at all."""
    values = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if part.lower() in ("none", "unlimited"):
            values.append(None)
            continue
        if not part.isdigit():
            raise argparse.ArgumentTypeError(f"{part!r} is not a number of tokens (nor 'none')")
        values.append(int(part))
    if not values:
        raise argparse.ArgumentTypeError("give at least one budget")
    return list(dict.fromkeys(values))


def add_eval_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = commands.add_parser("eval", help="score a served model on a local benchmark file",
                                 description="Score an OpenAI-compatible server on MathVista, MMMU, VQA, "
                                             "LibriSpeech or spoken-QA files (local files only).")
    parser.add_argument("task", choices=TASKS)
    parser.add_argument("--data", required=True, type=Path,
                        help="a .parquet/.jsonl file (a LibriSpeech folder for asr)")
    parser.add_argument("--out", required=True, type=Path,
                        help="folder for predictions.jsonl, results.json and the plot; a partly written one resumes")
    parser.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL", DEFAULT_BASE_URL),
                        help=f"the server's /v1 URL (default {DEFAULT_BASE_URL})")
    parser.add_argument("--model", help="model id (default: the server's first model)")
    parser.add_argument("--api-key", default=None, help="bearer key (default: $OMNILIVE_API_KEY, $OPENAI_API_KEY)")
    parser.add_argument("--limit", type=int, help="only the first N items")
    parser.add_argument("--thinking-budgets", type=budgets, default=[None], metavar="0,256,1024",
                        help="thinking budgets to sweep (sent as max_thinking_tokens); default: none sent")
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight (default 1)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed sent with each request (default 0)")
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--max-tokens", type=int, default=512, dest="max_answer_tokens",
                        help="answer tokens allowed on top of the thinking budget (default 512)")
    parser.add_argument("--asr-model", default="whisper-1", help="model name for /v1/audio/transcriptions")
    parser.add_argument("--voice", default="alloy", help="voice of spoken replies (spoken-qa)")
    parser.add_argument("--vqa-metric", choices=["auto", "accuracy", "anls"], default="auto",
                        help="vqa: VQA accuracy, or ANLS (auto: ANLS for DocVQA files, which key on questionId)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def run(args: argparse.Namespace) -> int:
    from omnilive.eval.runner import EvalConfig, EvalError, run_eval

    api_key = args.api_key or os.environ.get("OMNILIVE_API_KEY") or os.environ.get("OPENAI_API_KEY") or "none"
    config = EvalConfig(
        task=args.task, data=args.data, out=args.out, base_url=args.base_url, api_key=api_key, model=args.model,
        limit=args.limit, budgets=args.thinking_budgets, concurrency=args.concurrency, seed=args.seed,
        temperature=args.temperature, max_answer_tokens=args.max_answer_tokens, asr_model=args.asr_model,
        voice=args.voice, vqa_metric=args.vqa_metric, progress=not args.no_progress,
    )
    try:
        document = run_eval(config)
    except LayoutError as e:
        print(f"omnilive eval: wrong data layout: {e}", file=sys.stderr)
        return 2
    except EvalError as e:
        print(f"omnilive eval: {e}", file=sys.stderr)
        return 1
    print(json.dumps({k: document[k] for k in ("task", "model", "results")}, indent=2))
    return 0
