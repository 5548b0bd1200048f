"""Advertise sandbox slots to the kubelet through the device plugin API (v1beta1).

For each runtime handler of the policy the agent serves one device plugin: resource
`sandgate.io/sandbox-<handler>` (`keys.sandbox_resource`), one fake device per slot. The kubelet
then puts the slots in the Node's capacity/allocatable itself, kube-scheduler counts them like any
extended resource, and the kubelet refuses a pod over capacity at admission, even one created with
`spec.nodeName` that never met the scheduler. Works on every kubelet from 1.14 (v1beta1).

Protocol (k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1):
  1. serve the DevicePlugin service on a unix socket of our own in the kubelet's plugin directory;
  2. call Registration.Register on the kubelet's `kubelet.sock` with that socket's name;
  3. the kubelet calls ListAndWatch (a stream: we send the device list now and whenever it changes)
     and Allocate when it admits a pod that requests slots.

Health, not count, follows the runtime: when a handler stops being usable its devices turn
Unhealthy, so allocatable drops to 0 without any Node write while pods already running keep their
device IDs. A kubelet restart removes every socket in the directory and recreates kubelet.sock; the
watcher notices (socket gone or kubelet.sock replaced) and serves and registers again.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

import grpc

from node_agent.deviceplugin_v1beta1 import api_pb2, api_pb2_grpc
from sandgate.core import keys

log = logging.getLogger("sandgate.agent.deviceplugin")

API_VERSION = "v1beta1"
KUBELET_SOCKET = "kubelet.sock"
DEFAULT_DIR = "/var/lib/kubelet/device-plugins"
HEALTHY, UNHEALTHY = "Healthy", "Unhealthy"
REGISTER_TIMEOUT = 5.0  # deadline of the Register call: the kubelet answers at once or not at all
WATCH_INTERVAL = 1.0  # how often the watcher looks at kubelet.sock and our sockets
MAX_DEVICES = 1024  # bounds what a policy (agent.maxSandboxes) can make us list


@dataclass(frozen=True)
class Slots:
    """What to advertise for one handler: how many slots, and whether the runtime is usable."""

    count: int
    healthy: bool

    def devices(self, handler: str) -> list[api_pb2.Device]:
        """One device per slot; IDs are stable across updates so allocated IDs stay known."""
        health = HEALTHY if self.healthy else UNHEALTHY
        return [api_pb2.Device(ID=f"{handler}-{i}", health=health) for i in range(min(self.count, MAX_DEVICES))]


def next_slots(previous: Slots | None, capacity: int | None) -> Slots:
    """The slots to advertise after a cycle: the capacity when usable; else the last count, unhealthy.

    Keeping the count while unhealthy keeps the device IDs of running pods known to the kubelet.
    """
    if capacity is not None and capacity > 0:
        return Slots(capacity, True)
    return Slots(previous.count if previous else 0, False)


class _Servicer(api_pb2_grpc.DevicePluginServicer):
    """The DevicePlugin service of one handler."""

    def __init__(self, plugin: "HandlerPlugin"):
        self.plugin = plugin

    def GetDevicePluginOptions(self, request, context):  # noqa: N802 - gRPC method name
        """No PreStartContainer, no GetPreferredAllocation."""
        return api_pb2.DevicePluginOptions()

    def ListAndWatch(self, request, context) -> Iterator[api_pb2.ListAndWatchResponse]:  # noqa: N802
        """The device list now, then again on every change, until the kubelet hangs up or we stop."""
        plugin = self.plugin
        sent = None
        while context.is_active() and not plugin.stopped.is_set():
            with plugin.changed:
                if plugin.slots == sent:
                    plugin.changed.wait(WATCH_INTERVAL)
                    continue
                sent = plugin.slots
            yield api_pb2.ListAndWatchResponse(devices=sent.devices(plugin.handler))

    def Allocate(self, request, context) -> api_pb2.AllocateResponse:  # noqa: N802
        """Nothing to set up for a slot; the container learns which slot it holds from an env var."""
        known = {d.ID for d in self.plugin.slots.devices(self.plugin.handler)}
        responses = []
        for container in request.container_requests:
            unknown = [d for d in container.devices_ids if d not in known]
            if unknown:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"unknown {self.plugin.resource} device {unknown[0][:63]}")
            responses.append(api_pb2.ContainerAllocateResponse(
                envs={"SANDGATE_SANDBOX_SLOTS": ",".join(container.devices_ids)}))
        return api_pb2.AllocateResponse(container_responses=responses)


class HandlerPlugin:
    """The device plugin of one runtime handler: its socket, its gRPC server, its registration."""

    def __init__(self, directory: Path, handler: str):
        self.directory = directory
        self.handler = handler
        self.resource = keys.sandbox_resource(handler)
        self.socket = directory / f"sandgate-{handler}.sock"
        self.slots = Slots(0, False)
        self.changed = threading.Condition()
        self.stopped = threading.Event()
        self.server: grpc.Server | None = None
        self.registered_with: int | None = None  # inode of the kubelet.sock we registered with

    def set(self, slots: Slots) -> None:
        """Advertise `slots` (ListAndWatch streams send the new list)."""
        with self.changed:
            if slots != self.slots:
                self.slots = slots
                self.changed.notify_all()

    def serve(self) -> None:
        """(Re)start the gRPC server on our socket, replacing a stale socket file."""
        self.close_server()
        self.socket.unlink(missing_ok=True)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix=f"dp-{self.handler}"))
        api_pb2_grpc.add_DevicePluginServicer_to_server(_Servicer(self), server)
        server.add_insecure_port(f"unix://{self.socket}")
        server.start()
        self.server = server

    def register(self, kubelet_socket: Path) -> None:
        """Register our socket and resource with the kubelet (grpc.RpcError when it refuses)."""
        with grpc.insecure_channel(f"unix://{kubelet_socket}") as channel:
            api_pb2_grpc.RegistrationStub(channel).Register(
                api_pb2.RegisterRequest(version=API_VERSION, endpoint=self.socket.name, resource_name=self.resource,
                                        options=api_pb2.DevicePluginOptions()),
                timeout=REGISTER_TIMEOUT)

    def close_server(self) -> None:
        """Stop serving (open ListAndWatch streams end)."""
        if self.server is not None:
            with self.changed:
                self.changed.notify_all()
            self.server.stop(grace=0.5).wait(2)
            self.server = None


def _inode(path: Path) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


class DevicePlugins:
    """Every handler's device plugin, kept registered with the kubelet (a daemon watcher thread)."""

    def __init__(self, directory: str | Path = DEFAULT_DIR, watch_interval: float = WATCH_INTERVAL):
        self.directory = Path(directory)
        self.kubelet_socket = self.directory / KUBELET_SOCKET
        self.watch_interval = watch_interval
        self.plugins: dict[str, HandlerPlugin] = {}
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="device-plugins", daemon=True)

    def start(self) -> "DevicePlugins":
        """Start watching the kubelet's socket (registration happens once there are handlers)."""
        self.thread.start()
        return self

    def update(self, handlers: frozenset[str] | set[str], capacities: Mapping[str, int]) -> None:
        """After an agent cycle: the policy's handlers, and the capacity of each usable (advertised) one."""
        with self.lock:
            for handler in sorted(handlers):
                plugin = self.plugins.get(handler)
                if plugin is None:
                    plugin = self.plugins[handler] = HandlerPlugin(self.directory, handler)
                plugin.set(next_slots(plugin.slots, capacities.get(handler)))
            for handler, plugin in self.plugins.items():
                if handler not in handlers:  # dropped from the policy: its slots are not usable any more
                    plugin.set(next_slots(plugin.slots, None))
        self._reconcile()

    def stop(self) -> None:
        """Stop serving; the kubelet then marks the resources unhealthy (their sockets are gone)."""
        self.stop_event.set()
        with self.lock:
            for plugin in self.plugins.values():
                plugin.stopped.set()
                plugin.close_server()
                plugin.socket.unlink(missing_ok=True)

    def _watch(self) -> None:
        while not self.stop_event.wait(self.watch_interval):
            self._reconcile()

    def _reconcile(self) -> None:
        """Serve and register every plugin whose socket is gone or whose kubelet restarted."""
        if self.stop_event.is_set():
            return
        kubelet = _inode(self.kubelet_socket)
        with self.lock:
            for plugin in self.plugins.values():
                if kubelet is None:
                    continue  # no kubelet yet (or restarting): register when kubelet.sock appears
                if plugin.registered_with == kubelet and plugin.server is not None and plugin.socket.exists():
                    continue
                try:
                    plugin.serve()
                    plugin.register(self.kubelet_socket)
                except (grpc.RpcError, OSError, RuntimeError) as exc:
                    plugin.registered_with = None
                    log.warning("device plugin registration failed; retrying",
                                extra={"resource": plugin.resource, "error": _describe(exc)})
                    continue
                plugin.registered_with = kubelet
                log.info("device plugin registered", extra={"resource": plugin.resource,
                                                            "socket": str(plugin.socket),
                                                            "slots": plugin.slots.count,
                                                            "healthy": plugin.slots.healthy})


def _describe(exc: Exception) -> str:
    if isinstance(exc, grpc.RpcError) and hasattr(exc, "code"):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"
