"""Benchmark the mutating webhook over TLS keep-alive, side by side with a no-op Flask app.

    python3 bench/webhook.py [--url URL] [--duration S] [--quick]

Without --url it starts the real `sandgate webhook` (one worker, default threads, --cluster-version
1.24) and, in the same session, a no-op Flask app (reads the body, answers a constant allowed
AdmissionReview) under the very same gunicorn settings (webhooks.server.gunicorn_options). With
--url it measures that webhook instead (any server answering AdmissionReview; --cacert to verify
it) against the local no-op baseline.

Body: the captured AdmissionReview v1 of a bare pod (tests/fixtures), POSTed to the mutate path.
Scenarios, each with 1 and 64 client connections:
  fixed rate   200 req/s open loop (latency measured from the scheduled send time, so a stalled
               server cannot hide queueing: no coordinated omission), Python http.client threads;
  saturation   wrk (C, epoll) as fast as the server answers: a Python client on 2 shared cores
               would measure itself, not the server.
Figures are printed; nothing is asserted (timings are no test).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FIXTURE = REPO / "tests/fixtures/k8s-1.24/admission/v1-01-create-bare-pod.json"
RATE = 200
CONNECTIONS = (1, 64)
TARGET_P99_MS = 10.0
TARGET_RPS = 1000.0
TARGET_RATIO = 1.5


# ---- the no-op baseline server (run as a subprocess of this script) -------------------------

def serve_noop(args: argparse.Namespace) -> None:
    """A Flask app that reads the body and answers a constant allowed review, under our gunicorn settings."""
    from flask import Flask, Response, request

    from sandgate.core import jsonlog
    from sandgate.core.serving import GunicornApp, ReloadingContext
    from webhooks.server import gunicorn_options

    jsonlog.configure("info")
    answer = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                         "response": {"uid": "", "allowed": True}}).encode()

    def build():
        app = Flask("noop")

        @app.post("/mutate/<profile>")
        def mutate(profile):
            request.get_data()
            return Response(answer, mimetype="application/json")

        @app.get("/healthz")
        def healthz():
            return Response(b'{"status":"ok"}', mimetype="application/json")

        return app

    tls = ReloadingContext(args.cert, args.key)
    GunicornApp(gunicorn_options("127.0.0.1", args.port, args.workers, args.threads, tls), build).run()


# ---- servers --------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, ctx: ssl.SSLContext, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    parsed = urlparse(url)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            conn = http.client.HTTPSConnection(parsed.hostname, parsed.port, context=ctx, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} not healthy within {timeout}s")


def start_servers(workdir: Path, workers: int, threads: int, want_sandgate: bool):
    from certs.generate import generate, write

    write(generate("bench", "bench", ips=["127.0.0.1"]), workdir)
    shutil.copy(REPO / "examples/policy.yaml", workdir / "policy.yaml")
    ctx = ssl.create_default_context(cafile=str(workdir / "ca.crt"))
    procs, urls = {}, {}
    common = ["--workers", str(workers), "--threads", str(threads)]
    log = open(workdir / "servers.log", "wb")
    if want_sandgate:
        port = free_port()
        procs["sandgate"] = subprocess.Popen(
            [sys.executable, "-m", "sandgate", "webhook", "--config", str(workdir / "policy.yaml"),
             "--cert-file", str(workdir / "tls.crt"), "--key-file", str(workdir / "tls.key"), "--host", "127.0.0.1",
             "--port", str(port), "--cluster-version", "1.24", *common], cwd=REPO, stdout=log, stderr=log)
        urls["sandgate"] = f"https://127.0.0.1:{port}/mutate/runv"
    port = free_port()
    procs["noop"] = subprocess.Popen(
        [sys.executable, __file__, "--serve-noop", "--port", str(port), "--cert", str(workdir / "tls.crt"),
         "--key", str(workdir / "tls.key"), *common], cwd=REPO, stdout=log, stderr=log)
    urls["noop"] = f"https://127.0.0.1:{port}/mutate/runv"
    for name, proc in procs.items():
        wait_healthy(urls[name], ctx, proc)
    return procs, urls, ctx


# ---- load generators ------------------------------------------------------------------------

def fixed_rate(url: str, body: bytes, ctx: ssl.SSLContext, connections: int, duration: float) -> dict:
    """Open-loop load at RATE req/s spread over `connections` keep-alive connections."""
    parsed = urlparse(url)
    per_conn_interval = connections / RATE
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    start = time.monotonic() + 0.5

    def run(i: int) -> None:
        conn = http.client.HTTPSConnection(parsed.hostname, parsed.port, context=ctx, timeout=10)
        mine, n = [], 0
        while True:
            scheduled = start + i * (1 / RATE) + n * per_conn_interval
            if scheduled - start >= duration:
                break
            delay = scheduled - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                conn.request("POST", parsed.path, body=body, headers={"Content-Type": "application/json"})
                res = conn.getresponse()
                res.read()
                if res.status != 200:
                    raise OSError(f"HTTP {res.status}")
                mine.append(time.monotonic() - scheduled)
            except OSError:
                with lock:
                    errors[0] += 1
                conn.close()
                conn = http.client.HTTPSConnection(parsed.hostname, parsed.port, context=ctx, timeout=10)
            n += 1
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies.sort()
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else [0.0] * 99
    return {"p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000, "rps": len(latencies) / duration, "errors": errors[0]}


def worker_cpu_seconds(master: subprocess.Popen | None) -> float | None:
    """CPU time (user+system) of the gunicorn workers under `master`, from /proc (Linux)."""
    if master is None:
        return None
    try:
        children = Path(f"/proc/{master.pid}/task/{master.pid}/children").read_text().split()
        ticks = 0
        for pid in children:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


WRK_SCRIPT = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
"""


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def saturation(url: str, body_file: Path, connections: int, duration: float, workdir: Path,
               server: subprocess.Popen | None = None) -> dict:
    """wrk at full speed with `connections` keep-alive connections (+ the server's CPU per request)."""
    cpu_before = worker_cpu_seconds(server)
    script = workdir / "post.lua"
    script.write_text(WRK_SCRIPT)
    # One wrk thread: it keeps up with one Python worker and leaves the other core to the server.
    out = subprocess.run(["wrk", "-t", "1", "-c", str(connections), "-d", f"{duration:g}s", "--latency",
                          "-s", str(script), url], capture_output=True, text=True,
                         env={**os.environ, "BENCH_BODY": str(body_file)}, timeout=duration + 60).stdout
    cpu_after = worker_cpu_seconds(server)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    cpu_us = (cpu_after - cpu_before) / total * 1e6 if cpu_before is not None and cpu_after is not None and total else float("nan")
    lat = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock_errors = re.search(r"Socket errors: (.*)", out)

    def parse(text: str) -> float:
        m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
        return _ms(m.group(1), m.group(2))

    return {"rps": rps, "p50_ms": parse(lat["50"]), "p99_ms": parse(lat["99"]), "cpu_us": cpu_us,
            "errors": (int(errors.group(1)) if errors else 0), "socket_errors": sock_errors.group(1) if sock_errors else ""}


def check_answer(url: str, body: bytes, ctx: ssl.SSLContext) -> str:
    """One request first: the measured path must really be answering AdmissionReviews."""
    parsed = urlparse(url)
    conn = http.client.HTTPSConnection(parsed.hostname, parsed.port, context=ctx, timeout=10)
    conn.request("POST", parsed.path, body=body, headers={"Content-Type": "application/json"})
    res = conn.getresponse()
    doc = json.loads(res.read())
    conn.close()
    if res.status != 200 or doc.get("kind") != "AdmissionReview" or "allowed" not in doc.get("response", {}):
        raise SystemExit(f"{url} did not answer an AdmissionReview: HTTP {res.status} {doc}")
    response = doc["response"]
    return "patched" if response.get("patch") else "allowed" if response["allowed"] else "denied"


# ---- main -----------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="benchmark this webhook URL (e.g. https://host:8443/mutate/runv)")
    parser.add_argument("--cacert", help="CA to verify --url with (default: no verification)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement (default 10)")
    parser.add_argument("--quick", action="store_true", help="2 s per measurement: checks the bench works")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers of the local servers (default 1)")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker (default 4, the webhook's)")
    parser.add_argument("--serve-noop", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cert", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_noop:
        serve_noop(args)
        return 0
    if not shutil.which("wrk"):
        raise SystemExit("wrk is needed for the saturation runs: apt-get install -y wrk")
    duration = 2.0 if args.quick else args.duration
    body = FIXTURE.read_bytes()
    workdir = Path(tempfile.mkdtemp(prefix="sandgate-bench-"))
    procs, urls, ctx = start_servers(workdir, args.workers, args.threads, want_sandgate=not args.url)
    try:
        if args.url:
            target_ctx = ssl.create_default_context(cafile=args.cacert) if args.cacert else ssl._create_unverified_context()
            urls = {"sandgate": args.url, "noop": urls["noop"]}
            ctxs = {"sandgate": target_ctx, "noop": ctx}
        else:
            ctxs = {"sandgate": ctx, "noop": ctx}
        body_file = workdir / "body.json"
        body_file.write_bytes(body)
        print(f"sandgate answer to the benchmark body: {check_answer(urls['sandgate'], body, ctxs['sandgate'])}")
        print(f"servers: gunicorn gthread, {args.workers} worker(s) x {args.threads} threads, TLS, keep-alive; "
              f"{duration:g} s per measurement; body {len(body)} bytes; {os.cpu_count()} CPUs")
        results: dict[tuple[str, int, str], dict] = {}
        # Each scenario runs for both servers back to back, so load from other processes on a shared
        # machine drifts as little as possible between the two columns of a row.
        for conns in CONNECTIONS:
            for name in ("sandgate", "noop"):
                results[(name, conns, "rate")] = fixed_rate(urls[name], body, ctxs[name], conns, duration)
            for name in ("sandgate", "noop"):
                results[(name, conns, "sat")] = saturation(urls[name], body_file, conns, duration, workdir,
                                                           procs.get(name))
        print_table(results)
        print_targets(results)
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def print_table(results: dict) -> None:
    rows = []
    for conns in CONNECTIONS:
        for kind, metric, label in (("rate", "p50_ms", f"{RATE} req/s, {conns} conn: p50 ms"),
                                    ("rate", "p99_ms", f"{RATE} req/s, {conns} conn: p99 ms"),
                                    ("sat", "rps", f"saturation, {conns} conn: req/s"),
                                    ("sat", "p50_ms", f"saturation, {conns} conn: p50 ms"),
                                    ("sat", "p99_ms", f"saturation, {conns} conn: p99 ms"),
                                    ("sat", "cpu_us", f"saturation, {conns} conn: CPU us/req")):
            a, b = results[("sandgate", conns, kind)][metric], results[("noop", conns, kind)][metric]
            rows.append((label, a, b, a / b if b else float("nan")))
    print(f"\n| {'scenario':34} | {'sandgate':>9} | {'no-op':>9} | {'ratio':>6} |")
    print(f"|{'-' * 36}|{'-' * 11}|{'-' * 11}|{'-' * 8}|")
    for label, a, b, ratio in rows:
        print(f"| {label:34} | {a:9.2f} | {b:9.2f} | {ratio:6.2f} |")
    errors = {f"{n}/{c}/{k}": (r["errors"], r.get("socket_errors", "")) for (n, c, k), r in results.items()
              if r["errors"] or (r.get("socket_errors") and not r["socket_errors"].startswith("connect 0, read 0, write 0, timeout 0"))}
    print(f"\nerrors: {errors or 'none'}")


def print_targets(results: dict) -> None:
    checks = []
    for conns in CONNECTIONS:
        p99 = results[("sandgate", conns, "rate")]["p99_ms"]
        checks.append((f"p99 at {RATE} req/s, {conns} conn <= {TARGET_P99_MS:g} ms", p99 <= TARGET_P99_MS, f"{p99:.2f} ms"))
        rps = results[("sandgate", conns, "sat")]["rps"]
        base = results[("noop", conns, "sat")]["rps"]
        checks.append((f"saturation, {conns} conn >= {TARGET_RPS:g} req/s", rps >= TARGET_RPS, f"{rps:.0f} req/s"))
        checks.append((f"saturation, {conns} conn within {TARGET_RATIO}x of no-op", base / rps <= TARGET_RATIO,
                       f"no-op/sandgate = {base / rps:.2f}"))
    print("\ntargets:")
    for label, ok, value in checks:
        print(f"  {'met ' if ok else 'MISS'}  {label}: {value}")


if __name__ == "__main__":
    sys.exit(main())
