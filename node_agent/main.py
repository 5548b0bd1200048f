"""The agent's runtime: one cycle = discover, (configure), compute capacity, publish, renew the Lease.

`--once --dry-run` prints what a cycle would do as one JSON document on stdout and changes nothing;
otherwise cycles repeat every --interval seconds until SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any


from sandgate.core import jsonlog, keys
from sandgate.core.policy import Policy, PolicyError, PolicyStore
from sandgate.core.quantity import QuantityError, parse_field

from node_agent import containerd
from node_agent.containerd import ConfigurePlan, ContainerdConfig, ContainerdConfigError, Root
from node_agent.discovery import RuntimeStatus, capacities, discover, node_patch, patch_is_empty

log = logging.getLogger("sandgate.agent")


class AgentError(RuntimeError):
    """A cycle could not complete (message is for the operator)."""


@dataclass
class CycleResult:
    """Everything one cycle found and decided."""

    node: str
    statuses: list[RuntimeStatus]
    capacities: dict[str, int]
    patch: dict[str, Any]
    config: ContainerdConfig | None
    config_error: str | None
    plan: ConfigurePlan = field(default_factory=ConfigurePlan)
    configure_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The dry-run document."""
        plan = self.plan
        main = plan.main_config
        return {
            "node": self.node,
            "nodePatch": self.patch,
            "containerd": {
                "config": self.config.path if self.config else None,
                "version": self.config.version if self.config else None,
                "imports": self.config.imports if self.config else [],
                "error": self.config_error,
                "dropIns": [{"path": c.path, "content": c.content} for c in plan.drop_ins],
                "mainConfig": {"path": main.path, "content": main.content, "backup": main.backup} if main else None,
                "skipped": plan.skipped,
                "configureError": self.configure_error,
            },
            "runtimes": [s.to_json() for s in self.statuses],
        }


def load_config(root: Root, policy: Policy) -> tuple[ContainerdConfig | None, str | None]:
    """The effective containerd config, or (None, reason) when it is missing or unparsable."""
    try:
        return containerd.load(root, policy.agent.containerd_config), None
    except ContainerdConfigError as exc:
        return None, str(exc)


def run_reload(command: tuple[str, ...]) -> None:
    """Run the policy's reload command (e.g. systemctl restart containerd); failures are logged."""
    if not command:
        return
    try:
        done = subprocess.run(list(command), stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.error("containerd reload command failed", extra={"command": list(command), "error": str(exc)})
        return
    level = logging.INFO if done.returncode == 0 else logging.ERROR
    log.log(level, "containerd reload command ran", extra={
        "command": list(command), "exitCode": done.returncode,
        "stderr": done.stderr.decode(errors="replace")[-500:]})


class Agent:
    """One node's agent: holds the policy store, the API publisher and the metrics."""

    def __init__(self, args: argparse.Namespace, store: PolicyStore, publisher: Any = None, metrics: Any = None):
        self.args = args
        self.store = store
        self.root = Root(Path(args.root))
        self.publisher = publisher
        self.metrics = metrics
        self.allocatable = (parse_field(args.node_allocatable_memory, "--node-allocatable-memory")
                            if args.node_allocatable_memory else None)

    def configure(self, policy: Policy, config: ContainerdConfig) -> tuple[ConfigurePlan, str | None]:
        """Plan (and unless dry-run, apply) the drop-ins for policy handlers containerd lacks."""
        wanted = {p.handler: (p.runtime_type, p.runtime_options) for p in policy.profiles.values()}
        try:
            plan = containerd.plan_configure(self.root, config, policy.agent.drop_in_dir, wanted)
            if plan.changed and not self.args.dry_run:
                containerd.apply_configure(self.root, plan)
                log.info("containerd configuration changed", extra={
                    "dropIns": [c.path for c in plan.drop_ins],
                    "mainConfig": plan.main_config.path if plan.main_config else None})
                run_reload(policy.agent.reload_command)
        except (OSError, ValueError) as exc:
            log.error("cannot configure containerd", extra={"error": str(exc)})
            return ConfigurePlan(), f"{type(exc).__name__}: {exc}"
        for skipped in plan.skipped:
            log.warning("handler not configured", extra=skipped)
        return plan, None

    def cycle(self, node: dict[str, Any] | None) -> CycleResult:
        """Discover and decide; `node` is the Node object (None in an offline dry-run)."""
        policy = self.store.current
        config, error = load_config(self.root, policy)
        plan, configure_error = ConfigurePlan(), None
        if error:
            log.error("containerd configuration unusable; advertising nothing", extra={"error": error})
        elif self.args.configure:
            plan, configure_error = self.configure(policy, config)
            if plan.changed and self.args.dry_run:
                config = containerd.with_drop_ins(config, plan)
            elif plan.changed:
                config, error = load_config(self.root, policy)
        if config is not None:
            statuses = discover(self.root, config.runtimes(), policy)
        else:
            statuses = [RuntimeStatus(h, None, None, False, f"containerd configuration unusable: {error}")
                        for h in sorted(policy.handlers)]
        for status in statuses:
            if not status.advertised and status.handler in policy.handlers:
                log.warning("runtime not advertised", extra={"node": self.args.node_name, **status.to_json()})
        allocatable = self.allocatable if self.allocatable is not None else _node_allocatable(node)
        caps = capacities(statuses, policy, allocatable)
        meta = (node or {}).get("metadata") or {}
        patch = node_patch(caps, meta.get("labels"), meta.get("annotations"))
        if self.metrics:
            self.metrics.record_runtimes(
                {s.handler: s.advertised for s in statuses if s.runtime_type},
                {s.handler: s.reason for s in statuses if not s.advertised and s.handler in policy.handlers},
                caps)
            self.metrics.config_error.set(1 if error else 0)
            if configure_error:
                self.metrics.configure_errors.inc()
        return CycleResult(self.args.node_name, statuses, caps, patch, config, error, plan, configure_error)

    def run_cycle(self) -> CycleResult:
        """A full cycle against the API: read the Node, decide, patch it, renew the Lease."""
        node = self.publisher.read_node() if self.publisher else None
        result = self.cycle(node)
        if not self.args.dry_run:
            settings = self.store.current.agent
            if not patch_is_empty(result.patch):  # the Node read this cycle already carries our keys
                self.publisher.patch_node(result.patch)
            self.publisher.renew_lease(settings.namespace, keys.agent_lease_name(self.args.node_name),
                                       settings.lease_duration_seconds, lambda: datetime.now(timezone.utc))
            log.info("published", extra={"node": self.args.node_name, "capacities": result.capacities})
        return result


def _node_allocatable(node: dict[str, Any] | None) -> Decimal:
    if node is None:
        raise AgentError("no allocatable memory: give --node-allocatable-memory or API access to read the Node")
    value = ((node.get("status") or {}).get("allocatable") or {}).get("memory")
    if value is None:
        raise AgentError(f"Node {node.get('metadata', {}).get('name')} has no status.allocatable.memory")
    try:
        return parse_field(value, "Node status.allocatable.memory")
    except QuantityError as exc:
        raise AgentError(str(exc)) from None


def run_agent(args: argparse.Namespace) -> int:
    """Entry point of `sandgate agent`; returns the exit code."""
    jsonlog.configure()
    try:
        store = PolicyStore(args.config)
    except PolicyError as exc:
        print(f"sandgate agent: {exc}", file=sys.stderr)
        return 2
    if args.node_allocatable_memory:
        try:
            parse_field(args.node_allocatable_memory, "--node-allocatable-memory")
        except QuantityError as exc:
            print(f"sandgate agent: {exc}", file=sys.stderr)
            return 2
    if args.interval <= 0:
        print("sandgate agent: --interval must be > 0", file=sys.stderr)
        return 2
    offline = args.dry_run and args.node_allocatable_memory
    stop = threading.Event()
    publisher = None
    if not offline:
        from sandgate.core.kube import KubeConfigError, load_api_client
        from node_agent.publish import Publisher, Retry

        try:
            api = load_api_client(args.kubeconfig)
        except KubeConfigError as exc:
            print(f"sandgate agent: {exc}", file=sys.stderr)
            return 2
        publisher = Publisher(api, args.node_name, Retry(attempts=args.api_attempts, stop=stop))
    if args.once:
        return _run_once(Agent(args, store, publisher))
    return _run_loop(args, store, publisher, stop)


def _run_once(agent: Agent) -> int:
    from node_agent.publish import PublishError

    try:
        result = agent.run_cycle()
    except (AgentError, PublishError) as exc:
        log.error("cycle failed", extra={"node": agent.args.node_name, "error": str(exc)})
        print(f"sandgate agent: {exc}", file=sys.stderr)
        return 1
    if agent.args.dry_run:
        json.dump(result.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    return 0


def _run_loop(args: argparse.Namespace, store: PolicyStore, publisher: Any, stop: threading.Event) -> int:
    from node_agent.metrics import AgentMetrics, MetricsServer
    from node_agent.publish import PublishError

    metrics = AgentMetrics()
    try:
        server = MetricsServer(metrics, args.metrics_host, args.metrics_port, stale_after=max(60.0, 3 * args.interval))
    except OSError as exc:
        print(f"sandgate agent: cannot serve metrics on {args.metrics_host}:{args.metrics_port}: {exc}", file=sys.stderr)
        return 2
    server.start()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    agent = Agent(args, store, publisher, metrics)
    log.info("agent started", extra={"node": args.node_name, "interval": args.interval,
                                     "metrics": f"{args.metrics_host}:{args.metrics_port}"})
    while not stop.is_set():
        started = time.monotonic()
        try:
            agent.run_cycle()
            if not args.dry_run:
                metrics.last_publish.set(time.time())
            metrics.last_success = time.monotonic()
        except (AgentError, PublishError) as exc:
            metrics.publish_errors.inc()
            log.error("cycle failed; retrying next interval", extra={"node": args.node_name, "error": str(exc)})
        except Exception:  # a bug in one cycle must not take the node's heartbeat down for good
            metrics.publish_errors.inc()
            log.exception("cycle crashed; retrying next interval", extra={"node": args.node_name})
        metrics.cycles.inc()
        stop.wait(max(0.0, args.interval - (time.monotonic() - started)))
    server.stop()
    log.info("agent stopped", extra={"node": args.node_name})
    return 0
