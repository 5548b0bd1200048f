"""Prometheus metrics of the webhook, correct across several gunicorn worker processes.

gunicorn forks workers that each count their own requests. In prometheus_client's multiprocess
mode every process writes its samples to files in PROMETHEUS_MULTIPROC_DIR and /metrics sums them,
so a scrape that lands on any worker reports the whole server. The variable must be set before
prometheus_client is first imported (it picks its value storage at import), which
`webhooks.server` does before importing this module; without it (tests, in-process use) the
metrics live in a private registry of this process.
"""

from __future__ import annotations

import os

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess

from sandgate.core.certinfo import EXPIRY_HELP, EXPIRY_METRIC, file_not_after

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Admission answers take well under a millisecond to a few ms; the API server's own timeout
# (timeoutSeconds, default 10 s) bounds the top.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def multiprocess_enabled() -> bool:
    """True when samples are shared through PROMETHEUS_MULTIPROC_DIR."""
    return bool(os.environ.get(MULTIPROC_ENV))


class Metrics:
    """The webhook's metrics; create one per process (after fork)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "sandgate_webhook_requests", "Admission requests answered, by endpoint, verdict and reason.",
            ["endpoint", "verdict", "reason", "profile"], registry=self.registry)
        self.latency = Histogram(
            "sandgate_webhook_request_duration_seconds", "Time to answer an admission request.",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        # livemin: the server reports 0 as soon as any live worker has no synced namespace cache.
        self.namespace_cache_synced = Gauge(
            "sandgate_webhook_namespace_cache_synced",
            "1 when the watched namespace-label cache is synced with the API server, else 0.",
            registry=self.registry, multiprocess_mode="livemin")
        # livemin: the soonest expiry any live worker serves (one may not have reloaded a renewal yet).
        self.certificate_expiry = Gauge(EXPIRY_METRIC, EXPIRY_HELP, registry=self.registry,
                                        multiprocess_mode="livemin")

        # The labelled children, looked up once: labels() validates and locks on every call, which
        # was a tenth of an allowed request's CPU. Keys are bounded like the series themselves.
        self._counters: dict[tuple[str, str, str, str], Counter] = {}
        self._latencies: dict[str, Histogram] = {}

    def observe(self, endpoint: str, verdict: str, reason: str, profile: str | None, seconds: float) -> None:
        """Count one answered request and its latency."""
        key = (endpoint, verdict, reason or "", profile or "")
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = self.requests.labels(*key)
        counter.inc()
        latency = self._latencies.get(endpoint)
        if latency is None:
            latency = self._latencies[endpoint] = self.latency.labels(endpoint)
        latency.observe(seconds)

    def record_certificate(self, cert_file: str) -> None:
        """Set the expiry gauge from the serving certificate file (left as it was while unreadable)."""
        expires = file_not_after(cert_file)
        if expires is not None:
            self.certificate_expiry.set(expires)

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition (body, content type), summed over every worker in multiprocess mode."""
        if multiprocess_enabled():
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def mark_worker_dead(pid: int) -> None:
    """Drop a dead worker's live gauges (gunicorn child_exit hook); its counters stay summed."""
    if multiprocess_enabled():
        multiprocess.mark_process_dead(pid)
