"""Fixtures for the extender tests: cluster objects shaped like the captured v1.24 fixtures, and a
real `python3 -m sandgate extender --snapshot ...` server on a free loopback port."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests

from sandgate import keys
from support import EXAMPLE_POLICY, REPO, load_shared

AGENT_NS = "sandgate-system"  # agent.namespace of examples/policy.yaml


def micro_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def manifest_nodes() -> list[dict]:
    """The four Node objects of the captured extender cluster (pool-sandbox-1/2, pool-general-1/2)."""
    return copy.deepcopy(load_shared("MANIFEST.json")["extender"]["nodes"])


def lease(node: str, age_seconds: float = 0, duration: int = 90) -> dict:
    """The agent's heartbeat Lease for `node`, renewed `age_seconds` ago."""
    renew = datetime.now(timezone.utc) - timedelta(seconds=age_seconds)
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": keys.agent_lease_name(node), "namespace": AGENT_NS},
            "spec": {"holderIdentity": node, "leaseDurationSeconds": duration, "renewTime": micro_time(renew)}}


def pod(name: str, node: str = "", runtime_class: str | None = None, cpu: str = "100m", memory: str = "64Mi",
        namespace: str = "batch-jobs", annotations: dict | None = None, overhead: dict | None = None,
        phase: str = "Running", uid: str | None = None) -> dict:
    """A Pod object as the API server stores it."""
    spec: dict = {"containers": [{"name": "c", "image": "alpine:3.19",
                                  "resources": {"requests": {"cpu": cpu, "memory": memory}}}]}
    if node:
        spec["nodeName"] = node
    if runtime_class:
        spec["runtimeClassName"] = runtime_class
    if overhead:
        spec["overhead"] = overhead
    meta: dict = {"name": name, "namespace": namespace, "uid": uid or str(uuid.uuid4())}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": {"phase": phase}}


def fresh_leases(nodes: list[dict]) -> list[dict]:
    return [lease(n["metadata"]["name"]) for n in nodes]


def snapshot_list(*groups: list[dict]) -> dict:
    return {"apiVersion": "v1", "kind": "List", "items": [item for group in groups for item in group]}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A running extender subprocess."""

    def __init__(self, proc: subprocess.Popen, url: str, log_path: Path):
        self.proc, self.url, self.log_path = proc, url, log_path

    def post(self, verb: str, body, **kwargs) -> requests.Response:
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return requests.post(f"{self.url}/{verb}", data=data, headers={"Content-Type": "application/json"},
                             timeout=10, **kwargs)

    def logs(self) -> list[dict]:
        out = []
        for line in self.log_path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out


def start_server(tmp_path: Path, items: dict, *extra: str, policy: Path = EXAMPLE_POLICY,
                 cluster_version: str | None = "1.24") -> Server:
    snap = tmp_path / f"snapshot-{uuid.uuid4().hex[:6]}.json"
    snap.write_text(json.dumps(items))
    port = free_port()
    args = [sys.executable, "-m", "sandgate", "extender", "--config", str(policy), "--snapshot", str(snap),
            "--host", "127.0.0.1", "--port", str(port), *extra]
    if cluster_version:
        args += ["--cluster-version", cluster_version]
    log_path = tmp_path / f"extender-{port}.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(args, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
    server = Server(proc, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"extender exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            if requests.get(f"{server.url}/readyz", timeout=1).status_code == 200:
                return server
        except requests.ConnectionError:
            pass
        time.sleep(0.1)
    stop_server(server)
    raise AssertionError(f"extender not ready within 30 s:\n{log_path.read_text()}")


def stop_server(server: Server) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait(timeout=5)


@pytest.fixture
def extender(tmp_path):
    """Factory: start(items, *flags) -> Server; every server is stopped at teardown."""
    started: list[Server] = []

    def start(items: dict, *extra: str, **kwargs) -> Server:
        server = start_server(tmp_path, items, *extra, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        stop_server(server)


@pytest.fixture
def k8s():
    """Builders of cluster objects (a fixture, because test modules cannot import this conftest)."""
    from types import SimpleNamespace

    return SimpleNamespace(manifest_nodes=manifest_nodes, lease=lease, pod=pod, fresh_leases=fresh_leases,
                           snapshot_list=snapshot_list, micro_time=micro_time)
