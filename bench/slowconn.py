"""Slow and idle connections against the webhook and the extender: do ordinary requests still get answered?

    python3 bench/slowconn.py [--connections 1000] [--duration 20] [--quick]
    python3 bench/slowconn.py --candidates      # the no-op app under each worker model, one table

A hostile tenant can open connections to any in-cluster port. This opens `--connections` of them
against ONE worker, in four equal kinds, and keeps that many open for the whole measurement
(reopening each as soon as the server closes it):
  tcp    TCP connect, then nothing;
  half   the first half of a TLS ClientHello, then nothing;
  tls    a finished TLS handshake, then nothing;
  slow   a finished handshake, then a request header one byte every 0.5 s.
Meanwhile ordinary requests go out at a steady rate, each on a NEW TLS connection (the hard case:
it must be accepted and handshaken amid the flood) and, in a second pass, on one keep-alive
connection. Reported: requests answered, failures (error or no answer within 10 s), p50/p99/max
latency, and how many hostile connections the server closed (its deadlines at work).

The hostile connections come from a separate process (asyncio), so they do not steal the
measuring client's GIL. Nothing is asserted: tests/test_serving.py checks the same by counts.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import webhook as webhook_bench  # noqa: E402  (wrk saturation, the open-loop fixed rate, server helpers)

KINDS = ("tcp", "half", "tls", "slow")
WEBHOOK_BODY = REPO / "tests/fixtures/k8s-1.24/admission/v1-01-create-bare-pod.json"
EXTENDER_BODY = REPO / "tests/fixtures/k8s-1.24/extender/filter-ncc-true-runv-pod.json"


# ---- the hostile side -----------------------------------------------------------------------

def client_hello(server_name: str = "localhost") -> bytes:
    """The bytes of a real TLS ClientHello (so `half` stops inside a genuine handshake)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


async def _hold(host: str, port: int, kind: str, stop_at: float, stats: dict, hello: bytes,
                ctx: ssl.SSLContext) -> None:
    """Keep one connection of `kind` open until `stop_at`, reopening it whenever the server closes it."""
    while time.monotonic() < stop_at:
        writer = None
        try:
            if kind in ("tls", "slow"):
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host, port, ssl=ctx, ssl_handshake_timeout=30), 30)
            else:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 30)
                if kind == "half":
                    writer.write(hello[:len(hello) // 2])
            stats["opened"] += 1
            stats["open"] += 1
            try:
                eof = asyncio.ensure_future(reader.read(65536))
                header = b"POST /filter HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                i = 0
                while not eof.done() and time.monotonic() < stop_at:
                    if kind == "slow":
                        writer.write(header[i % len(header):i % len(header) + 1])
                        i += 1
                    await asyncio.wait([eof], timeout=min(0.5, max(stop_at - time.monotonic(), 0.01)))
                if eof.done():
                    stats["closed_by_server"] += 1
                else:
                    eof.cancel()
            finally:
                stats["open"] -= 1
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            stats["open_failed"] += 1
            await asyncio.sleep(0.2)
        finally:
            if writer is not None:
                writer.transport.abort()


async def _flood(host: str, port: int, count: int, duration: float, report: Path) -> None:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    hello = client_hello()
    stats = {"opened": 0, "open": 0, "closed_by_server": 0, "open_failed": 0}
    stop_at = time.monotonic() + duration
    tasks = []
    for i in range(count):
        tasks.append(asyncio.ensure_future(_hold(host, port, KINDS[i % len(KINDS)], stop_at, stats, hello, ctx)))
        if i % 50 == 49:
            await asyncio.sleep(0.05)  # a ramp, not a SYN storm: the listen backlog is the kernel's
    while not all(t.done() for t in tasks):
        _publish(report, stats)
        await asyncio.sleep(0.2)
    _publish(report, stats)


def _publish(report: Path, stats: dict) -> None:
    """Replace the report file whole: a reader must never see it half written (it would read zeros)."""
    partial = report.with_suffix(".tmp")
    partial.write_text(json.dumps(stats))
    os.replace(partial, report)


def flood_main(argv: list[str]) -> None:
    """Entry of the hostile subprocess: host port count duration report-file."""
    host, port, count, duration, report = argv
    from sandgate.core.serving import raise_fd_limit
    raise_fd_limit(int(count))
    asyncio.run(_flood(host, int(port), int(count), float(duration), Path(report)))


class Flood:
    """The hostile subprocess: `count` connections held against host:port for `duration` seconds."""

    def __init__(self, host: str, port: int, count: int, duration: float, workdir: Path):
        self.report = workdir / f"flood-{port}.json"
        self.proc = subprocess.Popen([sys.executable, __file__, "--flood", host, str(port), str(count),
                                      str(duration), str(self.report)], cwd=REPO)

    def stats(self) -> dict:
        try:
            return json.loads(self.report.read_text())
        except (OSError, ValueError):
            return {"opened": 0, "open": 0, "closed_by_server": 0, "open_failed": 0}

    def wait_open(self, count: int, timeout: float = 60.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stats = self.stats()
            if stats["open"] >= count * 0.95:
                return stats
            time.sleep(0.2)
        return self.stats()

    def stop(self) -> dict:
        stats = self.stats()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return stats


# ---- the ordinary requests ------------------------------------------------------------------

def ordinary(host: str, port: int, path: str, body: bytes, ctx: ssl.SSLContext, rate: float, count: int,
             fresh: bool, check=None) -> dict:
    """`count` requests at `rate`/s (open loop from one thread); each answer must be 200 (and pass `check`)."""
    latencies: list[float] = []
    failures: list[str] = []
    conn = None
    start = time.monotonic()
    for n in range(count):
        scheduled = start + n / rate
        delay = scheduled - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        try:
            if conn is None or fresh:
                conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=10)
            conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
            res = conn.getresponse()
            data = res.read()
            if res.status != 200:
                raise OSError(f"HTTP {res.status}: {data[:200]!r}")
            if check is not None:
                check(json.loads(data))
            latencies.append(time.monotonic() - scheduled)
        except (OSError, ValueError, AssertionError, http.client.HTTPException) as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
            conn = None
        finally:
            if fresh and conn is not None:
                conn.close()
    latencies.sort()
    q = statistics.quantiles(latencies, n=100, method="inclusive") if len(latencies) > 1 else [0.0] * 99
    return {"sent": count, "answered": len(latencies), "failures": len(failures), "first_failures": failures[:3],
            "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000, "max_ms": (latencies[-1] * 1000) if latencies else 0.0}


# ---- servers --------------------------------------------------------------------------------

# free_port and wait_healthy: bench/webhook.py's, one copy for both benches.
free_port = webhook_bench.free_port


def wait_healthy(port: int, ctx: ssl.SSLContext, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Until the server on `port` answers /healthz (bench/webhook.py's wait, by port)."""
    webhook_bench.wait_healthy(f"https://127.0.0.1:{port}", ctx, proc, timeout)


def start_server(kind: str, workdir: Path, log) -> tuple[subprocess.Popen, int, str, bytes]:
    """The real `sandgate webhook` or `sandgate extender` with one worker, TLS, on a free port."""
    port = free_port()
    tls = ["--cert-file", str(workdir / "tls.crt"), "--key-file", str(workdir / "tls.key")]
    common = ["--host", "127.0.0.1", "--port", str(port), "--cluster-version", "1.24", "--log-level", "warning"]
    if kind == "webhook":
        cmd = ["webhook", "--config", str(workdir / "policy.yaml"), "--workers", "1", "--no-namespace-watch"]
        path, body = "/mutate/runv", WEBHOOK_BODY.read_bytes()
    else:
        snapshot = workdir / "snapshot.json"
        snapshot.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": []}))
        cmd = ["extender", "--config", str(workdir / "policy.yaml"), "--snapshot", str(snapshot)]
        path, body = "/filter", EXTENDER_BODY.read_bytes()
    proc = subprocess.Popen([sys.executable, "-m", "sandgate", *cmd, *tls, *common], cwd=REPO, stdout=log, stderr=log)
    return proc, port, path, body


def prepare(workdir: Path) -> ssl.SSLContext:
    from certs.generate import generate, write

    write(generate("bench", "bench", ips=["127.0.0.1"]), workdir)
    shutil.copy(REPO / "examples/policy.yaml", workdir / "policy.yaml")
    return ssl.create_default_context(cafile=str(workdir / "ca.crt"))


def measure(kind: str, port: int, path: str, body: bytes, ctx: ssl.SSLContext, connections: int,
            duration: float, workdir: Path, check=None) -> dict:
    """Ordinary requests (fresh, then keep-alive connections) while `connections` hostile ones are held.

    Each answer must be a 200 (and pass `check`, given the decoded JSON); the tests assert on the counts.
    """
    rate = 20.0
    count = max(int(rate * duration / 2), 10)
    flood = Flood("127.0.0.1", port, connections, duration + 120, workdir)
    try:
        before = flood.wait_open(connections)
        fresh = ordinary("127.0.0.1", port, path, body, ctx, rate, count, fresh=True, check=check)
        kept = ordinary("127.0.0.1", port, path, body, ctx, rate, count, fresh=False, check=check)
        after = flood.stop()
    finally:
        if flood.proc.poll() is None:
            flood.stop()
    return {"server": kind, "hostile_open_at_start": before["open"], "hostile_open_at_end": after["open"],
            "hostile_closed_by_server": after["closed_by_server"], "hostile_open_failed": after["open_failed"],
            "fresh": fresh, "keepalive": kept}


def print_result(result: dict) -> None:
    print(f"\n{result['server']}: hostile connections open {result['hostile_open_at_start']} at start, "
          f"{result['hostile_open_at_end']} at end; the server closed {result['hostile_closed_by_server']} "
          f"(deadlines); {result['hostile_open_failed']} opens failed")
    print(f"| {'ordinary requests':24} | {'sent':>5} | {'answered':>8} | {'failures':>8} | {'p50 ms':>8} | "
          f"{'p99 ms':>8} | {'max ms':>8} |")
    print(f"|{'-' * 26}|{'-' * 7}|{'-' * 10}|{'-' * 10}|{'-' * 10}|{'-' * 10}|{'-' * 10}|")
    for label, key in (("new TLS connection each", "fresh"), ("keep-alive connection", "keepalive")):
        r = result[key]
        print(f"| {label:24} | {r['sent']:5d} | {r['answered']:8d} | {r['failures']:8d} | {r['p50_ms']:8.2f} | "
              f"{r['p99_ms']:8.2f} | {r['max_ms']:8.2f} |")
        if r["first_failures"]:
            print(f"  first failures: {r['first_failures']}")


# ---- worker-model candidates (--candidates) -------------------------------------------------

CANDIDATES = {
    "gthread": "gunicorn's stock threaded worker (handshake and reads in the request threads)",
    "sandgate": "sandgate.core.serving.DeadlineWorker (handshake and reads on the event loop, deadlines)",
    "gevent": "gunicorn's gevent worker (greenlet per connection; pip install gevent)",
}


def serve_noop(args: argparse.Namespace) -> None:
    """The no-op admission app (reads the body, answers a constant review) under worker class `args.worker`."""
    if args.worker == "gevent":
        # gevent must patch ssl before the master builds the TLS context the workers use, or every
        # handshake fails (gevent's SSLSocket cannot wrap with a context made before the patch)
        from gevent import monkey

        monkey.patch_all()
    from flask import Flask, Response, request

    from sandgate.core import jsonlog, serving

    jsonlog.configure("warning")
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

    options = serving.gunicorn_options("127.0.0.1", args.port, workers=1, threads=4,
                                       tls=serving.ReloadingContext(args.cert, args.key),
                                       limits=serving.Limits(keepalive=120), proc_name=f"noop-{args.worker}",
                                       log_level="warning")
    if args.worker != "sandgate":
        options["worker_class"] = args.worker
    serving.raise_fd_limit(serving.MAX_CONNECTIONS)
    serving.GunicornApp(options, build).run()


def candidates(duration: float, connections: int) -> None:
    """The no-op app under each worker model: throughput, CPU, latency and the slow-connection case."""

    workdir = Path(tempfile.mkdtemp(prefix="sandgate-candidates-"))
    ctx = prepare(workdir)
    body = WEBHOOK_BODY.read_bytes()
    rows = []
    try:
        with open(workdir / "servers.log", "wb") as log:
            for name in CANDIDATES:
                if name == "gevent":
                    try:
                        __import__("gevent")
                    except ImportError:
                        print("gevent not installed: skipped (pip install gevent)")
                        continue
                port = free_port()
                proc = subprocess.Popen([sys.executable, __file__, "--serve-noop", name, "--port", str(port),
                                         "--cert", str(workdir / "tls.crt"), "--key", str(workdir / "tls.key")],
                                        cwd=REPO, stdout=log, stderr=log)
                try:
                    wait_healthy(port, ctx, proc)
                    base, calls = f"https://127.0.0.1:{port}", [("mutate", "/mutate/runv", body)]
                    sat1 = webhook_bench.saturation(base, calls, 1, duration, workdir, proc)
                    sat64 = webhook_bench.saturation(base, calls, 64, duration, workdir, proc)
                    rate = webhook_bench.fixed_rate(base, calls, ctx, 1, duration)
                    slow = measure(name, port, "/mutate/runv", body, ctx, connections, duration, workdir)
                    rows.append((name, sat1, sat64, rate, slow))
                finally:
                    webhook_bench.stop(proc)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\n| worker model | sat. 1 conn req/s | CPU us/req | sat. 64 conn req/s | CPU us/req | p99 ms at "
          f"{webhook_bench.RATE}/s | {connections} hostile: answered (fresh conn) | failures | p99 ms | "
          f"answered (keep-alive) | failures | p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, sat1, sat64, rate, slow in rows:
        fresh, kept = slow["fresh"], slow["keepalive"]
        print(f"| {name} | {sat1['rps']:.0f} | {sat1['cpu_us']:.0f} | {sat64['rps']:.0f} | {sat64['cpu_us']:.0f} | "
              f"{rate['p99_ms']:.2f} | {fresh['answered']}/{fresh['sent']} | {fresh['failures']} | "
              f"{fresh['p99_ms']:.0f} | {kept['answered']}/{kept['sent']} | {kept['failures']} | {kept['p99_ms']:.0f} |")
    for name, text in CANDIDATES.items():
        print(f"  {name}: {text}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1000, help="hostile connections held (default 1000)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of ordinary requests (default 20)")
    parser.add_argument("--quick", action="store_true", help="200 connections, 6 s: checks the bench works")
    parser.add_argument("--servers", nargs="+", default=["webhook", "extender"], choices=["webhook", "extender"])
    parser.add_argument("--candidates", action="store_true",
                        help="compare worker models (gthread, sandgate, gevent) on the no-op app instead")
    parser.add_argument("--flood", nargs=5, help=argparse.SUPPRESS)
    parser.add_argument("--serve-noop", choices=sorted(CANDIDATES), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cert", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.flood:
        flood_main(args.flood)
        return 0
    if args.serve_noop:
        args.worker = args.serve_noop
        serve_noop(args)
        return 0
    connections, duration = (200, 6.0) if args.quick else (args.connections, args.duration)
    from sandgate.core.serving import MAX_CONNECTIONS, raise_fd_limit
    raise_fd_limit(MAX_CONNECTIONS)  # the hostile connections are the flood subprocess's; this is headroom
    if args.candidates:
        candidates(3.0 if args.quick else 10.0, connections)
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="sandgate-slowconn-"))
    ctx = prepare(workdir)
    print(f"{connections} hostile connections ({', '.join(KINDS)}, equal shares) against one worker; ordinary "
          f"requests at 20/s for {duration:g} s; {os.cpu_count()} CPUs (shared: figures are noisy)")
    try:
        with open(workdir / "servers.log", "wb") as log:
            for kind in args.servers:
                proc, port, path, body = start_server(kind, workdir, log)
                try:
                    wait_healthy(port, ctx, proc)
                    print_result(measure(kind, port, path, body, ctx, connections, duration, workdir))
                finally:
                    webhook_bench.stop(proc)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
