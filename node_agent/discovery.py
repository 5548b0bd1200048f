"""Which runtime handlers on this node really work, and how many sandboxes each can hold.

A handler is advertised only when a policy profile uses it, containerd has it configured, its shim
binary exists and is executable, VM-based runtimes find KVM (/sys/class/misc/kvm), and every probe of its profiles
succeeds. A configured handler whose shim is missing would leave pods stuck in ContainerCreating, so
each failed check is kept as the reason the handler is not advertised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from pathlib import PurePosixPath
from typing import Any, Callable, Iterable

from sandgate.core import keys
from sandgate.core.policy import Policy, Profile

from node_agent.containerd import shim_name
from node_agent.host import KVM_DEVICE, SHIM_DIRS, HostFacts

__all__ = ["shim_name", "discover", "RuntimeStatus", "capacities", "node_patch", "patch_is_empty", "capacity",
           "is_vm_runtime", "find_shim"]

# Words in a shim name that mean the sandbox is a virtual machine, which needs KVM.
VM_WORDS = ("kata", "fc", "firecracker", "clh", "cloud-hypervisor", "qemu", "runv")
STANDARD_HANDLERS = ("runc", "crun")


@dataclass
class RuntimeStatus:
    """One handler: what the runtime manager says about it and whether this node advertises it."""

    handler: str
    runtime_type: str | None
    shim: str | None  # host path of the shim found, else its expected name
    advertised: bool
    reason: str | None  # why it is not advertised

    def to_json(self) -> dict[str, Any]:
        """The entry of the dry-run JSON `runtimes` list."""
        return {"handler": self.handler, "runtimeType": self.runtime_type, "shim": self.shim,
                "advertised": self.advertised, "reason": self.reason}


def is_vm_runtime(shim: str) -> bool:
    """Whether the shim runs sandboxes as virtual machines (needs KVM)."""
    name = PurePosixPath(shim).name.removeprefix("containerd-shim-")
    words = set(name.split("-"))
    return any(word in words or ("-" in word and word in name) for word in VM_WORDS)


def find_shim(executable: Callable[[str], bool], runtime_type: str, table: dict[str, Any]) -> tuple[str, str | None]:
    """(shim as found or expected, problem or None) for one containerd runtime table.

    `runtime_path` (an absolute shim path) and an absolute `runtime_type` name the shim directly;
    otherwise the shim is looked up by its derived name in SHIM_DIRS.
    """
    explicit = table.get("runtime_path") if isinstance(table.get("runtime_path"), str) else None
    if not explicit and runtime_type.startswith("/"):
        explicit = runtime_type
    if explicit:
        if not explicit.startswith("/"):
            return explicit, f"runtime_path {explicit} is not an absolute path"
        return (explicit, None) if executable(explicit) else (explicit, f"shim {explicit} not found or not executable")
    name = shim_name(runtime_type)
    for directory in SHIM_DIRS:
        candidate = f"{directory}/{name}"
        if executable(candidate):
            return candidate, None
    return name, f"shim {name} not found or not executable in {', '.join(SHIM_DIRS)}"


def _check(facts: HostFacts, handler: str, table: dict[str, Any], probes: Iterable[tuple[str, ...]]) -> RuntimeStatus:
    runtime_type = table.get("runtime_type")
    if not isinstance(runtime_type, str) or not runtime_type:
        return RuntimeStatus(handler, None, None, False, "no runtime_type in the runtime table")
    if facts.manager == "crio":
        shim, problem = _crio_binary(facts, table)
    else:
        try:
            shim, problem = find_shim(facts.executable, runtime_type, table)
        except ValueError as exc:
            return RuntimeStatus(handler, runtime_type, None, False, str(exc))
    if problem:
        return RuntimeStatus(handler, runtime_type, shim, False, problem)
    options = table.get("options") if isinstance(table.get("options"), dict) else {}
    binary = options.get("BinaryName")
    if isinstance(binary, str) and binary.startswith("/") and not facts.executable(binary):
        return RuntimeStatus(handler, runtime_type, shim, False, f"options.BinaryName {binary} not found or not executable")
    vm = runtime_type == "vm" if facts.manager == "crio" else False
    if (vm or is_vm_runtime(shim)) and not facts.kvm:
        return RuntimeStatus(handler, runtime_type, shim, False, f"VM-based runtime but {KVM_DEVICE} is missing")
    for argv in probes:
        problem = facts.probes.get(argv, f"probe {' '.join(argv)} was not run")
        if problem:
            return RuntimeStatus(handler, runtime_type, shim, False, problem)
    return RuntimeStatus(handler, runtime_type, shim, True, None)


def _crio_binary(facts: HostFacts, table: dict[str, Any]) -> tuple[str | None, str | None]:
    path = table.get("runtime_path")
    if not isinstance(path, str) or not path.startswith("/"):
        return None, "no absolute runtime_path in the CRI-O runtime table"
    return (path, None) if facts.executable(path) else (path, f"runtime_path {path} not found or not executable")


def discover(facts: HostFacts, runtimes: dict[str, dict[str, Any]], policy: Policy,
             vetoes: dict[str, str] | None = None) -> list[RuntimeStatus]:
    """Check every handler that the runtime manager has or a profile wants; sorted by handler name.

    `vetoes` (handler -> reason) keeps handlers off whatever the checks say (e.g. the runtime's
    live configuration disagrees with its files).
    """
    wanted = policy.handlers
    vetoes = vetoes or {}
    out = []
    for handler in sorted(set(runtimes) | wanted):
        if handler not in runtimes:
            manager = "CRI-O" if facts.manager == "crio" else "containerd"
            out.append(RuntimeStatus(handler, None, None, False, vetoes.get(handler, f"not configured in {manager}")))
            continue
        runtime_type = runtimes[handler].get("runtime_type")
        if handler in STANDARD_HANDLERS:
            out.append(RuntimeStatus(handler, runtime_type, None, False,
                                     "the standard runc handler is not a sandbox runtime"))
            continue
        if handler not in wanted:
            out.append(RuntimeStatus(handler, runtime_type, None, False, "no policy profile uses this handler"))
            continue
        if handler in vetoes:
            out.append(RuntimeStatus(handler, runtime_type, None, False, vetoes[handler]))
            continue
        probes = [p.probe for p in policy.profiles.values() if p.handler == handler and p.probe]
        out.append(_check(facts, handler, runtimes[handler], probes))
    return out


def sandbox_memory(profiles: Iterable[Profile]) -> Decimal:
    """Per-sandbox memory of a handler: the largest fixed overhead among the profiles using it."""
    return max((p.overhead.memory_total(Decimal(0)) for p in profiles if p.overhead), default=Decimal(0))


def capacity(allocatable: Decimal, reserved: Decimal, per_sandbox: Decimal, max_sandboxes: int) -> int:
    """min(maxSandboxes, floor((allocatable - reserved) / per-sandbox memory)), never below 0."""
    if per_sandbox <= 0:
        return max_sandboxes
    return max(0, min(max_sandboxes, math.floor((allocatable - reserved) / per_sandbox)))


def capacities(statuses: list[RuntimeStatus], policy: Policy, allocatable: Decimal) -> dict[str, int]:
    """Capacity of every advertised handler."""
    settings = policy.agent
    return {s.handler: capacity(allocatable, settings.reserved_memory,
                                sandbox_memory(p for p in policy.profiles.values() if p.handler == s.handler),
                                settings.max_sandboxes)
            for s in statuses if s.advertised}


def desired_metadata(caps: dict[str, int]) -> tuple[dict[str, str], dict[str, str]]:
    """(labels, annotations) the node should carry for the advertised handlers' capacities."""
    labels = {keys.runtime_label(h): keys.RUNTIME_LABEL_VALUE for h in sorted(caps)}
    annotations = {keys.capacity_annotation(h): str(c) for h, c in sorted(caps.items())}
    return labels, annotations


def node_patch(caps: dict[str, int], current_labels: dict[str, str] | None = None,
               current_annotations: dict[str, str] | None = None) -> dict[str, Any]:
    """JSON merge patch of the node's metadata touching only our keys, and only those that change.

    Wanted keys not already at their value are set; keys under our prefixes on the node but no
    longer wanted are set to null (merge-patch deletion). Keys we did not write are never named.
    Without the current metadata (an offline dry-run) every wanted key is in the patch.
    """
    labels, annotations = desired_metadata(caps)
    return {"metadata": {"labels": _changes(labels, current_labels or {}, keys.RUNTIME_LABEL_PREFIX),
                         "annotations": _changes(annotations, current_annotations or {},
                                                 keys.CAPACITY_ANNOTATION_PREFIX)}}


def _changes(wanted: dict[str, str], current: dict[str, str], prefix: str) -> dict[str, str | None]:
    out: dict[str, str | None] = {k: v for k, v in wanted.items() if current.get(k) != v}
    out.update({k: None for k in current if k.startswith(prefix) and k not in wanted})
    return out


def patch_is_empty(patch: dict[str, Any]) -> bool:
    """Whether a node_patch changes nothing (the Node already carries exactly our keys)."""
    return not any(patch["metadata"].values())
