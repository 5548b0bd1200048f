"""Fake host roots (containerd config, shims, /dev/kvm) and policies for the agent tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from support import REPO

POLICY = """\
apiVersion: sandgate.io/v1alpha1
kind: SandboxPolicy
defaultProfile: kata
profiles:
  kata:
    runtimeClassName: kata
    handler: kata
    runtimeType: io.containerd.kata.v2
    overhead: {podFixed: {cpu: 250m, memory: 160Mi}}
  gvisor:
    runtimeClassName: gvisor
    handler: runsc
    runtimeType: io.containerd.runsc.v1
%s
agent:
  maxSandboxes: 100
  reservedMemory: 1Gi
%s
"""

V2_HEAD = 'version = 2\n'
V2_TABLE = 'plugins."io.containerd.grpc.v1.cri".containerd.runtimes'
V3_TABLE = 'plugins."io.containerd.cri.v1.runtime".containerd.runtimes'


def runtime_toml(table: str, handler: str, runtime_type: str, extra: str = "") -> str:
    return f'\n[{table}.{handler}]\n  runtime_type = "{runtime_type}"\n{extra}'


class FakeRoot:
    """A host filesystem tree under tmp_path."""

    def __init__(self, path: Path):
        self.path = path
        (path / "etc/containerd").mkdir(parents=True)

    def write(self, rel: str, text: str) -> Path:
        target = self.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        return target

    def config(self, text: str) -> Path:
        return self.write("etc/containerd/config.toml", text)

    def shim(self, name: str, directory: str = "usr/local/bin", executable: bool = True) -> Path:
        target = self.write(f"{directory}/{name}", "#!/bin/sh\nexit 0\n")
        target.chmod(0o755 if executable else 0o644)
        return target

    def kvm(self) -> Path:
        return self.write("dev/kvm", "")


@pytest.fixture
def root(tmp_path) -> FakeRoot:
    return FakeRoot(tmp_path / "host")


@pytest.fixture
def policy_file(tmp_path):
    """policy_file(agent_extra="", gvisor_extra="") -> a policy with kata (160Mi overhead) and gvisor (runsc)."""

    def make(agent_extra: str = "", gvisor_extra: str = "") -> Path:
        path = tmp_path / "policy.yaml"
        path.write_text(POLICY % (gvisor_extra, agent_extra))
        return path

    return make


def run_agent(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """The real command: python3 -m sandgate agent ARGS."""
    return subprocess.run([sys.executable, "-m", "sandgate", "agent", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.fixture
def agent_cmd():
    """The real command runner: agent_cmd(*args) -> CompletedProcess."""
    return run_agent


@pytest.fixture
def dry_run(policy_file, root):
    """dry_run(*extra, policy=None) -> the parsed JSON of `--once --dry-run --node-allocatable-memory 8Gi`."""

    def run(*extra: str, policy: Path | None = None) -> dict:
        done = run_agent("--config", str(policy or policy_file()), "--node-name", "n1", "--root", str(root.path),
                         "--once", "--dry-run", "--node-allocatable-memory", "8Gi", *extra)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    return run


@pytest.fixture
def tables():
    return SimpleNamespace(V2_HEAD=V2_HEAD, V2=V2_TABLE, V3=V3_TABLE, runtime=runtime_toml)


def merge_patch(target: dict, patch: dict) -> dict:
    """RFC 7386, as the API server applies application/merge-patch+json."""
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):
            out[key] = merge_patch(out.get(key) if isinstance(out.get(key), dict) else {}, value)
        else:
            out[key] = value
    return out


class FakeApi:
    """A kube-apiserver stand-in on loopback: GET/PATCH one Node, GET/POST/PUT Leases; records every request
    and can answer the next requests of a method ("PATCH") or of one method and path ("GET /api/v1/...")
    with injected error statuses."""

    def __init__(self, node: dict):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.node = node
        self.leases: dict[str, dict] = {}
        self.requests: list[dict] = []
        self.fail: dict[str, list[int]] = {}
        self.lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                path = self.path.split("?")[0]
                with api.lock:
                    api.requests.append({"method": self.command, "path": path, "body": body,
                                         "contentType": self.headers.get("Content-Type")})
                    injected = api.fail.get(f"{self.command} {path}") or api.fail.get(self.command) or []
                    if injected:
                        status = injected.pop(0)
                        return self._answer(status, {"kind": "Status", "code": status, "message": "injected"})
                    status, answer = api.route(self.command, path, body)
                self._answer(status, answer)

            do_GET = do_PATCH = do_POST = do_PUT = _handle

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def route(self, method: str, path: str, body: dict | None) -> tuple[int, dict]:
        node_path = f"/api/v1/nodes/{self.node['metadata']['name']}"
        lease_prefix = "/apis/coordination.k8s.io/v1/namespaces/"
        not_found = {"kind": "Status", "code": 404, "reason": "NotFound"}
        if path == node_path and method == "GET":
            return 200, self.node
        if path == node_path and method == "PATCH":
            self.node = merge_patch(self.node, body)
            return 200, self.node
        if path.startswith(lease_prefix):
            rest = path[len(lease_prefix):].split("/")  # ns, "leases", [name]
            if method == "POST" and len(rest) == 2:
                key = f"{rest[0]}/{body['metadata']['name']}"
                if key in self.leases:
                    return 409, {"kind": "Status", "code": 409, "reason": "AlreadyExists"}
                self.leases[key] = {**body, "metadata": {**body["metadata"], "resourceVersion": "1"}}
                return 201, self.leases[key]
            key = f"{rest[0]}/{rest[2]}" if len(rest) == 3 else ""
            if method == "GET":
                return (200, self.leases[key]) if key in self.leases else (404, not_found)
            if method == "PUT" and key in self.leases:
                version = int(self.leases[key]["metadata"]["resourceVersion"]) + 1
                self.leases[key] = {**body, "metadata": {**body["metadata"], "resourceVersion": str(version)}}
                return 200, self.leases[key]
        return 404, not_found

    def kubeconfig(self, directory: Path) -> Path:
        path = directory / "kubeconfig"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "t"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}]}))
        return path

    def calls(self, method: str, prefix: str = "") -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["method"] == method and r["path"].startswith(prefix)]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_api():
    """A FakeApi serving Node n1 (8Gi allocatable, a foreign label and a stale sandgate label)."""
    node = {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": "n1", "resourceVersion": "7",
                         "labels": {"kubernetes.io/hostname": "n1", "sandgate.io/runtime.runv": "true"},
                         "annotations": {"sandgate.io/sandbox-capacity.runv": "9", "node.alpha.kubernetes.io/ttl": "0"}},
            "status": {"allocatable": {"cpu": "4", "memory": "8Gi"}}}
    api = FakeApi(node)
    yield api
    api.close()
