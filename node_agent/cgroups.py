"""Pure readers of the kernel's per-sandbox counters: /proc/<pid>/net/dev and cgroup v1 / v2 files.

Parsing is split from reading so every format is tested from text; the readers only open files under
the agent's `--root` (the host filesystem) and return None / empty when a file is missing, because a
sandbox can vanish between listing it and reading it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

# cgroup v1 controller names of the counters we read, keyed by what they measure.
V1_CONTROLLERS = {"memory": "memory", "cpu": "cpuacct", "io": "blkio"}


@dataclass(frozen=True)
class NetDev:
    """One interface's counters from /proc/<pid>/net/dev (cumulative since the interface appeared)."""

    interface: str
    receive_bytes: int
    receive_packets: int
    receive_errors: int
    receive_drops: int
    transmit_bytes: int
    transmit_packets: int
    transmit_errors: int
    transmit_drops: int


@dataclass(frozen=True)
class BlockIO:
    """One block device's cumulative I/O of a cgroup; device is "major:minor"."""

    device: str
    read_bytes: int = 0
    write_bytes: int = 0
    read_ops: int = 0
    write_ops: int = 0


@dataclass(frozen=True)
class CgroupUsage:
    """What one cgroup has cost so far; None where the kernel does not count it."""

    memory_working_set_bytes: int | None = None
    cpu_seconds: float | None = None
    block: tuple[BlockIO, ...] = ()


def parse_net_dev(text: str) -> list[NetDev]:
    """Interfaces of a /proc/<pid>/net/dev text, loopback excluded (traffic that never leaves the pod)."""
    out = []
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        name = name.strip()
        values = rest.split()
        if not sep or name == "lo" or len(values) < 16:
            continue
        # receive: bytes packets errs drop fifo frame compressed multicast; transmit: bytes packets errs drop ...
        try:
            out.append(NetDev(name, int(values[0]), int(values[1]), int(values[2]), int(values[3]),
                              int(values[8]), int(values[9]), int(values[10]), int(values[11])))
        except ValueError:
            continue
    return out


def parse_flat_keyed(text: str) -> dict[str, int]:
    """A cgroup "key value" file (memory.stat, cpu.stat); lines that are not "key integer" are skipped."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return out


def parse_io_stat(text: str) -> list[BlockIO]:
    """cgroup v2 io.stat: "MAJ:MIN rbytes=.. wbytes=.. rios=.. wios=.. dbytes=.. dios=..", one line per device."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if not fields or ":" not in fields[0]:
            continue
        device, pairs = fields[0], fields[1:]
        values = {}
        for pair in pairs:
            key, _, value = pair.partition("=")
            if value.isdigit():
                values[key] = int(value)
        out.append(BlockIO(device, values.get("rbytes", 0), values.get("wbytes", 0),
                           values.get("rios", 0), values.get("wios", 0)))
    return out


def _parse_blkio_ops(text: str) -> dict[str, dict[str, int]]:
    """v1 blkio "MAJ:MIN Op value" lines -> {device: {"Read": n, "Write": n, ...}}; the final "Total" is skipped."""
    out: dict[str, dict[str, int]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and ":" in parts[0] and parts[2].isdigit():
            out.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    return out


def parse_blkio(service_bytes: str, serviced: str) -> list[BlockIO]:
    """cgroup v1 blkio.throttle.io_service_bytes + io_serviced (their *_recursive forms have the same shape)."""
    by_bytes, by_ops = _parse_blkio_ops(service_bytes), _parse_blkio_ops(serviced)
    out = []
    for device in sorted(set(by_bytes) | set(by_ops)):
        b, o = by_bytes.get(device, {}), by_ops.get(device, {})
        out.append(BlockIO(device, b.get("Read", 0), b.get("Write", 0), o.get("Read", 0), o.get("Write", 0)))
    return out


def expand_slice(slice_name: str) -> str:
    """systemd's slice path: "kubepods-besteffort.slice" -> "kubepods.slice/kubepods-besteffort.slice".

    Same rules as systemd (and runc's ExpandSlice): each dash opens a nested slice, "-.slice" is the root.
    """
    if not slice_name.endswith(".slice") or "/" in slice_name:
        raise ValueError(f'"{slice_name}" is not a systemd slice name')
    stem = slice_name[: -len(".slice")]
    if stem == "-":
        return ""
    if not stem or stem.startswith("-") or stem.endswith("-") or "--" in stem:
        raise ValueError(f'"{slice_name}" is not a valid systemd slice name')
    parts, prefix = [], ""
    for word in stem.split("-"):
        prefix = f"{prefix}-{word}" if prefix else word
        parts.append(prefix + ".slice")
    return "/".join(parts)


def cgroup_relpath(cgroups_path: str) -> str:
    """A runtime spec's linux.cgroupsPath as a path relative to a cgroup hierarchy's root.

    The systemd driver's form is "slice:prefix:name" (the unit is "prefix-name.scope", or "name" itself
    when it is a slice); anything else is the cgroupfs form, a path from the hierarchy root.
    """
    parts = cgroups_path.split(":")
    if len(parts) == 3 and "/" not in cgroups_path:
        slice_name, prefix, name = parts
        parent = expand_slice(slice_name or "system.slice")
        unit = name if name.endswith(".slice") else (f"{prefix}-{name}.scope" if prefix else f"{name}.scope")
        if unit.endswith(".slice"):
            return expand_slice(unit)
        return f"{parent}/{unit}" if parent else unit
    path = PurePosixPath("/", cgroups_path)
    if ".." in path.parts:
        raise ValueError(f'cgroupsPath "{cgroups_path}" leaves the hierarchy')
    return str(path).lstrip("/")


def pod_relpath(sandbox_cgroups_path: str) -> str:
    """The pod-level cgroup: the parent of the sandbox container's, holding every container (and a VMM)."""
    rel = cgroup_relpath(sandbox_cgroups_path)
    parent = str(PurePosixPath(rel).parent)
    if parent in (".", ""):
        raise ValueError(f'cgroupsPath "{sandbox_cgroups_path}" has no parent cgroup')
    return parent


@dataclass(frozen=True)
class Mount:
    """A cgroup hierarchy mount: where it is, which part of the hierarchy it shows, which controllers."""

    path: Path
    root: str
    controllers: frozenset[str] = field(default_factory=frozenset)


@dataclass(frozen=True)
class CgroupLayout:
    """Where each counter lives: a v1 hierarchy of its controller if one is mounted, else the v2 one."""

    v1: dict[str, Mount] = field(default_factory=dict)
    v2: Mount | None = None

    def locate(self, what: str, relpath: str) -> tuple[int, Path] | None:
        """(cgroup version, directory) holding `what` ("memory" | "cpu" | "io") for a cgroup, if any."""
        mount = self.v1.get(V1_CONTROLLERS[what])
        version = 1
        if mount is None:
            # cpu.stat usage_usec is counted by every v2 cgroup, even with the cpu controller disabled.
            if self.v2 is None or (what != "cpu" and what not in self.v2.controllers):
                return None
            mount, version = self.v2, 2
        rel = "/" + relpath.strip("/")
        if mount.root != "/":  # a namespaced or bind mount shows only a subtree
            if rel != mount.root and not rel.startswith(mount.root.rstrip("/") + "/"):
                return None
            rel = rel[len(mount.root.rstrip("/")):]
        return version, mount.path / rel.lstrip("/")


def _unescape(field_: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo octal."""
    out, i = [], 0
    while i < len(field_):
        if field_[i] == "\\" and field_[i + 1:i + 4].isdigit():
            out.append(chr(int(field_[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field_[i])
            i += 1
    return "".join(out)


def parse_mountinfo(text: str, root: Path, v2_controllers: frozenset[str] | None = None) -> CgroupLayout:
    """The cgroup mounts of a /proc/<pid>/mountinfo text, with mount points placed under `root`.

    `v2_controllers` are the controllers enabled in the v2 hierarchy (its cgroup.controllers); the
    caller reads them because they are not in mountinfo.
    """
    v1: dict[str, Mount] = {}
    v2 = None
    for line in text.splitlines():
        head, sep, tail = line.partition(" - ")
        fields, tail_fields = head.split(), tail.split()
        if not sep or len(fields) < 5 or len(tail_fields) < 3:
            continue
        fstype, options = tail_fields[0], tail_fields[2].split(",")
        path = root / _unescape(fields[4]).lstrip("/")
        mount_root = _unescape(fields[3])
        if fstype == "cgroup2":
            v2 = Mount(path, mount_root, v2_controllers or frozenset())
        elif fstype == "cgroup":
            controllers = frozenset(o for o in options if o in V1_CONTROLLERS.values())
            for controller in controllers:
                v1.setdefault(controller, Mount(path, mount_root, controllers))
    return CgroupLayout(v1, v2)


def _read(path: str | Path) -> str | None:
    # os.open/os.read: half the cost of open(); these small files are read hundreds of times per refresh.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks).decode()
    except (OSError, UnicodeDecodeError):
        return None
    finally:
        os.close(fd)


def load_layout(root: Path) -> CgroupLayout:
    """The host's cgroup layout: mounts of the host's init (pid 1) when visible, else our own."""
    text = _read(root / "proc/1/mountinfo") or _read(root / "proc/self/mountinfo") or ""
    layout = parse_mountinfo(text, root)
    if layout.v2 is not None:
        enabled = frozenset((_read(layout.v2.path / "cgroup.controllers") or "").split())
        layout = CgroupLayout(layout.v1, Mount(layout.v2.path, layout.v2.root, enabled))
    return layout


def read_net_dev(root: Path, pid: int) -> list[NetDev] | None:
    """Interfaces (lo excluded) of the network namespace process `pid` is in; None if it is gone."""
    text = _read(f"{root}/proc/{pid}/net/dev")
    return parse_net_dev(text) if text is not None else None


@dataclass(frozen=True)
class CgroupFiles:
    """The files holding one cgroup's counters, resolved once (a sandbox's cgroup never moves)."""

    memory_usage: str | None = None  # memory.current (v2) or memory.usage_in_bytes (v1)
    memory_stat: str | None = None
    inactive_key: str = "inactive_file"  # v1: total_inactive_file (the hierarchical one)
    cpu: str | None = None  # cpu.stat (v2, usage_usec) or cpuacct.usage (v1, ns)
    cpu_v2: bool = False
    io_stat: str | None = None  # v2
    blkio_dir: str | None = None  # v1


def cgroup_files(layout: CgroupLayout, relpath: str) -> CgroupFiles:
    """Where the memory, CPU and block I/O counters of cgroup `relpath` are, for each controller's version."""
    memory, cpu, io = (layout.locate(what, relpath) for what in ("memory", "cpu", "io"))
    files: dict[str, Any] = {}
    if memory:
        version, directory = memory
        files.update(memory_usage=f"{directory}/{'memory.current' if version == 2 else 'memory.usage_in_bytes'}",
                     memory_stat=f"{directory}/memory.stat",
                     inactive_key="inactive_file" if version == 2 else "total_inactive_file")
    if cpu:
        version, directory = cpu
        files.update(cpu=f"{directory}/{'cpu.stat' if version == 2 else 'cpuacct.usage'}", cpu_v2=version == 2)
    if io:
        version, directory = io
        files.update({"io_stat": f"{directory}/io.stat"} if version == 2 else {"blkio_dir": str(directory)})
    return CgroupFiles(**files)


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _key_value(text: str, key: str) -> int | None:
    """One "key value" line of a flat-keyed file (memory.stat has ~40 lines; only one is needed)."""
    prefix = key + " "
    if text.startswith(prefix):
        at = 0
    else:
        at = text.find("\n" + prefix) + 1
        if at == 0:
            return None
    end = text.find("\n", at)
    return _int(text[at + len(prefix):end if end >= 0 else None])


def read_memory_working_set(files: CgroupFiles) -> int | None:
    """Working set as kubelet/cAdvisor define it: usage minus inactive file cache (clamped at 0)."""
    usage = _int(_read(files.memory_usage)) if files.memory_usage else None
    if usage is None:
        return None
    inactive = _key_value(_read(files.memory_stat) or "", files.inactive_key) or 0
    return max(0, usage - inactive)


def read_cpu_seconds(files: CgroupFiles) -> float | None:
    """CPU time of the cgroup and its descendants: v2 cpu.stat usage_usec, v1 cpuacct.usage (ns)."""
    if not files.cpu:
        return None
    text = _read(files.cpu)
    if files.cpu_v2:
        usec = parse_flat_keyed(text or "").get("usage_usec")
        return usec / 1e6 if usec is not None else None
    nsec = _int(text)
    return nsec / 1e9 if nsec is not None else None


def read_block_io(files: CgroupFiles) -> list[BlockIO]:
    """Block I/O by device: v2 io.stat (hierarchical); v1 blkio.throttle.* (the recursive files when present)."""
    if files.io_stat:
        return parse_io_stat(_read(files.io_stat) or "")
    if not files.blkio_dir:
        return []
    for suffix in ("_recursive", ""):
        service_bytes = _read(f"{files.blkio_dir}/blkio.throttle.io_service_bytes{suffix}")
        if service_bytes is not None:
            return parse_blkio(service_bytes, _read(f"{files.blkio_dir}/blkio.throttle.io_serviced{suffix}") or "")
    return []


def read_usage(files: CgroupFiles) -> CgroupUsage:
    """Memory working set, CPU seconds and block I/O of one cgroup."""
    return CgroupUsage(read_memory_working_set(files), read_cpu_seconds(files), tuple(read_block_io(files)))
