"""A real containerd daemon as an ordinary process, everything it owns under one temp dir.

Usage (from any test: tests/ is on sys.path):

    with Containerd.start() as ctd:      # or Containerd.start(cri_extra=..., config_extra=...)
        ctd.cri()                          # a CriClient on its socket
        ctd.ctr("plugins", "ls")           # the real ctr against it
        ctd.reload_command()               # argv that restarts it, as `systemctl restart containerd` would

Its root, state, grpc/ttrpc sockets and the opt plugin's path live under a short /tmp directory
(unix socket paths are limited to 107 bytes). The CRI plugin is set up to start pods on this
machine: root lacks CAP_SYS_RESOURCE, so `restrict_oom_score_adj = true`; network namespaces are
mounted under the temp state dir; CNI binaries come from /usr/lib/cni (containernetworking-plugins)
and CNI configs from `<dir>/cni/net.d`. The daemon's pid is kept in `<dir>/containerd.pid` (a
restart by reload_command() replaces it); close() stops that pid (SIGTERM, then SIGKILL) and removes
the directory, so nothing outlives a test.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


CONTAINERD = shutil.which("containerd") or "/usr/bin/containerd"
CTR = shutil.which("ctr") or "/usr/bin/ctr"
CNI_BIN = "/usr/lib/cni"
START_TIMEOUT = 20.0


def available() -> bool:
    """Whether the containerd and ctr binaries exist (tests skip with a reason otherwise)."""
    return os.access(CONTAINERD, os.X_OK) and os.access(CTR, os.X_OK)


def base_config(d: Path, cri_extra: str = "", config_extra: str = "") -> str:
    """A version 2 config putting every path of the daemon under `d`.

    `cri_extra` is appended inside [plugins."io.containerd.grpc.v1.cri"] (e.g. runtime tables),
    `config_extra` at the end of the file (more tables, or `imports` placed by the caller first).
    """
    return f"""\
version = 2
root = "{d}/root"
state = "{d}/state"

[grpc]
  address = "{d}/c.sock"

[ttrpc]
  address = "{d}/c.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
{cri_extra}
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "{CNI_BIN}"
  conf_dir = "{d}/cni/net.d"
{config_extra}"""


@dataclass
class Containerd:
    """A running containerd: its directory, config file, socket and process."""

    dir: Path
    config: Path
    process: subprocess.Popen | None = None

    @property
    def socket(self) -> Path:
        return self.dir / "c.sock"

    @property
    def log(self) -> Path:
        return self.dir / "containerd.log"

    @classmethod
    def prepare(cls, cri_extra: str = "", config_extra: str = "", config_text: str | None = None) -> "Containerd":
        """Create the directory and config without starting the daemon (config_text replaces the default)."""
        d = Path(tempfile.mkdtemp(prefix="sg-ctd-", dir="/tmp"))
        (d / "cni/net.d").mkdir(parents=True)
        config = d / "config.toml"
        config.write_text(config_text if config_text is not None else base_config(d, cri_extra, config_extra))
        return cls(d, config)

    @classmethod
    def start(cls, cri_extra: str = "", config_extra: str = "") -> "Containerd":
        """prepare() then launch(); the directory is removed if the daemon does not come up."""
        ctd = cls.prepare(cri_extra, config_extra)
        try:
            ctd.launch()
        except BaseException:
            ctd.close()
            raise
        return ctd

    @property
    def pidfile(self) -> Path:
        return self.dir / "containerd.pid"

    def launch(self, wait: bool = True) -> None:
        """Start the daemon on self.config (detached, pid in self.pidfile); wait until its CRI is ready."""
        self.stop()
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([CONTAINERD, "--config", str(self.config), "--log-level", "info"],
                                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        self.pidfile.write_text(str(self.process.pid))
        if wait:
            self.wait_ready()

    def reload_command(self, fail_first: bool = False) -> list[str]:
        """argv restarting this daemon on its config (for agent.reloadCommand).

        fail_first: the first run only stops the daemon (a deliberately broken reload); later runs restart it.
        """
        argv = [sys.executable, str(Path(__file__).resolve()), "restart", str(self.dir)]
        return argv + ["--fail-first"] if fail_first else argv

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Poll CRI Status until RuntimeReady; raise with the log's tail when the daemon dies or is slow."""
        from node_agent.cri.client import CriClient, CriError

        deadline = time.monotonic() + timeout
        with CriClient(self.socket, timeout=1.0) as client:
            while True:
                if not self.running():
                    raise RuntimeError(f"containerd exited:\n{self.tail()}")
                try:
                    if self.socket.exists() and client.status().runtime_ready:
                        return
                except CriError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"containerd CRI not ready within {timeout:g}s:\n{self.tail()}")
                time.sleep(0.05)

    def tail(self, lines: int = 30) -> str:
        """The last lines of the daemon's log."""
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def cri(self, timeout: float = 5.0):
        """A CriClient on this daemon's socket (close it, or use it in a `with`)."""
        from node_agent.cri.client import CriClient

        return CriClient(self.socket, timeout=timeout)

    def ctr(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
        """Run the real `ctr --address SOCK ARGS` (namespace k8s.io, as the CRI plugin uses)."""
        return subprocess.run([CTR, "--address", str(self.socket), "--namespace", "k8s.io", *args],
                              capture_output=True, text=True, timeout=timeout)

    def restart(self) -> None:
        """Stop then launch again on the (possibly edited) config: what `systemctl restart` does."""
        self.stop()
        self.launch()

    def pid(self) -> int | None:
        """The daemon's pid from the pidfile (it may have been restarted by reload_command)."""
        try:
            return int(self.pidfile.read_text())
        except (OSError, ValueError):
            return None

    def running(self) -> bool:
        """Whether the pid in the pidfile is alive (not a zombie)."""
        pid = self.pid()
        if pid is None:
            return False
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] != "Z"

    def stop(self) -> None:
        """Stop the daemon by its pid: SIGTERM, then SIGKILL after 10 s."""
        process, self.process = self.process, None
        if self.running():
            pid = self.pid()
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while self.running() and time.monotonic() < deadline:
                if process is not None and process.pid == pid:
                    process.poll()
                time.sleep(0.05)
            if self.running():
                os.kill(pid, signal.SIGKILL)
        if process is not None:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=10)

    def close(self) -> None:
        """Stop the daemon and remove its directory (unmounting what it left mounted there)."""
        self.stop()
        _unmount_under(self.dir)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Containerd":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _unmount_under(d: Path) -> None:
    """Lazily unmount every mount below `d` (deepest first): netns files, shm, snapshot mounts."""
    prefix = str(d) + "/"
    try:
        mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    except OSError:
        return
    for target in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True)


def _restart_main(argv: list[str]) -> int:
    """`containerd_harness.py restart DIR [--fail-first]`: what a reload command does to the harness daemon."""
    d = Path(argv[0])
    ctd = Containerd(d, d / "config.toml")
    marker = d / "failed-once"
    with open(d / "restarts", "a") as log:
        log.write("restart\n")
    ctd.stop()
    if "--fail-first" in argv and not marker.exists():
        marker.write_text("")
        return 0  # "reloaded", but the daemon is gone: the agent must notice and roll back
    ctd.launch(wait=False)
    return 0


if __name__ == "__main__" and len(sys.argv) > 2 and sys.argv[1] == "restart":
    sys.exit(_restart_main(sys.argv[2:]))
