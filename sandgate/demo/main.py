"""`sandgate demo`: certificates, policy and snapshot in a temporary directory, the real webhook and
extender as subprocesses, every pod through the emulated API server and scheduler, then a report.

Denials and unschedulable pods are outcomes the demo exists to show, so they exit 0; a component
that cannot start, dies during the run, or answers with something unusable makes the command fail.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path

import yaml

from sandgate.core.clusterversion import ClusterVersion, VersionError
from sandgate.demo import report_html, report_text, scenario as scenarios
from sandgate.demo.apiserver import ApiServer
from sandgate.demo.processes import Component, ComponentError, run_once, sandgate_command, wait_ready
from sandgate.demo.results import ComponentInfo, DemoRun, NodeView, Placed, PodOutcome
from sandgate.demo.runtimeclass import RuntimeClassAdmission, runtime_classes
from sandgate.demo.scheduler import EXTENDER_HTTP_TIMEOUT_SECONDS, NodeState, Scheduler
from sandgate.demo.snapshot import snapshot
from sandgate.demo.webhookconfig import MUTATE, TIMEOUT_SECONDS, VALIDATE, namespace_labels, webhook_entries
from sandgate.demo.httpclient import JsonClient
from sandgate.core.policy import Policy, PolicyError, load_policy

READY_TIMEOUT_SECONDS = 20.0
SERVICE = "sandgate-webhook"
SERVICE_NAMESPACE = "sandgate-system"


class _Terminated(Exception):
    """SIGTERM arrived: unwind like Ctrl-C so the components are stopped."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Progress:
    """A one-line progress bar on stderr (a few plain lines when stderr is not a terminal)."""

    def __init__(self, total: int, enabled: bool):
        self.total = total
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self._shown = -1

    def update(self, done: int) -> None:
        """Show that `done` of the pods are through."""
        if not self.enabled:
            return
        if self.tty:
            step = done * 40 // self.total
            if step != self._shown or done == self.total:
                self._shown = step
                sys.stderr.write(f"\r  [{'#' * step}{'.' * (40 - step)}] {done}/{self.total} pods")
                if done == self.total:
                    sys.stderr.write("\n")
                sys.stderr.flush()
        else:
            quarter = done * 4 // self.total
            if quarter != self._shown:
                self._shown = quarter
                print(f"  {done}/{self.total} pods", file=sys.stderr, flush=True)


def _start_components(workdir: Path, version: ClusterVersion, policy_path: Path, snapshot_path: Path,
                      started: list[Component]) -> tuple[Component, Component]:
    certs = workdir / "certs"
    run_once("certificate generation (sandgate certs generate)",
             sandgate_command("certs", "generate", "--service", SERVICE, "--namespace", SERVICE_NAMESPACE,
                              "--out", str(certs), "--dns", "localhost", "--ip", "127.0.0.1"), workdir)
    ca = str(certs / "ca.crt")
    webhook_port, extender_port = _free_port(), _free_port()
    webhook = Component(
        "webhook",
        sandgate_command("webhook", "--config", str(policy_path), "--cert-file", str(certs / "tls.crt"),
                         "--key-file", str(certs / "tls.key"), "--host", "127.0.0.1", "--port", str(webhook_port),
                         "--cluster-version", str(version)),
        JsonClient(f"https://127.0.0.1:{webhook_port}", cafile=ca, timeout=TIMEOUT_SECONDS,
                   headers={"User-Agent": "kube-apiserver-admission", "Accept": "application/json, */*",
                            "Accept-Encoding": "gzip"}),
        workdir / "webhook.log")
    extender = Component(
        "extender",
        # Over TLS, verified against the CA, as the shipped scheduler configurations set it up
        # (enableHTTPS with tlsConfig.caData).
        sandgate_command("extender", "--config", str(policy_path), "--snapshot", str(snapshot_path),
                         "--cert-file", str(certs / "tls.crt"), "--key-file", str(certs / "tls.key"),
                         "--host", "127.0.0.1", "--port", str(extender_port), "--cluster-version", str(version)),
        JsonClient(f"https://127.0.0.1:{extender_port}", cafile=ca, timeout=EXTENDER_HTTP_TIMEOUT_SECONDS,
                   headers={"User-Agent": "Go-http-client/1.1", "Accept-Encoding": "gzip"}),
        workdir / "extender.log")
    for component in (webhook, extender):
        started.append(component)
        component.start(workdir)
    wait_ready([webhook, extender], READY_TIMEOUT_SECONDS)
    return webhook, extender


def _node_views(run_scenario: scenarios.Scenario, policy: Policy, outcomes: list[PodOutcome]) -> list[NodeView]:
    views = {n.name: NodeView(n, n.heartbeat_age_seconds > policy.agent.lease_duration_seconds)
             for n in run_scenario.nodes}
    for pod in run_scenario.existing:
        profile = policy.profile_for_runtime_class(pod.runtime_class)
        views[pod.node].pods.append(Placed(f"{pod.namespace}/{pod.name}", profile.handler if profile else None, False))
    for outcome in outcomes:
        if outcome.schedule and outcome.schedule.node:
            views[outcome.schedule.node].pods.append(Placed(outcome.pod.ref, outcome.handler, True))
    return list(views.values())


def _simulate(run_scenario: scenarios.Scenario, policy: Policy, version: ClusterVersion, cluster: dict,
              webhook: Component, extender: Component, progress: _Progress) -> list[PodOutcome]:
    namespaces = {ns.name: namespace_labels(ns.name, ns.labels, version) for ns in run_scenario.namespaces}
    apiserver = ApiServer(version, webhook.ready_client, webhook_entries(policy, MUTATE, version),
                          webhook_entries(policy, VALIDATE, version),
                          RuntimeClassAdmission(runtime_classes(policy, version), version), namespaces)
    items = cluster["items"]
    scheduler = Scheduler([NodeState.from_node(o) for o in items if o["kind"] == "Node"], extender.ready_client,
                          count_overhead=version.pod_overhead_default)
    for pod in (o for o in items if o["kind"] == "Pod"):
        scheduler.place_existing(pod)
    outcomes = []
    for i, pod in enumerate(run_scenario.pods, 1):
        started = time.perf_counter()
        admission = apiserver.create(pod.manifest(), dt.datetime.now(dt.timezone.utc))
        schedule = scheduler.schedule(admission.pod) if admission.allowed else None
        seconds = time.perf_counter() - started
        profile = policy.profile_for_runtime_class((admission.pod or {}).get("spec", {}).get("runtimeClassName"))
        outcomes.append(PodOutcome(pod, namespaces[pod.namespace], admission, schedule,
                                   profile.name if profile else None, profile.handler if profile else None, seconds))
        progress.update(i)
    for component in (webhook, extender):
        if not component.alive():
            raise component.failure("exited during the run")
    return outcomes


def _execute(args: argparse.Namespace, version: ClusterVersion, workdir: Path, started: list[Component]) -> DemoRun:
    """Do the run (components it starts are appended to `started`, for the caller to stop)."""
    run_scenario = scenarios.synthetic(args.pods) if args.pods else scenarios.builtin()
    policy_path = workdir / "policy.yaml"
    policy_path.write_text(yaml.safe_dump(scenarios.demo_policy_document(str(version)), sort_keys=False))
    policy = load_policy(policy_path)
    cluster = snapshot(run_scenario, policy, str(version), dt.datetime.now(dt.timezone.utc))
    snapshot_path = workdir / "snapshot.json"
    snapshot_path.write_text(json.dumps(cluster))
    webhook, extender = _start_components(workdir, version, policy_path, snapshot_path, started)
    progress = _Progress(len(run_scenario.pods), enabled=bool(args.pods))
    outcomes = _simulate(run_scenario, policy, version, cluster, webhook, extender, progress)
    counts = {kind: sum(1 for o in cluster["items"] if o["kind"] == kind) for kind in ("Node", "Pod", "Lease")}
    components = [
        ComponentInfo("webhook", webhook.pid, webhook.ready_client.base_url, webhook.ready_after,
                      "gunicorn over TLS, certificate verified against the generated CA"),
        ComponentInfo("extender", extender.pid, extender.ready_client.base_url, extender.ready_after,
                      f"TLS; snapshot of {counts['Node']} nodes, {counts['Pod']} running pods, "
                      f"{counts['Lease']} agent leases"),
    ]
    return DemoRun(
        title=run_scenario.title, version=version, mode=version.mode(policy.pod_overhead),
        review_version=ApiServer.review_version_for(version), synthetic=bool(args.pods), outcomes=outcomes,
        nodes=_node_views(run_scenario, policy, outcomes), components=components, workdir=str(workdir),
        handlers={p.name: p.handler for p in policy.profiles.values()})


def _cleanup(started: list[Component], workdir: Path) -> None:
    """Stop every component and remove the work directory; a second Ctrl-C must not cut this short."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        for component in started:
            component.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    finally:
        signal.signal(signal.SIGINT, previous)


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo end to end and print the report; returns the exit code."""
    began = time.monotonic()
    try:
        version = ClusterVersion.parse(args.cluster_version)
    except VersionError as exc:
        print(f"sandgate demo: --cluster-version: {exc}", file=sys.stderr)
        return 2
    if args.pods is not None and args.pods < 1:
        print(f"sandgate demo: --pods must be at least 1, got {args.pods}", file=sys.stderr)
        return 2
    if args.html and not Path(args.html).resolve().parent.is_dir():
        print(f"sandgate demo: --html {args.html}: directory {Path(args.html).resolve().parent} does not exist",
              file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="sandgate-demo-"))
    started: list[Component] = []
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        run = _execute(args, version, workdir, started)
    except ComponentError as exc:
        print(f"sandgate demo: {exc}", file=sys.stderr)
        return 1
    except PolicyError as exc:
        print(f"sandgate demo: the built-in policy was refused: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, _Terminated):
        print("\nsandgate demo: interrupted; stopping the components", file=sys.stderr)
        return 130
    finally:
        _cleanup(started, workdir)
        signal.signal(signal.SIGTERM, previous)
    run.seconds = time.monotonic() - began
    if args.html:
        try:
            Path(args.html).write_text(report_html.render(run), encoding="utf-8")
        except OSError as exc:
            print(f"sandgate demo: cannot write --html {args.html}: {exc.strerror or exc}", file=sys.stderr)
            return 1
    try:
        report_text.render(run, sys.stdout)
        if args.html:
            print(f"\nHTML report written to {args.html}", flush=True)
    except BrokenPipeError:
        # The reader went away (`sandgate demo | head`): not the demo's failure; silence the final flush.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    broken = [o for o in run.outcomes if o.component_error]
    if broken:
        # Denials are the demo's subject; a webhook or extender that fails or answers garbage is not.
        print(f"sandgate demo: a component misbehaved for {len(broken)} of {len(run.outcomes)} pods; first: "
              f"{broken[0].pod.ref}: {broken[0].component_error}", file=sys.stderr)
        return 1
    return 0
