"""A bounded schemathesis run over the real server's /openapi.json: no input gives a 5xx, and the
server is alive after it (issue 18: `offset=7468668545912323178496` on the history list was a 500).

Every operation gets schema-valid and schema-breaking cases (schemathesis' positive and negative
modes), sent as an admin user of its own (so its junk stays in its own history). Generation
routes get the served model's name (else every case would stop at 404 model_not_found) and at
most a few tokens, to stay within the time budget. Cases are derandomized: the same run in CI
every time. For a deeper, random run:

    OMNILIVE_FUZZ_EXAMPLES=200 OMNILIVE_FUZZ_RANDOM=1 pytest tests/server/test_fuzz.py
"""

from __future__ import annotations

import os
import time
from collections import Counter

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.generation.modes import GenerationMode

from tests.server.test_users import add_user, unique

EXAMPLES = int(os.environ.get("OMNILIVE_FUZZ_EXAMPLES", "25"))
GENERATION_EXAMPLES = max(2, EXAMPLES // 5)  # these run the model: fewer of them
RANDOM = os.environ.get("OMNILIVE_FUZZ_RANDOM") == "1"
GENERATION_PATHS = ("/v1/chat/completions", "/v1/audio/speech", "/v1/audio/transcriptions")
MAX_TOKENS = 4


def _served_model(case, model_id: str) -> None:
    """Name the served model and keep replies short, where the body says which model."""
    body = case.body
    if not isinstance(body, dict):
        return
    if "model" in body or case.path in GENERATION_PATHS:
        body["model"] = model_id
    for field in ("max_tokens", "max_completion_tokens"):
        if isinstance(body.get(field), int) and body[field] > MAX_TOKENS:
            body[field] = MAX_TOKENS
    if case.path == "/v1/chat/completions" and "max_tokens" not in body and "max_completion_tokens" not in body:
        body["max_tokens"] = MAX_TOKENS
    if isinstance(body.get("input"), str):  # speech: a short text is as good a test as a long one
        body["input"] = body["input"][:200]


@pytest.mark.slow
def test_no_input_makes_a_server_error(server, http, model_id):
    key = add_user(http, unique("fuzzer"), admin=True)
    auth = {"Authorization": f"Bearer {key}"}
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", headers=auth)
    session = requests.Session()
    failures: list[str] = []
    statuses: dict[str, Counter] = {}
    started = time.monotonic()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 20

    for operation in operations:
        generation = operation.path in GENERATION_PATHS
        cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))

        @settings(max_examples=GENERATION_EXAMPLES if generation else EXAMPLES, deadline=None, database=None,
                  derandomize=not RANDOM, phases=[Phase.generate], suppress_health_check=list(HealthCheck))
        @given(cases)
        def send(case) -> None:
            _served_model(case, model_id)
            response = case.call(base_url=server.url, session=session, headers=auth, timeout=120)
            statuses.setdefault(f"{case.method} {case.path}", Counter())[response.status_code] += 1
            if response.status_code >= 500:
                failures.append(f"{response.status_code} for {case.as_curl_command()}\n  → {response.text[:300]}")

        send()

    elapsed = time.monotonic() - started
    print(f"fuzzed {len(operations)} operations in {elapsed:.0f} s")
    for name, counts in sorted(statuses.items()):
        print(f"  {name}: {dict(sorted(counts.items()))}")
    assert not failures, "server errors:\n" + "\n".join(failures)
    assert server.process.poll() is None and http.get("/health").status_code == 200


HUGE = 7468668545912323178496  # past 64 bits: issue 18's offset


@pytest.mark.parametrize("method, path, field", [
    ("GET", "/v1/history/conversations?limit=209&offset={n}", None),
    ("GET", "/v1/history/conversations?limit={n}", None),
    ("POST", "/v1/chat/completions", "seed"),
    ("POST", "/v1/chat/completions", "max_tokens"),
    ("POST", "/v1/chat/completions", "top_logprobs"),
    ("POST", "/v1/realtime/client_secrets", "expires_after"),
    ("POST", "/v1/admin/users", "quotas"),
])
@pytest.mark.parametrize("sign", [1, -1])
def test_integers_past_64_bits_are_refused_not_500(http, model_id, method, path, field, sign):
    n = sign * HUGE
    bodies = {
        "seed": {"model": model_id, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "seed": n},
        "max_tokens": {"model": model_id, "messages": [{"role": "user", "content": "hi"}], "max_tokens": n},
        "top_logprobs": {"model": model_id, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1,
                         "logprobs": True, "top_logprobs": n},
        "expires_after": {"expires_after": {"anchor": "created_at", "seconds": n}},
        "quotas": {"name": unique("big"), "quotas": {"requests_per_minute": n}},
    }
    response = http.request(method, path.format(n=n), json=bodies.get(field))
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["param"]
