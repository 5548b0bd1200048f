"""Leader election on a coordination.k8s.io/v1 Lease, so two replicas never overcommit a node.

Only the leader binds (binding is what consumes a slot); every replica answers filter, prioritize
and preempt from its own cache, and a follower answers /bind with an Error, which kube-scheduler
logs as "binding rejected" and retries. Reservations live in the leader's memory, so one process
decides every placement: the cache lock then rules out overcommit exactly as with one replica.

The algorithm is client-go's: the holder renews every `retry` seconds with an update carrying the
Lease's resourceVersion (optimistic concurrency: of two writers one gets 409 Conflict). A
candidate takes the Lease over only after it has seen the same record, unchanged, for a whole
`duration`, measured on its own clock (no cross-node clock comparison). The leader considers itself
leader only until `renew start + duration - margin`, so it stops binding before anyone may take over.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable

import orjson
from kubernetes import client
from kubernetes.client.rest import ApiException

log = logging.getLogger(__name__)


def micro_time(epoch: float) -> str:
    """A metav1.MicroTime string."""
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaseElector(threading.Thread):
    """Hold (or wait for) the extender's leader Lease in the background."""

    def __init__(self, api: client.ApiClient, namespace: str, name: str, identity: str,
                 duration: float = 15.0, retry: float = 2.0, stop: threading.Event | None = None,
                 monotonic: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time):
        super().__init__(name="leader-election", daemon=True)
        self.coordination = client.CoordinationV1Api(api)
        self.namespace, self.lease_name, self.identity = namespace, name, identity
        self.duration, self.retry = duration, retry
        self.stop_event = stop or threading.Event()
        self.monotonic, self.wall = monotonic, wall
        self._leader_until = 0.0
        self._holder: str | None = None
        self._observed: tuple[Any, ...] | None = None
        self._observed_at = 0.0

    def is_leader(self) -> bool:
        """True while this replica's hold on the Lease is certainly valid."""
        return self.monotonic() < self._leader_until

    def holder(self) -> str | None:
        """The identity in the Lease as last read."""
        return self._holder

    def run(self) -> None:
        """Try to acquire or renew every `retry` seconds until stopped."""
        while not self.stop_event.is_set():
            try:
                self.step()
            except Exception as exc:  # API unreachable: leadership lapses by itself at _leader_until
                log.warning("leader election step failed", extra={"lease": self.lease_name, "error": str(exc)})
            self.stop_event.wait(self.retry)

    def _spec(self, now: float, acquire: bool, transitions: int) -> dict[str, Any]:
        spec = {"holderIdentity": self.identity, "leaseDurationSeconds": int(self.duration),
                "renewTime": micro_time(now), "leaseTransitions": transitions}
        if acquire:
            spec["acquireTime"] = micro_time(now)
        return spec

    def step(self) -> None:
        """One round: create, renew or (when expired) take over the Lease."""
        started = self.monotonic()
        now = self.wall()
        try:
            resp = self.coordination.read_namespaced_lease(self.lease_name, self.namespace, _preload_content=False,
                                                           _request_timeout=5)
            lease = orjson.loads(resp.data)
        except ApiException as exc:
            if exc.status != 404:
                raise
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": self.lease_name, "namespace": self.namespace},
                    "spec": self._spec(now, True, 0)}
            try:  # .data reads the answer: a pooled connection must not keep an unread body
                self.coordination.create_namespaced_lease(self.namespace, body, _preload_content=False,
                                                          _request_timeout=5).data
            except ApiException as conflict:
                if conflict.status == 409:
                    return
                raise
            self._won(started, "acquired")
            return
        spec = lease.get("spec") or {}
        self._holder = spec.get("holderIdentity")
        record = (self._holder, spec.get("renewTime"), lease["metadata"].get("resourceVersion"))
        if record != self._observed:
            self._observed, self._observed_at = record, started
        mine = self._holder == self.identity
        expired = started - self._observed_at > float(spec.get("leaseDurationSeconds") or self.duration)
        if not mine and self._holder and not expired:
            return
        transitions = int(spec.get("leaseTransitions") or 0) + (0 if mine else 1)
        lease["spec"] = {**spec, **self._spec(now, not mine, transitions)}
        try:  # .data reads the answer (see above)
            self.coordination.replace_namespaced_lease(self.lease_name, self.namespace, lease,
                                                       _preload_content=False, _request_timeout=5).data
        except ApiException as exc:
            if exc.status == 409:  # someone else wrote first
                self._leader_until = 0.0
                return
            raise
        self._won(started, "renewed" if mine else "took over")

    def _won(self, started: float, how: str) -> None:
        was_leader = self.is_leader()
        self._holder = self.identity
        self._leader_until = started + self.duration - self.retry
        if not was_leader:
            log.info("became leader", extra={"lease": f"{self.namespace}/{self.lease_name}",
                                             "identity": self.identity, "how": how})
