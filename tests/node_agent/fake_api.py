"""A kube-apiserver stand-in on loopback for the agent's tests and bench/agent.py: one Node, Leases."""

from __future__ import annotations

import json
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path

from support import JsonHandler


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
        self.node = node
        self.leases: dict[str, dict] = {}
        self.requests: list[dict] = []
        self.fail: dict[str, list[int]] = {}
        self.lock = threading.Lock()
        api = self

        class Handler(JsonHandler):
            def _handle(self) -> None:
                body = self.read_json()
                path = self.path.split("?")[0]
                with api.lock:
                    api.requests.append({"method": self.command, "path": path, "body": body,
                                         "contentType": self.headers.get("Content-Type")})
                    injected = api.fail.get(f"{self.command} {path}") or api.fail.get(self.command) or []
                    if injected:
                        status = injected.pop(0)
                        return self.send_json(status, {"kind": "Status", "code": status, "message": "injected"})
                    status, answer = api.route(self.command, path, body)
                self.send_json(status, answer)

            do_GET = do_PATCH = do_POST = do_PUT = _handle

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

