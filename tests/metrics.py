"""Reading the test server's Prometheus /metrics, for checks that work stopped."""

from __future__ import annotations

import time


def metric(http, name: str) -> float:
    """The sum of every sample of `name` (a bare name, or one with a label selector)."""
    lines = [line for line in http.get("/metrics").text.splitlines() if line.startswith((name + " ", name + "{"))]
    return sum(float(line.split()[-1]) for line in lines)


def wait_until_idle(http, timeout_s: float = 15.0) -> float:
    """The running-requests gauge, once it is 0 or the time is up."""
    deadline = time.monotonic() + timeout_s
    while (running := metric(http, "omnilive_requests_running")) > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    return running
