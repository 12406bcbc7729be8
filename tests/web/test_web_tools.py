"""A function call in a voice chat: the web app shows the call folded ("Called get_weather(...)"),
its result once the client sends one, and the spoken answer after it.

The page's own Realtime connection runs through Playwright's WebSocket routing to the real
server: the test adds a get_weather tool to the session.update the page sends, and answers
the model's call as a tool-running client would (function_call_output, then response.create).
"""

from __future__ import annotations

import json

import pytest

from tests.web.conftest import _spoken_wav, needs_browser, screenshot

pytestmark = [pytest.mark.slow, needs_browser]

TURN_TIMEOUT_MS = 180_000
GET_WEATHER = {"type": "function", "name": "get_weather", "description": "Get the current weather in a city.",
               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
RESULT = {"city": "Tokyo", "temperature_c": 31, "sky": "clear"}


@pytest.fixture(scope="module")
def weather_question_wav(tmp_path_factory):
    return _spoken_wav("What is the weather in Tokyo?", tmp_path_factory.mktemp("tools") / "weather.wav")


class ToolRunner:
    """Sits between the page and the server: offers the tool, runs the call, asks for the answer."""

    def __init__(self, page):
        self.sent_by_page: list[dict] = []
        self.calls: list[dict] = []
        page.route_web_socket("**/v1/realtime*", self.route)

    def route(self, page_side) -> None:
        server_side = page_side.connect_to_server()

        def from_page(message) -> None:
            event = json.loads(message)
            self.sent_by_page.append(event)
            if event["type"] == "session.update":
                event["session"].update(tools=[GET_WEATHER], tool_choice={"type": "function", "name": "get_weather"})
            server_side.send(json.dumps(event))

        def from_server(message) -> None:
            page_side.send(message)
            event = json.loads(message)
            if event["type"] != "response.done":
                return
            for item in event["response"]["output"]:
                if item["type"] == "function_call":
                    self.calls.append(item)
                    server_side.send(json.dumps({"type": "conversation.item.create", "item": {
                        "type": "function_call_output", "call_id": item["call_id"], "output": json.dumps(RESULT)}}))
                    server_side.send(json.dumps({"type": "response.create", "response": {"tool_choice": "none"}}))

        page_side.on_message(from_page)
        server_side.on_message(from_server)


def test_a_voice_turn_that_calls_a_function_shows_the_call_and_its_result(browser, weather_question_wav):
    page = browser.open(microphone_wav=weather_question_wav)
    runner = ToolRunner(page)
    page.click("#mode-voice")
    page.click("#live-start")

    call = page.locator(".message.tool-call")
    call.wait_for(timeout=TURN_TIMEOUT_MS)
    page.wait_for_selector(".message.tool-call[data-state='answered']", timeout=TURN_TIMEOUT_MS)
    summary = call.locator("summary").inner_text()
    assert summary.startswith("Called get_weather({") and summary.endswith("})"), summary
    assert call.locator(".tool-call-result").is_hidden()  # folded until opened
    call.locator("summary").click()
    assert json.loads(call.locator(".tool-call-result").inner_text()) == RESULT
    assert json.loads(call.locator("pre").first.inner_text()) == json.loads(runner.calls[0]["arguments"])

    # the answer after the result is spoken and shown below the call
    page.wait_for_selector(".message.tool-call ~ .message.assistant[data-source='voice'] .message-body:not(:empty)",
                           timeout=TURN_TIMEOUT_MS)
    screenshot(page, "30-voice-tool-call")
    assert len(runner.calls) == 1 and page.locator(".message.tool-call").count() == 1
    assert any(e["type"] == "session.update" for e in runner.sent_by_page)
    page.click("#live-stop")
