"""A WebSocket event fuzzer for the Realtime API: random and mutated client events on one
connection. Every bad event must get an `error` event (or be handled), never close the session
or the server; after each batch the session still answers a session.update.

Mutations are drawn from a seeded generator (the same run in CI every time); for a deeper run:

    OMNILIVE_FUZZ_EVENTS=2000 OMNILIVE_FUZZ_SEED=7 pytest tests/server/test_realtime_fuzz.py
"""

from __future__ import annotations

import base64
import copy
import json
import os
import random

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

EVENTS = int(os.environ.get("OMNILIVE_FUZZ_EVENTS", "240"))
SEED = int(os.environ.get("OMNILIVE_FUZZ_SEED", "18"))
BATCH = 30

SILENCE_20MS = base64.b64encode(bytes(960)).decode()
SEEDS = [
    {"type": "session.update", "session": {"instructions": "Be brief.", "output_modalities": ["text"],
                                           "turn_detection": None}},
    {"type": "session.update", "session": {"audio": {"input": {"format": {"type": "audio/pcm", "rate": 24000},
                                                               "turn_detection": {"type": "server_vad"}}}}},
    {"type": "input_audio_buffer.append", "audio": SILENCE_20MS},
    {"type": "input_audio_buffer.commit"},
    {"type": "input_audio_buffer.clear"},
    {"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                                                  "content": [{"type": "input_text", "text": "Say hi."}]}},
    {"type": "conversation.item.create", "item": {"type": "message", "role": "user", "content": [
        {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}]}},
    {"type": "conversation.item.truncate", "item_id": "item_0", "content_index": 0, "audio_end_ms": 100},
    {"type": "conversation.item.delete", "item_id": "item_0"},
    {"type": "conversation.item.retrieve", "item_id": "item_0"},
    {"type": "response.create", "response": {"max_output_tokens": 2, "output_modalities": ["text"]}},
    {"type": "response.cancel"},
]
ODD_VALUES = [None, True, 0, -1, 2**70, -(2**70), 1e308, -0.5, "", "x" * 5000, "\u0000\ud7ff", [], {}, [None],
              {"type": None}, float("nan"), float("inf")]
RAW_FRAMES = ["not json", "[]", "null", "123", '"text"', '{"type": 5}', '{"type": "no.such.event"}', "{" * 2000,
              b"\xff\xfe\x00", b"", json.dumps({"type": "session.update", "session": "x"})]


def _leaves(value, path=()):
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _leaves(child, (*path, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from _leaves(child, (*path, i))
    if path:
        yield path


def _mutated(rng: random.Random) -> str | bytes:
    if rng.random() < 0.1:
        return rng.choice(RAW_FRAMES)
    event = copy.deepcopy(rng.choice(SEEDS))
    for _ in range(rng.randint(1, 3)):
        paths = list(_leaves(event))
        if not paths:  # everything was deleted
            break
        path = rng.choice(paths)
        parent = event
        for step in path[:-1]:
            parent = parent[step]
        what = rng.random()
        if what < 0.6:
            parent[path[-1]] = rng.choice(ODD_VALUES)
        elif what < 0.8 and isinstance(parent, dict):
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[f"unknown_{rng.randint(0, 9)}"] = rng.choice(ODD_VALUES)
    return json.dumps(event)  # NaN and Infinity as Python writes them: not JSON, sent anyway


def _still_answers(ws, marker: str) -> int:
    """Read up to the answer to a marked session.update; returns how many error events came first."""
    ws.send(json.dumps({"type": "session.update", "session": {"instructions": marker}}))
    errors = 0
    while True:
        event = json.loads(ws.recv(timeout=60))
        errors += event["type"] == "error"
        if event["type"] == "session.updated" and event["session"]["instructions"] == marker:
            return errors


@pytest.mark.slow
def test_random_and_mutated_events_never_break_the_session(server, http):
    rng = random.Random(SEED)
    url = server.url.replace("http", "ws", 1) + "/v1/realtime"
    sent: list[str | bytes] = []
    errors = 0
    with connect(url, additional_headers=server.auth_headers, max_size=None) as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "session.created"
        for batch in range(0, EVENTS, BATCH):
            for _ in range(BATCH):
                sent.append(_mutated(rng))
                ws.send(sent[-1])
            try:
                ws.send(json.dumps({"type": "response.cancel"}))
                errors += _still_answers(ws, f"alive after {batch + BATCH}")
            except ConnectionClosed as closed:
                recent = "\n".join(repr(e)[:200] for e in sent[-BATCH:])
                pytest.fail(f"the session closed ({closed}) after one of:\n{recent}")
    assert errors >= EVENTS // 4, "most mutations should have been refused with an error event"
    assert server.process.poll() is None and http.get("/health").status_code == 200
