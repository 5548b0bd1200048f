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

from sandgate.core import keys
from support import EXAMPLE_POLICY, REPO, JsonHandler, load_fixture, self_signed_localhost, stop_process

AGENT_NS = keys.DEFAULT_AGENT_NAMESPACE  # agent.namespace of examples/policy.yaml


def micro_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def manifest_nodes() -> list[dict]:
    """The four Node objects of the captured extender cluster (pool-sandbox-1/2, pool-general-1/2)."""
    return copy.deepcopy(load_fixture("MANIFEST.json")["extender"]["nodes"])


def lease(node: str, age_seconds: float = 0, duration: int = 90) -> dict:
    """The agent's heartbeat Lease for `node`, renewed `age_seconds` ago."""
    renew = datetime.now(timezone.utc) - timedelta(seconds=age_seconds)
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": keys.agent_lease_name(node), "namespace": AGENT_NS},
            "spec": {"holderIdentity": node, "leaseDurationSeconds": duration, "renewTime": micro_time(renew)}}


def with_slot(pod: dict, handler: str, count: str = "1") -> dict:
    """`pod` requesting `count` sandbox slots of `handler` in its first container, as the webhook routes it."""
    resources = pod["spec"]["containers"][0].setdefault("resources", {})
    for kind in ("requests", "limits"):
        resources.setdefault(kind, {})[keys.sandbox_resource(handler)] = count
    return pod


def pod(name: str, node: str = "", runtime_class: str | None = None, cpu: str = "100m", memory: str = "64Mi",
        namespace: str = "batch-jobs", annotations: dict | None = None, overhead: dict | None = None,
        phase: str = "Running", uid: str | None = None, slot: bool = True) -> dict:
    """A Pod object as the API server stores it; with a runtime class of the example policy (whose
    handlers are named like the classes) it requests that handler's slot, as a routed pod does."""
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
    obj = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": {"phase": phase}}
    return with_slot(obj, runtime_class) if runtime_class and slot else obj


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


def start_server(tmp_path: Path, items: dict | None, *extra: str, policy: Path = EXAMPLE_POLICY,
                 cluster_version: str | None = "1.24", tls: Path | None = None) -> Server:
    """Start the extender from a snapshot of `items`, or (items None) with the source given in `extra`."""
    port = free_port()
    args = [sys.executable, "-m", "sandgate", "extender", "--config", str(policy),
            "--host", "127.0.0.1", "--port", str(port), *extra]
    if items is not None:
        snap = tmp_path / f"snapshot-{uuid.uuid4().hex[:6]}.json"
        snap.write_text(json.dumps(items))
        args += ["--snapshot", str(snap)]
    if cluster_version:
        args += ["--cluster-version", cluster_version]
    log_path = tmp_path / f"extender-{port}.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(args, cwd=REPO, stdout=log_file, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
    server = Server(proc, f"{'https' if tls else 'http'}://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"extender exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            if requests.get(f"{server.url}/readyz", timeout=1, verify=str(tls) if tls else True).status_code == 200:
                return server
        except (requests.ConnectionError, requests.Timeout):  # a loaded machine may answer late
            pass
        time.sleep(0.1)
    stop_server(server)
    raise AssertionError(f"extender not ready within 30 s:\n{log_path.read_text()}")


def stop_server(server: Server) -> None:
    stop_process(server.proc)


@pytest.fixture
def extender(tmp_path):
    """Factory: start(items, *flags) -> Server; every server is stopped at teardown."""
    started: list[Server] = []

    def start(items: dict | None, *extra: str, **kwargs) -> Server:
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
                           snapshot_list=snapshot_list, micro_time=micro_time, with_slot=with_slot)


class FakeApiServer:
    """A tiny kube-apiserver stand-in over real HTTP: list/watch of nodes, pods and leases (with
    resourceVersions, bookmarks-free streams and an injectable 410 Gone).
    Just enough of the API for the extender's client code to be exercised end to end."""

    WATCH_CAP_SECONDS = 2  # end every watch stream quickly so tests see re-watches

    def __init__(self):
        import threading
        from http.server import ThreadingHTTPServer

        self.cond = threading.Condition()
        self.rv = 100
        self.objects: dict[str, dict[str, dict]] = {"nodes": {}, "pods": {}, "leases": {}}
        self.events: list[tuple[int, str, str, dict]] = []  # (rv, kind, type, object)
        self.gone_next_watch: set[str] = set()
        self.down = False
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    @staticmethod
    def key(obj: dict) -> str:
        meta = obj["metadata"]
        return f"{meta.get('namespace', '')}/{meta['name']}"

    def put(self, kind: str, obj: dict, event: str | None = None) -> dict:
        obj = copy.deepcopy(obj)
        with self.cond:
            self.rv += 1
            obj["metadata"]["resourceVersion"] = str(self.rv)
            existed = self.key(obj) in self.objects[kind]
            self.objects[kind][self.key(obj)] = obj
            self.events.append((self.rv, kind, event or ("MODIFIED" if existed else "ADDED"), obj))
            self.cond.notify_all()
        return obj

    def delete(self, kind: str, obj: dict) -> None:
        with self.cond:
            self.rv += 1
            gone = self.objects[kind].pop(self.key(obj))
            gone = dict(gone, metadata={**gone["metadata"], "resourceVersion": str(self.rv)})
            self.events.append((self.rv, kind, "DELETED", gone))
            self.cond.notify_all()

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}]}))
        return path

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        from urllib.parse import parse_qs, urlparse

        fake = self
        lists = {"/api/v1/nodes": "nodes", "/api/v1/pods": "pods",
                 f"/apis/coordination.k8s.io/v1/namespaces/{AGENT_NS}/leases": "leases"}

        class Handler(JsonHandler):
            protocol_version = "HTTP/1.1"  # watches stream chunked, as kube-apiserver does

            def status(self, code: int, reason: str, message: str) -> None:
                self.send_json(code, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
                                 "reason": reason, "message": message})

            def do_GET(self):
                if fake.down:
                    self.close_connection = True
                    self.connection.close()
                    return
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                if url.path.rstrip("/") == "/version":
                    return self.send_json(200, {"major": "1", "minor": "24", "gitVersion": "v1.24.1", "gitCommit": "x",
                                           "gitTreeState": "clean", "buildDate": "2022-05-24T12:18:48Z",
                                           "goVersion": "go1.18.2", "compiler": "gc",
                                           "platform": "linux/amd64"})
                if url.path in lists:
                    kind = lists[url.path]
                    return self.watch(kind, query) if query.get("watch") == "true" else self.list(kind)
                self.status(404, "NotFound", url.path)

            def list(self, kind: str) -> None:
                with fake.cond:
                    items = list(fake.objects[kind].values())
                    rv = str(fake.rv)
                self.send_json(200, {"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": rv},
                                "items": items})

            def watch(self, kind: str, query: dict) -> None:
                self.start_watch()
                if kind in fake.gone_next_watch:
                    fake.gone_next_watch.discard(kind)
                    self.send_event({"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                                            "message": "too old resource version"}})
                else:
                    since = int(query.get("resourceVersion") or 0)
                    deadline = time.monotonic() + fake.WATCH_CAP_SECONDS
                    while time.monotonic() < deadline and not fake.down:
                        with fake.cond:
                            pending = [e for e in fake.events if e[0] > since and e[1] == kind]
                            if not pending:
                                fake.cond.wait(0.1)
                                continue
                        for rv, _kind, typ, obj in pending:
                            self.send_event({"type": typ, "object": obj})
                            since = rv
                self.end_watch()

        return Handler


@pytest.fixture
def fake_api():
    api = FakeApiServer()
    yield api
    api.close()


@pytest.fixture
def tls_files(tmp_path):
    """A self-signed serving certificate for 127.0.0.1 (it is its own CA)."""
    return self_signed_localhost(tmp_path, "sandgate-extender")
