"""/metrics under Ray Serve: every sample labelled with its replica, and any replica's scrape
holding every replica's samples (server/metrics.py `merged`; the Ray side is in
tests/server/test_scale_out.py)."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from omnilive.server.metrics import Metrics


def replica_metrics(name: str, finished: int) -> Metrics:
    metrics = Metrics(name)
    metrics.finished.labels("stop").inc(finished)
    metrics.time_to_first_token.observe(0.2)
    metrics.requests.labels("GET", "/v1/models", "200").inc()
    return metrics


class OtherReplicas:
    """PeerMetrics over real Metrics objects: what the board would hand back."""

    def __init__(self, *others: Metrics):
        self.others, self.received = others, []

    async def exchange(self, own: bytes) -> list[bytes]:
        self.received.append(own)
        return [other.render() for other in self.others]


def test_one_scrape_holds_every_replicas_samples_once_per_family():
    a, b = replica_metrics("a@h:1", finished=2), replica_metrics("b@h:2", finished=5)
    a.peers = peers = OtherReplicas(b)
    text = asyncio.run(a.exposition()).decode()
    assert peers.received == [a.render()]  # ours went to the board
    type_lines = [line for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(type_lines) == len(set(type_lines))  # each family once: a valid exposition
    finished = {sample.labels["replica"]: sample.value
                for family in text_string_to_metric_families(text) if family.name == "omnilive_requests_finished"
                for sample in family.samples if sample.name.endswith("_total")}
    assert finished == {"a@h:1": 2.0, "b@h:2": 5.0}
    buckets = [line for line in text.splitlines() if line.startswith("omnilive_time_to_first_token_seconds_count")]
    assert len(buckets) == 2 and all('replica="' in line for line in buckets)


def test_without_ray_no_label_and_no_peers():
    alone = Metrics()
    alone.finished.labels("stop").inc()
    text = asyncio.run(alone.exposition()).decode()
    assert 'omnilive_requests_finished_total{reason="stop"} 1.0' in text and "replica=" not in text
