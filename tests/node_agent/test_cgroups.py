"""The kernel-counter readers: /proc/<pid>/net/dev, cgroup v1/v2 files, cgroupsPath resolution, mountinfo."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from node_agent import cgroups
from node_agent.cgroups import BlockIO, CgroupLayout, Mount, NetDev

NET_DEV = """\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:  200739  1578    0    0    0     0          0         0   200739    1578    0    0    0     0       0          0
  eth0: 137930981    3480    2    5    0     0          0         0   184374    1901    3    7    0     0       0          0
veth-x_1:      10       1    0    0    0     0          0         0       20       2    0    0    0     0       0          0
"""


def test_net_dev_reads_every_interface_but_loopback():
    assert cgroups.parse_net_dev(NET_DEV) == [
        NetDev("eth0", 137930981, 3480, 2, 5, 184374, 1901, 3, 7),
        NetDev("veth-x_1", 10, 1, 0, 0, 20, 2, 0, 0),
    ]


def test_net_dev_skips_malformed_lines():
    assert cgroups.parse_net_dev("h1\nh2\n eth0: 1 2 3\nbad line\n eth1: x " + "0 " * 15 + "\n") == []


def test_io_stat_v2():
    text = "8:0 rbytes=4096 wbytes=1048576 rios=1 wios=256 dbytes=0 dios=0\n253:1 rbytes=5 wbytes=0 rios=2 wios=0\n"
    assert cgroups.parse_io_stat(text) == [BlockIO("8:0", 4096, 1048576, 1, 256), BlockIO("253:1", 5, 0, 2, 0)]


def test_blkio_v1_bytes_and_ops_merge_by_device():
    service_bytes = ("8:0 Read 4096\n8:0 Write 1048576\n8:0 Sync 1052672\n8:0 Async 0\n8:0 Discard 0\n"
                     "8:0 Total 1052672\n7:1 Read 0\n7:1 Write 512\nTotal 1053184\n")
    serviced = "8:0 Read 1\n8:0 Write 256\n8:0 Total 257\nTotal 257\n"
    assert cgroups.parse_blkio(service_bytes, serviced) == [BlockIO("7:1", 0, 512, 0, 0),
                                                            BlockIO("8:0", 4096, 1048576, 1, 256)]
    assert cgroups.parse_blkio("Total 0\n", "Total 0\n") == []


@pytest.mark.parametrize("path, rel", [
    ("kubepods-besteffort-pod1a2b_3c.slice:cri-containerd:abc123",
     "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1a2b_3c.slice/cri-containerd-abc123.scope"),
    ("kubepods.slice:cri-containerd:abc", "kubepods.slice/cri-containerd-abc.scope"),
    ("-.slice:docker:abc", "docker-abc.scope"),
    (":cri-containerd:abc", "system.slice/cri-containerd-abc.scope"),
    ("/kubepods/besteffort/pod1a2b-3c/abc123", "kubepods/besteffort/pod1a2b-3c/abc123"),
    ("kubepods/pod1/abc", "kubepods/pod1/abc"),
])
def test_cgroups_path_forms(path, rel):
    assert cgroups.cgroup_relpath(path) == rel


@pytest.mark.parametrize("path", ["/kubepods/../../etc", "bad-.slice:p:n", "a--b.slice:p:n", "noslice:p:n"])
def test_cgroups_path_refuses_what_is_not_a_cgroup_below_the_root(path):
    with pytest.raises(ValueError):
        cgroups.cgroup_relpath(path)


def test_pod_cgroup_is_the_parent_of_the_sandbox_container():
    assert cgroups.pod_relpath("/kubepods/burstable/podU/sandboxid") == "kubepods/burstable/podU"
    assert cgroups.pod_relpath("kubepods-pod_u.slice:cri-containerd:sid") == "kubepods.slice/kubepods-pod_u.slice"
    with pytest.raises(ValueError):
        cgroups.pod_relpath("/sandboxid")


MOUNTINFO_HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""


def test_hybrid_layout_reads_v1_controllers(tmp_path):
    layout = cgroups.parse_mountinfo(MOUNTINFO_HYBRID, tmp_path)
    base = tmp_path / "sys/fs/cgroup"
    assert layout.locate("memory", "kubepods/podU") == (1, base / "memory/kubepods/podU")
    assert layout.locate("cpu", "/kubepods/podU") == (1, base / "cpu,cpuacct/kubepods/podU")
    assert layout.locate("io", "kubepods/podU") == (1, base / "blkio/kubepods/podU")


def test_unified_layout_reads_v2_and_only_enabled_controllers(tmp_path):
    text = "25 20 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
    layout = cgroups.parse_mountinfo(text, tmp_path, frozenset({"memory"}))
    assert layout.locate("memory", "a/b") == (2, tmp_path / "sys/fs/cgroup/a/b")
    assert layout.locate("cpu", "a/b") == (2, tmp_path / "sys/fs/cgroup/a/b")  # cpu.stat is always there
    assert layout.locate("io", "a/b") is None


def test_mount_of_a_subtree_maps_paths_inside_it_only(tmp_path):
    layout = CgroupLayout({"memory": Mount(tmp_path / "m", "/kubepods", frozenset({"memory"}))})
    assert layout.locate("memory", "kubepods/podU") == (1, tmp_path / "m/podU")
    assert layout.locate("memory", "system.slice/x") is None
    assert layout.locate("memory", "kubepodsX/y") is None


def test_mountinfo_escapes_are_decoded(tmp_path):
    layout = cgroups.parse_mountinfo("1 0 0:1 / /cg\\040v2 rw - cgroup2 cgroup2 rw\n", tmp_path)
    assert layout.v2.path == tmp_path / "cg v2"


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_v2_usage_from_files(tmp_path):
    pod = tmp_path / "pod"
    write(pod / "memory.current", "104857600\n")
    write(pod / "memory.stat", "anon 1000\nfile 5000\ninactive_file 4857600\nactive_file 10\n")
    write(pod / "cpu.stat", "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\n")
    write(pod / "io.stat", "8:0 rbytes=1 wbytes=2 rios=3 wios=4 dbytes=0 dios=0\n")
    layout = CgroupLayout({}, Mount(tmp_path, "/", frozenset({"memory", "io"})))
    assert cgroups.read_usage(cgroups.cgroup_files(layout, "pod")) == cgroups.CgroupUsage(100 * 1024 * 1024 - 4857600, 2.5,
                                                                     (BlockIO("8:0", 1, 2, 3, 4),))


def test_v1_usage_from_files_prefers_recursive_blkio(tmp_path):
    write(tmp_path / "memory/pod/memory.usage_in_bytes", "2000\n")
    write(tmp_path / "memory/pod/memory.stat", "inactive_file 5\ntotal_inactive_file 500\n")
    write(tmp_path / "cpuacct/pod/cpuacct.usage", "1500000000\n")
    write(tmp_path / "blkio/pod/blkio.throttle.io_service_bytes", "8:0 Write 1\nTotal 1\n")
    write(tmp_path / "blkio/pod/blkio.throttle.io_serviced", "8:0 Write 1\nTotal 1\n")
    write(tmp_path / "blkio/pod/blkio.throttle.io_service_bytes_recursive", "8:0 Read 7\n8:0 Write 9\nTotal 16\n")
    write(tmp_path / "blkio/pod/blkio.throttle.io_serviced_recursive", "8:0 Read 1\n8:0 Write 2\nTotal 3\n")
    layout = CgroupLayout({c: Mount(tmp_path / c, "/", frozenset({c})) for c in ("memory", "cpuacct", "blkio")})
    assert cgroups.read_usage(cgroups.cgroup_files(layout, "pod")) == cgroups.CgroupUsage(1500, 1.5, (BlockIO("8:0", 7, 9, 1, 2),))


def test_working_set_never_negative_and_gone_cgroups_read_as_unknown(tmp_path):
    write(tmp_path / "pod/memory.current", "100\n")
    write(tmp_path / "pod/memory.stat", "inactive_file 4096\n")
    layout = CgroupLayout({}, Mount(tmp_path, "/", frozenset({"memory", "io"})))
    assert cgroups.read_memory_working_set(cgroups.cgroup_files(layout, "pod")) == 0
    assert cgroups.read_usage(cgroups.cgroup_files(layout, "gone")) == cgroups.CgroupUsage(None, None, ())
    assert cgroups.read_net_dev(tmp_path, 999999999) is None


def test_this_host_counts_real_cpu_time_of_a_cgroup():
    """A real cgroup on this host (v1 cpuacct or v2 cpu.stat, whichever holds CPU here) counts a busy child."""
    layout = cgroups.load_layout(Path("/"))
    rel = f"sandgate-test-{uuid.uuid4().hex[:8]}"
    found = layout.locate("cpu", rel)
    if found is None:
        pytest.skip("no cgroup hierarchy counts CPU here")
    directory = found[1]
    directory.mkdir()
    try:
        child = subprocess.Popen(["sh", "-c", 'read _; i=0; while [ "$i" -lt 300000 ]; do i=$((i+1)); done'],
                                 stdin=subprocess.PIPE)
        (directory / "cgroup.procs").write_text(str(child.pid))
        child.communicate(b"go\n", timeout=120)
        assert cgroups.read_cpu_seconds(cgroups.cgroup_files(layout, rel)) > 0.01
    finally:
        deadline = time.monotonic() + 5
        while True:
            try:
                os.rmdir(directory)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def test_this_process_sees_its_own_interfaces():
    found = cgroups.read_net_dev(Path("/"), os.getpid())
    assert found is not None and all(dev.interface != "lo" for dev in found)


@given(st.text())
def test_parsers_never_fail_on_any_text(text):
    for parse in (cgroups.parse_net_dev, cgroups.parse_io_stat, cgroups.parse_flat_keyed):
        parse(text)
    cgroups.parse_blkio(text, text)
    cgroups.parse_mountinfo(text, Path("/host"))


@given(st.text(alphabet=st.sampled_from("/.:-_aZ9s"), max_size=40))
def test_a_cgroups_path_resolves_below_the_root_or_is_refused(path):
    try:
        rel = cgroups.cgroup_relpath(path)
    except ValueError:
        return
    assert not rel.startswith("/") and ".." not in rel.split("/")
