"""Every replica's metrics in any replica's /metrics, under Ray Serve.

A scrape through Ray Serve's proxy reaches one replica, chosen by the router, so a replica's
own /metrics would show a different part of the service at each scrape. Instead, each
replica reports its exposition text to one `MetricsBoard` (a small named actor the
`omnilive serve --ray` driver starts, which goes with it) every REPORT_PERIOD_S seconds and
whenever it is scraped, and answers a scrape with its own samples and every other live
replica's latest (server/metrics.py `merged`; each sample labelled `replica="…"`). A replica
that stopped reporting (it died, it was scaled down) drops out after STALE_AFTER_S.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from omnilive.server.metrics import Metrics

log = logging.getLogger(__name__)

BOARD_NAME = "omnilive-metrics"
BOARD_NAMESPACE = "omnilive"
REPORT_PERIOD_S = 5.0
STALE_AFTER_S = 3 * REPORT_PERIOD_S


class MetricsBoard:
    """The latest exposition of each replica (a Ray actor)."""

    def __init__(self):
        self.reports: dict[str, tuple[float, bytes]] = {}

    def exchange(self, replica: str, text: bytes) -> list[bytes]:
        """Keep `replica`'s report; the other live replicas' latest."""
        now = time.monotonic()
        self.reports[replica] = (now, text)
        self.reports = {name: report for name, report in self.reports.items() if now - report[0] < STALE_AFTER_S}
        return [text for name, (_, text) in self.reports.items() if name != replica]


def start_board(ray) -> Any:
    """The driver's board, named so that replicas find it (it lives as long as the driver)."""
    return ray.remote(num_cpus=0)(MetricsBoard).options(name=BOARD_NAME, namespace=BOARD_NAMESPACE,
                                                         get_if_exists=True).remote()


class RayPeerMetrics:
    """A replica's PeerMetrics (server/metrics.py): the board's, and a thread reporting to it."""

    def __init__(self, metrics: Metrics):
        import ray

        self.replica, self.metrics = metrics.replica, metrics
        self.board = ray.get_actor(BOARD_NAME, namespace=BOARD_NAMESPACE)
        threading.Thread(target=self._report, name="omnilive-metrics-report", daemon=True).start()

    async def exchange(self, own: bytes) -> list[bytes]:
        return await self.board.exchange.remote(self.replica, own)

    def _report(self) -> None:
        import ray

        while True:
            try:
                ray.get(self.board.exchange.remote(self.replica, self.metrics.render()), timeout=30)
            except Exception as error:  # noqa: BLE001 - the board is gone (the driver is stopping): retry
                log.debug("metrics report failed: %s", error)
            time.sleep(REPORT_PERIOD_S)
