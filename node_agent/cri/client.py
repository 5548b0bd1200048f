"""A typed CRI client: gRPC over the runtime's unix socket, runtime.v1 with a fallback to v1alpha2.

containerd (1.5+), CRI-O and every kubelet speak the CRI as gRPC on a unix socket. The messages
come from api.proto (upstream field numbers); this module binds them to the service path the
runtime serves: `/runtime.v1.RuntimeService/<Rpc>`, or `/runtime.v1alpha2.RuntimeService/<Rpc>`
for runtimes older than containerd 1.5 / CRI-O 1.20 (the first RPC that the runtime answers
UNIMPLEMENTED on v1 switches the client to v1alpha2 for good; the two versions share the numbers
of every field used here). Every call carries a deadline, so a wedged runtime costs one timeout,
never a hung agent.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import grpc

from node_agent.cri import api_pb2 as api

__all__ = ["api", "CriClient", "CriError", "RuntimeStatus", "RuntimeVersion", "socket_path", "DEFAULT_TIMEOUT"]

API_VERSIONS = ("runtime.v1", "runtime.v1alpha2")
DEFAULT_TIMEOUT = 5.0
# The kubelet's limit: a node with many containers can exceed gRPC's 4 MiB default in one List.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# sockaddr_un.sun_path holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107

_RPCS: dict[str, tuple[Any, Any]] = {
    "Version": (api.VersionRequest, api.VersionResponse),
    "Status": (api.StatusRequest, api.StatusResponse),
    "RunPodSandbox": (api.RunPodSandboxRequest, api.RunPodSandboxResponse),
    "StopPodSandbox": (api.StopPodSandboxRequest, api.StopPodSandboxResponse),
    "RemovePodSandbox": (api.RemovePodSandboxRequest, api.RemovePodSandboxResponse),
    "PodSandboxStatus": (api.PodSandboxStatusRequest, api.PodSandboxStatusResponse),
    "ListPodSandbox": (api.ListPodSandboxRequest, api.ListPodSandboxResponse),
    "CreateContainer": (api.CreateContainerRequest, api.CreateContainerResponse),
    "StartContainer": (api.StartContainerRequest, api.StartContainerResponse),
    "StopContainer": (api.StopContainerRequest, api.StopContainerResponse),
    "RemoveContainer": (api.RemoveContainerRequest, api.RemoveContainerResponse),
    "ListContainers": (api.ListContainersRequest, api.ListContainersResponse),
    "ContainerStatus": (api.ContainerStatusRequest, api.ContainerStatusResponse),
    "ExecSync": (api.ExecSyncRequest, api.ExecSyncResponse),
    "ContainerStats": (api.ContainerStatsRequest, api.ContainerStatsResponse),
    "ListContainerStats": (api.ListContainerStatsRequest, api.ListContainerStatsResponse),
    "PodSandboxStats": (api.PodSandboxStatsRequest, api.PodSandboxStatsResponse),
    "ListPodSandboxStats": (api.ListPodSandboxStatsRequest, api.ListPodSandboxStatsResponse),
}


class CriError(RuntimeError):
    """A CRI call failed; `code` is the gRPC status code (UNAVAILABLE when the socket is unreachable)."""

    def __init__(self, rpc: str, code: grpc.StatusCode, details: str):
        super().__init__(f"CRI {rpc}: {code.name}: {details}")
        self.rpc = rpc
        self.code = code
        self.details = details

    @property
    def unreachable(self) -> bool:
        """Whether the runtime did not answer at all (no socket, not listening, or too slow)."""
        return self.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


@dataclass(frozen=True)
class RuntimeVersion:
    """The Version RPC's answer: e.g. runtime_name "containerd", runtime_version "1.6.20~ds1"."""

    runtime_name: str
    runtime_version: str
    runtime_api_version: str
    api: str  # the CRI package the client talks: runtime.v1 or runtime.v1alpha2


@dataclass(frozen=True)
class RuntimeStatus:
    """The Status RPC's answer: conditions by type, and (verbose) the runtime's info as parsed JSON.

    containerd puts its effective CRI configuration in info["config"]; a value that is not JSON
    is kept as its raw string.
    """

    conditions: dict[str, tuple[bool, str, str]]  # type -> (status, reason, message)
    info: dict[str, Any] = field(default_factory=dict)
    handlers: tuple[str, ...] = ()  # runtime_handlers (CRI v1, containerd 2.0+); empty when not reported

    @property
    def runtime_ready(self) -> bool:
        """Whether the RuntimeReady condition is true (the runtime accepts basic containers)."""
        return self.conditions.get("RuntimeReady", (False, "", ""))[0]

    def not_ready_reason(self) -> str:
        """Why RuntimeReady is false, for logs; empty when it is true."""
        status, reason, message = self.conditions.get("RuntimeReady", (False, "", "no RuntimeReady condition"))
        return "" if status else ": ".join(x for x in (reason, message) if x) or "RuntimeReady is false"


def socket_path(endpoint: str, root: Path | None = None) -> Path:
    """The local path of a CRI endpoint (`unix:///run/x.sock` or `/run/x.sock`), under `root` if given.

    Raises ValueError for anything but a unix socket: the CRI is node-local by design.
    """
    path = endpoint.removeprefix("unix://") if endpoint.startswith("unix://") else endpoint
    if not path.startswith("/"):
        raise ValueError(f'CRI endpoint "{endpoint}" is not unix:///<absolute path> or an absolute socket path')
    return (root / path.lstrip("/")) if root is not None else Path(path)


class CriClient:
    """The RuntimeService of one CRI socket. Thread-safe; close() (or `with`) releases the channel."""

    def __init__(self, path: str | Path, timeout: float = DEFAULT_TIMEOUT):
        self.path = str(path)
        self.timeout = timeout
        self._short_dir: str | None = None
        connect = self.path
        if len(connect.encode()) > MAX_SOCKET_PATH:
            # sun_path holds 107 bytes, but a host root mounted deep (--root) can push the socket past
            # that: connect through a short symlink to its directory instead.
            self._short_dir = tempfile.mkdtemp(prefix="sg-cri-")
            os.symlink(os.path.dirname(self.path), os.path.join(self._short_dir, "d"))
            connect = os.path.join(self._short_dir, "d", os.path.basename(self.path))
            if len(connect.encode()) > MAX_SOCKET_PATH:
                self.close()
                raise ValueError(f"CRI socket name {os.path.basename(self.path)} is too long for a unix socket")
        self._channel = grpc.insecure_channel(f"unix://{connect}", options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.enable_http_proxy", 0),
        ])
        self._lock = threading.Lock()
        self._api = API_VERSIONS[0]
        self._methods: dict[tuple[str, str], Callable[..., Any]] = {}

    def __enter__(self) -> "CriClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel (later calls fail) and remove the short symlink if one was made."""
        if getattr(self, "_channel", None) is not None:
            self._channel.close()
        if self._short_dir is not None:
            shutil.rmtree(self._short_dir, ignore_errors=True)
            self._short_dir = None

    @property
    def api(self) -> str:
        """The CRI package in use (runtime.v1 until the runtime answers UNIMPLEMENTED to it)."""
        return self._api

    def _method(self, api_version: str, rpc: str) -> Callable[..., Any]:
        key = (api_version, rpc)
        with self._lock:
            if key not in self._methods:
                request, response = _RPCS[rpc]
                self._methods[key] = self._channel.unary_unary(
                    f"/{api_version}.RuntimeService/{rpc}",
                    request_serializer=request.SerializeToString,
                    response_deserializer=response.FromString)
            return self._methods[key]

    def call(self, rpc: str, request: Any, timeout: float | None = None) -> Any:
        """Send one RPC with a deadline; raise CriError on any failure."""
        deadline = self.timeout if timeout is None else timeout
        api_version = self._api
        try:
            return self._method(api_version, rpc)(request, timeout=deadline)
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details() or ""
        if code == grpc.StatusCode.UNIMPLEMENTED and api_version == API_VERSIONS[0]:
            # A runtime that predates CRI v1 answers every v1 path UNIMPLEMENTED ("unknown service").
            try:
                result = self._method(API_VERSIONS[1], rpc)(request, timeout=deadline)
            except grpc.RpcError as exc:
                raise CriError(rpc, exc.code(), exc.details() or "") from None
            self._api = API_VERSIONS[1]
            return result
        raise CriError(rpc, code, details)

    # The RPCs, typed. Requests and responses are the api_pb2 messages.

    def version(self, timeout: float | None = None) -> RuntimeVersion:
        """Version RPC: the runtime's name and version."""
        reply = self.call("Version", api.VersionRequest(version="v1"), timeout)
        return RuntimeVersion(reply.runtime_name, reply.runtime_version, reply.runtime_api_version, self._api)

    def status(self, verbose: bool = False, timeout: float | None = None) -> RuntimeStatus:
        """Status RPC: conditions, and with verbose the runtime's info (containerd: its effective config)."""
        reply = self.call("Status", api.StatusRequest(verbose=verbose), timeout)
        conditions = {c.type: (c.status, c.reason, c.message) for c in reply.status.conditions}
        info: dict[str, Any] = {}
        for key, value in reply.info.items():
            try:
                info[key] = json.loads(value)
            except ValueError:
                info[key] = value
        return RuntimeStatus(conditions, info, tuple(h.name for h in reply.runtime_handlers))

    def list_pod_sandbox(self, filter: api.PodSandboxFilter | None = None,
                         timeout: float | None = None) -> list[api.PodSandbox]:
        """ListPodSandbox RPC."""
        return list(self.call("ListPodSandbox", api.ListPodSandboxRequest(filter=filter), timeout).items)

    def pod_sandbox_status(self, sandbox_id: str, verbose: bool = False,
                           timeout: float | None = None) -> api.PodSandboxStatusResponse:
        """PodSandboxStatus RPC (verbose adds info, e.g. containerd's sandbox pid and runtime options)."""
        return self.call("PodSandboxStatus", api.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=verbose),
                         timeout)

    def list_containers(self, filter: api.ContainerFilter | None = None,
                        timeout: float | None = None) -> list[api.Container]:
        """ListContainers RPC."""
        return list(self.call("ListContainers", api.ListContainersRequest(filter=filter), timeout).containers)

    def container_status(self, container_id: str, verbose: bool = False,
                         timeout: float | None = None) -> api.ContainerStatusResponse:
        """ContainerStatus RPC (its status.log_path is the container's log file)."""
        return self.call("ContainerStatus", api.ContainerStatusRequest(container_id=container_id, verbose=verbose),
                         timeout)

    def list_container_stats(self, filter: api.ContainerStatsFilter | None = None,
                             timeout: float | None = None) -> list[api.ContainerStats]:
        """ListContainerStats RPC."""
        return list(self.call("ListContainerStats", api.ListContainerStatsRequest(filter=filter), timeout).stats)

    def list_pod_sandbox_stats(self, filter: api.PodSandboxStatsFilter | None = None,
                               timeout: float | None = None) -> list[api.PodSandboxStats]:
        """ListPodSandboxStats RPC (containerd 1.6+)."""
        return list(self.call("ListPodSandboxStats", api.ListPodSandboxStatsRequest(filter=filter), timeout).stats)

    def run_pod_sandbox(self, config: api.PodSandboxConfig, runtime_handler: str = "",
                        timeout: float | None = None) -> str:
        """RunPodSandbox RPC; returns the sandbox id. Starting a VM sandbox can take long: pass a timeout."""
        request = api.RunPodSandboxRequest(config=config, runtime_handler=runtime_handler)
        return self.call("RunPodSandbox", request, timeout).pod_sandbox_id

    def stop_pod_sandbox(self, sandbox_id: str, timeout: float | None = None) -> None:
        """StopPodSandbox RPC (idempotent)."""
        self.call("StopPodSandbox", api.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout)

    def remove_pod_sandbox(self, sandbox_id: str, timeout: float | None = None) -> None:
        """RemovePodSandbox RPC (idempotent)."""
        self.call("RemovePodSandbox", api.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout)

    def create_container(self, sandbox_id: str, config: api.ContainerConfig, sandbox_config: api.PodSandboxConfig,
                         timeout: float | None = None) -> str:
        """CreateContainer RPC; returns the container id."""
        request = api.CreateContainerRequest(pod_sandbox_id=sandbox_id, config=config, sandbox_config=sandbox_config)
        return self.call("CreateContainer", request, timeout).container_id

    def start_container(self, container_id: str, timeout: float | None = None) -> None:
        """StartContainer RPC."""
        self.call("StartContainer", api.StartContainerRequest(container_id=container_id), timeout)

    def stop_container(self, container_id: str, grace_seconds: int = 0, timeout: float | None = None) -> None:
        """StopContainer RPC; `grace_seconds` before the runtime kills it."""
        self.call("StopContainer", api.StopContainerRequest(container_id=container_id, timeout=grace_seconds),
                  timeout)

    def remove_container(self, container_id: str, timeout: float | None = None) -> None:
        """RemoveContainer RPC."""
        self.call("RemoveContainer", api.RemoveContainerRequest(container_id=container_id), timeout)

    def exec_sync(self, container_id: str, cmd: list[str], command_timeout: int = 0,
                  timeout: float | None = None) -> api.ExecSyncResponse:
        """ExecSync RPC: run `cmd` in the container; the RPC deadline covers the command's own timeout."""
        request = api.ExecSyncRequest(container_id=container_id, cmd=cmd, timeout=command_timeout)
        deadline = timeout if timeout is not None else self.timeout + command_timeout
        return self.call("ExecSync", request, deadline)
