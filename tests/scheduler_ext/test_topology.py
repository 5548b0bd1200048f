"""The shipped topology: two extender replicas behind one Service, as kube-scheduler reaches them.

The Service is played by a TCP proxy that, like kube-proxy with the endpoints controller, sends
each new connection to the next ready replica (round robin) and takes a replica out of rotation
when its readiness probe (/readyz over HTTPS, as the shipped probe) fails. The replicas serve TLS
with one certificate, as the Deployment does; kube-scheduler's side verifies it. kube-scheduler's calls for a burst of sandboxed pods go
through it; no replica may answer with an error, and once one replica is SIGKILLed the other
answers alone.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from support import load_fixture

SANDBOX_1, SANDBOX_2 = "pool-sandbox-1", "pool-sandbox-2"


class ServiceProxy:
    """Round robin over ready backends, per connection; readiness from GET /readyz every 0.2 s."""

    def __init__(self, backends: list[tuple[str, int]], ca: str):
        self.backends = backends
        self.ca = ca
        self.ready: list[tuple[str, int]] = []
        self.connections = {b: 0 for b in backends}
        self.lock = threading.Lock()
        self.turn = 0
        self.stopped = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._probe, daemon=True).start()
        threading.Thread(target=self._accept, daemon=True).start()

    def _probe(self) -> None:
        while not self.stopped.is_set():
            ready = []
            for host, port in self.backends:
                try:
                    if requests.get(f"https://{host}:{port}/readyz", timeout=1, verify=self.ca).status_code == 200:
                        ready.append((host, port))
                except requests.RequestException:
                    pass
            with self.lock:
                self.ready = ready
            self.stopped.wait(0.2)

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                if not self.ready:
                    client.close()
                    continue
                backend = self.ready[self.turn % len(self.ready)]
                self.turn += 1
                self.connections[backend] += 1
            threading.Thread(target=self._relay, args=(client, backend), daemon=True).start()

    @staticmethod
    def _relay(client: socket.socket, backend: tuple[str, int]) -> None:
        try:
            upstream = socket.create_connection(backend, timeout=5)
        except OSError:
            client.close()
            return

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        threading.Thread(target=pump, args=(upstream, client), daemon=True).start()
        pump(client, upstream)

    def wait_ready(self, count: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.ready) == count:
                    return
            time.sleep(0.05)
        raise AssertionError(f"the proxy never saw {count} ready backends (ready: {self.ready})")

    def close(self) -> None:
        self.stopped.set()
        self.listener.close()


def scheduler_calls(k8s, i: int) -> list[tuple[str, dict]]:
    """What kube-scheduler sends for one sandboxed pod: filter, prioritize (and a preempt attempt)."""
    pod = k8s.pod(f"burst-{i}", runtime_class="runv")
    pod.pop("kind"), pod.pop("apiVersion")
    nodes = [SANDBOX_1, SANDBOX_2, "pool-general-1", "pool-general-2"]
    preempt = load_fixture("extender/preempt-ncc-true.json")
    preempt["Pod"] = pod
    return [("filter", {"Pod": pod, "NodeNames": nodes}),
            ("prioritize", {"Pod": pod, "NodeNames": [SANDBOX_1, SANDBOX_2]}),
            ("preempt", preempt)]


def call(url: str, ca: str, verb: str, body: dict) -> tuple[int, dict]:
    # A new connection per call (Connection: close) so that the proxy balances every call.
    resp = requests.post(f"{url}/{verb}", data=json.dumps(body), timeout=20, verify=ca,
                         headers={"Content-Type": "application/json", "Connection": "close"})
    return resp.status_code, resp.json()


def check(verb: str, status: int, body) -> None:
    assert status == 200, (verb, status, body)
    if verb == "filter":
        assert body["Error"] == "" and body["NodeNames"] == [SANDBOX_1, SANDBOX_2], body
    elif verb == "prioritize":
        assert {e["Host"] for e in body} == {SANDBOX_1, SANDBOX_2}
    else:
        assert set(body["NodeNameToMetaVictims"]) <= {SANDBOX_1, SANDBOX_2}


def burst(url: str, ca: str, k8s, pods: int) -> None:
    calls = [c for i in range(pods) for c in scheduler_calls(k8s, i)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        for (verb, _), (status, body) in zip(calls, pool.map(lambda c: call(url, ca, *c), calls)):
            check(verb, status, body)


def test_two_replicas_behind_a_service_answer_a_burst_and_survive_sigkill(extender, k8s, tls_files):
    crt, key = tls_files
    ca = str(crt)
    nodes = k8s.manifest_nodes()
    snapshot = k8s.snapshot_list(nodes, k8s.fresh_leases(nodes),
                                 [k8s.pod(f"vm-{i}", node=SANDBOX_1, runtime_class="runv") for i in range(3)])
    replicas = [extender(snapshot, "--cert-file", ca, "--key-file", str(key), tls=crt) for _ in range(2)]
    backends = [("127.0.0.1", int(r.url.rsplit(":", 1)[1])) for r in replicas]
    proxy = ServiceProxy(backends, ca)
    try:
        proxy.wait_ready(2)
        url = f"https://127.0.0.1:{proxy.port}"
        burst(url, ca, k8s, 40)
        assert all(n > 10 for n in proxy.connections.values()), proxy.connections  # both replicas served
        for replica in replicas:
            errors = [line for line in replica.logs() if line.get("level") in ("error", "critical")]
            assert errors == [], errors

        replicas[0].proc.send_signal(signal.SIGKILL)
        replicas[0].proc.wait(10)
        proxy.wait_ready(1)  # the readiness probe takes the dead replica out of the Service
        before = dict(proxy.connections)
        burst(url, ca, k8s, 20)
        assert proxy.connections[backends[0]] == before[backends[0]]
        assert proxy.connections[backends[1]] == before[backends[1]] + 60
    finally:
        proxy.close()
