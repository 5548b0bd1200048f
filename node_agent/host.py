"""Reading the node: every fact the agent's decision needs, gathered in one place (the only I/O before deciding).

The host filesystem is seen under --root (the DaemonSet mounts it at /host). Facts are plain
values: config file texts, the CRI runtime's answers, which binaries exist and are executable,
whether KVM is there (/sys/class/misc/kvm), and the probes' results, so that node_agent.decide stays pure.
"""

from __future__ import annotations

import os
import posixpath
import subprocess
import tomllib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

from sandgate.core.policy import AgentSettings, Policy
from sandgate.core.policy.model import DEFAULT_CRI_ENDPOINT

from node_agent import containerd, crio
from node_agent.containerd import ConfigSnapshot, ContainerdVersion
from node_agent.cri.client import CriClient, CriError, RuntimeStatus, RuntimeVersion, socket_path

CONTAINERD_BINARIES = ("/usr/bin/containerd", "/usr/local/bin/containerd")
# Host directories searched for shims, in containerd's PATH order plus Kata's install location.
SHIM_DIRS = ("/usr/local/bin", "/usr/bin", "/bin", "/usr/local/sbin", "/usr/sbin", "/opt/kata/bin")
# The kvm module's sysfs entry, a symlink into /sys/devices: seen through a read-only hostPath of
# /sys/class/misc, without mounting /dev (where a device node could be opened).
KVM_DEVICE = "/sys/class/misc/kvm"
PROBE_TIMEOUT = 10.0
BINARY_TIMEOUT = 10.0
CRI_TIMEOUT = 5.0
MAX_CONFIG_FILES = 256  # imports are operator-written; a runaway glob must not stall a cycle


@dataclass(frozen=True)
class Root:
    """The host filesystem as the agent sees it (mounted at `path`, e.g. /host in the DaemonSet)."""

    path: Path

    def host(self, host_path: str | PurePosixPath) -> Path:
        """The local path of an absolute host path."""
        return self.path / str(host_path).lstrip("/")

    def to_host(self, local: str) -> str:
        """The host path of a local path under the root."""
        relative = os.path.relpath(local, self.path)
        return "/" if relative == "." else "/" + relative


@dataclass(frozen=True)
class CriFacts:
    """What the CRI socket answered this cycle (version and verbose status), or why it did not."""

    endpoint: str
    version: RuntimeVersion | None = None
    status: RuntimeStatus | None = None
    error: str | None = None

    @property
    def reachable(self) -> bool:
        """Whether the runtime answered both Version and Status."""
        return self.version is not None and self.status is not None


@dataclass(frozen=True)
class HostFacts:
    """Everything one cycle knows about the node."""

    manager: str  # "containerd" or "crio"
    snapshot: ConfigSnapshot | None  # containerd's config files (None: unreadable, see snapshot_error)
    snapshot_error: str | None
    cri: CriFacts
    binary_version: tuple[ContainerdVersion | None, str | None]  # (version, binary) from `containerd --version`
    crio_files: dict[str, str] = field(default_factory=dict)  # CRI-O: host path -> text, in load order
    executables: frozenset[str] = frozenset()  # host paths found executable
    kvm: bool = False
    probes: dict[tuple[str, ...], str | None] = field(default_factory=dict)  # argv -> problem or None

    def executable(self, host_path: str) -> bool:
        """Whether `host_path` exists on the node as an executable file."""
        return host_path in self.executables


def read_text(root: Root, host_path: str) -> str | None:
    """A host file's text; None when it does not exist. Other read errors raise ContainerdConfigError."""
    try:
        return root.host(host_path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise containerd.ContainerdConfigError(f"{host_path}: cannot read: {reason}") from None


def read_snapshot(root: Root, main: str) -> ConfigSnapshot:
    """The main config and every file its imports can reach under either version's import rules."""
    texts: dict[str, str | None] = {}
    globs: dict[str, tuple[str, ...]] = {}
    pending = [main]
    rules = (ContainerdVersion(1, 7), ContainerdVersion(2, 0))
    while pending and len(texts) < MAX_CONFIG_FILES:
        path, pending = pending[0], pending[1:]
        if path in texts:
            continue
        texts[path] = read_text(root, path)
        try:
            imports = containerd.import_patterns(tomllib.loads(texts[path] or ""), path)
        except (tomllib.TOMLDecodeError, containerd.ContainerdConfigError):
            continue  # containerd.resolve reports it when it matters
        for entry in imports:
            for version in rules:
                target, is_glob = containerd.import_target(path, entry, version)
                if not is_glob:
                    pending.append(target)
                elif target not in globs:
                    globs[target] = tuple(sorted(root.to_host(m) for m in _glob(root, target)))
                    pending.extend(globs[target])
    return ConfigSnapshot(main, texts, globs)


def _glob(root: Root, pattern: str) -> list[str]:
    import glob

    # containerd globs only `*`; escape the other glob characters Python would honour.
    local = str(root.host(pattern))
    escaped = "".join(glob.escape(part) if part != "*" else part for part in _split_stars(local))
    return sorted(m for m in glob.glob(escaped) if os.path.isfile(m) or os.path.islink(m))


def _split_stars(text: str) -> list[str]:
    parts: list[str] = []
    for i, chunk in enumerate(text.split("*")):
        if i:
            parts.append("*")
        parts.append(chunk)
    return parts


def read_cri(root: Root, endpoint: str) -> CriFacts:
    """Ask the runtime's CRI socket for its Version and verbose Status (each call has a deadline).

    A fresh channel each time: a channel kept across cycles would sit in gRPC's reconnect backoff
    (up to two minutes) after the runtime restarts, exactly when the agent must see it come back.
    """
    try:
        path = socket_path(endpoint, root.path if str(root.path) != "/" else None)
        with CriClient(path, timeout=CRI_TIMEOUT) as client:
            return CriFacts(endpoint, client.version(), client.status(verbose=True))
    except CriError as exc:
        # gRPC's connect errors end in the OS reason ("...: Permission denied"); that is what an operator needs.
        reason = exc.details.rsplit(": ", 1)[-1].strip()[:120] if exc.unreachable else str(exc)
        return CriFacts(endpoint, error=f"{exc.code.name}: {reason}" if exc.unreachable else reason)
    except ValueError as exc:
        return CriFacts(endpoint, error=str(exc))


def binary_version(root: Root) -> tuple[ContainerdVersion | None, str | None]:
    """(version, binary host path) from `<root>/usr/bin/containerd --version`, then /usr/local/bin."""
    for binary in CONTAINERD_BINARIES:
        local = root.host(binary)
        if not (local.is_file() and os.access(local, os.X_OK)):
            continue
        try:
            done = subprocess.run([str(local), "--version"], stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=BINARY_TIMEOUT)
        except (OSError, subprocess.TimeoutExpired):
            continue
        version = containerd.version_from_banner(done.stdout.decode(errors="replace"))
        if done.returncode == 0 and version is not None:
            return version, binary
    return None, None


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


def shim_candidates(tables: Iterable[dict[str, Any]], runtime_types: Iterable[str]) -> set[str]:
    """Host paths whose executability discovery may ask about for these runtime tables / types."""
    out: set[str] = set()
    types = set(runtime_types)
    for table in tables:
        for key in ("runtime_path",):
            if isinstance(table.get(key), str) and table[key].startswith("/"):
                out.add(table[key])
        options = table.get("options") if isinstance(table.get("options"), dict) else {}
        if isinstance(options.get("BinaryName"), str) and options["BinaryName"].startswith("/"):
            out.add(options["BinaryName"])
        if isinstance(table.get("runtime_type"), str):
            types.add(table["runtime_type"])
    for runtime_type in types:
        if runtime_type.startswith("/"):
            out.add(runtime_type)
            continue
        try:
            name = containerd.shim_name(runtime_type)
        except ValueError:
            continue
        out.update(posixpath.join(d, name) for d in SHIM_DIRS)
    return out


def _executables(root: Root, paths: Iterable[str]) -> frozenset[str]:
    found = set()
    for path in paths:
        local = root.host(path)
        if local.is_file() and os.access(local, os.X_OK):
            found.add(path)
    return frozenset(found)


def detect_manager(root: Root, policy: Policy) -> str:
    """containerd or crio: the policy's agent.runtimeManager, or for `auto` the one whose config exists.

    containerd wins a tie (it is the default runtime manager of kubeadm and most distributions).
    """
    settings = policy.agent
    if settings.runtime_manager != "auto":
        return settings.runtime_manager
    if root.host(settings.containerd_config).exists():
        return "containerd"
    if root.host(settings.crio_config).exists() or root.host(settings.crio_drop_in_dir).is_dir():
        return "crio"
    return "containerd"


def cri_endpoint(settings: AgentSettings, manager: str) -> str:
    """The CRI endpoint to talk to: agent.criEndpoint; its default means CRI-O's own socket on a CRI-O node."""
    if manager == "crio" and settings.cri_endpoint == DEFAULT_CRI_ENDPOINT:
        return crio.DEFAULT_ENDPOINT
    return settings.cri_endpoint


def gather(root: Root, policy: Policy) -> HostFacts:
    """Every fact of this cycle."""
    settings = policy.agent
    manager = detect_manager(root, policy)
    snapshot, snapshot_error, crio_files = None, None, {}
    tables: list[dict[str, Any]] = []
    if manager == "containerd":
        try:
            snapshot = read_snapshot(root, settings.containerd_config)
            for text in snapshot.texts.values():
                tables.extend(_runtime_tables_in(text))
        except containerd.ContainerdConfigError as exc:
            snapshot_error = str(exc)
    else:
        try:
            crio_files = crio.read_files(lambda p: read_text(root, p),
                                         lambda d: _list_dir(root, d), settings.crio_config, settings.crio_drop_in_dir)
            tables.extend(crio.resolve(crio_files).runtimes().values())
        except containerd.ContainerdConfigError as exc:
            snapshot_error = str(exc)
    endpoint = cri_endpoint(settings, manager)
    cri = read_cri(root, endpoint)
    if cri.status is not None:
        tables.extend(cri_runtime_tables(cri.status).values())
    version = (None, None) if manager != "containerd" or settings.containerd_version != "auto" or (
        cri.version and cri.version.runtime_name == "containerd") else binary_version(root)
    runtime_types = {p.runtime_type for p in policy.profiles.values() if p.runtime_type}
    # A dry run discovers over the tables --configure would write: their paths are candidates too.
    tables.extend({**p.runtime_options, "options": p.runtime_options} for p in policy.profiles.values())
    candidates = shim_candidates(tables, runtime_types)
    probes = {p.probe: run_probe(p.probe) for p in policy.profiles.values() if p.probe}
    return HostFacts(manager, snapshot, snapshot_error, cri, version, crio_files, _executables(root, candidates),
                     os.path.lexists(root.host(KVM_DEVICE)), probes)


def _list_dir(root: Root, host_dir: str) -> list[str] | None:
    try:
        return sorted(os.listdir(root.host(host_dir)))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise containerd.ContainerdConfigError(f"{host_dir}: cannot list: {exc.strerror or exc}") from None


def _runtime_tables_in(text: str | None) -> list[dict[str, Any]]:
    """Every runtime table in a config file, for the shim lookups discovery may need."""
    try:
        doc = tomllib.loads(text or "")
    except tomllib.TOMLDecodeError:
        return []
    out = []
    for section in (doc.get("plugins") or {}).values():
        runtimes = ((section or {}).get("containerd") or {}).get("runtimes") if isinstance(section, dict) else None
        if isinstance(runtimes, dict):
            out.extend(t for t in runtimes.values() if isinstance(t, dict))
    return out


def cri_runtime_tables(status: RuntimeStatus) -> dict[str, dict[str, Any]]:
    """containerd's effective runtimes from Status(verbose) info["config"], in the config file's key names."""
    config = status.info.get("config")
    runtimes = ((config or {}).get("containerd") or {}).get("runtimes") if isinstance(config, dict) else None
    if not isinstance(runtimes, dict):
        return {}
    out = {}
    for name, body in runtimes.items():
        if not isinstance(body, dict):
            continue
        table: dict[str, Any] = {"runtime_type": body.get("runtimeType") or body.get("runtime_type") or ""}
        if body.get("runtimePath"):
            table["runtime_path"] = body["runtimePath"]
        if isinstance(body.get("options"), dict):
            table["options"] = body["options"]
        out[name] = table
    return out
