"""Prometheus metrics of one line (prometheus_client, one registry per daemon).

Counters and histograms are updated where things happen (steps, boards, cloud calls, UART bytes,
probe worker restarts); station state is read from the runners at scrape time. Names and labels are
listed in docs/monitoring.md; deploy/prometheus/ holds the scrape config and alert rules.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from orchestrator.states import State

if TYPE_CHECKING:
    from orchestrator.station import StationRunner

disable_created_metrics()  # type: ignore[no-untyped-call]  # the *_created series only double the exposition; rate() needs none

STATES = tuple(state.value for state in State)
STEP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
CLOUD_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_ID = re.compile(r"/[0-9A-Fa-f-]{6,}(?=/|$)")


def cloud_operation(method: str, path: str) -> str:
    """A request's label with its ids replaced, so the label set stays small."""
    return f"{method} {_ID.sub('/{id}', path)}"


class _Stations(Collector):
    def __init__(self, runners: Callable[[], Iterable[StationRunner]]) -> None:
        self._runners = runners

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "nuprov_station_state",
            "1 for the state each station is in, 0 for the others",
            labels=["station", "state"],
        )
        progress = GaugeMetricFamily(
            "nuprov_station_progress_ratio", "Progress of the current flash or download", labels=["station"]
        )
        step = GaugeMetricFamily(
            "nuprov_station_step", "Step number the station is in (0: none)", labels=["station"]
        )
        for runner in self._runners():
            name = runner.station.name
            for value in STATES:
                state.add_metric([name, value], float(runner.status.state == value))
            progress.add_metric([name], runner.status.progress)
            step.add_metric([name], float(runner.status.step or 0))
        yield from (state, progress, step)


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.info = Gauge("nuprov_line_info", "The line and its job", ["line", "job"], registry=registry)
        self.boards = Counter(
            "nuprov_boards",
            "Boards finished, by station and outcome",
            ["station", "outcome"],
            registry=registry,
        )
        self.step_seconds = Histogram(
            "nuprov_step_duration_seconds", "Duration of each step attempt that succeeded", ["step"],
            buckets=STEP_BUCKETS, registry=registry,
        )  # fmt: skip
        self.retries = Counter(
            "nuprov_step_retries", "Step attempts after the first", ["step", "class"], registry=registry
        )
        self.errors = Counter(
            "nuprov_step_errors", "Failed step attempts", ["step", "class"], registry=registry
        )
        self.cloud_seconds = Histogram(
            "nuprov_cloud_request_duration_seconds", "Cloud request latency, by operation and status code",
            ["operation", "code"], buckets=CLOUD_BUCKETS, registry=registry,
        )  # fmt: skip
        self.uart_bytes = Counter(
            "nuprov_uart_bytes", "Bytes over the ISP UART", ["station", "direction"], registry=registry
        )
        self.probe_restarts = Counter(
            "nuprov_probe_worker_restarts", "Probe worker processes killed and restarted", ["station"],
            registry=registry,
        )  # fmt: skip

    def watch(self, runners: Callable[[], Iterable[StationRunner]]) -> None:
        self.registry.register(_Stations(runners))

    def cloud_request(self, method: str, path: str, seconds: float, code: int) -> None:
        self.cloud_seconds.labels(cloud_operation(method, path), str(code)).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
