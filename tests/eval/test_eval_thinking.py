"""A thinking-budget sweep end to end: `omnilive eval mmmu --thinking-budgets 0,4,8` against a
server on the tiny random Qwen3 thinking checkpoint (tests/model/qwen3_tiny.py), which thinks
until the engine's budget closes its thoughts, so each budget is spent exactly.
"""

from __future__ import annotations

import struct

import pytest

from omnilive.backends.native_prompt import load_omni_tokenizer
from omnilive.engine.thinking import BUDGET_EXHAUSTED_TEXT
from tests.eval.eval_sets import SUMS, write_mmmu
from tests.eval.test_eval_cli import omnilive_eval, predictions, results
from tests.model.qwen3_tiny import build_tiny_qwen3
from tests.server_process import ServerProcess

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

BUDGETS = (0, 4, 8)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_qwen3(tmp_path_factory.mktemp("qwen3"), seed=3)


@pytest.fixture(scope="module")
def thinking_server(tiny, tmp_path_factory):
    args = ["--model", str(tiny.directory), "--dtype", "float32"]
    with ServerProcess(tmp_path_factory.mktemp("qwen3-data"), api_key="sweep-key", env={"OMNILIVE_THREADS": "1"},
                       args=args) as running:
        yield running


def test_budget_sweep_spends_each_budget_and_plots_the_curve(thinking_server, tiny, tmp_path):
    closing = load_omni_tokenizer(tiny.directory).encode(BUDGET_EXHAUSTED_TEXT)
    data = write_mmmu(tmp_path / "mmmu.parquet", SUMS[:3], with_images=False)  # a text-only model
    out = tmp_path / "sweep"
    omnilive_eval("mmmu", "--data", data, "--out", out, "--thinking-budgets", ",".join(map(str, BUDGETS)),
                  "--max-tokens", len(closing) + 4, "--concurrency", "3", server=thinking_server)

    records = predictions(out)
    assert sorted((r["id"], r["thinking_budget"]) for r in records) == sorted(
        (f"validation_Math_{i}", b) for i in (1, 2, 3) for b in BUDGETS)  # each item once per budget
    spent = {b: {r["reasoning_tokens"] for r in records if r["thinking_budget"] == b} for b in BUDGETS}
    # a budget's own tokens, then the forced closing text up to </think>, count as reasoning
    for budget in BUDGETS[1:]:
        assert spent[budget] == {budget + closing.index(tiny.end_think_id) + 1}, spent
    # budget 0 closes each think block as it opens (the random model may open more in its answer)
    assert max(spent[0]) < min(spent[BUDGETS[1]]), spent

    summary = results(out)
    assert [r["thinking_budget"] for r in summary["results"]] == list(BUDGETS)
    assert all(r["n"] == 3 and 0 <= r["accuracy"] <= 1 for r in summary["results"])
    plot = (out / "accuracy_vs_budget.png").read_bytes()
    assert plot.startswith(b"\x89PNG\r\n\x1a\n")
    width, height = struct.unpack(">II", plot[16:24])
    assert (width, height) == (720, 480)
