"""Runs one evaluation and writes its results: every item at every thinking budget, `concurrency` requests at a time,
each finished prediction appended to predictions.jsonl at once, so a run that stops (Ctrl-C, a
crash, a server error) resumes where it was: records already in `out` are not asked again.
Then results.json (per budget) and, for a sweep, accuracy_vs_budget.png.
"""

from __future__ import annotations

import json
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean, median

from openai import OpenAI

from omnilive.eval.datasets import Item, load_items
from omnilive.eval.scoring_text import word_error_rate
from omnilive.eval.tasks import ASK, BUDGETED, Sampling, score

PREDICTIONS = "predictions.jsonl"
RUN = "run.json"  # what the predictions in this folder answer: a resumed run must ask the same


class EvalError(RuntimeError):
    """A run that cannot go on (a different run's folder, a failed request); said plainly."""


@dataclass
class EvalConfig:
    task: str
    data: Path
    out: Path
    base_url: str = "http://127.0.0.1:8000/v1"
    api_key: str = "none"
    model: str | None = None
    limit: int | None = None
    budgets: list[int | None] = field(default_factory=lambda: [None])
    concurrency: int = 1
    seed: int | None = 0
    temperature: float = 0.0
    max_answer_tokens: int = 512
    asr_model: str = "whisper-1"
    voice: str = "alloy"
    vqa_metric: str = "auto"
    timeout_s: float = 600.0
    progress: bool = True


def read_predictions(path: Path) -> list[dict]:
    """The complete lines of a predictions file; a torn last line (a killed run) is dropped and
    the file rewritten without it."""
    if not path.exists():
        return []
    records, torn = [], False
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            torn = True
    if torn:
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return records


def _check_same_run(out: Path, run: dict) -> None:
    path = out / RUN
    if path.exists():
        before = json.loads(path.read_text())
        changed = [k for k in ("task", "model", "data", "temperature", "seed", "max_answer_tokens")
                   if before.get(k) != run.get(k)]
        if changed and (out / PREDICTIONS).exists():
            details = ", ".join(f"{k}: {before.get(k)!r} → {run.get(k)!r}" for k in changed)
            raise EvalError(f"{out} holds predictions of another run ({details}); use another --out")
    path.write_text(json.dumps(run, indent=2) + "\n")


def _one(client: OpenAI, config: EvalConfig, sampling: Sampling, item: Item, budget: int | None) -> dict:
    answer = ASK[config.task](client, item, budget, sampling)
    record = {"id": item.id, "thinking_budget": budget, **answer}
    record.update(score(config.task, item, record, config.seed, config.vqa_metric))
    return record


def run_eval(config: EvalConfig) -> dict:
    items = load_items(config.task, config.data)[: config.limit]
    budgets = config.budgets if config.task in BUDGETED else [None]
    client = OpenAI(base_url=config.base_url, api_key=config.api_key, max_retries=2, timeout=config.timeout_s)
    model = config.model or _first_model(client, config.base_url)
    sampling = Sampling(model=model, temperature=config.temperature, seed=config.seed,
                        max_answer_tokens=config.max_answer_tokens, asr_model=config.asr_model, voice=config.voice)
    config.out.mkdir(parents=True, exist_ok=True)
    _check_same_run(config.out, {"task": config.task, "model": model, "data": str(config.data.resolve()),
                                 "base_url": config.base_url, "temperature": config.temperature,
                                 "seed": config.seed, "max_answer_tokens": config.max_answer_tokens})
    predictions = config.out / PREDICTIONS
    wanted = {(item.id, budget) for item in items for budget in budgets}
    done = {(r["id"], r["thinking_budget"]): r for r in read_predictions(predictions)}
    todo = [(item, budget) for budget in budgets for item in items if (item.id, budget) not in done]
    _ask_all(client, config, sampling, todo, predictions, initial=len(wanted) - len(todo), total=len(wanted))

    records = [r for key, r in {(r["id"], r["thinking_budget"]): r for r in read_predictions(predictions)}.items()
               if key in wanted]
    results = summarise(config.task, records, budgets)
    document = write_results(config.out, config.task, model, str(config.data), results)
    plot = plot_accuracy_vs_budget(config.out, config.task, model, results)
    return {**document, "plot": str(plot) if plot else None, "asked": len(todo)}


def _first_model(client: OpenAI, base_url: str) -> str:
    try:
        models = client.models.list().data
    except Exception as e:  # connection refused, auth, ...: the openai client's many error types
        raise EvalError(f"cannot list the models at {base_url}: {e}") from e
    if not models:
        raise EvalError(f"{base_url} serves no model; pass --model")
    return models[0].id


def _ask_all(client, config, sampling, todo, predictions: Path, initial: int, total: int) -> None:
    from tqdm import tqdm

    with (open(predictions, "a") as out, ThreadPoolExecutor(max(1, config.concurrency)) as pool,
          tqdm(total=total, initial=initial, desc=config.task, unit="q", disable=not config.progress) as bar):
        pending = {pool.submit(_one, client, config, sampling, item, budget): (item, budget) for item, budget in todo}
        order = {future: n for n, future in enumerate(pending)}
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in sorted(finished, key=lambda f: order[f]):
                    item, budget = pending.pop(future)
                    if future.exception() is not None:
                        raise EvalError(f"item {item.id} (thinking budget {budget}): {future.exception()}; the "
                                        f"{bar.n} answers so far are kept: run again to resume")
                    out.write(json.dumps(future.result()) + "\n")
                    out.flush()
                    bar.update(1)
        finally:
            for future in pending:
                future.cancel()


def _mean(values: list, digits: int = 4):
    values = [v for v in values if v is not None]
    return round(mean(values), digits) if values else None


def summarise(task: str, records: list[dict], budgets: list[int | None]) -> list[dict]:
    """One entry per thinking budget: n and the task's figures."""
    results = []
    for budget in budgets:
        rows = [r for r in records if r["thinking_budget"] == budget]
        if not rows:
            continue
        entry = {"thinking_budget": budget, "n": len(rows)}
        if task == "asr":
            entry["wer"] = round(word_error_rate([r["reference"] for r in rows], [r["prediction"] for r in rows]), 6)
        else:
            entry["accuracy"] = round(mean(r["score"] for r in rows), 6)
            entry["correct"] = sum(bool(r["correct"]) for r in rows)
        entry["mean_reasoning_tokens"] = _mean([r.get("reasoning_tokens") for r in rows], 2)
        entry["mean_latency_s"] = _mean([r.get("latency_s") for r in rows])
        if task == "spoken-qa":
            spoken = [r for r in rows if r.get("speech_transcript") is not None and r["prediction"]]
            entry["speech_wer"] = round(word_error_rate([r["prediction"] for r in spoken],
                                                        [r["speech_transcript"] for r in spoken]), 6) if spoken else None
            ttfa = [r["ttfa_s"] for r in rows if r.get("ttfa_s") is not None]
            entry["median_ttfa_s"] = round(median(ttfa), 4) if ttfa else None
            entry["with_audio"] = len(ttfa)
        results.append(entry)
    return results


def write_results(out: Path, task: str, model: str, data: str, results: list[dict]) -> dict:
    document = {"task": task, "model": model, "data": data, "results": results}
    (out / "results.json").write_text(json.dumps(document, indent=2) + "\n")
    return document


def plot_accuracy_vs_budget(out: Path, task: str, model: str, results: list[dict]) -> Path | None:
    """Accuracy against the thinking budget (each point labelled with the mean reasoning tokens
    spent), when there are at least two numeric budgets."""
    points = [r for r in results if r["thinking_budget"] is not None and "accuracy" in r]
    if len(points) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    points.sort(key=lambda r: r["thinking_budget"])
    budgets = [r["thinking_budget"] for r in points]
    accuracy = [100 * r["accuracy"] for r in points]
    figure, axes = plt.subplots(figsize=(6, 4), dpi=120)
    axes.plot(budgets, accuracy, marker="o")
    for r, x, y in zip(points, budgets, accuracy):
        if r.get("mean_reasoning_tokens") is not None:
            axes.annotate(f"{r['mean_reasoning_tokens']:.0f} reasoning tok", (x, y), textcoords="offset points", xytext=(4, 6),
                          fontsize=8)
    if min(budgets) >= 0 and max(budgets) > 10 * max(1, sorted(budgets)[1]):
        axes.set_xscale("symlog", linthresh=max(1, sorted(budgets)[1]))  # budgets usually grow geometrically
    axes.set_xlabel("thinking budget (max_thinking_tokens)")
    axes.set_ylabel("accuracy (%)")
    axes.set_ylim(-3, 103)
    axes.set_title(f"{task}: {model} (n={points[0]['n']})", fontsize=10)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    path = out / "accuracy_vs_budget.png"
    figure.savefig(path)
    plt.close(figure)
    return path
