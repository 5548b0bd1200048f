"""Prometheus metrics of the extender (one registry per app, so tests can run several side by side)."""

from __future__ import annotations

from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from sandgate.core.certinfo import EXPIRY_HELP, EXPIRY_METRIC, file_not_after

# Filter+prioritize should stay within a few ms at 5,000 nodes; buckets resolve that range finely.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    """The extender's metric families; `resources` are the watched kinds the gauges are labelled by."""

    def __init__(self, resources: Iterable[str], staleness: Callable[[str], float], skipped: Callable[[str], int]):
        self.registry = CollectorRegistry()
        self.decisions = Counter(
            "sandgate_extender_node_decisions", "Per-node filter decisions, by verb, verdict and reason",
            ["verb", "verdict", "reason"], registry=self.registry)
        self.requests = Counter(
            "sandgate_extender_requests", "Requests by verb and HTTP status", ["verb", "code"],
            registry=self.registry)
        self.latency = Histogram(
            "sandgate_extender_request_duration_seconds", "Time to answer a scheduler call, by verb", ["verb"],
            buckets=LATENCY_BUCKETS, registry=self.registry)
        stale = Gauge(
            "sandgate_extender_cache_staleness_seconds",
            "Seconds the cache may lag the API server (0 while watching; -1 when not applicable)",
            ["resource"], registry=self.registry)
        skips = Gauge(
            "sandgate_extender_skipped_objects",
            "Nodes, Pods and Leases skipped now because they cannot be read (each logged once; /readyz names them)",
            ["resource"], registry=self.registry)
        for resource in resources:
            stale.labels(resource).set_function(lambda r=resource: staleness(r))
            skips.labels(resource).set_function(lambda r=resource: float(skipped(r)))

    def watch_certificate(self, cert_file: str) -> None:
        """Export the serving certificate's notAfter, read at each scrape (NaN while unreadable)."""
        Gauge(EXPIRY_METRIC, EXPIRY_HELP, registry=self.registry).set_function(
            lambda: file_not_after(cert_file) or float("nan"))
