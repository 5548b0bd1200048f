"""Reading and extending containerd's configuration (TOML, config versions 1, 2 and 3).

containerd merges `imports` drop-ins into the main file: each listed path or glob (relative ones are
relative to the main file's directory) is loaded in order and merged recursively, tables merging and
later scalars winning. Discovery sees the same effective configuration containerd does. Every path
here is a host path; `Root.host` maps it under the agent's view of the host filesystem (--root).
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
import shutil
import tempfile
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

import tomli_w

# Where the CRI plugin keeps its runtime handlers, per config version.
RUNTIME_TABLES: dict[int, tuple[str, ...]] = {
    1: ("plugins", "cri", "containerd", "runtimes"),
    2: ("plugins", "io.containerd.grpc.v1.cri", "containerd", "runtimes"),
    3: ("plugins", "io.containerd.cri.v1.runtime", "containerd", "runtimes"),
}
BACKUP_SUFFIX = ".sandgate.bak"


class ContainerdConfigError(ValueError):
    """The containerd configuration cannot be read or understood."""


@dataclass(frozen=True)
class Root:
    """The host filesystem as the agent sees it (mounted at `path`, e.g. /host in the DaemonSet)."""

    path: Path

    def host(self, host_path: str | PurePosixPath) -> Path:
        """The local path of an absolute host path."""
        return self.path / str(host_path).lstrip("/")


@dataclass
class ContainerdConfig:
    """The effective containerd configuration: the main file merged with its imports."""

    path: str  # host path of the main file
    version: int
    main: dict[str, Any]  # the main file alone, as parsed
    effective: dict[str, Any]  # main + imports merged
    imports: list[str]  # host paths of the imported files, in load order

    def runtimes(self) -> dict[str, dict[str, Any]]:
        """Runtime handler name -> its table (runtime_type, options, ...)."""
        table: Any = self.effective
        for key in RUNTIME_TABLES[self.version]:
            table = table.get(key) if isinstance(table, dict) else None
            if table is None:
                return {}
        return {name: body for name, body in table.items() if isinstance(body, dict)} if isinstance(table, dict) else {}


def with_drop_ins(config: ContainerdConfig, plan: "ConfigurePlan") -> ContainerdConfig:
    """The configuration as containerd will see it once `plan`'s drop-ins are written and imported.

    A dry run discovers over this, so the Node patch it prints is the one the real run publishes.
    """
    effective = config.effective
    for change in plan.drop_ins:
        effective = merge(effective, tomllib.loads(change.content))
    return replace(config, effective=effective, imports=config.imports + [c.path for c in plan.drop_ins])


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """containerd's merge: tables merge recursively, anything else in `extra` replaces."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _parse(root: Root, host_path: str) -> dict[str, Any]:
    try:
        with open(root.host(host_path), "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ContainerdConfigError(f"{host_path}: file not found") from None
    except OSError as exc:
        raise ContainerdConfigError(f"{host_path}: cannot read: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ContainerdConfigError(f"{host_path}: not valid TOML: {exc}") from None


def _import_patterns(doc: dict[str, Any], host_path: str) -> list[str]:
    imports = doc.get("imports", [])
    if not isinstance(imports, list) or not all(isinstance(i, str) for i in imports):
        raise ContainerdConfigError(f"{host_path}: imports must be a list of strings")
    base = PurePosixPath(host_path).parent
    return [str(base / pattern) if not pattern.startswith("/") else pattern for pattern in imports]


def expand_imports(root: Root, patterns: list[str]) -> list[str]:
    """Host paths matched by the import patterns, in order (a glob's matches sorted, as containerd does)."""
    out: list[str] = []
    for pattern in patterns:
        if glob.has_magic(pattern):
            matches = sorted(glob.glob(str(root.host(pattern))))
            out.extend("/" + os.path.relpath(m, root.path) for m in matches)
        else:
            out.append(pattern)
    return out


def load(root: Root, host_path: str) -> ContainerdConfig:
    """Parse the main config and its imports (recursively, each file once); raise ContainerdConfigError."""
    main = _parse(root, host_path)
    version = main.get("version", 1)
    if version not in RUNTIME_TABLES:
        raise ContainerdConfigError(f"{host_path}: unsupported config version {version!r} (known: 1, 2, 3)")
    effective = main
    loaded: list[str] = []
    pending = expand_imports(root, _import_patterns(main, host_path))
    seen = {host_path}
    while pending:
        path = pending.pop(0)
        if path in seen:
            continue
        seen.add(path)
        doc = _parse(root, path)
        loaded.append(path)
        pending = expand_imports(root, _import_patterns(doc, path)) + pending
        doc = {k: v for k, v in doc.items() if k not in ("imports", "version")}
        effective = merge(effective, doc)
    return ContainerdConfig(host_path, version, main, effective, loaded)


def is_imported(config: ContainerdConfig, host_path: str) -> bool:
    """Whether the main file's `imports` patterns cover `host_path` (an existing file or not)."""
    for pattern in _import_patterns(config.main, config.path):
        if pattern == host_path or (glob.has_magic(pattern) and fnmatch.fnmatchcase(host_path, pattern)):
            return True
    return False


def drop_in_document(version: int, handler: str, runtime_type: str, options: dict[str, Any]) -> dict[str, Any]:
    """The TOML document of a drop-in adding `handler` to the CRI runtimes of a config `version` file."""
    runtime: dict[str, Any] = {"runtime_type": runtime_type}
    if options:
        runtime["options"] = dict(options)
    doc: dict[str, Any] = {handler: runtime}
    for key in reversed(RUNTIME_TABLES[version]):
        doc = {key: doc}
    return {"version": version, **doc}


@dataclass
class FileChange:
    """A file the configure step writes (host path and full new content)."""

    path: str
    content: str
    backup: str | None = None


@dataclass
class ConfigurePlan:
    """What `--configure` would change; empty when the node is already configured."""

    drop_ins: list[FileChange] = field(default_factory=list)
    main_config: FileChange | None = None
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"handler", "reason"}

    @property
    def changed(self) -> bool:
        """True when some file must be written."""
        return bool(self.drop_ins) or self.main_config is not None


def _imports_line(imports: list[str]) -> str:
    return tomli_w.dumps({"imports": imports}).strip()


def with_imports(text: str, main: dict[str, Any], imports: list[str]) -> str:
    """The main config text with `imports` set, keeping the operator's comments and layout when possible.

    The top-level `imports = [...]` is replaced in place (or a line is prepended: top-level keys may
    precede every table). The result must parse to exactly the old document with the new imports;
    otherwise the whole file is re-serialised, which is always correct but drops comments.
    """
    wanted = {**main, "imports": imports}
    line = _imports_line(imports)
    existing = re.search(r"(?ms)^imports\s*=\s*\[.*?\]", text)
    candidate = (text[:existing.start()] + line + text[existing.end():]) if existing else f"{line}\n{text}"
    try:
        if tomllib.loads(candidate) == wanted:
            return candidate
    except tomllib.TOMLDecodeError:
        pass
    return tomli_w.dumps(wanted)


def plan_configure(root: Root, config: ContainerdConfig, drop_in_dir: str,
                   wanted: dict[str, tuple[str | None, dict[str, Any]]]) -> ConfigurePlan:
    """Drop-ins for every wanted handler (name -> (runtime_type, options)) missing from `config`.

    Pure apart from reading the main file's text: nothing is written here.
    """
    plan = ConfigurePlan()
    present = config.runtimes()
    for handler, (runtime_type, options) in sorted(wanted.items()):
        if handler in present:
            continue
        if not runtime_type:
            plan.skipped.append({"handler": handler, "reason": "missing from containerd and the profile has no runtimeType"})
            continue
        if config.version == 1:
            plan.skipped.append({"handler": handler, "reason": "containerd config version 1 takes no drop-ins "
                                                              "(migrate with `containerd config migrate`)"})
            continue
        path = str(PurePosixPath(drop_in_dir) / f"sandgate-{handler}.toml")
        plan.drop_ins.append(FileChange(path, tomli_w.dumps(drop_in_document(config.version, handler, runtime_type,
                                                                             options))))
    missing = [c.path for c in plan.drop_ins if not is_imported(config, c.path)]
    if missing:
        current = config.main.get("imports", [])
        text = root.host(config.path).read_text(encoding="utf-8")
        plan.main_config = FileChange(config.path, with_imports(text, config.main, list(current) + missing),
                                      config.path + BACKUP_SUFFIX)
    return plan


def _atomic_write(target: Path, content: str, mode: int | None = None) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        tomllib.loads(Path(tmp).read_text(encoding="utf-8"))  # never put a file containerd cannot parse
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def apply_configure(root: Root, plan: ConfigurePlan) -> None:
    """Write the plan: drop-ins first, then the main config (backup kept, temp file validated, atomic rename)."""
    for change in plan.drop_ins:
        _atomic_write(root.host(change.path), change.content, 0o644)
    if plan.main_config:
        target = root.host(plan.main_config.path)
        shutil.copy2(target, root.host(plan.main_config.backup))
        _atomic_write(target, plan.main_config.content, target.stat().st_mode & 0o7777)
