"""CRI-O's runtime handlers as CRI-O reads them (pure apart from the file reader handed in).

From crio.conf(5) and crio.conf.d(5): the main file (/etc/crio/crio.conf) is read first, then every
file of the drop-in directory (/etc/crio/crio.conf.d), sorted by name in lexical order; each file is
decoded over the result, key by key, so a later file overrides only the keys it sets and a drop-in
holding `[crio.runtime.runtimes.kata]` adds that handler and keeps the others. Handlers live at
`crio.runtime.runtimes.<name>` with `runtime_path`, `runtime_type` ("oci" or "vm"), `runtime_root`.
A configured handler takes effect when CRI-O restarts (runtimes are not live-reloadable).
"""

from __future__ import annotations

import posixpath
import tomllib
from dataclasses import dataclass
from typing import Any, Callable

import tomli_w

from node_agent.containerd import ConfigurePlan, ContainerdConfigError, FileChange

DEFAULT_ENDPOINT = "unix:///var/run/crio/crio.sock"
RUNTIMES_PATH = ("crio", "runtime", "runtimes")
DEFAULT_RUNTIME_PATH = ("crio", "runtime", "default_runtime")
DROP_IN_NAME = "50-sandgate-{handler}.conf"


def read_files(read: Callable[[str], str | None], list_dir: Callable[[str], list[str] | None],
               main: str, drop_in_dir: str) -> dict[str, str]:
    """host path -> text of the main file (when it exists) then every drop-in, in CRI-O's load order."""
    out: dict[str, str] = {}
    text = read(main)
    if text is not None:
        out[main] = text
    for name in list_dir(drop_in_dir) or []:
        path = posixpath.join(drop_in_dir, name)
        text = read(path)
        if text is not None:
            out[path] = text
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@dataclass(frozen=True)
class CrioConfig:
    """CRI-O's effective configuration."""

    files: tuple[str, ...]
    effective: dict[str, Any]

    def runtimes(self) -> dict[str, dict[str, Any]]:
        """Handler name -> its table."""
        table: Any = self.effective
        for key in RUNTIMES_PATH:
            table = table.get(key) if isinstance(table, dict) else None
        return {k: v for k, v in table.items() if isinstance(v, dict)} if isinstance(table, dict) else {}


def resolve(files: dict[str, str]) -> CrioConfig:
    """Merge the files in order; ContainerdConfigError names the first that is not TOML."""
    effective: dict[str, Any] = {}
    for path, text in files.items():
        try:
            effective = _merge(effective, tomllib.loads(text))
        except tomllib.TOMLDecodeError as exc:
            raise ContainerdConfigError(f"{path}: not valid TOML: {exc}") from None
    return CrioConfig(tuple(files), effective)


def runtime_table(runtime_type: str, options: dict[str, Any]) -> dict[str, Any]:
    """A handler's table: `runtime_type` is CRI-O's ("oci" or "vm"), the profile's options are its keys."""
    return {**options, "runtime_type": runtime_type}


def plan_configure(config: CrioConfig, drop_in_dir: str,
                   wanted: dict[str, tuple[str | None, dict[str, Any]]]) -> ConfigurePlan:
    """One drop-in per missing handler (CRI-O merges it key by key); the others are skipped with why.

    For CRI-O a profile's `runtimeType` is CRI-O's runtime_type ("oci" or "vm") and its
    `runtimeOptions` the other keys of the table (runtime_path, runtime_config_path, ...).
    """
    present = config.runtimes()
    changes, skipped, handlers = [], [], []
    for handler, (runtime_type, options) in sorted(wanted.items()):
        if handler in present:
            continue
        if runtime_type not in ("oci", "vm"):
            skipped.append({"handler": handler, "reason": f"missing from CRI-O and the profile's runtimeType "
                                                          f'{runtime_type!r} is not a CRI-O runtime_type ("oci" or "vm")'})
            continue
        doc = {"crio": {"runtime": {"runtimes": {handler: runtime_table(runtime_type, options)}}}}
        changes.append(FileChange(posixpath.join(drop_in_dir, DROP_IN_NAME.format(handler=handler)), tomli_w.dumps(doc)))
        handlers.append(handler)
    return ConfigurePlan(drop_ins=tuple(changes), skipped=tuple(skipped), handlers=tuple(handlers))
