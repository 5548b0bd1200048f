"""Writing a configure plan safely: backups, atomic durable writes, reload, readiness check, rollback.

The node must never be left worse than it was found:
- every file replaced is first copied to a timestamped backup (`<file>.sandgate-<UTC>.bak`, the last
  BACKUPS_KEPT kept per file), and every write goes to a temp file in the same directory that is
  checked to parse as TOML, fsync'd, given the old file's mode and owner (a new drop-in takes the
  main config's), renamed over the target, and the directory fsync'd: a crash leaves the old or the
  new file, never half of one;
- after the reload command, the runtime must answer CRI Status with RuntimeReady (and, where it
  reports its config, list the new handlers) within agent.reloadTimeoutSeconds; otherwise every file
  is restored from its backup (new files removed), the reload runs again, and the caller publishes
  nothing new.
"""

from __future__ import annotations

import logging
import os
import subprocess
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from node_agent.containerd import BACKUP_INFIX, BACKUP_SUFFIX, ConfigurePlan, backup_path
from node_agent.host import Root

log = logging.getLogger("sandgate.agent")

BACKUPS_KEPT = 5
RELOAD_COMMAND_TIMEOUT = 120.0


@dataclass
class ApplyResult:
    """How applying a plan went."""

    ok: bool
    reason: str | None = None
    written: list[str] = field(default_factory=list)
    backups: list[str] = field(default_factory=list)
    rolled_back: bool = False


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(target: Path, content: bytes, like: os.stat_result | None, check_toml: bool = True) -> None:
    """Replace `target` with `content` durably; mode and owner copied from `like` when given."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        if check_toml:
            tomllib.loads(content.decode("utf-8"))  # never put a file the runtime cannot parse
        os.chmod(tmp, (like.st_mode & 0o7777) if like else 0o644)
        if like is not None:
            try:
                os.chown(tmp, like.st_uid, like.st_gid)
            except PermissionError:
                pass  # an unprivileged run (tests, dry setups) keeps its own owner
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(target.parent)


def _free_backup(root: Root, path: str) -> str:
    candidate, n = path, 1
    while root.host(candidate).exists():
        candidate = path.removesuffix(BACKUP_SUFFIX) + f"-{n}{BACKUP_SUFFIX}"
        n += 1
    return candidate


def prune_backups(local: Path, keep: int = BACKUPS_KEPT) -> list[Path]:
    """Delete all but the newest `keep` backups of the file `local`; returns the deleted ones."""
    prefix = local.name + BACKUP_INFIX
    backups = sorted(p for p in local.parent.iterdir() if p.name.startswith(prefix) and p.name.endswith(BACKUP_SUFFIX))
    stale = backups[:-keep] if keep else backups
    for path in stale:
        path.unlink(missing_ok=True)
    if stale:
        _fsync_dir(local.parent)
    return stale


@dataclass
class _Undo:
    local: Path
    backup: Path | None  # None: the file is new, undo deletes it


def write_plan(root: Root, plan: ConfigurePlan, main_config: str, stamp: str) -> tuple[list[_Undo], ApplyResult]:
    """Back up and write every file of the plan (drop-ins first); on an error undo what was written."""
    undo: list[_Undo] = []
    result = ApplyResult(ok=True)
    main_local = root.host(main_config)
    main_stat = main_local.stat() if main_local.exists() else None
    try:
        for change in plan.files:
            local = root.host(change.path)
            old = local.stat() if local.exists() else None
            backup = None
            if old is not None:
                backup_host = _free_backup(root, change.backup or backup_path(change.path, stamp))
                backup = root.host(backup_host)
                atomic_write(backup, local.read_bytes(), old, check_toml=False)
                result.backups.append(backup_host)
            undo.append(_Undo(local, backup))
            atomic_write(local, change.content.encode("utf-8"), old or main_stat)
            result.written.append(change.path)
            if backup is not None:
                prune_backups(local)
    except (OSError, ValueError) as exc:
        restore(undo)
        return [], ApplyResult(ok=False, reason=f"writing {change.path} failed: {exc}", rolled_back=True)
    return undo, result


def restore(undo: list[_Undo]) -> None:
    """Put every file back as it was (backups copied back atomically, new files removed), newest first."""
    for item in reversed(undo):
        if item.backup is None:
            item.local.unlink(missing_ok=True)
            _fsync_dir(item.local.parent)
        else:
            atomic_write(item.local, item.backup.read_bytes(), item.backup.stat(), check_toml=False)


def run_reload(command: tuple[str, ...]) -> str | None:
    """Run the policy's reload command; None when it exits 0, else why not."""
    try:
        done = subprocess.run(list(command), stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=RELOAD_COMMAND_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"reload command {list(command)} failed: {exc}"
    if done.returncode != 0:
        return (f"reload command {list(command)} exited {done.returncode}: "
                f"{done.stderr.decode(errors='replace').strip()[-300:]}")
    return None


def wait_until(check: Callable[[], str | None], timeout: float, interval: float = 0.2) -> str | None:
    """Poll `check` (None = ready, else why not) until ready or `timeout`; returns the last reason."""
    deadline = time.monotonic() + timeout
    while True:
        reason = check()
        if reason is None or time.monotonic() >= deadline:
            return reason
        time.sleep(interval)


def apply_plan(root: Root, plan: ConfigurePlan, main_config: str, stamp: str, reload_command: tuple[str, ...],
               ready: Callable[[], str | None], timeout: float) -> ApplyResult:
    """Write the plan, reload, wait for `ready`; roll everything back when any step fails."""
    undo, result = write_plan(root, plan, main_config, stamp)
    if not result.ok:
        return result
    if not reload_command:
        log.warning("configuration written without agent.reloadCommand: the runtime applies it at its next restart",
                    extra={"files": result.written})
        return result
    reason = run_reload(reload_command)
    if reason is None:
        reason = wait_until(ready, timeout)
        if reason is not None:
            reason = f"runtime not ready {timeout:g}s after the reload: {reason}"
    if reason is None:
        return result
    restore(undo)
    again = run_reload(reload_command)
    back = wait_until(ready, timeout) if again is None else again
    result.ok, result.rolled_back = False, True
    result.reason = reason + ("" if back is None else f"; after restoring the backups the runtime is still not "
                                                      f"ready: {back}")
    return result

