"""Benchmark the admission webhook over TLS keep-alive, side by side with a no-op Flask app.

    python3 bench/webhook.py [--url BASE] [--duration S] [--quick] [--worker-class K] [--runs N]

Without --url it starts the real `sandgate webhook` (one worker, default threads, --cluster-version
1.24) and, in the same session, a no-op Flask app (reads the body, answers a constant allowed
AdmissionReview) under the very same gunicorn settings (webhooks.server.gunicorn_options). With
--url BASE (e.g. https://host:8443) it measures that webhook instead against the local no-op.

What kube-apiserver sends for one sandboxed pod (a `pod` below is these three calls, in order):
  1. mutate        CREATE to /mutate/runv: the captured AdmissionReview v1 of a ReplicaSet's pod;
  2. reinvocation  CREATE to /mutate/runv again, with the pod as the built-in RuntimeClass admission
                   leaves it: the webhook's own patch applied, then the RuntimeClass's nodeSelector,
                   tolerations and spec.overhead merged (sandgate.demo.runtimeclass, the same
                   emulation `sandgate demo` uses), as the API server does before reinvoking;
  3. validate      CREATE to /validate/runv with the final pod.
The bodies are built at start-up from the live server's own answers, so they are exactly what the
API server would send for this version of the webhook. 1,000 pods are replayed in turn, each with its
own request uid; the validating call carries the name, metadata.uid and creationTimestamp the API
server gives a pod before validation. Two kinds of pods:
  replica pods  a ReplicaSet's (generateName): their mutating calls differ in the uid alone, which
                the webhook's verdict memo answers without deciding again;
  named pods    created with distinct names: no two calls alike, every call decided in full.

Scenarios, each run for sandgate and the no-op back to back:
  pods         wrk (C, epoll) as fast as the server answers, whole pods (the three calls in turn),
               8 connections: pods/s and worker CPU per pod (from /proc), replica and named pods;
  fixed rate   200 req/s open loop, 1 and 64 connections, cycling through the named pods' calls
               (latency from the scheduled send time, so a stalled server cannot hide queueing: no
               coordinated omission; the slowest 1% are kept with their send offsets), Python
               http.client threads with the client's collector off;
  one call     wrk at saturation, the named pods' mutating calls only, 1 and 64 connections.
Figures are printed; nothing is asserted (timings are no test).
"""

from __future__ import annotations

import argparse
import base64
import gc
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

FIXTURE = REPO / "tests/fixtures/k8s-1.24/admission/v1-04-create-by-replicaset-controller.json"
PROFILE = "runv"
CLUSTER_VERSION = "1.24"
RATE = 200
CONNECTIONS = (1, 64)
POD_CONNECTIONS = 8  # the burst: 8 clients creating pods
PODS = 1000  # pods per scenario, replayed in turn: more than the verdict memo holds (256)
TARGET_P99_MS = 10.0
TARGET_RPS = 1000.0
TARGET_RATIO = 1.3
CALLS = ("mutate", "reinvocation", "validate")


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

        @app.post("/<any(mutate, validate):endpoint>/<profile>")
        def review(endpoint, profile):
            request.get_data()
            return Response(answer, mimetype="application/json")

        @app.get("/healthz")
        def healthz():
            return Response(b'{"status":"ok"}', mimetype="application/json")

        return app

    tls = ReloadingContext(args.cert, args.key)
    options = gunicorn_options("127.0.0.1", args.port, args.workers, args.threads, tls)
    if args.worker_class:
        options["worker_class"] = args.worker_class
    GunicornApp(options, build).run()


# ---- what the API server sends for one pod ----------------------------------------------------

def post(base: str, path: str, body: bytes, ctx: ssl.SSLContext) -> dict:
    """One POST; the decoded AdmissionReview answer (exits when it is not one)."""
    parsed = urlparse(base)
    conn = http.client.HTTPSConnection(parsed.hostname, parsed.port, context=ctx, timeout=10)
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    res = conn.getresponse()
    doc = json.loads(res.read())
    conn.close()
    if res.status != 200 or doc.get("kind") != "AdmissionReview" or "allowed" not in doc.get("response", {}):
        raise SystemExit(f"{base}{path} did not answer an AdmissionReview: HTTP {res.status} {doc}")
    return doc["response"]


def _patched(pod: dict, response: dict) -> dict:
    import jsonpatch

    if not response.get("patch"):
        return pod
    return jsonpatch.JsonPatch(json.loads(base64.b64decode(response["patch"]))).apply(pod)


def _describe(response: dict) -> str:
    if not response["allowed"]:
        return f"denied ({response.get('status', {}).get('message')})"
    if response.get("patch"):
        return f"patched ({len(json.loads(base64.b64decode(response['patch'])))} ops)"
    return "allowed"


def pod_calls(base: str, ctx: ssl.SSLContext, policy_file: Path) -> list[tuple[str, str, dict]]:
    """The three (call, path, review) of one sandboxed pod, from the live server's answers."""
    from sandgate.core.clusterversion import ClusterVersion
    from sandgate.core.policy import load_policy
    from sandgate.demo.runtimeclass import RuntimeClassAdmission, runtime_classes

    review = json.loads(FIXTURE.read_bytes())
    pod = review["request"]["object"]
    mutate = f"/mutate/{PROFILE}"
    first = post(base, mutate, json.dumps(review).encode(), ctx)
    version = ClusterVersion.parse(CLUSTER_VERSION)
    plugin = RuntimeClassAdmission(runtime_classes(load_policy(policy_file), version), version)
    reinvoked = plugin.admit(_patched(pod, first))
    second_review = {**review, "request": {**review["request"], "object": reinvoked}}
    second = post(base, mutate, json.dumps(second_review).encode(), ctx)
    final = _patched(reinvoked, second)
    third_review = {**review, "request": {**review["request"], "object": final}}
    third = post(base, f"/validate/{PROFILE}", json.dumps(third_review).encode(), ctx)
    print(f"sandgate answers for one pod: mutate {_describe(first)}, reinvocation {_describe(second)}, "
          f"validate {_describe(third)}")
    return [("mutate", mutate, review), ("reinvocation", mutate, second_review),
            ("validate", f"/validate/{PROFILE}", third_review)]


def pods(template: list[tuple[str, str, dict]], count: int, named: bool) -> list[tuple[str, str, bytes]]:
    """The calls of `count` pods made from the template pod, in order, as the API server sends them.

    Every pod has its own request uid (shared by its three calls). The validating call comes after
    the API server gave the pod its name, metadata.uid and creationTimestamp. `named` pods are
    created with distinct names (kubectl create pod-N), so no two of their calls are alike;
    otherwise they are a ReplicaSet's replicas: generateName only, so their mutating calls
    differ in the request uid alone.
    """
    out = []
    for i in range(count):
        uid = f"00000000-0000-4000-8000-{i:012d}"
        name = f"bench-pod-{i}" if named else f"{template[0][2]['request']['object']['metadata']['generateName']}{i:05d}"
        for call, path, review in template:
            review = json.loads(json.dumps(review))
            request = review["request"]
            request["uid"] = uid
            meta = request["object"]["metadata"]
            if named:
                meta.pop("generateName", None)
            if named or call == "validate":
                meta["name"] = request["name"] = name
            if call == "validate":
                meta["uid"] = f"11111111-0000-4000-8000-{i:012d}"
                meta["creationTimestamp"] = "2026-11-30T12:00:00Z"
            out.append((call, path, json.dumps(review).encode()))
    return out


# ---- servers --------------------------------------------------------------------------------

def serve_sandgate(argv: list[str], worker_class: str | None) -> int:
    """`sandgate webhook argv`, with gunicorn's worker class replaced (to compare worker models)."""
    import webhooks.server as server
    from sandgate.cli import main as cli_main

    if worker_class:
        original = server.gunicorn_options

        def with_worker_class(*args, **kwargs):
            return {**original(*args, **kwargs), "worker_class": worker_class}

        server.gunicorn_options = with_worker_class
    return cli_main(["webhook", *argv])


def stop(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM a server the bench started; SIGKILL it if it has not exited within `timeout` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(base: str, ctx: ssl.SSLContext, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    parsed = urlparse(base)
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
    raise SystemExit(f"{base} not healthy within {timeout}s")


def start_servers(workdir: Path, args: argparse.Namespace, want_sandgate: bool):
    from certs.generate import generate, write

    write(generate("bench", "bench", ips=["127.0.0.1"]), workdir)
    shutil.copy(REPO / "examples/policy.yaml", workdir / "policy.yaml")
    ctx = ssl.create_default_context(cafile=str(workdir / "ca.crt"))
    procs, bases = {}, {}
    common = ["--workers", str(args.workers), "--threads", str(args.threads)]
    extra = ["--worker-class", args.worker_class] if args.worker_class else []
    log = open(workdir / "servers.log", "wb")
    if want_sandgate:
        port = free_port()
        procs["sandgate"] = subprocess.Popen(
            [sys.executable, __file__, "--serve-sandgate", *extra, "--", "--config", str(workdir / "policy.yaml"),
             "--cert-file", str(workdir / "tls.crt"), "--key-file", str(workdir / "tls.key"), "--host", "127.0.0.1",
             "--port", str(port), "--cluster-version", CLUSTER_VERSION, *common], cwd=REPO, stdout=log, stderr=log)
        bases["sandgate"] = f"https://127.0.0.1:{port}"
    port = free_port()
    procs["noop"] = subprocess.Popen(
        [sys.executable, __file__, "--serve-noop", "--port", str(port), "--cert", str(workdir / "tls.crt"),
         "--key", str(workdir / "tls.key"), *common, *extra], cwd=REPO, stdout=log, stderr=log)
    bases["noop"] = f"https://127.0.0.1:{port}"
    for name, proc in procs.items():
        wait_healthy(bases[name], ctx, proc)
    return procs, bases, ctx


# ---- load generators ------------------------------------------------------------------------

def fixed_rate(base: str, calls: list[tuple[str, str, bytes]], ctx: ssl.SSLContext, connections: int,
               duration: float) -> dict:
    """Open-loop load at RATE req/s spread over `connections` keep-alive connections, cycling `calls`."""
    parsed = urlparse(base)
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
            _, path, body = calls[(i + n) % len(calls)]
            try:
                conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
                res = conn.getresponse()
                res.read()
                if res.status != 200:
                    raise OSError(f"HTTP {res.status}")
                mine.append((time.monotonic() - scheduled, scheduled - start))
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
    # The client's own collector passes would show up as server latency: keep them out of the run.
    gc.collect()
    gc.disable()
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        gc.enable()
    latencies.sort()
    q = statistics.quantiles([lat for lat, _ in latencies], n=100, method="inclusive") if len(latencies) > 1 else [0.0] * 99
    # The slowest 1% with their send offsets: clustered offsets mean a stall, not a slow path.
    slowest = [(round(at, 3), round(lat * 1000, 1)) for lat, at in latencies[-max(1, len(latencies) // 100):]]
    return {"p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000, "max_ms": latencies[-1][0] * 1000 if latencies else 0.0,
            "rps": len(latencies) / duration, "errors": errors[0], "slowest": sorted(slowest)}


def worker_cpu_seconds(master: subprocess.Popen | None) -> float | None:
    """CPU time (user+system) of the gunicorn workers under `master`, from /proc (Linux).

    The sandgate server is this script running `sandgate webhook` (gunicorn's master), so its
    children are the workers, as for the no-op.
    """
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


# wrk sends the calls in turn (per wrk thread; with one thread the order is exact): each file holds
# the path on its first line, then the body.
WRK_SCRIPT = """
local calls = {}
local n = 0
init = function(args)
  local headers = {["Content-Type"] = "application/json"}
  for i = 1, tonumber(os.getenv("BENCH_CALLS")) do
    local f = assert(io.open(os.getenv("BENCH_DIR") .. "/call-" .. i, "rb"))
    local path = f:read("*l")
    calls[i] = wrk.format("POST", path, headers, f:read("*a"))
    f:close()
  end
end
request = function()
  n = n % #calls + 1
  return calls[n]
end
"""


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]


def saturation(base: str, calls: list[tuple[str, str, bytes]], connections: int, duration: float, workdir: Path,
               server: subprocess.Popen | None = None) -> dict:
    """wrk at full speed with `connections` keep-alive connections sending `calls` in turn (+ worker CPU)."""
    calls_dir = Path(tempfile.mkdtemp(dir=workdir))
    for i, (_, path, body) in enumerate(calls, 1):
        (calls_dir / f"call-{i}").write_bytes(path.encode() + b"\n" + body)
    env = {**os.environ, "BENCH_DIR": str(calls_dir), "BENCH_CALLS": str(len(calls))}
    script = workdir / "calls.lua"
    script.write_text(WRK_SCRIPT)
    cpu_before = worker_cpu_seconds(server)
    # One wrk thread: it keeps up with one Python worker and leaves the other core to the server.
    out = subprocess.run(["wrk", "-t", "1", "-c", str(connections), "-d", f"{duration:g}s", "--latency",
                          "-s", str(script), base], capture_output=True, text=True, env=env,
                         timeout=duration + 60).stdout
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


# ---- main -----------------------------------------------------------------------------------

def main() -> int:
    if "--serve-sandgate" in sys.argv:
        # bench/webhook.py --serve-sandgate [--worker-class K] -- <sandgate webhook flags>
        split = sys.argv.index("--")
        own = sys.argv[1:split]
        worker_class = own[own.index("--worker-class") + 1] if "--worker-class" in own else None
        return serve_sandgate(sys.argv[split + 1:], worker_class)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="benchmark this webhook (base URL, e.g. https://host:8443)")
    parser.add_argument("--cacert", help="CA to verify --url with (default: no verification)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per measurement (default 10)")
    parser.add_argument("--quick", action="store_true", help="2 s per measurement: checks the bench works")
    parser.add_argument("--runs", type=int, default=1, help="repeat the whole measurement N times (default 1)")
    parser.add_argument("--workers", type=int, default=1, help="gunicorn workers of the local servers (default 1)")
    parser.add_argument("--threads", type=int, default=4, help="threads per worker (default 4, the webhook's)")
    parser.add_argument("--only", metavar="S,S", help="only these scenarios: replicas, named, rate-1, rate-64, "
                                                   "sat-1, sat-64 (default all)")
    parser.add_argument("--worker-class", help="gunicorn worker class for both local servers (default: the webhook's)")
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
    workdir = Path(tempfile.mkdtemp(prefix="sandgate-bench-"))
    procs, bases, ctx = start_servers(workdir, args, want_sandgate=not args.url)
    try:
        ctxs = {"sandgate": ctx, "noop": ctx}
        if args.url:
            bases = {"sandgate": args.url.rstrip("/"), "noop": bases["noop"]}
            ctxs["sandgate"] = (ssl.create_default_context(cafile=args.cacert) if args.cacert
                                else ssl._create_unverified_context())
        template = pod_calls(bases["sandgate"], ctxs["sandgate"], workdir / "policy.yaml")
        replicas, named = pods(template, PODS, named=False), pods(template, PODS, named=True)
        mutates = [call for call in named if call[0] == "mutate"]
        print(f"servers: gunicorn {args.worker_class or 'default worker class'}, {args.workers} worker(s) x "
              f"{args.threads} threads, TLS, keep-alive; {duration:g} s per measurement; {PODS} pods per "
              f"scenario, bodies {', '.join(f'{name} {len(body)} B' for name, _, body in named[:3])}; "
              f"{os.cpu_count()} CPUs; load average before {os.getloadavg()[0]:.1f}")
        plan = {"replicas": ("sat", replicas, POD_CONNECTIONS), "named": ("sat", named, POD_CONNECTIONS)}
        for conns in CONNECTIONS:
            plan[f"rate-{conns}"] = ("rate", named, conns)
            plan[f"sat-{conns}"] = ("sat", mutates, conns)
        chosen = [s for s in plan if not args.only or s in args.only.split(",")]
        for run in range(1, args.runs + 1):
            results: dict[tuple[str, str], dict] = {}
            # Each scenario runs for both servers back to back, so load from other processes on a
            # shared machine drifts as little as possible between the two columns of a row.
            for scenario in chosen:
                kind, calls, conns = plan[scenario]
                for name in ("sandgate", "noop"):
                    results[(name, scenario)] = (
                        fixed_rate(bases[name], calls, ctxs[name], conns, duration) if kind == "rate"
                        else saturation(bases[name], calls, conns, duration, workdir, procs.get(name)))
            print(f"\nrun {run} of {args.runs} (load average {os.getloadavg()[0]:.1f})")
            print_table(results)
            print_targets(results)
    finally:
        for proc in procs.values():
            stop(proc)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


ROWS = []
for _scenario, _label in (("replicas", "replica pods"), ("named", "named pods")):
    ROWS += [
        (_scenario, "rps", f"{_label}, {POD_CONNECTIONS} conn: pods/s", 1 / 3),
        (_scenario, "cpu_us", f"{_label}, {POD_CONNECTIONS} conn: CPU us/pod", 3),
        (_scenario, "p99_ms", f"{_label}, {POD_CONNECTIONS} conn: p99 ms", 1),
    ]
for _conns in CONNECTIONS:
    ROWS += [
        (f"rate-{_conns}", "p50_ms", f"{RATE} req/s, {_conns} conn: p50 ms", 1),
        (f"rate-{_conns}", "p99_ms", f"{RATE} req/s, {_conns} conn: p99 ms", 1),
        (f"rate-{_conns}", "max_ms", f"{RATE} req/s, {_conns} conn: max ms", 1),
        (f"sat-{_conns}", "rps", f"mutate, {_conns} conn: req/s", 1),
        (f"sat-{_conns}", "cpu_us", f"mutate, {_conns} conn: CPU us/req", 1),
        (f"sat-{_conns}", "p99_ms", f"mutate, {_conns} conn: p99 ms", 1),
    ]


def print_table(results: dict) -> None:
    print(f"| {'scenario':34} | {'sandgate':>9} | {'no-op':>9} | {'ratio':>6} |")
    print(f"|{'-' * 36}|{'-' * 11}|{'-' * 11}|{'-' * 8}|")
    for scenario, metric, label, scale in ROWS:
        if ("sandgate", scenario) not in results:
            continue
        a, b = results[("sandgate", scenario)][metric] * scale, results[("noop", scenario)][metric] * scale
        print(f"| {label:34} | {a:9.2f} | {b:9.2f} | {a / b if b else float('nan'):6.2f} |")
    errors = {f"{n}/{s}": (r["errors"], r.get("socket_errors", "")) for (n, s), r in results.items()
              if r["errors"] or (r.get("socket_errors") and not r["socket_errors"].startswith("connect 0, read 0, write 0, timeout 0"))}
    print(f"errors: {errors or 'none'}")


def print_targets(results: dict) -> None:
    def ratio(scenario: str, metric: str) -> float:
        return results[("sandgate", scenario)][metric] / results[("noop", scenario)][metric]

    checks = []
    for scenario, label in (("replicas", "replica pod"), ("named", "named pod")):
        if ("sandgate", scenario) in results:
            checks.append((f"CPU per {label} (3 calls) <= {TARGET_RATIO}x the no-op's",
                           ratio(scenario, "cpu_us") <= TARGET_RATIO, f"{ratio(scenario, 'cpu_us'):.2f}x"))
    if ("sandgate", "sat-1") in results:
        sat = results[("sandgate", "sat-1")]["rps"]
        checks.append((f"one call, 1 conn, saturation >= {TARGET_RPS:g} req/s", sat >= TARGET_RPS, f"{sat:.0f} req/s"))
    for conns in CONNECTIONS:
        if ("sandgate", f"sat-{conns}") in results:
            checks.append((f"one call, {conns} conn: CPU per request <= {TARGET_RATIO}x the no-op's",
                           ratio(f"sat-{conns}", "cpu_us") <= TARGET_RATIO, f"{ratio(f'sat-{conns}', 'cpu_us'):.2f}x"))
    for conns in CONNECTIONS:
        if ("sandgate", f"rate-{conns}") in results:
            rate = results[("sandgate", f"rate-{conns}")]
            checks.append((f"p99 at {RATE} req/s, {conns} conn <= {TARGET_P99_MS:g} ms", rate["p99_ms"] <= TARGET_P99_MS,
                           f"{rate['p99_ms']:.2f} ms (no-op {results[('noop', f'rate-{conns}')]['p99_ms']:.2f} ms)"))
            if rate["p99_ms"] > TARGET_P99_MS:
                # Clustered send offsets (seconds into the run) mean a stall; spread ones, contention.
                print(f"slowest 1% at {RATE} req/s, {conns} conn (offset s, ms): {rate['slowest']}")
    print("targets:")
    for label, ok, value in checks:
        print(f"  {'met ' if ok else 'MISS'}  {label}: {value}")


if __name__ == "__main__":
    sys.exit(main())
