"""A stand-in CRI runtime on a unix socket: N sandboxes shaped like containerd 1.6's answers.

Version and Status(verbose) answer like containerd 1.6.20 with the given runtime handlers, so the
agent's CRI discovery sees a consistent runtime too.

Shared by the inventory tests and bench/agent.py (100 sandboxes without starting 100 pods). The
sandboxes' pids, netns and cgroups are whatever the caller gives; `delay` makes every RPC slow.
"""

from __future__ import annotations

import json
import threading
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from node_agent.cri.client import api


@dataclass
class FakeSandbox:
    id: str
    name: str
    uid: str
    namespace: str = "team-a"
    handler: str = "kata"
    pid: int = 0
    netns: str | None = None
    cgroups_path: str = ""
    log_directory: str = ""
    containers: tuple[str, ...] = ("main",)
    ready: bool = True
    overhead_memory: int = 0  # PodSandboxConfig.linux.overhead.memory_limit_in_bytes (pod.spec.overhead)
    annotations: dict[str, str] = field(default_factory=dict)  # the pod's annotations, as the kubelet passes them


class CriStandIn:
    """Serves Status, ListPodSandbox, PodSandboxStatus, ListContainers, ContainerStatus on `path`."""

    def __init__(self, path: Path, sandboxes: list[FakeSandbox], delay: float = 0.0,
                 runtimes: dict[str, str] | None = None):
        self.sandboxes = sandboxes
        self.runtimes = runtimes or {"runc": "io.containerd.runc.v2"}  # handler -> runtime_type
        self.delay = delay
        self.release = threading.Event()
        self.calls: dict[str, int] = {}
        service = {name: grpc.unary_unary_rpc_method_handler(
            self._counted(name, getattr(self, "_" + name)), request.FromString, response.SerializeToString)
            for name, request, response in (
                ("Version", api.VersionRequest, api.VersionResponse),
                ("Status", api.StatusRequest, api.StatusResponse),
                ("ListPodSandbox", api.ListPodSandboxRequest, api.ListPodSandboxResponse),
                ("PodSandboxStatus", api.PodSandboxStatusRequest, api.PodSandboxStatusResponse),
                ("ListContainers", api.ListContainersRequest, api.ListContainersResponse),
                ("ContainerStatus", api.ContainerStatusRequest, api.ContainerStatusResponse))}
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4),
                                  handlers=[grpc.method_handlers_generic_handler("runtime.v1.RuntimeService", service)])
        self.server.add_insecure_port(f"unix://{path}")
        self.server.start()

    def close(self) -> None:
        self.release.set()
        self.server.stop(grace=None)

    def _counted(self, name, fn):
        def handler(request, context):
            self.calls[name] = self.calls.get(name, 0) + 1
            if self.delay:
                self.release.wait(self.delay)
            return fn(request, context)
        return handler

    def _find(self, sandbox_id: str, context) -> FakeSandbox:
        for sandbox in self.sandboxes:
            if sandbox.id == sandbox_id:
                return sandbox
        context.abort(grpc.StatusCode.NOT_FOUND, f"an error occurred when try to find sandbox {sandbox_id}")

    def _Version(self, request, context):
        return api.VersionResponse(version="0.1.0", runtime_name="containerd", runtime_version="1.6.20~ds1",
                                   runtime_api_version="v1")

    def _Status(self, request, context):
        config = {"containerd": {"defaultRuntimeName": "runc", "runtimes": {
            handler: {"runtimeType": runtime_type} for handler, runtime_type in self.runtimes.items()}}}
        info = {"config": json.dumps(config)} if request.verbose else {}
        return api.StatusResponse(status=api.RuntimeStatus(conditions=[
            api.RuntimeCondition(type="RuntimeReady", status=True)]), info=info)

    def _meta(self, s: FakeSandbox):
        return api.PodSandboxMetadata(name=s.name, uid=s.uid, namespace=s.namespace)

    def _state(self, s: FakeSandbox):
        return api.SANDBOX_READY if s.ready else api.SANDBOX_NOTREADY

    def _ListPodSandbox(self, request, context):
        return api.ListPodSandboxResponse(items=[
            api.PodSandbox(id=s.id, metadata=self._meta(s), state=self._state(s), runtime_handler=s.handler,
                           annotations=s.annotations)
            for s in self.sandboxes])

    def _PodSandboxStatus(self, request, context):
        s = self._find(request.pod_sandbox_id, context)
        namespaces = [{"type": "pid"}, {"type": "ipc"}, {"type": "mount"}]
        if s.netns:
            namespaces.append({"type": "network", "path": s.netns})
        info = {"pid": s.pid, "processStatus": "running", "runtimeHandler": s.handler,
                "config": {"metadata": {"name": s.name, "uid": s.uid, "namespace": s.namespace},
                           "log_directory": s.log_directory,
                           "linux": {"overhead": {"memory_limit_in_bytes": s.overhead_memory}}},
                "runtimeSpec": {"linux": {"namespaces": namespaces, "cgroupsPath": s.cgroups_path}}}
        status = api.PodSandboxStatus(id=s.id, metadata=self._meta(s), state=self._state(s), runtime_handler=s.handler,
                                      annotations=s.annotations)
        return api.PodSandboxStatusResponse(status=status, info={"info": json.dumps(info)} if request.verbose else {})

    def _containers(self):
        for s in self.sandboxes:
            for name in s.containers:
                yield s, name, f"{s.id}-{name}"

    def _ListContainers(self, request, context):
        return api.ListContainersResponse(containers=[
            api.Container(id=cid, pod_sandbox_id=s.id, metadata=api.ContainerMetadata(name=name),
                          state=api.CONTAINER_RUNNING) for s, name, cid in self._containers()])

    def _ContainerStatus(self, request, context):
        for s, name, cid in self._containers():
            if cid == request.container_id:
                return api.ContainerStatusResponse(status=api.ContainerStatus(
                    id=cid, metadata=api.ContainerMetadata(name=name), state=api.CONTAINER_RUNNING,
                    log_path=f"{s.log_directory}/{name}/0.log"))
        context.abort(grpc.StatusCode.NOT_FOUND, f"container {request.container_id} not found")
