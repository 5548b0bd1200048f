"""Per-sandbox Prometheus series, built from the latest inventory at each scrape.

A custom collector rather than labelled Counter/Gauge objects: each scrape yields exactly the
sandboxes of the current inventory, so the series of a sandbox that is gone disappear by
construction (no unbounded label growth, nothing to forget to remove), and the kernel's counters are
exported as they are, never re-accumulated by us.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from sandgate.core.policy import Policy

from node_agent.sandboxes import DEFAULT_DEADLINE, Inventory, Sandbox, SandboxWatcher, exported, inventory_for

LABELS = ["namespace", "pod", "uid", "handler"]

# (metric suffix, help, NetDev attribute)
NETWORK = [
    ("receive_bytes", "Bytes received by the sandbox's network namespace, per interface (lo excluded)", "receive_bytes"),
    ("transmit_bytes", "Bytes sent from the sandbox's network namespace, per interface", "transmit_bytes"),
    ("receive_packets", "Packets received, per interface", "receive_packets"),
    ("transmit_packets", "Packets sent, per interface", "transmit_packets"),
    ("receive_errors", "Receive errors, per interface", "receive_errors"),
    ("transmit_errors", "Transmit errors, per interface", "transmit_errors"),
    ("receive_drops", "Received packets dropped, per interface", "receive_drops"),
    ("transmit_drops", "Packets dropped on transmit, per interface", "transmit_drops"),
]
BLOCK = [
    ("read_bytes", "Bytes read from the block device by the sandbox's cgroup (VMM included)", "read_bytes"),
    ("write_bytes", "Bytes written to the block device by the sandbox's cgroup", "write_bytes"),
    ("read_ops", "Read operations on the block device by the sandbox's cgroup", "read_ops"),
    ("write_ops", "Write operations on the block device by the sandbox's cgroup", "write_ops"),
]


def _labels(sandbox: Sandbox) -> list[str]:
    return [sandbox.namespace, sandbox.pod, sandbox.uid, sandbox.handler]


def families(inventory: Inventory, policy: Policy) -> list[Metric]:
    """Every per-sandbox family for the exported sandboxes of `inventory` (pure: no I/O)."""
    sandboxes = exported(inventory, policy)
    network = {key: CounterMetricFamily(f"sandgate_sandbox_network_{key}", text, labels=LABELS + ["interface"])
               for key, text, _ in NETWORK}
    block = {key: CounterMetricFamily(f"sandgate_sandbox_block_{key}", text, labels=LABELS + ["device"])
             for key, text, _ in BLOCK}
    memory = GaugeMetricFamily("sandgate_sandbox_memory_working_set_bytes",
                               "Working set of the sandbox's pod cgroup (usage minus inactive file cache), "
                               "overhead included", labels=LABELS)
    cpu = CounterMetricFamily("sandgate_sandbox_cpu_seconds", "CPU time of the sandbox's pod cgroup, overhead included",
                              labels=LABELS)
    info = GaugeMetricFamily("sandgate_sandbox_info", "A sandbox the agent sees (1)", labels=LABELS + ["sandbox_id"])
    overhead = GaugeMetricFamily("sandgate_sandbox_overhead_ratio",
                                 "(memory working set - pod memory requests) / pod overhead memory: 1 means the "
                                 "configured overhead is exactly what the sandbox costs", labels=LABELS)
    for sandbox in sandboxes:
        labels = _labels(sandbox)
        info.add_metric(labels + [sandbox.id], 1)
        for dev in sandbox.network:
            for key, _, attr in NETWORK:
                network[key].add_metric(labels + [dev.interface], getattr(dev, attr))
        for io in sandbox.usage.block:
            for key, _, attr in BLOCK:
                block[key].add_metric(labels + [io.device], getattr(io, attr))
        if sandbox.usage.memory_working_set_bytes is not None:
            memory.add_metric(labels, sandbox.usage.memory_working_set_bytes)
        if sandbox.usage.cpu_seconds is not None:
            cpu.add_metric(labels, sandbox.usage.cpu_seconds)
        if sandbox.overhead_ratio is not None:
            overhead.add_metric(labels, sandbox.overhead_ratio)
    return [info, *network.values(), *block.values(), memory, cpu, overhead, *health(inventory)]


def health(inventory: Inventory) -> list[Metric]:
    """Whether the inventory works: its failures are counted, never fatal to the agent."""
    up = GaugeMetricFamily("sandgate_agent_sandbox_inventory_up",
                           "The last sandbox inventory over CRI succeeded (1) or failed (0)",
                           value=1 if inventory.error is None and inventory.refreshed_at else 0)
    errors = CounterMetricFamily("sandgate_agent_sandbox_inventory_errors",
                                 "Sandbox inventories that failed (CRI unreachable, too slow, or an error)",
                                 value=inventory.failures)
    last = GaugeMetricFamily("sandgate_agent_sandbox_inventory_last_success_timestamp_seconds",
                             "Unix time of the last successful sandbox inventory (0: none yet)",
                             value=inventory.refreshed_at)
    return [up, errors, last]


class SandboxCollector(Collector):
    """Yields families() of whatever inventory and policy `source` returns at scrape time."""

    def __init__(self, source: Callable[[], tuple[Inventory, Policy]]):
        self.source = source

    def collect(self) -> Iterator[Metric]:
        """Called by prometheus_client on every scrape."""
        inventory, policy = self.source()
        yield from families(inventory, policy)

    def describe(self) -> list[Metric]:
        """No fixed description: keeps registration from calling collect() (and the source) early."""
        return []


def sandbox_watcher(root: Path, store: Any, interval: float, registry: CollectorRegistry,
                    stop: threading.Event) -> SandboxWatcher:
    """The inventory thread (start() it), its sandboxes exported on `registry`: the agent loop's hook."""
    # The deadline follows the interval (a refresh should not outlast a cycle) but leaves CRI at least 2 s.
    deadline = min(DEFAULT_DEADLINE, max(2.0, interval))
    watcher = SandboxWatcher(inventory_for(root, store, deadline), store, interval, stop)
    registry.register(SandboxCollector(watcher.snapshot))
    return watcher
