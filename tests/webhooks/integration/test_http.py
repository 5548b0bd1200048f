"""HTTP and TLS behaviour of the real webhook: bad requests, errors as JSON, TLS floor, keep-alive
under many connections, metrics summed across workers, readiness."""

from __future__ import annotations

import json
import re
import socket
import ssl
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from webhook_harness import review


@pytest.fixture(scope="module")
def hook(start_webhook):
    # Default --workers/--threads: the settings the keep-alive test must hold with.
    return start_webhook("--cluster-version", "1.24")


def bare(version: str = "v1") -> dict:
    return review("01-create-bare-pod", version)


def assert_400(res: requests.Response, reason: str) -> None:
    assert res.status_code == 400, res.text
    assert res.headers["Content-Type"] == "application/json"
    assert reason in res.json()["error"], res.json()


def test_wrong_content_type_is_400(hook):
    assert_400(hook.post("/mutate/runv", bare(), content_type="text/plain"), "Content-Type must be application/json")


def test_malformed_json_is_400(hook):
    assert_400(hook.post("/mutate/runv", b'{"apiVersion": '), "not valid JSON")
    assert_400(hook.post("/mutate/runv", b"[1, 2]"), "must be a JSON object")
    assert_400(hook.post("/mutate/runv", b"[" * 100000 + b"]" * 100000), "not valid JSON")
    # Deep objects too: a fast parser without a depth limit would crash the worker here.
    assert_400(hook.post("/mutate/runv", b'{"a":' * 500000 + b"1" + b"}" * 500000), "not valid JSON")
    assert_400(hook.post("/mutate/runv", b"\xff\xfe"), "not valid JSON")


def test_missing_request_or_uid_is_400(hook):
    doc = bare()
    del doc["request"]
    assert_400(hook.post("/mutate/runv", doc), "request is missing")
    doc = bare()
    del doc["request"]["uid"]
    assert_400(hook.post("/validate/runv", doc), "request.uid is missing")
    doc = bare()
    doc["request"]["uid"] = 42
    assert_400(hook.post("/mutate/runv", doc), "request.uid must be a string")
    doc = bare()
    doc["request"]["object"] = "pod"
    assert_400(hook.post("/mutate/runv", doc), "request.object must be an object")


def test_wrong_api_version_or_kind_is_400(hook):
    doc = bare()
    doc["apiVersion"] = "admission.k8s.io/v2"
    assert_400(hook.post("/mutate/runv", doc), "apiVersion must be admission.k8s.io/v1 or admission.k8s.io/v1beta1")
    doc = bare()
    doc["kind"] = "Pod"
    assert_400(hook.post("/mutate/runv", doc), 'kind must be "AdmissionReview"')


def test_body_over_the_size_cap_is_400(hook):
    doc = bare()
    doc["request"]["object"]["metadata"]["annotations"] = {"big": "x" * (3 * 1024 * 1024)}
    assert_400(hook.post("/mutate/runv", doc), "larger than the 3145728 byte limit")


def test_chunked_bodies_are_read_and_capped(hook):
    """Without Content-Length (chunked transfer) the body is read up to the cap, then refused."""
    body = json.dumps(bare()).encode()
    small = requests.post(hook.url + "/mutate/runv", data=iter([body[:100], body[100:]]), verify=hook.ca, timeout=20,
                          headers={"Content-Type": "application/json"})
    assert small.status_code == 200 and small.json()["response"]["allowed"] is True
    chunk = b" " * (1024 * 1024)
    big = requests.post(hook.url + "/mutate/runv", data=iter([chunk] * 4 + [body]), verify=hook.ca, timeout=20,
                        headers={"Content-Type": "application/json"})
    assert_400(big, "larger than the 3145728 byte limit")


def test_unknown_path_and_wrong_method_are_json(hook):
    res = hook.get("/nope")
    assert res.status_code == 404 and res.json() == {"error": "no such endpoint: /nope"}
    res = hook.get("/mutate/runv")
    assert res.status_code == 405 and "GET is not allowed" in res.json()["error"]
    assert "POST" in res.headers["Allow"]


def test_no_traceback_reaches_the_client(hook):
    for res in (hook.post("/mutate/runv", b"{"), hook.get("/nope")):
        assert "Traceback" not in res.text


def _handshake(port: int, ca: str, version: ssl.TLSVersion) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(ca)
        ctx.minimum_version = version
        ctx.maximum_version = version
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                return tls.version()


def test_tls_below_1_2_is_refused(hook, tmp_path):
    # Control: this client can speak TLS 1.1 to a server that allows it, so the refusal below is the webhook's.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        lenient = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        lenient.minimum_version = ssl.TLSVersion.TLSv1_1
        lenient.set_ciphers("DEFAULT:@SECLEVEL=0")
    lenient.load_cert_chain(hook.cert, hook.key)
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = threading.Thread(target=lambda: _serve_once(listener, lenient), daemon=True)
    accepted.start()
    assert _handshake(listener.getsockname()[1], hook.ca, ssl.TLSVersion.TLSv1_1) == "TLSv1.1"
    accepted.join(10)
    listener.close()

    with pytest.raises(ssl.SSLError):
        _handshake(hook.port, hook.ca, ssl.TLSVersion.TLSv1_1)
    assert _handshake(hook.port, hook.ca, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    assert _handshake(hook.port, hook.ca, ssl.TLSVersion.TLSv1_3) == "TLSv1.3"


def _serve_once(listener: socket.socket, ctx: ssl.SSLContext) -> None:
    conn, _ = listener.accept()
    try:
        with ctx.wrap_socket(conn, server_side=True):
            pass
    except (ssl.SSLError, OSError):
        conn.close()


def test_64_concurrent_keep_alive_tls_clients_all_get_answers(hook):
    """More kept-alive connections than worker threads (2 workers x 4 threads) must not stall."""
    clients, rounds = 64, 5
    all_connected = threading.Barrier(clients, timeout=60)
    doc = bare()

    def client(i: int) -> tuple[int, int]:
        session = requests.Session()
        # One connection per session, so the count below shows whether keep-alive held.
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=1)
        session.mount("https://", adapter)
        answered = 0
        for n in range(rounds):
            res = hook.post("/mutate/runv", doc, session=session)
            if res.status_code == 200 and res.json()["response"]["allowed"] is True:
                answered += 1
            if n == 0:
                all_connected.wait()  # all 64 connections are open and idle at the same time
        pools = [adapter.poolmanager.pools[key] for key in adapter.poolmanager.pools.keys()]
        session.close()
        return answered, sum(pool.num_connections for pool in pools)

    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = list(pool.map(client, range(clients), timeout=120))
    assert [answered for answered, _ in results] == [rounds] * clients
    assert [conns for _, conns in results] == [1] * clients  # every client kept its one connection


def _requests_total(text: str, labels: str) -> float:
    match = re.search(r"^sandgate_webhook_requests_total\{" + re.escape(labels) + r"\} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def _latency_count(text: str) -> float:
    match = re.search(r'^sandgate_webhook_request_duration_seconds_count\{endpoint="validate"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def test_metrics_sum_requests_across_workers(hook):
    labels = 'endpoint="validate",profile="runv",reason="runtime-class-mismatch",verdict="denied"'
    fresh = {"Connection": "close"}  # a new connection per request, so both workers take some
    before = hook.get("/metrics", headers=fresh).text
    sent = 0
    pids: set[int] = set()
    doc = bare()

    def one(_):
        return hook.post("/validate/runv", doc, headers=fresh).json()["response"]["allowed"]

    for _ in range(10):  # bounded: stop once both workers have answered some
        with ThreadPoolExecutor(max_workers=8) as pool:
            assert not any(pool.map(one, range(16)))
        sent += 16
        pids = {r["pid"] for r in hook.log_records() if r.get("msg") == "admission" and r.get("endpoint") == "/validate/runv"}
        if len(pids) >= 2:
            break
    assert len(pids) >= 2, "requests never reached the second worker"
    # Every scrape, whichever worker answers it, reports the total of both.
    for _ in range(6):
        text = hook.get("/metrics", headers=fresh).text
        assert _requests_total(text, labels) - _requests_total(before, labels) == sent
        assert _latency_count(text) - _latency_count(before) >= sent
    bad = hook.post("/mutate/runv", b"{", headers=fresh)
    assert bad.status_code == 400
    assert _requests_total(hook.get("/metrics").text, 'endpoint="mutate",profile="",reason="malformed_json",verdict="invalid"') >= 1


def test_readyz_reports_each_check(hook):
    res = hook.get("/readyz")
    assert res.status_code == 200
    body = res.json()
    assert body["ready"] is True
    assert set(body["checks"]) == {"policy", "certificate", "namespaces"}
    assert "no Kubernetes credentials" in body["checks"]["namespaces"]["detail"]
    assert hook.get("/healthz").json() == {"status": "ok"}


def test_gunicorn_logs_are_json(hook):
    lines = [line for line in hook.logs().splitlines() if line.strip()]
    assert lines
    records = [json.loads(line) for line in lines]
    assert any(r["logger"] == "gunicorn.error" for r in records)
    assert any(r["logger"] == "gunicorn.access" and r["path"] == "/healthz" and r["status"] == 200 for r in records)
