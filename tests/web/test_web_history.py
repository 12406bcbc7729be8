"""The history sidebar: conversations listed, renamed, deleted and reopened, also after the
server restarts; and the phone-sized layout."""

from __future__ import annotations

import pytest

from tests.web.conftest import needs_browser, screenshot

pytestmark = [pytest.mark.slow, needs_browser]


def _send(page, text: str) -> None:
    page.fill("#message-input", text)
    page.press("#message-input", "Enter")
    page.wait_for_selector("#app[data-busy='true']", state="attached", timeout=10_000)
    page.wait_for_selector("#app[data-busy='false']", state="attached", timeout=180_000)


def test_history_survives_a_restart_and_can_be_renamed_and_deleted(browser, web_server):
    page = browser.open()
    _send(page, "What is the capital of Italy?")
    first_reply = page.locator(".message.assistant .message-body").last.inner_text()
    page.click("#new-chat")
    _send(page, "Name a fruit that is yellow.")
    page.wait_for_function("document.querySelectorAll('.conversation').length >= 2", timeout=10_000)

    web_server.stop()
    web_server.start()

    page.goto(web_server.url + "/")  # a fresh load: everything comes from the server's store
    page.wait_for_selector("#app[data-ready='true']")
    italy = page.locator(".conversation", has_text="capital of Italy")
    italy.locator(".conversation-open").click()
    page.wait_for_selector(".message.assistant", timeout=10_000)
    assert page.locator(".message.user .message-body").first.inner_text() == "What is the capital of Italy?"
    assert page.locator(".message.assistant .message-body").first.inner_text() == first_reply
    assert page.locator("#chat-title").inner_text() == "What is the capital of Italy?"
    screenshot(page, "20-reopened-after-restart")

    italy.locator(".conversation-rename").click()
    page.keyboard.press("Control+A")
    page.keyboard.type("Italian geography")
    page.keyboard.press("Enter")
    page.wait_for_selector(".conversation-open:text-is('Italian geography')", timeout=10_000)
    assert page.locator("#chat-title").inner_text() == "Italian geography"

    renamed = page.locator(".conversation", has_text="Italian geography")
    renamed.locator(".conversation-delete").click()
    renamed.locator(".conversation-delete.armed").click()  # the second click confirms
    page.wait_for_selector(".conversation:has-text('Italian geography')", state="detached", timeout=10_000)
    assert page.locator(".welcome").is_visible() and page.locator("#chat-title").inner_text() == "New chat"
    page.reload()
    page.wait_for_selector("#app[data-ready='true']")
    assert page.locator(".conversation", has_text="Italian geography").count() == 0
    assert page.locator(".conversation", has_text="yellow").count() == 1


def test_phone_layout_and_keyboard_order(browser):
    page = browser.open(viewport={"width": 390, "height": 844})
    assert page.locator("#sidebar").evaluate("el => el.getBoundingClientRect().right") <= 0  # tucked away
    screenshot(page, "21-phone")
    page.click("#open-sidebar")
    page.wait_for_function("document.getElementById('sidebar').getBoundingClientRect().left >= 0")
    assert page.evaluate("document.activeElement.id") == "new-chat"
    screenshot(page, "22-phone-sidebar")
    page.keyboard.press("Escape")
    page.wait_for_function("document.getElementById('sidebar').getBoundingClientRect().right <= 0")

    # every control is reachable with Tab and has an accessible name
    unnamed = page.evaluate("""() => [...document.querySelectorAll('button, select, textarea, input:not([type=file])')]
        .filter(el => el.offsetParent !== null)
        .filter(el => !(el.getAttribute('aria-label') || el.labels?.length || el.textContent.trim()))
        .map(el => el.outerHTML.slice(0, 80))""")
    assert unnamed == []
    page.click("#message-input")
    page.keyboard.type("hello")
    focus_order = []
    for key in ("Shift+Tab", "Tab", "Tab"):
        page.keyboard.press(key)
        focus_order.append(page.evaluate("document.activeElement.id"))
    assert focus_order == ["file-picker", "message-input", "send-button"]
