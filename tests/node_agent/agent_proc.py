"""Helpers for tests that run `sandgate agent` as a process and read its /metrics."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import requests

from support import REPO


def agent(*args: str, **kw) -> subprocess.Popen:
    """`sandgate agent *args` from this checkout; kw go to Popen (stdout, stderr, ...)."""
    return subprocess.Popen([sys.executable, "-m", "sandgate", "agent", *args], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics_until(port: int, done: Callable[[str], bool], timeout: float = 30.0,
                  proc: subprocess.Popen | None = None, log: Path | None = None) -> str:
    """Poll /metrics until done(body) or the timeout; return the last body ("" if never up) for the caller's
    asserts. With proc, fail at once if the agent exits (the message is its log when given)."""
    deadline, body = time.monotonic() + timeout, ""
    while time.monotonic() < deadline:
        assert proc is None or proc.poll() is None, log.read_text() if log else f"agent exited: {proc.returncode}"
        try:
            body = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        except requests.ConnectionError:
            body = ""
        if done(body):
            break
        time.sleep(0.2)
    return body
