"""Real pods on the real containerd of containerd_harness: a registry-free image, CNI bridge, CRI pods.

    with PodHost.start() as host:               # containerd + imported busybox image + a bridge network
        host_pod = host.run_pod("host-net", host_network=True)
        bridged = host.run_pod("bridged")
        host.exec(bridged.container_id, ["ping", "-c", "3", host.gateway])

The image is built here: a static busybox (Debian's busybox-static) as its only layer, Entrypoint
["/bin/sleep", ...], in OCI layout, imported with `ctr -n k8s.io images import` and used both as the
CRI sandbox_image and as the containers' image, so nothing is pulled. Bridged pods use Debian's CNI
`bridge` + `host-local` on a private /24 with no default route and no masquerade: their traffic
cannot leave the machine. Pod cgroups live under one /sandgate-test-<id> parent. close() removes
pods, the bridge, the cgroups and the daemon with its directory.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import tarfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from containerd_harness import Containerd, available as containerd_available

BUSYBOX = "/bin/busybox"
IMAGE = "docker.io/sandgate/busybox-test:1"
APPLETS = ("sh", "sleep", "ping", "dd", "cat", "echo", "sync", "ip", "ifconfig", "true")
SLEEP_FOREVER = ["/bin/sleep", "2147483647"]


def available() -> bool:
    """containerd, runc, a static busybox and the CNI bridge plugins are all here, and we are root."""
    return (containerd_available() and shutil.which("runc") is not None and _static_busybox() is not None
            and Path("/usr/lib/cni/bridge").exists() and Path("/usr/lib/cni/host-local").exists()
            and os.geteuid() == 0)


def _static_busybox() -> str | None:
    for path in (BUSYBOX, "/usr/bin/busybox"):
        try:
            with open(path, "rb") as f:
                head = f.read(1 << 16)
        except OSError:
            continue
        if head[:4] == b"\x7fELF" and b"/lib64/ld-linux" not in head and b"/lib/ld-linux" not in head:
            return path
    return None


def _blob(blobs: Path, data: bytes) -> tuple[str, int]:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    (blobs / digest.split(":")[1]).write_bytes(data)
    return digest, len(data)


def _layer() -> bytes:
    """An uncompressed tar: /bin/busybox, applet symlinks, and the empty dirs a container expects."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in ("bin", "tmp", "proc", "sys", "dev", "etc", "var", "data"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        data = Path(_static_busybox() or BUSYBOX).read_bytes()
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
        for applet in APPLETS:
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
    return buf.getvalue()


def build_image(out: Path, name: str = IMAGE) -> Path:
    """Write an OCI-layout image tar of the static busybox, named `name`, to `out`; returns `out`."""
    work = out.parent / (out.name + ".d")
    blobs = work / "blobs/sha256"
    blobs.mkdir(parents=True)
    layer = _layer()
    layer_digest, layer_size = _blob(blobs, layer)
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Entrypoint": SLEEP_FOREVER, "Env": ["PATH=/bin"], "WorkingDir": "/"},
              "rootfs": {"type": "layers", "diff_ids": [layer_digest]}}
    config_digest, config_size = _blob(blobs, json.dumps(config).encode())
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": config_digest, "size": config_size},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                            "digest": layer_digest, "size": layer_size}]}
    manifest_digest, manifest_size = _blob(blobs, json.dumps(manifest).encode())
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest,
        "size": manifest_size, "annotations": {"io.containerd.image.name": name,
                                               "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1]}}]}
    (work / "index.json").write_text(json.dumps(index))
    (work / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    with tarfile.open(out, "w") as tar:
        for entry in ("oci-layout", "index.json", "blobs"):
            tar.add(work / entry, arcname=entry)
    shutil.rmtree(work)
    return out


def _cgroup_dirs(parent: str) -> list[Path]:
    """Every directory of cgroup `parent` in each mounted hierarchy (v1 controllers and v2)."""
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        head, _, tail = line.partition(" - ")
        if tail.split()[:1] in (["cgroup"], ["cgroup2"]):
            out.append(Path(head.split()[4]) / parent.lstrip("/"))
    return out


def _remove_cgroup_tree(directory: Path) -> None:
    """rmdir a cgroup and its children, deepest first (cgroup dirs hold only virtual files)."""
    if not directory.is_dir():
        return
    for sub in sorted((p for p in directory.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        _rmdir_retry(sub)
    _rmdir_retry(directory)


def _rmdir_retry(path: Path) -> None:
    deadline = time.monotonic() + 5
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                return
            time.sleep(0.05)


@dataclass
class Pod:
    """A running pod: its sandbox and one container running SLEEP_FOREVER (or the given command)."""

    name: str
    uid: str
    sandbox_id: str
    container_id: str
    config: object = None


@dataclass
class PodHost:
    """containerd + image + bridge network; pods started through the CRI client."""

    ctd: Containerd
    bridge: str
    subnet: str
    gateway: str
    cgroup_parent: str
    pods: list[Pod] = field(default_factory=list)

    @classmethod
    def start(cls, handlers: tuple[str, ...] = ()) -> "PodHost":
        """Start containerd with the busybox image as sandbox_image and a bridge CNI config.

        `handlers` are extra runtime handlers (runc underneath) so pods can carry a sandbox handler name.
        """
        tag = uuid.uuid4().hex[:6]
        third = random.randrange(0, 256)
        subnet, gateway = f"10.231.{third}.0/24", f"10.231.{third}.1"
        extra = f'  sandbox_image = "{IMAGE}"\n'
        for handler in ("runc", *handlers):  # naming any runtime replaces containerd's default table
            extra += (f'[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{handler}]\n'
                      f'  runtime_type = "io.containerd.runc.v2"\n')
        ctd = Containerd.prepare(cri_extra=extra)
        host = cls(ctd, f"sgbr{tag}", subnet, gateway, f"/sandgate-test-{tag}")
        try:
            conf = {"cniVersion": "0.4.0", "name": f"sgnet{tag}", "plugins": [{
                "type": "bridge", "bridge": host.bridge, "isGateway": True, "ipMasq": False,
                "ipam": {"type": "host-local", "subnet": subnet, "dataDir": str(ctd.dir / "cni/ipam")}}]}
            (ctd.dir / "cni/net.d/10-sandgate-test.conflist").write_text(json.dumps(conf))
            ctd.launch()
            image = build_image(ctd.dir / "image.tar")
            done = ctd.ctr("images", "import", str(image))
            if done.returncode != 0:
                raise RuntimeError(f"ctr images import failed: {done.stderr}")
        except BaseException:
            host.close()
            raise
        return host

    def cri(self, timeout: float = 30.0):
        """A CriClient on the daemon (close it)."""
        return self.ctd.cri(timeout)

    def run_pod(self, name: str, host_network: bool = False, handler: str = "", command: list[str] | None = None,
                namespace: str = "team-a", overhead_memory: int = 0, annotations: dict[str, str] | None = None) -> Pod:
        """RunPodSandbox + CreateContainer + StartContainer, as the kubelet does; logs under the pod's dir.

        `overhead_memory` is passed as the kubelet passes pod.spec.overhead (linux.overhead), and
        `annotations` as it passes the pod's annotations.
        """
        from node_agent.cri.client import api

        uid = str(uuid.uuid4())
        mode = api.NODE if host_network else api.POD
        config = api.PodSandboxConfig(
            metadata=api.PodSandboxMetadata(name=name, uid=uid, namespace=namespace, attempt=0),
            annotations=annotations or {}, hostname="" if host_network else name, log_directory=str(self.ctd.dir / "logs" / f"{namespace}_{name}_{uid}"),
            linux=api.LinuxPodSandboxConfig(
                cgroup_parent=f"{self.cgroup_parent}/pod{uid}",
                overhead=api.LinuxContainerResources(memory_limit_in_bytes=overhead_memory) if overhead_memory else None,
                security_context=api.LinuxSandboxSecurityContext(
                    namespace_options=api.NamespaceOption(network=mode, pid=api.CONTAINER, ipc=api.POD))))
        with self.cri() as client:
            sandbox_id = client.run_pod_sandbox(config, runtime_handler=handler, timeout=60)
            pod = Pod(name, uid, sandbox_id, "", config)
            self.pods.append(pod)
            container = api.ContainerConfig(
                metadata=api.ContainerMetadata(name="main", attempt=0), image=api.ImageSpec(image=IMAGE),
                command=command or SLEEP_FOREVER, log_path="main/0.log",
                linux=api.LinuxContainerConfig(security_context=api.LinuxContainerSecurityContext(
                    namespace_options=api.NamespaceOption(network=mode, pid=api.CONTAINER, ipc=api.POD))))
            pod.container_id = client.create_container(sandbox_id, container, config, timeout=60)
            client.start_container(pod.container_id, timeout=60)
        return pod

    def exec(self, container_id: str, cmd: list[str], timeout: int = 30):
        """ExecSync in a container; returns the ExecSyncResponse."""
        with self.cri() as client:
            return client.exec_sync(container_id, cmd, command_timeout=timeout)

    def remove_pod(self, pod: Pod) -> None:
        """Stop and remove the pod's container and sandbox (CNI DEL runs on stop)."""
        with self.cri() as client:
            for call in (lambda: client.stop_container(pod.container_id, timeout=30) if pod.container_id else None,
                         lambda: client.remove_container(pod.container_id, timeout=30) if pod.container_id else None,
                         lambda: client.stop_pod_sandbox(pod.sandbox_id, timeout=60),
                         lambda: client.remove_pod_sandbox(pod.sandbox_id, timeout=60)):
                try:
                    call()
                except Exception:  # noqa: BLE001 - teardown goes on; close() removes what is left
                    pass
        if pod in self.pods:
            self.pods.remove(pod)

    def close(self) -> None:
        """Remove every pod, the daemon and its directory, the bridge and the pods' cgroups."""
        if self.ctd.process is not None:
            for pod in list(self.pods):
                self.remove_pod(pod)
        self.ctd.close()
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        for directory in _cgroup_dirs(self.cgroup_parent):
            _remove_cgroup_tree(directory)

    def __enter__(self) -> "PodHost":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
