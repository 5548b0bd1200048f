"""The agent's effect runner: gather facts, decide (node_agent.decide, pure), apply, publish.

One cycle: read the Node (for its allocatable memory and our current keys), gather the host facts,
decide; with --configure and a plan, write it safely and reload (node_agent.apply) and, once the
runtime is ready, gather and decide again so the Node reflects what the runtime really has; publish
the Node patch and renew the Lease. `--once --dry-run` prints the decision as one JSON document on
stdout and changes nothing; otherwise cycles repeat every --interval seconds until SIGTERM.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any


from sandgate.core import jsonlog, keys
from sandgate.core.policy import Policy, PolicyError, PolicyStore
from sandgate.core.quantity import QuantityError, parse_field

from node_agent import apply, host
from node_agent.cri.client import CriClient, CriError, socket_path
from node_agent.decide import Decision, Options, decide
from node_agent.discovery import patch_is_empty
from node_agent.host import Root

log = logging.getLogger("sandgate.agent")


# How many rolled-back plans the agent remembers so as not to retry them (oldest forgotten first).
ROLLED_BACK_KEPT = 8


class AgentError(RuntimeError):
    """A cycle could not complete (message is for the operator)."""


def readiness_check(root: Root, endpoint: str, handlers: tuple[str, ...]) -> Any:
    """A check for apply.wait_until: the runtime answers CRI Status with RuntimeReady and lists `handlers`."""
    def check() -> str | None:
        try:
            path = socket_path(endpoint, root.path if str(root.path) != "/" else None)
            with CriClient(path, timeout=2.0) as client:
                status = client.status(verbose=True)
        except (CriError, ValueError) as exc:
            return str(exc)
        if not status.runtime_ready:
            return f"RuntimeReady is false: {status.not_ready_reason()}"
        running = host.cri_runtime_tables(status)
        missing = [h for h in handlers if "config" in status.info and h not in running]
        return f"running config lacks the new handlers {missing}" if missing else None
    return check


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
        # Changes that were rolled back, by content: retrying one every cycle would restart the
        # runtime every --interval. It is tried again only once the plan differs (policy or files changed).
        # The last ROLLED_BACK_KEPT plans are remembered (each holds whole file contents).
        self.rolled_back: dict[tuple[tuple[str, str], ...], str] = {}
        self.last_rollback: str | None = None

    def decide(self, policy: Policy, node: dict[str, Any] | None, configure: bool) -> Decision:
        """Gather the host facts and decide over them."""
        if self.allocatable is not None:
            allocatable = self.allocatable
        else:  # --drop-in-only publishes no capacity: it needs no Node
            allocatable = Decimal(0) if self.args.drop_in_only else _node_allocatable(node)
        facts = host.gather(self.root, policy)
        options = Options(configure=configure, dry_run=self.args.dry_run, drop_in_only=self.args.drop_in_only,
                          stamp=self._stamp())
        return decide(facts, policy, self.args.node_name, options, node, allocatable)

    def configure(self, policy: Policy, decision: Decision, node: dict[str, Any] | None) -> tuple[Decision, bool]:
        """Apply the decision's plan; (the decision to publish, whether publishing new handlers is safe)."""
        plan = decision.plan
        settings = policy.agent
        main_config = settings.containerd_config if decision.manager == "containerd" else settings.crio_config
        # containerd reports its runtimes in Status(verbose); for CRI-O only RuntimeReady is checked.
        expected = plan.handlers if decision.manager == "containerd" else ()
        ready = readiness_check(self.root, decision.cri_endpoint or "", expected)
        result = apply.apply_plan(self.root, plan, main_config, self._stamp(), settings.reload_command, ready,
                                  settings.reload_timeout_seconds)
        if not result.ok:
            if self.metrics:
                self.metrics.configure_rollbacks.inc()
            log.error("configuration rolled back", extra={
                "node": self.args.node_name, "reason": result.reason, "files": [c.path for c in plan.files],
                "runtimeManager": decision.manager})
            decision.configure_error = result.reason
            return decision, False
        log.info("runtime configuration changed", extra={
            "node": self.args.node_name, "files": result.written, "backups": result.backups,
            "handlers": list(plan.handlers)})
        after = self.decide(policy, node, configure=False)
        after.plan = plan
        return after, True

    @staticmethod
    def _stamp() -> str:
        """This moment in UTC, as backups are named: sortable, no separators a shell would trip on."""
        return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")

    def run_cycle(self) -> Decision:
        """A full cycle: read the Node, decide, (configure), patch the Node, renew the Lease."""
        policy = self.store.current
        node = self.publisher.read_node() if self.publisher else None
        decision = self.decide(policy, node, configure=self.args.configure)
        for warning in decision.warnings:
            log.warning("runtime discovery warning", extra={"node": self.args.node_name, "warning": warning})
        for problem in decision.problems:
            log.error("runtime configuration problem", extra={"node": self.args.node_name, "problem": problem})
        if decision.config_error:
            log.error("runtime configuration unusable; advertising nothing",
                      extra={"node": self.args.node_name, "error": decision.config_error})
        if decision.configure_error:
            log.error("cannot configure the runtime", extra={"node": self.args.node_name,
                                                            "error": decision.configure_error})
        for skipped in decision.plan.skipped:
            log.warning("handler not configured", extra={"node": self.args.node_name, **skipped})
        publish_new = True
        self.last_rollback = None
        if decision.plan.changed and not self.args.dry_run:
            key = tuple((c.path, c.content) for c in decision.plan.files)
            if key in self.rolled_back:
                decision.configure_error = f"not retried: the same change was rolled back before: {self.rolled_back[key]}"
                log.warning("configure skipped", extra={"node": self.args.node_name, "reason": decision.configure_error})
            else:
                decision, publish_new = self.configure(policy, decision, node)
                if not publish_new:
                    self.rolled_back[key] = decision.configure_error or "rolled back"
                    while len(self.rolled_back) > ROLLED_BACK_KEPT:
                        del self.rolled_back[next(iter(self.rolled_back))]
                    self.last_rollback = decision.configure_error
        self._record(policy, decision)
        if not self.args.dry_run and not self.args.drop_in_only:
            settings = policy.agent
            if not publish_new:
                log.warning("node labels left as they were after a rolled-back configuration",
                            extra={"node": self.args.node_name})
            elif not patch_is_empty(decision.patch):  # the Node read this cycle already carries our keys
                self.publisher.patch_node(decision.patch)
            self.publisher.renew_lease(settings.namespace, keys.agent_lease_name(self.args.node_name),
                                       settings.lease_duration_seconds, lambda: datetime.now(timezone.utc))
            log.info("published", extra={"node": self.args.node_name, "capacities": decision.capacities})
        return decision

    def _record(self, policy: Policy, decision: Decision) -> None:
        if self.args.drop_in_only:
            return  # it advertises nothing: what it could advertise is the DaemonSet agent's business
        for status in decision.statuses:
            if not status.advertised and status.handler in policy.handlers:
                log.warning("runtime not advertised", extra={"node": self.args.node_name, **status.to_json()})
        if not self.metrics:
            return
        statuses = decision.statuses
        self.metrics.record_runtimes(
            {s.handler: s.advertised for s in statuses if s.runtime_type},
            {s.handler: s.reason for s in statuses if not s.advertised and s.handler in policy.handlers},
            decision.capacities)
        self.metrics.record_mismatches(decision.mismatched)
        self.metrics.config_error.set(1 if decision.config_error or decision.problems else 0)
        if decision.configure_error:
            self.metrics.configure_errors.inc()


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
    if args.dry_run and not args.once:
        print("sandgate agent: --dry-run needs --once (a dry run prints one cycle's decision and exits)",
              file=sys.stderr)
        return 2
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
    if args.drop_in_only and not (args.once and args.configure):
        print("sandgate agent: --drop-in-only needs --once and --configure (it is the one-shot init container "
              "that configures the runtime and exits)", file=sys.stderr)
        return 2
    if args.drop_in_only and args.kubeconfig:
        print("sandgate agent: --drop-in-only never contacts the Kubernetes API; drop --kubeconfig", file=sys.stderr)
        return 2
    offline = (args.dry_run and args.node_allocatable_memory) or args.drop_in_only
    stop = threading.Event()
    publisher = None
    if not offline:
        from sandgate.core.rawapi import RawApi, RawApiConfigError, load_configuration
        from node_agent.publish import Publisher, Retry

        try:
            api = RawApi(load_configuration(args.kubeconfig))
        except RawApiConfigError as exc:
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
    if agent.args.drop_in_only and not agent.args.dry_run:
        return _drop_in_outcome(agent, result)
    if agent.args.dry_run:
        from node_agent.sandboxes import inventory_once

        document = result.to_json()
        sandboxes = inventory_once(agent.root.path, agent.store)
        document["sandboxes"], document["sandboxesError"] = sandboxes.to_json(), sandboxes.error
        json.dump(document, sys.stdout, indent=2)
        sys.stdout.write("\n")
    if agent.last_rollback is not None:
        print(f"sandgate agent: configuration rolled back: {agent.last_rollback}", file=sys.stderr)
        return 1
    if result.configure_error and not agent.args.dry_run:  # a one-shot --configure that could not configure
        print(f"sandgate agent: cannot configure: {result.configure_error}", file=sys.stderr)
        return 1
    return 0


def _drop_in_outcome(agent: Agent, result: Decision) -> int:
    """--drop-in-only: one JSON log line saying how it ended (configured, unchanged, refused, rolled-back)."""
    plan = result.plan
    fields: dict[str, Any] = {"node": agent.args.node_name, "runtimeManager": result.manager,
                              "handlers": list(plan.handlers), "files": [c.path for c in plan.files],
                              "skipped": list(plan.skipped)}
    reason = agent.last_rollback or result.configure_error or result.config_error
    if reason is not None:
        outcome = "rolled-back" if agent.last_rollback is not None else "refused"
        log.error("runtime not configured", extra={**fields, "outcome": outcome, "reason": reason})
        return 1
    outcome = "configured" if plan.changed else "unchanged"
    log.info("runtime configured" if plan.changed else "runtime already configured",
             extra={**fields, "outcome": outcome})
    return 0


def _run_loop(args: argparse.Namespace, store: PolicyStore, publisher: Any, stop: threading.Event) -> int:
    from node_agent.metrics import AgentMetrics, MetricsServer
    from node_agent.publish import PublishError
    from node_agent.sandbox_metrics import sandbox_watcher

    metrics = AgentMetrics()
    sandboxes = sandbox_watcher(Path(args.root), store, args.interval, metrics.registry, stop)
    try:
        server = MetricsServer(metrics, args.metrics_host, args.metrics_port, stale_after=max(60.0, 3 * args.interval),
                               sandboxes=lambda: sandboxes.inventory.current.document())
    except OSError as exc:
        print(f"sandgate agent: cannot serve metrics on {args.metrics_host}:{args.metrics_port}: {exc}", file=sys.stderr)
        return 2
    server.start()
    sandboxes.start()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    agent = Agent(args, store, publisher, metrics)
    slots = None
    if args.device_plugin_dir and not args.dry_run:
        from node_agent.deviceplugin import DevicePlugins

        slots = DevicePlugins(args.device_plugin_dir).start()
    log.info("agent started", extra={"node": args.node_name, "interval": args.interval,
                                     "metrics": f"{args.metrics_host}:{args.metrics_port}"})
    while not stop.is_set():
        started = time.monotonic()
        try:
            result = agent.run_cycle()
            if slots is not None:
                slots.update(store.current.handlers, result.capacities)
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
    if slots is not None:
        slots.stop()
    server.stop()
    sandboxes.join(timeout=15)
    log.info("agent stopped", extra={"node": args.node_name})
    return 0
