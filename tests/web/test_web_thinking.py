"""The thinking budget in the browser, on a model that reasons: a tiny random Qwen3 thinking
checkpoint served by `omnilive serve --model DIR` (tests/model/qwen3_tiny.py: it thinks until
the budget closes its thoughts). The settings' slider sets the budget; the reply shows its
reasoning folded away, says how long it thought against the budget, and answers after it."""

from __future__ import annotations

import pytest

from omnilive.backends.native_prompt import load_omni_tokenizer
from omnilive.engine.thinking import BUDGET_EXHAUSTED_TEXT
from tests.model.qwen3_tiny import build_tiny_qwen3
from tests.server_process import ServerProcess
from tests.web.conftest import WEB_API_KEY, browser_on, needs_browser, screenshot

pytestmark = [pytest.mark.slow, needs_browser]
BUDGET = 6


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_qwen3(tmp_path_factory.mktemp("web-qwen3"), seed=3)


@pytest.fixture(scope="module")
def qwen3_server(tiny, tmp_path_factory):
    args = ["--model", str(tiny.directory), "--dtype", "float32"]
    with ServerProcess(tmp_path_factory.mktemp("web-qwen3-data"), api_key=WEB_API_KEY,
                       env={"OMNILIVE_THREADS": "1", "OMNILIVE_MAX_CONTEXT_TOKENS": "256"}, args=args) as server:
        yield server


@pytest.fixture
def browser(qwen3_server, tmp_path):
    with browser_on(qwen3_server, tmp_path) as opened:
        yield opened


def test_the_thinking_budget_from_the_slider_ends_the_thoughts_and_the_reply_answers(browser, tiny):
    page = browser.open(settings={"thinkingBudget": BUDGET, "temperature": 0})
    page.fill("#message-input", "What is two plus two?")
    page.click("#send-button")
    summary = page.locator(".message.assistant details.reasoning summary")
    summary.filter(has_text="Thought for").wait_for(timeout=60_000)  # the reply has ended
    closing = load_omni_tokenizer(tiny.directory).encode(BUDGET_EXHAUSTED_TEXT)
    thought = BUDGET + closing.index(tiny.end_think_id) + 1  # sampled thinking + the forced closing text
    assert summary.inner_text() == f"Thought for {thought} tokens (budget {BUDGET})"
    summary.click()  # unfold the reasoning
    reasoning = page.locator(".message.assistant .reasoning-text").inner_text()
    assert reasoning.rstrip().endswith(BUDGET_EXHAUSTED_TEXT.split("</think>")[0].strip())
    assert page.locator(".message.assistant .message-body").inner_text().strip()  # an answer after it
    screenshot(page, "10-thinking-budget")
