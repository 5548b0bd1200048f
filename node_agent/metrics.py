"""Prometheus metrics and the /metrics + /healthz endpoints of the agent."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest


class AgentMetrics:
    """The agent's gauges and counters, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.found = Gauge("sandgate_agent_runtime_found", "Runtime handler configured in containerd (1)",
                           ["handler"], registry=self.registry)
        self.healthy = Gauge("sandgate_agent_runtime_healthy", "Runtime handler passed every check (1) or not (0)",
                             ["handler"], registry=self.registry)
        self.capacity = Gauge("sandgate_agent_sandbox_capacity", "Advertised sandbox capacity",
                              ["handler"], registry=self.registry)
        self.last_publish = Gauge("sandgate_agent_last_publish_timestamp_seconds",
                                  "Unix time of the last successful publish", registry=self.registry)
        self.publish_errors = Counter("sandgate_agent_publish_errors", "Cycles whose publish failed",
                                      registry=self.registry)
        self.problem = Gauge("sandgate_agent_runtime_problem",
                             "Why a configured or wanted runtime handler is not advertised (1 per handler)",
                             ["handler", "reason"], registry=self.registry)
        self.config_error = Gauge("sandgate_agent_containerd_config_error",
                                  "The runtime configuration is missing, unparsable or broken, e.g. its default "
                                  "runtime is not among its runtimes (1), or usable (0)",
                                  registry=self.registry)
        self.configure_errors = Counter("sandgate_agent_configure_errors",
                                        "Cycles whose --configure step failed", registry=self.registry)
        self.configure_rollbacks = Counter("sandgate_agent_configure_rollbacks",
                                           "Configure changes restored from their backups because the runtime was "
                                           "not ready after the reload", registry=self.registry)
        self.config_mismatch = Gauge("sandgate_agent_runtime_config_mismatch",
                                     "Handler on which the runtime's running config (CRI Status) and its config "
                                     "files disagree (1); such a handler is not advertised",
                                     ["handler"], registry=self.registry)
        self.cycles = Counter("sandgate_agent_cycles", "Completed discovery cycles", registry=self.registry)
        # Moves on every successful cycle only, so /healthz turns unhealthy after repeated failures.
        self.last_success = time.monotonic()

    def record_runtimes(self, found: dict[str, bool], problems: dict[str, str], capacities: dict[str, int]) -> None:
        """Replace the per-handler series (handlers that went away disappear)."""
        for gauge in (self.found, self.healthy, self.capacity, self.problem):
            gauge.clear()
        for handler, healthy in found.items():
            self.found.labels(handler).set(1)
            self.healthy.labels(handler).set(1 if healthy else 0)
        for handler, reason in problems.items():
            self.problem.labels(handler, reason).set(1)
        for handler, value in capacities.items():
            self.capacity.labels(handler).set(value)


    def record_mismatches(self, handlers: list[str]) -> None:
        """Replace the mismatch series with this cycle's handlers."""
        self.config_mismatch.clear()
        for handler in handlers:
            self.config_mismatch.labels(handler).set(1)


class MetricsServer:
    """/metrics, /healthz and /sandboxes on a background thread; /healthz fails when cycles stop succeeding.

    `sandboxes` returns the GET /sandboxes document (read-only: the node's sandboxes and their
    containers' log paths); without it the endpoint is 404.
    """

    def __init__(self, metrics: AgentMetrics, host: str, port: int, stale_after: float,
                 sandboxes: Callable[[], dict[str, Any]] | None = None):
        self.metrics = metrics
        self.stale_after = stale_after
        self.sandboxes = sandboxes
        self.httpd = ThreadingHTTPServer((host, port), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="metrics", daemon=True)

    def start(self) -> None:
        """Serve in the background."""
        self.thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10  # seconds per socket read: a client that stalls mid-request loses its thread's slot

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(server.metrics.registry))
                elif self.path == "/healthz":
                    age = time.monotonic() - server.metrics.last_success
                    ok = age <= server.stale_after
                    self._send(200 if ok else 503, "text/plain; charset=utf-8",
                               b"ok\n" if ok else f"no successful cycle for {age:.0f}s\n".encode())
                elif self.path == "/sandboxes" and server.sandboxes is not None:
                    body = json.dumps(server.sandboxes(), separators=(",", ":")).encode()
                    self._send(200, "application/json", body)
                else:
                    self._send(404, "text/plain; charset=utf-8", b"not found\n")

            def _send(self, status: int, content_type: str, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # scrapes are not worth a log line
                pass

        return Handler
