"""Voice and video chat in the browser over /v1/realtime, with Chromium's fake microphone
playing an espeak-ng question and its fake camera showing a printed sign."""

from __future__ import annotations

import pytest

from tests.speech_helpers import wer
from tests.web.conftest import SIGN_WORD, app_state, needs_browser, say, screenshot

pytestmark = [pytest.mark.slow, needs_browser]

TURN_TIMEOUT_MS = 120_000


def _wait_voice_turn(page) -> tuple[str, str]:
    """The user's transcript and the reply's whole transcript, once the reply has played a while
    and ended (its first words are spoken, and shown, before the rest is written)."""
    page.wait_for_selector(".message.user[data-source='voice']:not(.pending)", timeout=TURN_TIMEOUT_MS)
    page.wait_for_function("Number(document.getElementById('app').dataset.audioPlayedMs) > 500",
                           timeout=TURN_TIMEOUT_MS)
    page.wait_for_selector(".message.assistant[data-source='voice']:not(.pending) .message-body:not(:empty)",
                           timeout=TURN_TIMEOUT_MS)
    heard = page.locator(".message.user[data-source='voice'] .message-body").first.inner_text()
    said = page.locator(".message.assistant[data-source='voice'] .message-body").first.inner_text()
    return heard, said


def test_voice_chat_hears_the_question_and_speaks_the_answer(browser, web_assets):
    page = browser.open(microphone_wav=web_assets.spider_question_wav)
    page.click("#mode-voice")
    assert page.locator("#live-panel").is_visible() and page.locator("#camera-preview").is_hidden()
    page.click("#live-start")
    page.wait_for_function("['listening', 'user-speaking'].includes(document.getElementById('app').dataset.liveState)",
                           timeout=20_000)
    screenshot(page, "10-voice-listening")

    heard, said = _wait_voice_turn(page)
    screenshot(page, "11-voice-reply")
    # synthetic speech through Chromium's capture (echo cancellation, gain control) and Whisper
    # base: one word of seven may be misheard ("legs" → "lands" seen here)
    assert wer("How many legs does a spider have?", heard) <= 0.15, heard
    assert said.strip()
    assert int(app_state(page)["audioPlayedMs"]) > 500

    page.click("#live-mute")
    assert page.locator("#live-mute").get_attribute("aria-pressed") == "true"
    assert "(muted)" in page.locator("#live-status").inner_text()
    page.click("#live-stop")
    page.wait_for_function("document.getElementById('app').dataset.liveState === 'idle'")

    # both sides of the spoken turn were saved with the conversation
    page.reload()
    page.wait_for_selector("#app[data-ready='true']")
    page.wait_for_selector(".message.assistant", timeout=10_000)
    assert "spider" in page.locator(".message.user .message-body").first.inner_text().lower()


def test_talking_over_the_reply_stops_it(browser, web_assets):
    """Barge-in: the story is cut where the user starts talking, and the server is told."""
    # greedy, set as a user would in Settings: the same long story each run
    page = browser.open(spoken_clips={"story": web_assets.story_request_wav, "stop": web_assets.interruption_wav},
                        settings={"temperature": 0})
    truncations = []
    page.on("websocket", lambda ws: ws.on(
        "framesent", lambda frame: truncations.append(frame) if "conversation.item.truncate" in frame else None))
    page.click("#mode-voice")
    page.click("#live-start")
    page.wait_for_function("document.getElementById('app').dataset.liveState === 'listening'", timeout=20_000)
    say(page, "story")
    # as a person does: talk once the reply is heard, however long it took to start
    page.wait_for_function("Number(document.getElementById('app').dataset.audioPlayedMs) > 0", timeout=TURN_TIMEOUT_MS)
    say(page, "stop", wait=False)  # the cut is checked while the user still talks, before any answer to it
    page.wait_for_function("document.getElementById('app').dataset.bargeIns === '1'", timeout=TURN_TIMEOUT_MS)
    played_at_cut = int(app_state(page)["audioPlayedMs"])
    page.wait_for_timeout(500)
    assert int(app_state(page)["audioPlayedMs"]) == played_at_cut  # playback stopped at once
    assert played_at_cut > 0 and len(truncations) == 1
    assert f'"audio_end_ms":{played_at_cut}' in truncations[0].replace(" ", "")
    assert page.locator(".message.assistant .message-status").first.inner_text().startswith("Interrupted after")
    screenshot(page, "15-barge-in")
    # the interruption is the next turn
    page.wait_for_selector(".message.user[data-source='voice']:not(.pending) >> nth=1", timeout=TURN_TIMEOUT_MS)
    interruption = page.locator(".message.user .message-body").nth(1).inner_text().lower()
    assert any(word in interruption for word in ("stop", "enough", "thank")), interruption
    page.click("#live-stop")


def test_video_chat_sends_camera_frames_that_the_answer_uses(browser, web_assets):
    # greedy, set as a user would in Settings: sampled answers sometimes misspell the word
    page = browser.open(microphone_wav=web_assets.sign_question_wav, camera_y4m=web_assets.sign_y4m,
                        settings={"temperature": 0})
    page.click("#mode-video")
    page.click("#live-start")
    page.wait_for_function("document.getElementById('camera-preview').videoWidth > 0", timeout=20_000)
    screenshot(page, "12-video-preview")

    heard, said = _wait_voice_turn(page)
    screenshot(page, "13-video-reply")
    assert "password" in heard.lower(), heard
    assert int(app_state(page)["framesSent"]) >= 1
    assert SIGN_WORD.lower() in said.lower(), said
    page.click("#live-stop")


def test_microphone_refused_is_explained(browser, web_assets):
    page = browser.open()
    # what a browser does when the user blocks the microphone
    page.evaluate("""() => {
        navigator.mediaDevices.getUserMedia = async () => { throw new DOMException('Permission denied', 'NotAllowedError'); };
    }""")
    page.click("#mode-voice")
    page.click("#live-start")
    page.wait_for_selector("#error-banner:not([hidden])", timeout=10_000)
    assert "denied" in page.locator("#error-text").inner_text()
    assert app_state(page)["liveState"] == "idle" and page.locator("#live-start").is_enabled()
    screenshot(page, "14-mic-denied")
