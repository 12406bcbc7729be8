"""results.json and accuracy_vs_budget.png from the prediction records."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean, median

from omnilive.eval.scoring_text import word_error_rate


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
