"""Signing in to the web app with a user's key: the page shows who is signed in, and each user's
sidebar holds only their own conversations."""

from __future__ import annotations

import httpx
import pytest

from tests.server.test_users import unique
from tests.web.conftest import WEB_API_KEY, needs_browser, screenshot

pytestmark = [pytest.mark.slow, needs_browser]


def test_sign_in_with_a_key_shows_the_user_and_only_their_history(browser, web_server):
    operator = httpx.Client(base_url=web_server.url, headers={"Authorization": f"Bearer {WEB_API_KEY}"})
    ann, ben = unique("ann"), unique("ben")
    keys = {name: operator.post("/v1/admin/users", json={"name": name}).json()["key"] for name in (ann, ben)}
    anns_chat = httpx.post(f"{web_server.url}/v1/history/conversations", json={"title": "Ann's plans"},
                           headers={"Authorization": f"Bearer {keys[ann]}"}).json()

    page = browser.open(api_key=keys[ann])
    page.wait_for_selector(f"#signed-in:text-is('{ann}')", timeout=10_000)
    page.wait_for_selector(".conversation:has-text(\"Ann's plans\")", timeout=10_000)
    screenshot(page, "40-signed-in")

    page.click("#signed-in")  # opens Settings, where the key goes
    page.fill("#setting-key", keys[ben])
    page.click("#settings-dialog button[type=submit]")
    page.wait_for_selector(f"#signed-in:text-is('{ben}')", timeout=10_000)
    page.wait_for_selector(".conversation:has-text(\"Ann's plans\")", state="detached", timeout=10_000)
    assert anns_chat["id"] not in page.content()
    screenshot(page, "41-signed-in-as-another")
