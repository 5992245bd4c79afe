"""The cloud's own metrics (Prometheus text at ``GET /metrics``, for a ``monitor`` or ``admin``
certificate): requests by route and status, their latency, and connection trouble (refused or
timed-out TLS handshakes, failed accepts) by kind, which the server otherwise logs only once a
minute. One registry per server, so tests with several servers in one process do not mix."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest


class CloudMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "nuprov_cloud_requests", "HTTP requests answered", ["method", "route", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.seconds = Histogram(
            "nuprov_cloud_request_seconds", "time to answer a request", ["route"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )  # fmt: skip
        self.trouble = Counter(
            "nuprov_cloud_connection_trouble", "connections refused or dropped before a request (by kind)",
            ["kind"], registry=self.registry,
        )  # fmt: skip

    def render(self) -> bytes:
        return generate_latest(self.registry)
