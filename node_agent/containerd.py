"""containerd's configuration as containerd itself reads it, per containerd version (pure: no I/O here).

The facts, from containerd's sources (LoadConfig / resolveImports / mergeConfig):

- Files load breadth-first: the main file, then its `imports` in order, then theirs; a path already
  loaded is skipped. An import is globbed only when it contains `*` (Go's filepath.Glob: matches
  sorted); other relative imports are relative to the importing file's directory. containerd 2.x
  also resolves a relative glob against that directory; 1.x globs it as written, i.e. against the
  daemon's working directory, which is `/` under systemd.
- containerd 1.6 / 1.7 merge each file into the result with mergo (non-empty scalars override,
  lists append) but **replace each whole top-level plugin section** a file names
  (`plugins."io.containerd.grpc.v1.cri"`, or `plugins.cri` in a version 1 file), and the CRI plugin
  decodes that one section over its defaults, where a `runtimes` table replaces the default
  runtimes (runc) wholesale. So a drop-in holding only `[plugins."io.containerd.grpc.v1.cri"
  .containerd.runtimes.kata]` erases runc, its options, sandbox_image, the registry config and
  every handler named elsewhere.
- containerd 2.x merges plugin sections recursively, so a drop-in with one runtime table adds
  exactly that table. A drop-in may not carry a higher config version than the main file.

`resolve` computes the effective configuration under one version's rules; `plan_configure` changes
nothing but the wanted runtime tables: on 1.x by editing the one file whose CRI section is in effect
(the last loaded file naming it, else the main file), on 2.x with a drop-in holding only the table.
"""

from __future__ import annotations

import fnmatch
import json
import posixpath
import re
import tomllib
from dataclasses import dataclass, field, replace
from typing import Any

import tomli_w

# The CRI plugin's key under [plugins], per config version (version 1 names plugins by their ID).
CRI_SECTION = {1: "cri", 2: "io.containerd.grpc.v1.cri", 3: "io.containerd.cri.v1.runtime"}
RUNTIMES_PATH = ("containerd", "runtimes")
DEFAULT_RUNTIME_NAME = "runc"
# containerd 1.6 / 1.7's default runtimes, as `containerd config default` prints them: restated
# whenever a 1.x edit creates the runtimes table, because that table replaces the defaults.
DEFAULT_RUNTIMES_1X: dict[str, dict[str, Any]] = {
    "runc": {
        "runtime_type": "io.containerd.runc.v2",
        "options": {"BinaryName": "", "CriuImagePath": "", "CriuPath": "", "CriuWorkPath": "", "IoGid": 0,
                    "IoUid": 0, "NoNewKeyring": False, "NoPivotRoot": False, "Root": "", "ShimCgroup": "",
                    "SystemdCgroup": False},
    },
}
# Top-level maps that 1.x replaces per key (mergeConfig's loops); other tables merge field by field.
_REPLACED_PER_KEY_1X = ("plugins", "proxy_plugins", "stream_processors", "timeouts")
# containerd's v1 -> v2 migration of plugin IDs (version 1 files name plugins by ID).
_V1_PLUGIN_URIS = {
    "cri": "io.containerd.grpc.v1.cri", "cgroups": "io.containerd.monitor.v1.cgroups",
    "linux": "io.containerd.runtime.v1.linux", "scheduler": "io.containerd.gc.v1.scheduler",
    "bolt": "io.containerd.metadata.v1.bolt", "task": "io.containerd.runtime.v2.task",
    "opt": "io.containerd.internal.v1.opt", "restart": "io.containerd.internal.v1.restart",
    "aufs": "io.containerd.snapshotter.v1.aufs", "btrfs": "io.containerd.snapshotter.v1.btrfs",
    "devmapper": "io.containerd.snapshotter.v1.devmapper", "native": "io.containerd.snapshotter.v1.native",
    "overlayfs": "io.containerd.snapshotter.v1.overlayfs", "zfs": "io.containerd.snapshotter.v1.zfs",
}
BACKUP_INFIX = ".sandgate-"
BACKUP_SUFFIX = ".bak"


class ContainerdConfigError(ValueError):
    """The containerd configuration cannot be read or understood."""


@dataclass(frozen=True, order=True)
class ContainerdVersion:
    """A containerd release line, e.g. 1.6 or 2.0: it decides the merge and import rules."""

    major: int
    minor: int

    @property
    def merges_plugin_sections(self) -> bool:
        """Whether drop-ins merge into plugin sections recursively (2.0+) instead of replacing them."""
        return self.major >= 2

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"


_VERSION = re.compile(r"^v?(\d+)\.(\d+)(?:[.~+-]|$)")


def parse_version(text: str) -> ContainerdVersion | None:
    """"1.6", "v1.7.2", "1.6.20~ds1", "2.0.0-rc.1" -> the release line; None when not a version."""
    match = _VERSION.match(text.strip())
    return ContainerdVersion(int(match[1]), int(match[2])) if match else None


def version_from_banner(banner: str) -> ContainerdVersion | None:
    """The version in `containerd --version` output ("containerd github.com/containerd/containerd v1.7.2 <commit>")."""
    words = banner.split()
    if len(words) >= 3 and words[0] == "containerd":
        return parse_version(words[2])
    return None


@dataclass(frozen=True)
class ConfigSnapshot:
    """The configuration files as read from the host (host paths): the model's only input.

    `texts` holds every file reachable through `imports` under any version's rules (None: missing);
    `globs` the sorted matches of every absolute glob pattern met.
    """

    main: str
    texts: dict[str, str | None]
    globs: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def with_files(self, files: dict[str, str]) -> "ConfigSnapshot":
        """The snapshot after writing `files` (host path -> content): new files join matching globs."""
        texts = {**self.texts, **files}
        globs = {pattern: tuple(sorted(set(matches) | {p for p in files if _glob_matches(pattern, p)}))
                 for pattern, matches in self.globs.items()}
        return replace(self, texts=texts, globs=globs)


def _glob_matches(pattern: str, path: str) -> bool:
    """filepath.Glob's match: `*` stops at `/`, like fnmatch per path segment."""
    pattern_parts, path_parts = pattern.split("/"), path.split("/")
    return len(pattern_parts) == len(path_parts) and all(
        fnmatch.fnmatchcase(name, part) for part, name in zip(pattern_parts, path_parts))


def parse_toml(host_path: str, text: str | None) -> dict[str, Any]:
    """A file's document; ContainerdConfigError when missing or not TOML (containerd refuses to start then)."""
    if text is None:
        raise ContainerdConfigError(f"{host_path}: file not found")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ContainerdConfigError(f"{host_path}: not valid TOML: {exc}") from None


def import_patterns(doc: dict[str, Any], host_path: str) -> list[str]:
    """The file's `imports` list; ContainerdConfigError when it is not a list of strings."""
    imports = doc.get("imports", [])
    if not isinstance(imports, list) or not all(isinstance(i, str) for i in imports):
        raise ContainerdConfigError(f"{host_path}: imports must be a list of strings")
    return imports


def import_target(parent: str, entry: str, version: ContainerdVersion) -> tuple[str, bool]:
    """(absolute path or glob pattern, is_glob) of one `imports` entry of the file `parent`."""
    is_glob = "*" in entry
    if is_glob and not version.merges_plugin_sections:
        return (entry if entry.startswith("/") else posixpath.join("/", entry)), True
    path = posixpath.normpath(entry)
    if not path.startswith("/"):
        path = posixpath.join(posixpath.dirname(parent), path)
    return path, is_glob


def _resolve_imports(snapshot: ConfigSnapshot, parent: str, doc: dict[str, Any],
                     version: ContainerdVersion) -> list[str]:
    out: list[str] = []
    for entry in import_patterns(doc, parent):
        target, is_glob = import_target(parent, entry, version)
        out.extend(snapshot.globs.get(target, ()) if is_glob else [target])
    return out


def _empty(value: Any) -> bool:
    """mergo's "empty": such a value in a later file does not override an earlier one."""
    return value is None or value == [] or value == {} or (not isinstance(value, (list, dict)) and not value)


def _merge_tables(base: dict[str, Any], extra: dict[str, Any], dedupe_lists: bool) -> dict[str, Any]:
    """Recursive table merge: non-empty values override, lists append. 1.x (mergo.Merge WithOverride,
    WithAppendSlice) keeps duplicate list items; 2.x drops the ones already present."""
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge_tables(out[key], value, dedupe_lists)
        elif isinstance(value, list) and isinstance(out.get(key), list):
            out[key] = out[key] + ([v for v in value if v not in out[key]] if dedupe_lists else value)
        elif not _empty(value) or key not in out:
            out[key] = value
    return out


def _merge_1x(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = _merge_tables({k: v for k, v in base.items() if k not in _REPLACED_PER_KEY_1X},
                        {k: v for k, v in extra.items() if k not in _REPLACED_PER_KEY_1X}, dedupe_lists=False)
    for key in _REPLACED_PER_KEY_1X:
        if key in base or key in extra:
            out[key] = {**(base.get(key) or {}), **(extra.get(key) or {})}
    return out


def _merge_2x(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """2.x: tables merge recursively (plugin sections included); lists append without duplicates."""
    return _merge_tables(base, extra, dedupe_lists=True)


def _migrate_plugins(doc: dict[str, Any], to_version: int) -> dict[str, Any]:
    """containerd 2.x's migration of an older drop-in: v1 plugin IDs become URIs; v2 CRI runtimes move to v3's table."""
    version = doc.get("version") or 1
    plugins = dict(doc.get("plugins") or {})
    if version < 2 <= to_version:
        plugins = {(_V1_PLUGIN_URIS.get(k, k) if "." not in k else k): v for k, v in plugins.items()}
    if version < 3 <= to_version and isinstance(plugins.get(CRI_SECTION[2]), dict):
        runtimes = _get(plugins[CRI_SECTION[2]], RUNTIMES_PATH)
        if isinstance(runtimes, dict):
            plugins[CRI_SECTION[3]] = _merge_2x(plugins.get(CRI_SECTION[3]) or {},
                                                {"containerd": {"runtimes": runtimes}})
    return {**doc, "plugins": plugins} if plugins else doc


def _get(doc: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        doc = doc.get(key) if isinstance(doc, dict) else None
    return doc


@dataclass(frozen=True)
class ContainerdConfig:
    """The effective configuration under one containerd version's rules."""

    path: str  # host path of the main file
    containerd_version: ContainerdVersion
    version: int  # config file version in effect
    effective: dict[str, Any]
    imports: list[str]  # host paths of the imported files, in load order
    cri_owner: str | None  # 1.x: the file whose CRI section is in effect (None: CRI defaults)

    @property
    def cri_section(self) -> str:
        """The CRI plugin's key under [plugins] for this config version."""
        return CRI_SECTION[min(max(self.version, 1), 3)]

    def cri(self) -> dict[str, Any]:
        """The CRI plugin's effective section (empty when only defaults apply)."""
        section = _get(self.effective, ("plugins", self.cri_section))
        return section if isinstance(section, dict) else {}

    def runtimes(self) -> dict[str, dict[str, Any]]:
        """Runtime handler name -> its table, as the CRI plugin ends up with them (defaults included)."""
        table = _get(self.cri(), RUNTIMES_PATH)
        defaults = DEFAULT_RUNTIMES_1X  # 2.x's default runc table is the same for discovery's purposes
        if not isinstance(table, dict):
            return dict(defaults)
        named = {name: body for name, body in table.items() if isinstance(body, dict)}
        return named if not self.containerd_version.merges_plugin_sections else {**defaults, **named}

    def default_runtime(self) -> str:
        """The CRI default runtime's name (containerd.default_runtime_name, default runc)."""
        name = _get(self.cri(), ("containerd", "default_runtime_name"))
        return name if isinstance(name, str) and name else DEFAULT_RUNTIME_NAME

    def problems(self) -> list[str]:
        """What makes this config unusable for the CRI plugin (its own validation refuses it)."""
        if self.default_runtime() not in self.runtimes():
            return [f'default runtime "{self.default_runtime()}" (containerd.default_runtime_name) is not among '
                    f"the effective runtimes {sorted(self.runtimes())}: the CRI plugin will not start"]
        return []


def resolve(snapshot: ConfigSnapshot, version: ContainerdVersion) -> ContainerdConfig:
    """The effective config of `snapshot` under `version`'s rules; ContainerdConfigError if containerd would refuse it."""
    main_doc = parse_toml(snapshot.main, snapshot.texts.get(snapshot.main))
    root_version = main_doc.get("version", 1)
    if not isinstance(root_version, int) or root_version not in CRI_SECTION:
        raise ContainerdConfigError(f"{snapshot.main}: unsupported config version {root_version!r} (known: 1, 2, 3)")
    if root_version == 3 and not version.merges_plugin_sections:
        raise ContainerdConfigError(f"{snapshot.main}: config version 3 needs containerd 2.0 or later, "
                                    f"this node runs {version}")
    effective: dict[str, Any] = {}
    order: list[str] = []
    owner: str | None = None
    pending = [snapshot.main]
    loaded: set[str] = set()
    while pending:
        path, pending = pending[0], pending[1:]
        if path in loaded:
            continue
        doc = main_doc if path == snapshot.main else parse_toml(path, snapshot.texts.get(path))
        if version.merges_plugin_sections:
            file_version = doc.get("version", root_version)
            if isinstance(file_version, int) and file_version > root_version:
                raise ContainerdConfigError(f"{path}: drop-in config version {file_version} higher than root "
                                            f"config version {root_version}")
            effective = _merge_2x(effective, _migrate_plugins(doc, root_version))
        else:
            effective = _merge_1x(effective, doc)
            final_key = CRI_SECTION[2] if (effective.get("version") or 1) >= 2 else CRI_SECTION[1]
            if final_key in (doc.get("plugins") or {}):
                owner = path
        loaded.add(path)
        if path != snapshot.main:
            order.append(path)
        pending = pending + _resolve_imports(snapshot, path, doc, version)
    config_version = root_version if version.merges_plugin_sections else (effective.get("version") or 1)
    if not version.merges_plugin_sections and owner is not None:
        # The owner must name the section under the key the final version reads.
        key = CRI_SECTION[min(config_version, 2)]
        owner = owner if key in (parse_toml(owner, snapshot.texts.get(owner)).get("plugins") or {}) else None
    return ContainerdConfig(snapshot.main, version, config_version, effective, order, owner)


@dataclass(frozen=True)
class FileChange:
    """A file the configure step writes (host path and full new content); `backup` when it replaces one."""

    path: str
    content: str
    backup: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The dry-run JSON entry."""
        return {"path": self.path, "content": self.content, "backup": self.backup}


@dataclass(frozen=True)
class ConfigurePlan:
    """What `--configure` changes; empty when the node is already configured."""

    drop_ins: tuple[FileChange, ...] = ()  # new files
    main_config: FileChange | None = None  # the main file rewritten
    edits: tuple[FileChange, ...] = ()  # other existing files rewritten (1.x: the file owning the CRI section)
    skipped: tuple[dict[str, str], ...] = ()  # {"handler", "reason"}
    handlers: tuple[str, ...] = ()  # the handlers the plan adds

    @property
    def changed(self) -> bool:
        """True when some file must be written."""
        return bool(self.drop_ins or self.main_config or self.edits)

    @property
    def files(self) -> tuple[FileChange, ...]:
        """Every change in write order: new drop-ins first, then the files that import or hold them."""
        return self.drop_ins + self.edits + ((self.main_config,) if self.main_config else ())


def shim_name(runtime_type: str) -> str:
    """containerd's shim binary for a runtime type: io.containerd.kata.v2 -> containerd-shim-kata-v2."""
    parts = runtime_type.split(".")
    if len(parts) < 2 or not all(parts[-2:]):
        raise ValueError(f'runtime_type "{runtime_type}" is not of the form <prefix>.<name>.<version>')
    return "containerd-shim-" + "-".join(parts[-2:])


def backup_path(path: str, stamp: str) -> str:
    """The backup of `path` taken at `stamp` (UTC, sortable: 20261130T143000Z)."""
    return f"{path}{BACKUP_INFIX}{stamp}{BACKUP_SUFFIX}"


def runtime_table(runtime_type: str, options: dict[str, Any]) -> dict[str, Any]:
    """One runtime handler's TOML table."""
    table: dict[str, Any] = {"runtime_type": runtime_type}
    if options:
        table["options"] = dict(options)
    return table


def _nest(path: tuple[str, ...], leaf: dict[str, Any]) -> dict[str, Any]:
    for key in reversed(path):
        leaf = {key: leaf}
    return leaf


def drop_in_document(version: int, handler: str, runtime_type: str, options: dict[str, Any]) -> dict[str, Any]:
    """The TOML document of a 2.x drop-in adding `handler` to the CRI runtimes of a config `version` file."""
    return {"version": version,
            **_nest(("plugins", CRI_SECTION[version]) + RUNTIMES_PATH, {handler: runtime_table(runtime_type, options)})}


def _append_tables(text: str, doc: dict[str, Any], prefix: tuple[str, ...], tables: dict[str, dict[str, Any]]) -> str:
    """`text` with the tables added at `prefix`, appended as TOML so the operator's text stays byte for byte.

    The result must parse to exactly the old document plus the tables; otherwise (e.g. the runtimes
    table is an inline table, which cannot be extended) the whole file is re-serialised, which is
    always correct but drops comments.
    """
    addition = _nest(prefix, tables)
    wanted = _merge_2x(doc, addition)
    separator = "" if not text or text.endswith("\n") else "\n"
    candidate = f"{text}{separator}\n# Added by `sandgate agent --configure`.\n{tomli_w.dumps(addition)}"
    try:
        if tomllib.loads(candidate) == wanted:
            return candidate
    except tomllib.TOMLDecodeError:
        pass
    return tomli_w.dumps(wanted)


def with_imports(text: str, main: dict[str, Any], imports: list[str]) -> str:
    """The main config text with `imports` set, keeping the operator's comments and layout when possible.

    The top-level `imports = [...]` is replaced in place (or a line is prepended: top-level keys may
    precede every table). The result must parse to exactly the old document with the new imports;
    otherwise the whole file is re-serialised.
    """
    wanted = {**main, "imports": imports}
    line = tomli_w.dumps({"imports": imports}).strip()
    existing = re.search(r"(?ms)^imports\s*=\s*\[.*?\]", text)
    candidate = (text[:existing.start()] + line + text[existing.end():]) if existing else f"{line}\n{text}"
    try:
        if tomllib.loads(candidate) == wanted:
            return candidate
    except tomllib.TOMLDecodeError:
        pass
    return tomli_w.dumps(wanted)


def is_imported(config: ContainerdConfig, main_doc: dict[str, Any], host_path: str) -> bool:
    """Whether the main file's `imports` cover `host_path` (an existing file or not)."""
    for entry in import_patterns(main_doc, config.path):
        target, is_glob = import_target(config.path, entry, config.containerd_version)
        if target == host_path or (is_glob and _glob_matches(target, host_path)):
            return True
    return False


def plan_configure(snapshot: ConfigSnapshot, config: ContainerdConfig, drop_in_dir: str,
                   wanted: dict[str, tuple[str | None, dict[str, Any]]], stamp: str,
                   drop_in_only: bool = False) -> ConfigurePlan:
    """The change adding every wanted handler (name -> (runtime_type, options)) missing from `config`.

    Nothing else in the effective configuration moves. `stamp` names the backups. With
    `drop_in_only` (the init container, which can write nothing but `drop_in_dir`) every file
    written lies in `drop_in_dir`, or ContainerdConfigError says what the operator must change.
    """
    present = config.runtimes()
    skipped: list[dict[str, str]] = []
    tables: dict[str, dict[str, Any]] = {}
    for handler, (runtime_type, options) in sorted(wanted.items()):
        if handler in present:
            continue
        if not runtime_type:
            skipped.append({"handler": handler, "reason": "missing from containerd and the profile has no runtimeType"})
            continue
        tables[handler] = runtime_table(runtime_type, options)
    if not tables:
        return ConfigurePlan(skipped=tuple(skipped))
    if config.containerd_version.merges_plugin_sections:
        plan = _plan_drop_ins(snapshot, config, drop_in_dir, tables, stamp)
        if drop_in_only and plan.main_config is not None:
            raise ContainerdConfigError(_not_imported(snapshot, config, drop_in_dir))
    elif drop_in_only:
        plan = _plan_cri_drop_in_1x(snapshot, config, drop_in_dir, tables, stamp)
    else:
        plan = _plan_edit_1x(snapshot, config, tables, stamp)
    return replace(plan, skipped=tuple(skipped), handlers=tuple(tables))


def _plan_drop_ins(snapshot: ConfigSnapshot, config: ContainerdConfig, drop_in_dir: str,
                   tables: dict[str, dict[str, Any]], stamp: str) -> ConfigurePlan:
    main_doc = parse_toml(snapshot.main, snapshot.texts[snapshot.main])
    version = main_doc.get("version", 1)
    drop_ins = tuple(
        FileChange(posixpath.join(drop_in_dir, f"sandgate-{handler}.toml"),
                   tomli_w.dumps(drop_in_document(version, handler, table["runtime_type"], table.get("options", {}))))
        for handler, table in tables.items())
    missing = [c.path for c in drop_ins if not is_imported(config, main_doc, c.path)]
    main = None
    if missing:
        text = with_imports(snapshot.texts[snapshot.main] or "", main_doc, list(main_doc.get("imports", [])) + missing)
        main = FileChange(snapshot.main, text, backup_path(snapshot.main, stamp))
    return ConfigurePlan(drop_ins=drop_ins, main_config=main)


def _plan_edit_1x(snapshot: ConfigSnapshot, config: ContainerdConfig, tables: dict[str, dict[str, Any]],
                  stamp: str) -> ConfigurePlan:
    owner = config.cri_owner or snapshot.main
    text = snapshot.texts[owner] or ""
    doc = parse_toml(owner, text)
    key = CRI_SECTION[min(config.version, 2)]
    if not isinstance(_get(doc, ("plugins", key) + RUNTIMES_PATH), dict):
        # Creating the runtimes table replaces the default runtimes: restate them.
        tables = {**DEFAULT_RUNTIMES_1X, **tables}
    content = _append_tables(text, doc, ("plugins", key) + RUNTIMES_PATH, tables)
    change = FileChange(owner, content, backup_path(owner, stamp))
    return ConfigurePlan(main_config=change) if owner == snapshot.main else ConfigurePlan(edits=(change,))


CRI_DROP_IN = "sandgate-cri.toml"  # 1.x --drop-in-only: the drop-in carrying the whole CRI section


def _not_imported(snapshot: ConfigSnapshot, config: ContainerdConfig, drop_in_dir: str) -> str:
    """The refusal when the main config does not import `drop_in_dir`, naming the one-line change."""
    main_doc = parse_toml(snapshot.main, snapshot.texts[snapshot.main])
    pattern = posixpath.join(drop_in_dir, "*.toml")
    # One line (JSON's string syntax is TOML's basic string syntax); tomli_w would wrap a long array.
    line = "imports = " + json.dumps(list(main_doc.get("imports", [])) + [pattern])
    where = "replace its top-level imports line with" if "imports" in main_doc else "add as its first line"
    return (f"refusing to configure with --drop-in-only: {snapshot.main} does not import {drop_in_dir}, the only "
            f"directory this mode may write (containerd {config.containerd_version}); {where}: {line} "
            "-- then run it again")


def _plan_cri_drop_in_1x(snapshot: ConfigSnapshot, config: ContainerdConfig, drop_in_dir: str,
                         tables: dict[str, dict[str, Any]], stamp: str) -> ConfigurePlan:
    """1.x without writing the file owning the CRI section: a drop-in carrying that whole section, as in
    effect, plus the new runtime tables. containerd 1.x replaces the section wholesale with the last
    file naming it, so this file must load last among those; the model checks it, and that the
    effective config is the old one plus the tables, before anything is written."""
    key = CRI_SECTION[min(config.version, 2)]
    section = dict(config.cri())
    containerd_table = dict(section.get("containerd") or {})
    runtimes = containerd_table.get("runtimes")
    # No runtimes table in effect means containerd's default runtimes, which a table replaces: restate them.
    containerd_table["runtimes"] = {**(runtimes if isinstance(runtimes, dict) else DEFAULT_RUNTIMES_1X), **tables}
    section["containerd"] = containerd_table
    path = posixpath.join(drop_in_dir, CRI_DROP_IN)
    content = ("# Written by `sandgate agent --configure --drop-in-only`: containerd 1.x's whole CRI section as it was\n"
               f"# in effect (from {config.cri_owner or 'containerd defaults'}) plus sandgate's runtime handlers.\n"
               "# containerd 1.x lets the last file naming this section replace it whole, so edit the CRI\n"
               "# settings here from now on (or remove this file and restart containerd).\n"
               + tomli_w.dumps({"version": config.version, "plugins": {key: section}}))
    after = resolve(snapshot.with_files({path: content}), config.containerd_version)
    if path not in after.imports:
        raise ContainerdConfigError(_not_imported(snapshot, config, drop_in_dir))
    if after.cri_owner != path:
        raise ContainerdConfigError(
            f"refusing to configure with --drop-in-only: {after.cri_owner} names the CRI section and loads after "
            f"{path}, so containerd {config.containerd_version} would ignore sandgate's drop-in; move that "
            f"file's CRI settings into {config.path}")
    expected_runtimes = {**config.runtimes(), **tables}
    if after.runtimes() != expected_runtimes or _without_runtimes(after.effective, key) != _without_runtimes(
            config.effective, key):
        raise ContainerdConfigError(f"refusing to configure with --drop-in-only: {path} would change more than "
                                    "the runtime handlers of containerd's effective config")
    change = FileChange(path, content, backup_path(path, stamp) if snapshot.texts.get(path) is not None else None)
    return ConfigurePlan(edits=(change,)) if change.backup else ConfigurePlan(drop_ins=(change,))


def _without_runtimes(effective: dict[str, Any], key: str) -> dict[str, Any]:
    section = dict(_get(effective, ("plugins", key)) or {})
    section["containerd"] = {k: v for k, v in (section.get("containerd") or {}).items() if k != "runtimes"}
    return {**effective, "plugins": {**(effective.get("plugins") or {}), key: section}}
