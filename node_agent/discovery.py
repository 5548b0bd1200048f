"""Which runtime handlers on this node really work, and how many sandboxes each can hold.

A handler is advertised only when a policy profile uses it, containerd has it configured, its shim
binary exists and is executable, VM-based runtimes find /dev/kvm, and every probe of its profiles
succeeds. A configured handler whose shim is missing would leave pods stuck in ContainerCreating, so
each failed check is kept as the reason the handler is not advertised.
"""

from __future__ import annotations

import math
import os
import subprocess
from dataclasses import dataclass
from decimal import Decimal
from pathlib import PurePosixPath
from typing import Any, Iterable

from sandgate.core import keys
from sandgate.core.policy import Policy, Profile

from node_agent.containerd import Root

# Host directories searched for shims, in containerd's PATH order plus Kata's install location.
SHIM_DIRS = ("/usr/local/bin", "/usr/bin", "/bin", "/usr/local/sbin", "/usr/sbin", "/opt/kata/bin")
# Words in a shim name that mean the sandbox is a virtual machine, which needs /dev/kvm.
VM_WORDS = ("kata", "fc", "firecracker", "clh", "cloud-hypervisor", "qemu", "runv")
KVM_DEVICE = "/dev/kvm"
STANDARD_HANDLER = "runc"
PROBE_TIMEOUT = 10.0


@dataclass
class RuntimeStatus:
    """One handler: what containerd says about it and whether this node advertises it."""

    handler: str
    runtime_type: str | None
    shim: str | None  # host path of the shim found, else its expected name
    advertised: bool
    reason: str | None  # why it is not advertised

    def to_json(self) -> dict[str, Any]:
        """The entry of the dry-run JSON `runtimes` list."""
        return {"handler": self.handler, "runtimeType": self.runtime_type, "shim": self.shim,
                "advertised": self.advertised, "reason": self.reason}


def shim_name(runtime_type: str) -> str:
    """containerd's shim binary for a runtime type: io.containerd.kata.v2 -> containerd-shim-kata-v2."""
    parts = runtime_type.split(".")
    if len(parts) < 2 or not all(parts[-2:]):
        raise ValueError(f'runtime_type "{runtime_type}" is not of the form <prefix>.<name>.<version>')
    return "containerd-shim-" + "-".join(parts[-2:])


def is_vm_runtime(shim: str) -> bool:
    """Whether the shim runs sandboxes as virtual machines (needs /dev/kvm)."""
    name = PurePosixPath(shim).name.removeprefix("containerd-shim-")
    words = set(name.split("-"))
    return any(word in words or ("-" in word and word in name) for word in VM_WORDS)


def _executable(root: Root, host_path: str) -> bool:
    local = root.host(host_path)
    return local.is_file() and os.access(local, os.X_OK)


def find_shim(root: Root, runtime_type: str, table: dict[str, Any]) -> tuple[str, str | None]:
    """(shim as found or expected, problem or None) for one runtime table of the containerd config.

    `runtime_path` (an absolute shim path) and an absolute `runtime_type` name the shim directly;
    otherwise the shim is looked up by its derived name in SHIM_DIRS.
    """
    explicit = table.get("runtime_path") if isinstance(table.get("runtime_path"), str) else None
    if not explicit and runtime_type.startswith("/"):
        explicit = runtime_type
    if explicit:
        if not explicit.startswith("/"):
            return explicit, f"runtime_path {explicit} is not an absolute path"
        return (explicit, None) if _executable(root, explicit) else (explicit, f"shim {explicit} not found or not executable")
    name = shim_name(runtime_type)
    for directory in SHIM_DIRS:
        candidate = f"{directory}/{name}"
        if _executable(root, candidate):
            return candidate, None
    return name, f"shim {name} not found or not executable in {', '.join(SHIM_DIRS)}"


def run_probe(argv: tuple[str, ...], timeout: float = PROBE_TIMEOUT) -> str | None:
    """Run a profile's probe; None when it exits 0 within `timeout`, else what went wrong."""
    try:
        done = subprocess.run(list(argv), stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return f"probe {' '.join(argv)} did not finish within {timeout:g}s"
    except OSError as exc:
        return f"probe {' '.join(argv)} cannot run: {exc.strerror or exc}"
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).decode(errors="replace").strip()[-200:]
        return f"probe {' '.join(argv)} exited {done.returncode}" + (f": {tail}" if tail else "")
    return None


def _check(root: Root, handler: str, table: dict[str, Any], probes: Iterable[tuple[str, ...]]) -> RuntimeStatus:
    runtime_type = table.get("runtime_type")
    if not isinstance(runtime_type, str) or not runtime_type:
        return RuntimeStatus(handler, None, None, False, "no runtime_type in the containerd runtime table")
    try:
        shim, problem = find_shim(root, runtime_type, table)
    except ValueError as exc:
        return RuntimeStatus(handler, runtime_type, None, False, str(exc))
    if problem:
        return RuntimeStatus(handler, runtime_type, shim, False, problem)
    options = table.get("options") if isinstance(table.get("options"), dict) else {}
    binary = options.get("BinaryName")
    if isinstance(binary, str) and binary.startswith("/") and not _executable(root, binary):
        return RuntimeStatus(handler, runtime_type, shim, False, f"options.BinaryName {binary} not found or not executable")
    if is_vm_runtime(shim) and not root.host(KVM_DEVICE).exists():
        return RuntimeStatus(handler, runtime_type, shim, False, f"VM-based runtime but {KVM_DEVICE} is missing")
    for argv in probes:
        problem = run_probe(argv)
        if problem:
            return RuntimeStatus(handler, runtime_type, shim, False, problem)
    return RuntimeStatus(handler, runtime_type, shim, True, None)


def discover(root: Root, runtimes: dict[str, dict[str, Any]], policy: Policy) -> list[RuntimeStatus]:
    """Check every handler that containerd has or a profile wants; sorted by handler name."""
    wanted = policy.handlers
    out = []
    for handler in sorted(set(runtimes) | wanted):
        if handler not in runtimes:
            out.append(RuntimeStatus(handler, None, None, False, "not configured in containerd"))
            continue
        if handler == STANDARD_HANDLER:
            out.append(RuntimeStatus(handler, runtimes[handler].get("runtime_type"), None, False,
                                     "the standard runc handler is not a sandbox runtime"))
            continue
        if handler not in wanted:
            out.append(RuntimeStatus(handler, runtimes[handler].get("runtime_type"), None, False,
                                     "no policy profile uses this handler"))
            continue
        probes = [p.probe for p in policy.profiles.values() if p.handler == handler and p.probe]
        out.append(_check(root, handler, runtimes[handler], probes))
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
