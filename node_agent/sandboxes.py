"""The node's pod sandboxes as CRI reports them, with each one's kernel counters.

Each refresh lists sandboxes and containers over CRI (two RPCs), asks `PodSandboxStatus(verbose)`
and `ContainerStatus` only for ids it has not seen (a sandbox's pid, network namespace, cgroup and a
container's log path never change for a given id), then reads the counters of every ready sandbox
from /proc and the cgroup files. The whole refresh has one deadline; any CRI failure leaves the
previous inventory in place, marked with the error, so the agent's publishing never waits on it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import grpc

from sandgate.core import keys
from sandgate.core.jsonshape import as_list, as_object
from sandgate.core.paddingrecord import padded_resource
from sandgate.core.policy import Policy

from node_agent import cgroups, host
from node_agent.cgroups import CgroupFiles, CgroupLayout, CgroupUsage, NetDev
from node_agent.cri.client import CriClient, CriError, api, socket_path
from node_agent.host import Root

log = logging.getLogger("sandgate.agent.sandboxes")

DEFAULT_DEADLINE = 10.0
# A pod with NET_ADMIN can create any number of interfaces in its namespace; each would be a label
# value. Past this many (eth0 first, then by name) the rest are left out of the metrics.
MAX_INTERFACES = 8


@dataclass(frozen=True)
class Container:
    """One container of a sandbox: where the runtime writes its log (CRI ContainerStatus.log_path)."""

    id: str
    name: str
    state: str
    log_path: str

    def to_json(self) -> dict[str, Any]:
        """Wire form in the dry-run JSON and GET /sandboxes."""
        return {"id": self.id, "name": self.name, "state": self.state, "logPath": self.log_path}


@dataclass(frozen=True)
class SandboxFacts:
    """What a sandbox's verbose status says once and for all: its process, namespaces and cgroup."""

    pid: int | None = None
    netns: str | None = None  # None: the pod shares the node's network namespace
    cgroup: str | None = None  # runtimeSpec.linux.cgroupsPath of the sandbox (pause) container
    log_directory: str = ""
    # The memory overhead the pod was admitted with: pod.spec.overhead as the kubelet passes it in
    # CRI, plus what the webhook padded the requests by (its record, an annotation passed in CRI).
    overhead_memory_bytes: int | None = None
    memory_requests_bytes: int | None = None  # the pod's own memory requests: the padding record's basis


@dataclass(frozen=True)
class Sandbox:
    """A pod sandbox with its containers and, when ready, its counters."""

    id: str
    namespace: str
    pod: str
    uid: str
    handler: str
    state: str
    facts: SandboxFacts = field(default_factory=SandboxFacts)
    containers: tuple[Container, ...] = ()
    network: tuple[NetDev, ...] = ()
    usage: CgroupUsage = field(default_factory=CgroupUsage)

    @property
    def overhead_ratio(self) -> float | None:
        """Measured memory beyond the pod's requests, over the overhead the pod was admitted with.

        1.0: the sandbox costs exactly its configured overhead; above: podFixed / memoryPercentOfRequests
        are too small for this workload; below: too generous. None when any input is unknown.
        """
        used, requests = self.usage.memory_working_set_bytes, self.facts.memory_requests_bytes
        overhead = self.facts.overhead_memory_bytes
        if used is None or requests is None or not overhead:
            return None
        return (used - requests) / overhead

    @property
    def pod_cgroup(self) -> str | None:
        """The pod-level cgroup (relative to a hierarchy root) whose counters are the sandbox's cost."""
        if not self.facts.cgroup:
            return None
        try:
            return cgroups.pod_relpath(self.facts.cgroup)
        except ValueError:
            return None

    def to_json(self) -> dict[str, Any]:
        """Wire form in the dry-run JSON and GET /sandboxes."""
        usage = self.usage
        return {
            "id": self.id, "namespace": self.namespace, "pod": self.pod, "uid": self.uid, "handler": self.handler,
            "state": self.state, "pid": self.facts.pid, "netns": self.facts.netns, "cgroup": self.facts.cgroup,
            "podCgroup": self.pod_cgroup, "logDirectory": self.facts.log_directory,
            "containers": [c.to_json() for c in self.containers],
            "counters": {
                "network": [{"interface": n.interface, "receiveBytes": n.receive_bytes,
                             "transmitBytes": n.transmit_bytes, "receivePackets": n.receive_packets,
                             "transmitPackets": n.transmit_packets, "receiveErrors": n.receive_errors,
                             "transmitErrors": n.transmit_errors, "receiveDrops": n.receive_drops,
                             "transmitDrops": n.transmit_drops} for n in self.network],
                "block": [{"device": b.device, "readBytes": b.read_bytes, "writeBytes": b.write_bytes,
                           "readOps": b.read_ops, "writeOps": b.write_ops} for b in usage.block],
                "memoryWorkingSetBytes": usage.memory_working_set_bytes,
                "cpuSeconds": usage.cpu_seconds,
                "memoryRequestsBytes": self.facts.memory_requests_bytes,
                "overheadMemoryBytes": self.facts.overhead_memory_bytes,
                "overheadRatio": self.overhead_ratio,
            },
        }


@dataclass(frozen=True)
class Inventory:
    """One refresh's result. `error` is set when CRI failed; sandboxes are then the last good list."""

    sandboxes: tuple[Sandbox, ...] = ()
    error: str | None = None
    refreshed_at: float = 0.0  # unix time of the last successful refresh (0: never)
    failures: int = 0  # failed refreshes since the agent started

    def to_json(self) -> list[dict[str, Any]]:
        """The `sandboxes` list of the dry-run JSON and GET /sandboxes."""
        return [s.to_json() for s in self.sandboxes]

    def document(self) -> dict[str, Any]:
        """The GET /sandboxes body: the list, and whether it is current (error, time of the last success)."""
        return {"sandboxes": self.to_json(), "error": self.error, "refreshedAt": self.refreshed_at or None}


def exported(inventory: Inventory, policy: Policy) -> list[Sandbox]:
    """Ready sandboxes whose series go on /metrics: policy handlers, or all with agent.metrics.allSandboxes."""
    handlers = policy.handlers
    return [s for s in inventory.sandboxes
            if s.state == "SANDBOX_READY" and (policy.agent.all_sandboxes or s.handler in handlers)]


def _spec_facts(info: Mapping[str, Any], annotations: Mapping[str, str]) -> SandboxFacts:
    linux = as_object(as_object(info.get("runtimeSpec")).get("linux"))
    netns = None
    for namespace in as_list(linux.get("namespaces")):
        if as_object(namespace).get("type") == "network":
            netns = namespace.get("path") or None
    config = as_object(info.get("config"))
    overhead = as_object(as_object(config.get("linux")).get("overhead")).get("memory_limit_in_bytes")
    overhead = overhead if isinstance(overhead, int) and not isinstance(overhead, bool) and overhead > 0 else 0
    requests = None
    padded = padded_resource(annotations.get(keys.PADDING_ANNOTATION), "memory")
    if padded is not None:
        overhead += int(padded[0])
        requests = int(padded[1])
    pid, cgroup, log_directory = info.get("pid"), linux.get("cgroupsPath"), config.get("log_directory")
    return SandboxFacts(
        pid=pid if isinstance(pid, int) and not isinstance(pid, bool) and pid > 0 else None,
        netns=netns if isinstance(netns, str) else None,
        cgroup=cgroup if isinstance(cgroup, str) and cgroup else None,
        log_directory=log_directory if isinstance(log_directory, str) else "",
        overhead_memory_bytes=overhead or None,
        memory_requests_bytes=requests,
    )


def facts_from_status(response: Any) -> SandboxFacts:
    """Facts from a verbose PodSandboxStatusResponse: containerd's info["info"] JSON (pid, runtimeSpec,
    config) and the pod's annotations (the padding record).

    A runtime without that JSON (or with a malformed one) yields facts without pid, netns and cgroup;
    the sandbox is still listed with its containers' log paths.
    """
    try:
        info = json.loads(response.info.get("info", "{}"))
    except ValueError:
        info = {}
    return _spec_facts(as_object(info), response.status.annotations)


def _state_name(enum: Any, value: int) -> str:
    """An enum value's name; a value from a newer CRI than ours is shown, not fatal to the inventory."""
    try:
        return enum.Name(value)
    except ValueError:
        return f"UNKNOWN_{value}"


def container_from(item: Any, log_path: str) -> Container:
    """A Container from a ListContainers item and its (cached) log path."""
    return Container(item.id, item.metadata.name, _state_name(api.ContainerState, item.state), log_path)


def sandbox_from(item: Any, facts: SandboxFacts, containers: Iterable[Container], default_handler: str) -> Sandbox:
    """A Sandbox from a ListPodSandbox item; an empty runtime_handler is the runtime's default one."""
    meta = item.metadata
    return Sandbox(item.id, meta.namespace, meta.name, meta.uid, item.runtime_handler or default_handler,
                   _state_name(api.PodSandboxState, item.state), facts, tuple(sorted(containers, key=lambda c: c.name)))


def with_counters(sandbox: Sandbox, root: Path, files: CgroupFiles | None) -> Sandbox:
    """The sandbox with its current counters (none for a sandbox that is not ready).

    Network counters come from the sandbox process's own namespace; a host-network pod has none of
    its own, so it gets none rather than the node's. `files` are its pod cgroup's counter files.
    """
    if sandbox.state != "SANDBOX_READY":
        return sandbox
    network: tuple[NetDev, ...] = ()
    if sandbox.facts.netns and sandbox.facts.pid:
        found = cgroups.read_net_dev(root, sandbox.facts.pid) or []
        if len(found) > MAX_INTERFACES:
            found = sorted(found, key=lambda dev: (dev.interface != "eth0", dev.interface))[:MAX_INTERFACES]
        network = tuple(found)
    usage = cgroups.read_usage(files) if files else CgroupUsage()
    return replace(sandbox, network=network, usage=usage)


class SandboxInventory:
    """Keeps the latest Inventory of a CRI socket; refresh() is the only method that does I/O.

    `socket` names the socket at each refresh (the policy may change it): a new path gets a new channel.
    """

    def __init__(self, socket: Callable[[], Path], root: Path,
                 deadline: float = DEFAULT_DEADLINE, clock: Callable[[], float] = time.monotonic):
        self.socket = socket
        self.root = root
        self.deadline = deadline
        self.clock = clock
        self.current = Inventory()
        self.failures = 0
        self._client: CriClient | None = None
        self._facts: dict[str, SandboxFacts] = {}
        self._log_paths: dict[str, str] = {}
        self._default_handler: str | None = None
        self._layout: CgroupLayout | None = None
        self._files: dict[str, CgroupFiles | None] = {}

    def close(self) -> None:
        """Release the CRI channel."""
        if self._client is not None:
            self._client.close()
            self._client = None
        self._default_handler = None  # asked again of whichever runtime answers next

    def _remaining(self, ends: float) -> float:
        left = ends - self.clock()
        if left <= 0:
            raise CriError("inventory", grpc.StatusCode.DEADLINE_EXCEEDED,
                           f"inventory deadline of {self.deadline:g}s passed")
        return left

    def refresh(self) -> Inventory:
        """List, fill in what is new, read counters; on failure keep the last list and record the error."""
        ends = self.clock() + self.deadline
        try:
            path = str(self.socket())
            if self._client is not None and self._client.path != path:
                self.close()
            if self._client is None:
                self._client = CriClient(path, timeout=self.deadline)
            sandboxes = self._list(self._client, ends)
        except (CriError, ValueError) as exc:
            self.failures += 1
            self.close()  # a fresh channel next time: the runtime may have been restarted
            log.warning("sandbox inventory failed; keeping the last one", extra={"error": str(exc)})
            self.current = replace(self.current, error=str(exc), failures=self.failures)
            return self.current
        if self._layout is None:
            self._layout = cgroups.load_layout(self.root)
        files = {}
        for sandbox in sandboxes:
            if sandbox.id not in self._files:
                rel = sandbox.pod_cgroup
                self._files[sandbox.id] = cgroups.cgroup_files(self._layout, rel) if rel else None
            files[sandbox.id] = self._files[sandbox.id]
        self._files = files  # resolved once per sandbox, kept while it is listed
        counted = tuple(with_counters(s, self.root, files[s.id]) for s in sandboxes)
        self.current = Inventory(counted, None, time.time(), self.failures)
        return self.current

    def _list(self, client: CriClient, ends: float) -> list[Sandbox]:
        if self._default_handler is None:
            self._default_handler = _default_handler(client.status(verbose=True, timeout=self._remaining(ends)))
        items = client.list_pod_sandbox(timeout=self._remaining(ends))
        containers = client.list_containers(timeout=self._remaining(ends))
        # Facts and log paths are cached as soon as they are read, so a refresh cut short by its deadline
        # still makes progress; each one then prunes the caches to the ids still listed.
        for item in items:
            if item.id not in self._facts:
                try:
                    self._facts[item.id] = facts_from_status(client.pod_sandbox_status(
                        item.id, verbose=True, timeout=self._remaining(ends)))
                except CriError as exc:
                    if exc.unreachable:
                        raise
                    # Removed between the list and the status: listed without facts this once.
        by_sandbox: dict[str, list[Container]] = {}
        for item in containers:
            if item.id not in self._log_paths:
                try:
                    self._log_paths[item.id] = client.container_status(
                        item.id, timeout=self._remaining(ends)).status.log_path
                except CriError as exc:
                    if exc.unreachable:
                        raise
                    continue  # removed between the list and the status
            by_sandbox.setdefault(item.pod_sandbox_id, []).append(container_from(item, self._log_paths[item.id]))
        listed = {item.id for item in items}
        self._facts = {k: v for k, v in self._facts.items() if k in listed}
        self._log_paths = {c.id: c.log_path for found in by_sandbox.values() for c in found}
        return sorted((sandbox_from(item, self._facts.get(item.id, SandboxFacts()), by_sandbox.get(item.id, ()),
                                    self._default_handler) for item in items), key=lambda s: (s.namespace, s.pod, s.id))


def _default_handler(status: Any) -> str:
    """containerd's default runtime name (info.config.containerd.defaultRuntimeName), "" if not said."""
    config = status.info.get("config") if isinstance(status.info, dict) else None
    containerd = config.get("containerd") if isinstance(config, dict) else None
    name = containerd.get("defaultRuntimeName") if isinstance(containerd, dict) else None
    return name if isinstance(name, str) else ""


class SandboxWatcher:
    """Refreshes a SandboxInventory on its own thread every `interval`, apart from the publishing cycle.

    The agent's labels, capacity and heartbeat never wait on CRI: a slow or absent socket costs this
    thread one deadline per interval, and shows as sandgate_agent_sandbox_inventory_* series.
    """

    def __init__(self, inventory: SandboxInventory, store: Any, interval: float, stop: threading.Event):
        self.inventory = inventory
        self.store = store
        self.interval = interval
        self.stop = stop
        self.thread = threading.Thread(target=self._run, name="sandboxes", daemon=True)

    def start(self) -> None:
        """Refresh in the background until `stop` is set."""
        self.thread.start()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to end (after `stop` is set), then release the CRI channel."""
        self.thread.join(timeout)
        self.inventory.close()

    def snapshot(self) -> tuple[Inventory, Policy]:
        """The latest inventory and the policy that filters what /metrics exports."""
        return self.inventory.current, self.store.current

    def _run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                self.inventory.refresh()
            except Exception:  # a bug here must not end the inventory for the agent's lifetime
                self.inventory.failures += 1
                self.inventory.current = replace(self.inventory.current, error="internal error",
                                                 failures=self.inventory.failures)
                log.exception("sandbox inventory crashed; retrying next interval")
            self.stop.wait(max(0.0, self.interval - (time.monotonic() - started)))


def inventory_once(root: Path, store: Any, deadline: float = DEFAULT_DEADLINE) -> Inventory:
    """One inventory (for --once --dry-run); a CRI failure is in its `error`, never raised."""
    inventory = inventory_for(root, store, deadline)
    try:
        return inventory.refresh()
    finally:
        inventory.close()


def inventory_for(root: Path, store: Any, deadline: float) -> SandboxInventory:
    """A SandboxInventory on the runtime's CRI socket: agent.criEndpoint or the runtime manager's own, as the
    current policy says at each refresh."""

    def socket() -> Path:
        policy = store.current
        return socket_path(host.cri_endpoint(policy.agent, host.detect_manager(Root(root), policy)), root)

    return SandboxInventory(socket, root, deadline)
