"""Prometheus metrics, one registry per app (so tests can build several apps in one process).

`MetricsMiddleware` counts every HTTP request by route template and status, and times it to
the end of its body (a streamed completion counts until its last chunk). Chat routes add
token counts and the latencies a user feels: time to first token and to first audio.

Usage is labelled by user name (from the request's principal), never by key; the operator
(--api-key, or an open server) is "(operator)". The number of series grows with the number of
users, which only an admin can raise.

Under Ray Serve (server/scale_out.py) every sample carries a `replica="<name>"` label, the
name the `x-omnilive-replica` header gives, so series of different replicas never mix, and a
scrape of any replica gives every live replica's samples (theirs as of their last report, at
most a few seconds old; server/scale_out_metrics.py).
"""

from __future__ import annotations

import time
from typing import Callable, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from omnilive.server.auth import Principal, current_principal

_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    def __init__(self, replica: str | None = None) -> None:
        """replica: the Ray Serve replica's name, a label of every sample (None: no label)."""
        self.replica = replica
        self.peers: PeerMetrics | None = None  # under Ray: the other replicas' (server/scale_out_metrics.py)
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("omnilive_http_requests", "HTTP requests", ["method", "route", "status"], registry=r)
        self.request_seconds = Histogram(
            "omnilive_http_request_duration_seconds", "HTTP request time, to the last body byte",
            ["route"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.prompt_tokens = PerUserCounter(
            Counter("omnilive_prompt_tokens", "Prompt tokens processed, by user", ["user"], registry=r))
        self.completion_tokens = PerUserCounter(
            Counter("omnilive_completion_tokens", "Completion tokens generated, by user", ["user"], registry=r))
        self.user_requests = Counter("omnilive_user_requests", "/v1 requests admitted, by user", ["user"], registry=r)
        self.rate_limited = Counter(
            "omnilive_rate_limited_requests", "/v1 requests refused by a quota, by user and quota",
            ["user", "quota"], registry=r,
        )
        self.engine_outputs = Counter(
            "omnilive_engine_outputs", "Outputs received from the engine (text deltas, audio chunks...)", registry=r
        )
        self.time_to_first_token = Histogram(
            "omnilive_time_to_first_token_seconds", "Request received → first text or reasoning delta",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.time_to_first_audio = Histogram(
            "omnilive_time_to_first_audio_seconds", "Request received → first audio chunk",
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.running = Gauge("omnilive_requests_running", "Engine requests in progress", registry=r)
        self.finished = Counter(
            "omnilive_requests_finished", "Engine requests by how they ended", ["reason"], registry=r
        )

    def render(self) -> bytes:
        """This process's samples (labelled with its replica under Ray)."""
        if self.replica is None:
            return generate_latest(self.registry)
        return generate_latest(_Labelled(self.registry, {"replica": self.replica}))

    async def exposition(self) -> bytes:
        """What /metrics answers: this process's samples, and under Ray every other live
        replica's as it last reported them (`peers`, server/scale_out_metrics.py)."""
        own = self.render()
        if self.peers is None:
            return own
        return merged([own, *await self.peers.exchange(own)])


class PeerMetrics(Protocol):
    """Other replicas' metrics: hand ours over, get theirs (each replica's own exposition text)."""

    async def exchange(self, own: bytes) -> list[bytes]: ...


def merged(texts: list[bytes]) -> bytes:
    """Several replicas' expositions as one: each metric family once, with every replica's
    samples (their `replica` labels keep them apart)."""
    families: dict[str, Metric] = {}
    for text in texts:
        for family in text_string_to_metric_families(text.decode()):
            kept = families.setdefault(family.name, Metric(family.name, family.documentation, family.type,
                                                           family.unit))
            kept.samples.extend(family.samples)
    return generate_latest(_Families(list(families.values())))


class _Families:
    def __init__(self, families: list[Metric]):
        self.families = families

    def collect(self):
        return self.families


class _Labelled:
    """A registry's samples with extra labels (what generate_latest reads: `collect()`)."""

    def __init__(self, registry: CollectorRegistry, labels: dict[str, str]):
        self.registry, self.labels = registry, labels

    def collect(self):
        for family in self.registry.collect():
            labelled = Metric(family.name, family.documentation, family.type, family.unit)
            labelled.samples = [sample._replace(labels={**sample.labels, **self.labels})
                                for sample in family.samples]
            yield labelled


class PerUserCounter:
    """A counter labelled by the user of the request being served, used as a plain Counter
    (`.inc(n)`): the routes that count tokens need not know about users. `on_inc` also sees
    each amount with its principal (the token quotas)."""

    def __init__(self, counter: Counter, on_inc: Callable[[Principal, float], None] | None = None):
        self.counter, self.on_inc = counter, on_inc

    def inc(self, amount: float = 1) -> None:
        principal = current_principal.get()
        self.counter.labels(principal.name if principal is not None else "(none)").inc(amount)
        if principal is not None and self.on_inc is not None:
            self.on_inc(principal, amount)


class MetricsMiddleware:
    """Pure ASGI, so streamed responses are timed to their end, not to their first byte."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # if the app raises before answering

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = scope.get("route")
            # unmatched paths share one label: a scanner must not create unbounded series
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(scope["method"], template, str(status)).inc()
            self.metrics.request_seconds.labels(template).observe(time.perf_counter() - started)
