"""`sandgate demo` end to end: the real command, the real webhook and extender, its report and its cleanup."""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandgate.core import keys
from sandgate.demo import main as demo_main
from sandgate.demo import scenario as scenarios
from sandgate.demo.cli import add_arguments
from support import REPO

RUN_TIMEOUT = 120


@dataclass
class DemoOutput:
    version: str
    returncode: int
    stdout: str
    stderr: str
    html: Path


def _run_demo(*args: str, timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sandgate", "demo", *args], cwd=REPO, capture_output=True,
                          text=True, encoding="utf-8", timeout=timeout)


@pytest.fixture(scope="module", params=["1.24", "1.15"])
def demo(request, tmp_path_factory) -> DemoOutput:
    html = tmp_path_factory.mktemp("html") / "report.html"
    done = _run_demo("--cluster-version", request.param, "--html", str(html))
    return DemoOutput(request.param, done.returncode, done.stdout, done.stderr, html)


def _section(out: str, title: str) -> tuple[list[str], list[str]]:
    """A report section's column headers and its other lines, from its title line to the next blank line."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i].strip()), len(lines))
    return re.split(r"\s{2,}", lines[start + 1].strip()), lines[start + 2:end]


def _rows(lines: list[str]) -> list[list[str]]:
    """Table rows (two-space indented lines) split into their columns."""
    return [re.split(r"\s{2,}", line.strip()) for line in lines if re.match(r"^  \S", line)]


def pod_table(out: str) -> dict[str, list[str]]:
    """namespace/name -> [isolation label, decision, node]."""
    return {row[0]: row[1:] for row in _rows(_section(out, "PODS (")[1])}


def pod_block(out: str, ref: str) -> str:
    """Everything the report says about one pod, whitespace-normalised (lines are wrapped)."""
    lines = _section(out, "PODS (")[1]
    start = next(i for i, line in enumerate(lines) if line.startswith(f"  {ref} "))
    end = next((i for i in range(start + 1, len(lines)) if re.match(r"^  \S", lines[i])), len(lines))
    return " ".join(" ".join(lines[start:end]).split())


def node_table(out: str) -> dict[str, dict[str, str]]:
    """node name -> {column header: cell}."""
    header, lines = _section(out, "NODES (")
    return {row[0]: dict(zip(header, row)) for row in _rows(lines)}


def _pids(out: str) -> list[int]:
    return [int(m) for m in re.findall(r"^  (?:webhook|extender)\s+pid (\d+)", out, re.M)]


def _process_groups() -> dict[int, int]:
    """pid -> process group of every process on the machine."""
    groups = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        groups[int(stat.parent.name)] = int(fields[2])
    return groups


def test_exits_zero_and_states_the_mode(demo):
    assert demo.returncode == 0, demo.stderr
    header = demo.stdout.splitlines()[0]
    assert f"Kubernetes {demo.version}" in header
    if demo.version == "1.24":
        assert "RuntimeClass mode" in header and "AdmissionReview v1;" in demo.stdout
    else:
        assert "legacy mode" in header and "AdmissionReview v1beta1" in demo.stdout


def test_every_builtin_pod_has_its_decision(demo):
    table = pod_table(demo.stdout)
    assert set(table) == {p.ref for p in scenarios.builtin().pods}
    expected = {
        "shop/storefront": "not sandboxed",
        "kube-system/coredns-autoscaler": "not sandboxed",
        "edge-analytics/camera-feed": "routed: runv",
        "shop/plugin-runner": "routed: runv",
        "tenant-a/web": "routed: runv",
        "tenant-a/worker": "routed: runv",
        "tenant-a/headless-browser": "denied",
        "tenant-a/debug-shell": "denied",
        "tenant-a/escape-hatch": "denied",
        "tenant-a/pinned-runc": "denied",
        "ci-runners/build-42": "routed: gvisor",
        "tenant-a/batch-overflow": "routed: runv",
    }
    assert {ref: row[1] for ref, row in table.items()} == expected
    for ref, decision in expected.items():
        node = table[ref][2]
        if decision == "denied":
            assert node == "-", ref
        elif ref == "tenant-a/batch-overflow":
            assert node == "unschedulable"
        else:
            assert node in {n.name for n in scenarios.builtin().nodes}, ref


def test_routing_reasons_follow_the_namespace_selectors(demo):
    out = demo.stdout
    assert "never sent to sandgate" in pod_block(out, "kube-system/coredns-autoscaler")
    assert "POST /mutate/opt-in" in pod_block(out, "shop/storefront")
    assert "POST /mutate/opt-in" in pod_block(out, "shop/plugin-runner")
    assert f"{keys.DEFAULT_NAMESPACE_LABEL}=sandboxed" in pod_block(out, "tenant-a/web")
    assert "POST /mutate/runv" in pod_block(out, "tenant-a/web")
    assert "POST /mutate/gvisor" in pod_block(out, "ci-runners/build-42")
    # The only edge node with a healthy Kata runtime and a free slot.
    assert pod_table(out)["edge-analytics/camera-feed"][2] == "edge-kata-1"


def test_denials_name_the_field(demo):
    out = demo.stdout
    assert "spec.containers[0].securityContext.privileged" in pod_block(out, "tenant-a/debug-shell")
    escape = pod_block(out, "tenant-a/escape-hatch")
    assert keys.DEFAULT_POD_ANNOTATION in escape and '"none"' in escape
    pinned = pod_block(out, "tenant-a/pinned-runc")
    assert "conflict: runtimeClass.scheduling.nodeSelector[runtime] = runv; pod.spec.nodeSelector[runtime] = runc" \
        in pinned
    if demo.version == "1.24":
        # The webhook only sets runtimeClassName; the API server's own plugin refuses the conflict.
        assert 'DENIED by RuntimeClass admission: pods "pinned-runc" is forbidden' in pinned
    else:
        assert 'DENIED by webhook runv.mutate.sandgate.io: admission webhook "runv.mutate.sandgate.io"' in pinned


def test_version_changes_who_adds_scheduling_and_overhead(demo):
    block = pod_block(demo.stdout, "tenant-a/web")
    if demo.version == "1.24":
        assert "RuntimeClass admission: nodeSelector runtime=runv" in block
        assert "overhead cpu 100m, memory 50Mi" in block
        assert "webhook: runtimeClassName=runv;" in block and "webhook: runtimeClassName=runv; nodeSelector" not in block
        # The API server calls the webhook again after RuntimeClass admission changed its output.
        assert "webhook reinvoked after that (reinvocationPolicy IfNeeded): no patch" in block
    else:
        assert "RuntimeClass admission" not in block and "reinvoked" not in block
        assert "webhook: runtimeClassName=runv; nodeSelector runtime=runv" in block
        assert "main requests cpu 100m -> 200m" in block  # the whole overhead, as padding


def test_unschedulable_pod_explains_every_node(demo):
    block = pod_block(demo.stdout, "tenant-a/batch-overflow")
    assert "UNSCHEDULABLE: 0/7 nodes are available" in block
    # The scheduler counts the slots itself (full Kata nodes, and a node without runv slots at all);
    # the extender rejects what only it knows: edge-kata-2's agent is silent.
    assert f"4 Insufficient {keys.sandbox_resource('runv')}" in " ".join(block.split())
    assert re.search(r"extender rejected edge-kata-2: [^.]*stale", block)
    assert block.count("extender rejected") == 1


def test_full_and_stale_nodes_get_no_new_sandbox(demo):
    nodes = node_table(demo.stdout)
    assert "+" not in nodes["cloud-kata-2"]["PODS (+ placed by this run)"]
    assert nodes["cloud-kata-2"]["runv SLOTS"].startswith("2/2")
    # No new sandbox on the stale node (a system pod that tolerates every taint may still land there).
    placed = [p[1:] for p in nodes["edge-kata-2"]["PODS (+ placed by this run)"].split(", ") if p.startswith("+")]
    assert all(pod_table(demo.stdout)[ref][1] == "not sandboxed" for ref in placed)
    assert nodes["edge-kata-2"]["runv SLOTS"].startswith("0/2")
    assert nodes["edge-kata-2"]["AGENT HEARTBEAT"].startswith("STALE")


def test_slot_counts_match_the_placed_pods(demo):
    scenario = scenarios.builtin()
    pods = pod_table(demo.stdout)
    nodes = node_table(demo.stdout)
    handler = {"runv": scenarios.RUNV_HANDLER, "gvisor": scenarios.GVISOR_HANDLER}
    for spec in scenario.nodes:
        row = nodes[spec.name]
        placed = [ref for ref, (_, _, node) in pods.items() if node == spec.name]
        listed = row["PODS (+ placed by this run)"]
        assert sorted(p[1:] for p in listed.split(", ") if p.startswith("+")) == sorted(placed)
        for profile, h in handler.items():
            cell = row[f"{h} SLOTS"]
            if h not in spec.runtimes:
                assert cell == "-"
                continue
            used, total = map(int, cell.split()[0].split("/"))
            existing = sum(1 for p in scenario.existing if p.node == spec.name and p.runtime_class == profile)
            new = sum(1 for ref in placed if pods[ref][1] == f"routed: {profile}")
            assert (used, total) == (existing + new, spec.runtimes[h])
            assert used <= total


def test_components_and_workdir_are_gone(demo):
    pids = _pids(demo.stdout)
    assert len(pids) == 2
    groups = _process_groups()
    assert not [pid for pid, group in groups.items() if group in pids or pid in pids]
    workdir = re.search(r"^  workdir\s+(\S+)", demo.stdout, re.M).group(1)
    assert "sandgate-demo-" in workdir and not Path(workdir).exists()


def test_html_report_is_self_contained_and_shows_every_node(demo):
    page = demo.html.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    for node in scenarios.builtin().nodes:
        assert f"<span>{node.name}</span>" in page
    for pod in scenarios.builtin().pods:
        assert pod.ref in page
    assert "<script" not in page and "<link" not in page and "src=" not in page and "url(" not in page
    assert f"HTML report written to {demo.html}" in demo.stdout


def test_synthetic_run_counts_add_up():
    done = _run_demo("--pods", "40")
    assert done.returncode == 0, done.stderr
    assert "40/40 pods" in done.stderr
    assert "\nPODS (" not in done.stdout  # no per-pod listing in a synthetic run
    rows = {r[0]: r[1:] for r in _rows(_section(done.stdout, "SUMMARY")[1]) if not r[0].startswith(("per pod", "whole"))}
    outcome_rows = [r for name, r in rows.items() if name != "total"]
    assert sum(int(r[0]) for r in outcome_rows) == 40
    assert rows["total"][0] == "40"
    scheduled, unschedulable = int(rows["total"][1]), int(rows["total"][2])
    assert scheduled + unschedulable + int(rows["denied"][0]) == 40
    assert re.search(r"p50 [\d.]+ ms, p99 [\d.]+ ms", done.stdout)


def test_bad_arguments_are_refused_clearly():
    done = _run_demo("--cluster-version", "1.9")
    assert done.returncode == 2 and "--cluster-version" in done.stderr and "not supported" in done.stderr
    done = _run_demo("--pods", "0")
    assert done.returncode == 2 and "--pods must be at least 1" in done.stderr


def test_component_that_cannot_start_fails_the_demo_with_its_output(monkeypatch, tmp_path, capsys):
    """A webhook that exits at start: exit 1 with its last output, the extender stopped, the workdir removed."""
    real_command = demo_main.sandgate_command

    def broken_webhook(*args: str) -> list[str]:
        argv = real_command(*args)
        return argv + ["--no-such-flag"] if args[0] == "webhook" else argv

    workdir = tmp_path / "sandgate-demo-broken"

    def mkdtemp(prefix: str) -> str:
        workdir.mkdir()
        return str(workdir)

    monkeypatch.setattr(demo_main, "sandgate_command", broken_webhook)
    monkeypatch.setattr(demo_main.tempfile, "mkdtemp", mkdtemp)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert demo_main.run_demo(parser.parse_args([])) == 1
    err = capsys.readouterr().err
    assert "webhook exited with code 2 before it was ready" in err and "--no-such-flag" in err
    assert not workdir.exists()
    leftovers = [p for p in Path("/proc").glob("[0-9]*/cmdline")
                 if str(workdir).encode() in (p.read_bytes() if p.exists() else b"")]
    assert not leftovers


def test_misbehaving_component_fails_the_demo(monkeypatch, capsys):
    """An extender answer that does not decode is reported per pod and makes the run fail (exit 1)."""
    from sandgate.demo import scheduler

    def garbage(answer):
        raise scheduler.AnswerError("Score must be an integer")

    monkeypatch.setattr(scheduler, "decode_priorities", garbage)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert demo_main.run_demo(parser.parse_args([])) == 1
    captured = capsys.readouterr()
    assert "extender answer cannot be decoded: Score must be an integer" in captured.out
    assert "sandgate demo: a component misbehaved for" in captured.err


def test_unwritable_html_path_is_refused_before_anything_starts():
    done = _run_demo("--html", "/nonexistent-dir/report.html")
    assert done.returncode == 2 and "does not exist" in done.stderr and "webhook" not in done.stdout


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _component(pid: int) -> bool:
    """The process runs `sandgate webhook` or `sandgate extender`."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\x00")
    except OSError:
        return False
    return b"sandgate" in argv and (b"webhook" in argv or b"extender" in argv)


def test_ctrl_c_stops_everything(tmp_path):
    demo = subprocess.Popen([sys.executable, "-m", "sandgate", "demo", "--pods", "5000"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        children: list[int] = []
        deadline = time.monotonic() + 60
        # Wait until both components run and the pods are flowing (the progress starts).
        while time.monotonic() < deadline and len(children) < 2:
            children = [c for c in _children(demo.pid) if _component(c)]
            time.sleep(0.2)
        assert len(children) == 2, "the demo did not start its two components"
        workdir = re.search(rb"(/\S*sandgate-demo-[^/\x00]+)", Path(f"/proc/{children[0]}/cmdline").read_bytes())
        time.sleep(1.0)
        demo.send_signal(signal.SIGINT)
        _, err = demo.communicate(timeout=30)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 130, err
    assert "interrupted" in err
    groups = _process_groups()
    assert not [pid for pid, group in groups.items() if group in children or pid in children]
    assert workdir and not os.path.exists(workdir.group(1).decode())
