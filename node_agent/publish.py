"""Writing to the API server: the Node's labels/annotations and the heartbeat Lease.

Every call is retried on transient failures (connection errors, 429, 5xx) with exponential backoff
and full jitter, so a restarting API server is ridden out instead of crashing the agent.

Requests go through sandgate.core.rawapi: the kubernetes client's Configuration and REST layer
(kubeconfig or service-account auth, TLS, proxies) without its ApiClient or typed API classes, which
would add pydantic and the models to an agent that makes four kinds of call (about 15 MiB resident
with the kubeconfig loader's OAuth stack), and whose typed Lease methods re-serialise renewTime from
a datetime, losing the MicroTime form (see `_send`).
"""

from __future__ import annotations

import logging
import random
import threading
from datetime import datetime, timezone
from typing import Any, Callable, TypeVar

import orjson
from kubernetes.client.rest import ApiException
from urllib3.exceptions import HTTPError

from sandgate.core.rawapi import JSON, RawApi

log = logging.getLogger(__name__)

T = TypeVar("T")
# A JSON merge patch (RFC 7386): null deletes a key. CoreV1Api.patch_node would send a dict body as
# application/strategic-merge-patch+json, which treats labels/annotations the same; naming merge
# patch keeps the semantics explicit and identical for every API server version.
MERGE_PATCH = "application/merge-patch+json"
REQUEST_TIMEOUT = (5, 15)
NODES = "/api/v1/nodes"
LEASES = "/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"


class PublishError(RuntimeError):
    """An API call failed for good (after retries, or with a non-retryable status)."""


def micro_time(moment: datetime) -> str:
    """A metav1.MicroTime string: RFC 3339 UTC with microseconds."""
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def transient(exc: BaseException) -> bool:
    """Whether retrying may help: network failures, 429 and 5xx answers."""
    if isinstance(exc, ApiException):
        return exc.status in (0, None, 429) or (exc.status or 0) >= 500
    return isinstance(exc, (HTTPError, OSError))


class Retry:
    """Exponential backoff with full jitter: attempt n waits uniform(0, min(cap, base * 2**n))."""

    def __init__(self, attempts: int = 5, base: float = 0.25, cap: float = 8.0, stop: threading.Event | None = None,
                 rand: Callable[[float, float], float] = random.uniform):
        self.attempts, self.base, self.cap = attempts, base, cap
        self.stop = stop or threading.Event()
        self.rand = rand

    def call(self, what: str, fn: Callable[[], T]) -> T:
        """Run `fn`, retrying transient failures; raise PublishError when it keeps failing."""
        for attempt in range(self.attempts):
            try:
                return fn()
            except Exception as exc:  # the client raises ApiException, urllib3 and socket errors
                reason = _describe(exc)
                if not transient(exc):
                    raise PublishError(f"{what}: {reason}") from None
                if attempt + 1 == self.attempts or self.stop.is_set():
                    raise PublishError(f"{what}: {reason} (after {attempt + 1} attempts)") from None
                delay = self.rand(0, min(self.cap, self.base * 2 ** attempt))
                log.warning("API call failed; retrying", extra={"call": what, "error": reason,
                                                                "attempt": attempt + 1, "retryInSeconds": round(delay, 3)})
                self.stop.wait(delay)
        raise AssertionError("unreachable: the loop returns or raises")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason}".strip()
    return f"{type(exc).__name__}: {exc}"[:300]


class Publisher:
    """The agent's API calls for one node."""

    def __init__(self, api: RawApi, node: str, retry: Retry):
        self.api = api
        self.node = node
        self.retry = retry

    def read_node(self) -> dict[str, Any]:
        """The Node object as JSON."""
        return self.retry.call(f"get node {self.node}", lambda: self._send("GET", f"{NODES}/{self.node}"))

    def patch_node(self, patch: dict[str, Any]) -> None:
        """Apply a merge patch to the Node."""
        self.retry.call(f"patch node {self.node}",
                        lambda: self._send("PATCH", f"{NODES}/{self.node}", patch, MERGE_PATCH))

    def renew_lease(self, namespace: str, name: str, duration: int, now: Callable[[], datetime]) -> None:
        """Create the heartbeat Lease or move its renewTime to now."""
        self.retry.call(f"renew lease {namespace}/{name}", lambda: self._renew(namespace, name, duration, now))

    def _renew(self, namespace: str, name: str, duration: int, now: Callable[[], datetime]) -> None:
        spec = {"holderIdentity": self.node, "leaseDurationSeconds": duration}
        try:
            lease = self._send("GET", f"{LEASES.format(namespace=namespace)}/{name}")
        except ApiException as exc:
            if exc.status != 404:
                raise
            stamp = micro_time(now())
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": name, "namespace": namespace},
                    "spec": {**spec, "acquireTime": stamp, "renewTime": stamp}}
            try:
                self._send("POST", f"{LEASES.format(namespace=namespace)}", body)
                return
            except ApiException as conflict:
                if conflict.status != 409:  # 409: created meanwhile (a restarted agent); renew it
                    raise
                lease = self._send("GET", f"{LEASES.format(namespace=namespace)}/{name}")
        lease["spec"] = {**(lease.get("spec") or {}), **spec, "renewTime": micro_time(now())}
        self._send("PUT", f"{LEASES.format(namespace=namespace)}/{name}", lease)

    def _send(self, method: str, path: str, body: dict[str, Any] | None = None,
              content_type: str = JSON) -> dict[str, Any]:
        """One request with a JSON body sent exactly as given; the decoded JSON answer.

        The typed create/replace_namespaced_lease validate the body into client models, which turns
        renewTime back into a datetime sent as `...+00:00`, or without a fraction at a whole second,
        which the API server's MicroTime parser refuses. Raw JSON keeps the contract's form.
        """
        return orjson.loads(self.api.request(method, path, body, content_type, REQUEST_TIMEOUT))
