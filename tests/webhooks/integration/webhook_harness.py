"""Test harness: real `python3 -m sandgate webhook` processes over TLS, and a fake Kubernetes API on loopback.

The webhook is always started through the real command as a subprocess, with certificates from
the real `sandgate certs generate`, on a free port of 127.0.0.1; every fixture stops what it
starts. The fake API speaks just enough of the Kubernetes API (GET /version, list and chunked
watch of namespaces, 410 Gone, failures on demand) for the real kubernetes client to drive the
namespace cache.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import requests
import yaml

from support import EXAMPLE_POLICY, REPO, JsonHandler, load_fixture, stop_process

START_TIMEOUT = 30.0
NAMESPACE = "payments-sandbox"  # the captured fixtures' namespace, labelled sandgate.io/isolation=sandboxed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def generate_pki(out: Path) -> Path:
    """CA + serving certificate for 127.0.0.1 via the real `sandgate certs generate`."""
    subprocess.run([sys.executable, "-m", "sandgate", "certs", "generate", "--service", "sandgate-webhook",
                    "--namespace", "sandgate-system", "--out", str(out), "--ip", "127.0.0.1"],
                   cwd=REPO, check=True, capture_output=True, timeout=60)
    return out


def review(case: str, version: str = "v1") -> dict:
    """A captured AdmissionReview request, e.g. review("01-create-bare-pod", "v1beta1")."""
    return load_fixture(f"admission/{version}-{case}.json")


ADMISSION_CASES = [
    "01-create-bare-pod", "02-create-nodeselector-tolerations", "03a-create-runtimeclass-runv",
    "03b-create-runtimeclass-gvisor", "04-create-by-replicaset-controller", "05a-create-init-limits-special-keys",
    "05b-create-tilde-in-keys-rejected-by-validation", "06-create-hostnetwork-privileged",
    "07-create-dry-run-server", "08a-update-kubectl-label", "08b-update-kubectl-replace",
    "08c-update-dry-run-server",
]


class Webhook:
    """One `sandgate webhook` subprocess; `stop()` terminates it (and kills it if it lingers)."""

    def __init__(self, workdir: Path, *extra: str, policy: dict | None = None, pki: Path | None = None):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pki = pki or generate_pki(self.dir / "pki")
        # The served files are copies, so a test can rotate them without touching `pki`.
        self.cert = self.dir / "tls.crt"
        self.key = self.dir / "tls.key"
        shutil.copy(self.pki / "tls.crt", self.cert)
        shutil.copy(self.pki / "tls.key", self.key)
        self.ca = str(self.pki / "ca.crt")
        self.policy = self.dir / "policy.yaml"
        if policy is None:
            shutil.copy(EXAMPLE_POLICY, self.policy)
        else:
            self.policy.write_text(yaml.safe_dump(policy))
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.log_path = self.dir / "webhook.log"
        self.args = [sys.executable, "-m", "sandgate", "webhook", "--config", str(self.policy),
                     "--cert-file", str(self.cert), "--key-file", str(self.key),
                     "--host", "127.0.0.1", "--port", str(self.port), *extra]
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Webhook":
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.args, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"webhook exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                if requests.get(self.url + "/healthz", verify=self.ca, timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"webhook not healthy within {START_TIMEOUT}s:\n{self.logs()}")

    def stop(self) -> None:
        if self.proc:
            stop_process(self.proc, timeout=20)
        if getattr(self, "_log", None):
            self._log.close()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_records(self) -> list[dict]:
        out = []
        for line in self.logs().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def post(self, path: str, body: dict | bytes, session: requests.Session | None = None,
             content_type: str = "application/json", **kwargs) -> requests.Response:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        return (session or requests).post(self.url + path, data=data, verify=self.ca, timeout=20,
                                          headers={"Content-Type": content_type, **kwargs.pop("headers", {})},
                                          **kwargs)

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.url + path, verify=self.ca, timeout=20, **kwargs)


# ---- a fake Kubernetes API --------------------------------------------------------------------

class FakeKubeAPI:
    """Namespaces with labels, a resourceVersion counter, list + chunked watch, injectable failures."""

    def __init__(self, namespaces: dict[str, dict[str, str]], watch_idle_seconds: float = 1.0):
        self.lock = threading.Condition()
        self.rv = 100
        self.namespaces = {name: (labels, self.rv) for name, labels in namespaces.items()}
        self.events: list[tuple[int, str, dict]] = []  # (rv, type, object)
        self.fail_list_status: int | None = None  # answer every list with this status while set
        self.gone_below: int = 0  # a watch from a resourceVersion below this gets ERROR 410
        self.watch_idle_seconds = watch_idle_seconds
        self.lists = 0
        self.watches = 0
        self.runtime_classes = {"runv", "gvisor"}  # node.k8s.io/v1beta1 RuntimeClasses that exist
        self.runtime_class_gets = 0
        # GET /version of a real v1.24.1 API server (every field is required by the client's model).
        self.version = {"major": "1", "minor": "24", "gitVersion": "v1.24.1",
                        "gitCommit": "3ddd0f45aa91e2f30c70734b175631bec5b5825a", "gitTreeState": "clean",
                        "buildDate": "2022-05-24T12:18:48Z", "goVersion": "go1.18.2", "compiler": "gc",
                        "platform": "linux/amd64"}
        api = self

        class Handler(JsonHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                url = urlparse(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                if url.path.rstrip("/") == "/version":
                    return self.send_json(200, api.version, close=True)
                prefix = "/apis/node.k8s.io/v1beta1/runtimeclasses/"
                if url.path.startswith(prefix):
                    name = url.path[len(prefix):]
                    with api.lock:
                        api.runtime_class_gets += 1
                    if name in api.runtime_classes:
                        return self.send_json(200, {"kind": "RuntimeClass", "apiVersion": "node.k8s.io/v1beta1",
                                                    "metadata": {"name": name}, "handler": name}, close=True)
                    return self.send_json(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                                "reason": "NotFound", "code": 404,
                                                "message": f'runtimeclasses.node.k8s.io "{name}" not found'},
                                          close=True)
                if url.path != "/api/v1/namespaces":
                    return self.send_json(404, {"kind": "Status", "code": 404, "message": "not found"}, close=True)
                if query.get("watch") in ("true", "1"):
                    return self._watch(int(query.get("resourceVersion") or 0), float(query.get("timeoutSeconds", 60)))
                return self._list()

            def _list(self):
                with api.lock:
                    api.lists += 1
                    if api.fail_list_status:
                        return self.send_json(api.fail_list_status, {"kind": "Status", "code": api.fail_list_status,
                                                                     "message": "injected failure"}, close=True)
                    items = [{"metadata": {"name": n, "labels": labels, "resourceVersion": str(rv)}}
                             for n, (labels, rv) in api.namespaces.items()]
                    doc = {"kind": "NamespaceList", "apiVersion": "v1",
                           "metadata": {"resourceVersion": str(api.rv)}, "items": items}
                self.send_json(200, doc, close=True)

            def _watch(self, since: int, timeout: float):
                with api.lock:
                    api.watches += 1
                self.start_watch()
                try:
                    if since < api.gone_below:
                        self.send_event({"type": "ERROR", "object": {
                            "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410,
                            "reason": "Expired", "message": f"too old resource version: {since}"}})
                    else:
                        deadline = time.monotonic() + min(timeout, api.watch_idle_seconds)
                        sent = since
                        while time.monotonic() < deadline:
                            with api.lock:
                                pending = [e for e in api.events if e[0] > sent]
                                if not pending:
                                    api.lock.wait(max(0.0, deadline - time.monotonic()))
                                    continue
                            for rv, kind, obj in pending:
                                self.send_event({"type": kind, "object": obj})
                                sent = rv
                    self.end_watch()
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def set_labels(self, name: str, labels: dict[str, str], record_event: bool = True) -> None:
        """Create/relabel a namespace; with record_event=False only a relist can see it."""
        with self.lock:
            self.rv += 1
            kind = "MODIFIED" if name in self.namespaces else "ADDED"
            self.namespaces[name] = (labels, self.rv)
            if record_event:
                self.events.append((self.rv, kind, {"kind": "Namespace", "apiVersion": "v1", "metadata": {
                    "name": name, "labels": labels, "resourceVersion": str(self.rv)}}))
            self.lock.notify_all()

    def delete(self, name: str) -> None:
        with self.lock:
            self.rv += 1
            self.namespaces.pop(name, None)
            self.events.append((self.rv, "DELETED", {"kind": "Namespace", "apiVersion": "v1", "metadata": {
                "name": name, "resourceVersion": str(self.rv)}}))
            self.lock.notify_all()

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        }))
        return path

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.1):
    """Poll `predicate` until it returns a truthy value (returned) or the timeout passes (None)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return None
