"""Start the real components as subprocesses, wait until they are ready, and always stop them.

Each component runs in its own session (process group), so stopping it reaches gunicorn's workers
too: SIGTERM to the group, a bounded wait, then SIGKILL to whatever is left. Output goes to a log
file in the demo's work directory; its last lines explain a component that failed to start.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from sandgate.demo.httpclient import JsonClient, RequestFailed

STOP_TIMEOUT_SECONDS = 5.0
TAIL_LINES = 15


class ComponentError(RuntimeError):
    """A component could not be started or did not become ready."""


def sandgate_command(*args: str) -> list[str]:
    """argv running `python3 -m sandgate ARGS` with this interpreter."""
    return [sys.executable, "-m", "sandgate", *args]


def child_env() -> dict[str, str]:
    """The environment for children: the sandgate sources importable even without `pip install`."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last lines of a log file ("" when there is none)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def run_once(name: str, argv: list[str], workdir: Path, timeout: float = 30.0) -> None:
    """Run a command to completion; ComponentError with its output when it fails."""
    try:
        done = subprocess.run(argv, env=child_env(), cwd=workdir, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ComponentError(f"{name} did not finish within {timeout:.0f} s") from None
    if done.returncode != 0:
        output = "\n".join((done.stdout + done.stderr).rstrip().splitlines()[-TAIL_LINES:])
        raise ComponentError(f"{name} failed (exit {done.returncode}):\n{output}")


@dataclass
class Component:
    """A long-running component (webhook or extender) and how to tell it is ready."""

    name: str
    argv: list[str]
    ready_client: JsonClient
    log_path: Path
    process: subprocess.Popen | None = None
    ready_after: float | None = None  # seconds from start to ready
    _started_at: float = field(default=0.0, repr=False)

    @property
    def pid(self) -> int | None:
        """The process id (also its process group id)."""
        return self.process.pid if self.process else None

    def start(self, workdir: Path) -> None:
        """Spawn the process in its own session, output to its log file."""
        # Ctrl-C between the fork and recording the child would leak it: defer the signal until then.
        # (A blocked signal mask would be inherited by the child; a Python handler is reset by exec.)
        deferred: list[int] = []
        previous = {sig: signal.signal(sig, lambda signum, frame: deferred.append(signum))
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            with open(self.log_path, "wb") as log:
                self.process = subprocess.Popen(self.argv, cwd=workdir, env=child_env(), stdin=subprocess.DEVNULL,
                                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if deferred:
            os.kill(os.getpid(), deferred[0])
        self._started_at = time.monotonic()

    def failure(self, what: str) -> ComponentError:
        """An error naming the component, with the end of its log."""
        lines = tail(self.log_path)
        return ComponentError(f"{self.name} {what}" + (f"; its last output:\n{lines}" if lines else ""))

    def poll_ready(self) -> bool:
        """True once GET /readyz answers 200; ComponentError if the process has exited."""
        if self.process is None:
            raise ComponentError(f"{self.name} was never started")
        if self.process.poll() is not None:
            raise self.failure(f"exited with code {self.process.returncode} before it was ready")
        try:
            status, _ = self.ready_client.request("GET", "/readyz")
        except RequestFailed:
            return False
        if status == 200:
            self.ready_after = time.monotonic() - self._started_at
            return True
        return False

    def alive(self) -> bool:
        """The process is still running."""
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """SIGTERM the process group, wait up to `timeout`, then SIGKILL what is left; reap the child."""
        self.ready_client.close()
        if self.process is None:
            return
        pgid = self.process.pid
        _signal_group(pgid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + timeout
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _group_alive(pgid) or self.process.poll() is None:
            _signal_group(pgid, signal.SIGKILL)
            self.process.wait(timeout=timeout)


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_ready(components: list[Component], timeout: float) -> None:
    """Poll every component until all are ready; ComponentError on exit or after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    pending = list(components)
    while pending:
        pending = [c for c in pending if not c.poll_ready()]
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise pending[0].failure(f"was not ready within {timeout:.0f} s")
        time.sleep(0.1)
