"""Publishing to a fake API server over real HTTP through `python3 -m sandgate agent --once --kubeconfig K`."""

from __future__ import annotations

import socket
from datetime import datetime, timezone

from sandgate.core import keys


def two_runtimes(root, tables) -> None:
    root.config(tables.V2_HEAD + tables.runtime(tables.V2, "kata", "io.containerd.kata.v2")
                + tables.runtime(tables.V2, "runsc", "io.containerd.runsc.v1"))
    root.shim("containerd-shim-kata-v2")
    root.shim("containerd-shim-runsc-v1")
    root.kvm()


def once(agent_cmd, policy, root, kubeconfig, *extra):
    return agent_cmd("--config", str(policy), "--node-name", "n1", "--root", str(root.path), "--once",
                     "--kubeconfig", str(kubeconfig), *extra)


def test_publish_patches_only_our_keys_and_creates_then_renews_the_lease(root, tables, policy_file, fake_api,
                                                                         agent_cmd, tmp_path):
    two_runtimes(root, tables)
    policy = policy_file("  namespace: sandgate-ops\n  leaseDurationSeconds: 40")
    kubeconfig = fake_api.kubeconfig(tmp_path)
    done = once(agent_cmd, policy, root, kubeconfig)
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    (patch,) = fake_api.calls("PATCH")
    assert patch["path"] == "/api/v1/nodes/n1"
    assert patch["contentType"] == "application/merge-patch+json"
    # Allocatable read from the Node: (8Gi - 1Gi) / 160Mi = 44 kata, 100 (maxSandboxes) runsc.
    assert patch["body"] == {"metadata": {
        "labels": {keys.runtime_label("kata"): "true", keys.runtime_label("runsc"): "true",
                   keys.runtime_label("runv"): None},
        "annotations": {keys.capacity_annotation("kata"): "44", keys.capacity_annotation("runsc"): "100",
                        keys.capacity_annotation("runv"): None}}}
    labels = fake_api.node["metadata"]["labels"]
    assert labels == {"kubernetes.io/hostname": "n1", keys.runtime_label("kata"): "true",
                      keys.runtime_label("runsc"): "true"}
    assert fake_api.node["metadata"]["annotations"]["node.alpha.kubernetes.io/ttl"] == "0"

    leases = "/apis/coordination.k8s.io/v1/namespaces/sandgate-ops/leases"
    (create,) = fake_api.calls("POST", leases)
    spec = create["body"]["spec"]
    assert create["body"]["metadata"]["name"] == keys.agent_lease_name("n1")
    assert spec["holderIdentity"] == "n1" and spec["leaseDurationSeconds"] == 40
    first = datetime.strptime(spec["renewTime"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    assert abs((datetime.now(timezone.utc) - first).total_seconds()) < 120

    done = once(agent_cmd, policy, root, kubeconfig)
    assert done.returncode == 0, done.stderr
    (update,) = fake_api.calls("PUT", leases)
    assert update["path"] == f"{leases}/{keys.agent_lease_name('n1')}"
    assert update["body"]["metadata"]["resourceVersion"] == "1"  # optimistic concurrency on the read version
    assert update["body"]["spec"]["renewTime"] > spec["renewTime"]
    assert len(fake_api.calls("POST", leases)) == 1
    assert len(fake_api.calls("PATCH")) == 1  # the Node already carries our keys: no second patch


def test_runtime_gone_removes_its_keys(root, tables, policy_file, fake_api, agent_cmd, tmp_path):
    two_runtimes(root, tables)
    kubeconfig = fake_api.kubeconfig(tmp_path)
    assert once(agent_cmd, policy_file(), root, kubeconfig).returncode == 0
    (root.path / "usr/local/bin/containerd-shim-runsc-v1").unlink()
    assert once(agent_cmd, policy_file(), root, kubeconfig).returncode == 0
    last = fake_api.calls("PATCH")[-1]["body"]["metadata"]
    assert last["labels"] == {keys.runtime_label("runsc"): None}  # kata's keys are already right
    assert last["annotations"] == {keys.capacity_annotation("runsc"): None}
    assert keys.runtime_label("runsc") not in fake_api.node["metadata"]["labels"]


def test_server_errors_are_retried(root, tables, policy_file, fake_api, agent_cmd, tmp_path):
    two_runtimes(root, tables)
    fake_api.fail = {"PATCH": [500, 503], "GET": [502]}
    done = once(agent_cmd, policy_file(), root, fake_api.kubeconfig(tmp_path))
    assert done.returncode == 0, done.stderr
    assert len(fake_api.calls("PATCH")) == 3
    assert keys.runtime_label("kata") in fake_api.node["metadata"]["labels"]
    assert '"msg":"API call failed; retrying"' in done.stderr


def test_client_errors_are_not_retried_and_fail_cleanly(root, tables, policy_file, fake_api, agent_cmd, tmp_path):
    two_runtimes(root, tables)
    fake_api.fail = {"PATCH": [403]}
    done = once(agent_cmd, policy_file(), root, fake_api.kubeconfig(tmp_path))
    assert done.returncode == 1
    assert len(fake_api.calls("PATCH")) == 1
    assert "patch node n1: HTTP 403" in done.stderr
    assert "Traceback" not in done.stderr


def test_refused_connection_is_retried_then_reported(root, tables, policy_file, agent_cmd, tmp_path):
    two_runtimes(root, tables)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: connections to it are refused
    kubeconfig = tmp_path / "refused"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        f"clusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n"
        "users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\n")
    done = once(agent_cmd, policy_file(), root, kubeconfig, "--api-attempts", "3")
    assert done.returncode == 1
    assert done.stderr.count('"msg":"API call failed; retrying"') == 2
    assert "get node n1" in done.stderr and "after 3 attempts" in done.stderr
    assert "Traceback" not in done.stderr


def test_micro_time_always_has_microseconds():
    from node_agent.publish import micro_time

    assert micro_time(datetime(2026, 11, 24, 17, 0, 0, tzinfo=timezone.utc)) == "2026-11-24T17:00:00.000000Z"


def test_lease_created_meanwhile_is_read_and_replaced(root, tables, policy_file, fake_api, agent_cmd, tmp_path):
    import re

    two_runtimes(root, tables)
    name = keys.agent_lease_name("n1")
    path = f"/apis/coordination.k8s.io/v1/namespaces/{keys.DEFAULT_AGENT_NAMESPACE}/leases/{name}"
    fake_api.leases[f"{keys.DEFAULT_AGENT_NAMESPACE}/{name}"] = {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "namespace": keys.DEFAULT_AGENT_NAMESPACE, "resourceVersion": "5"},
        "spec": {"holderIdentity": "n1", "leaseDurationSeconds": 90, "renewTime": "2020-01-01T00:00:00.000000Z"}}
    fake_api.fail = {f"GET {path}": [404]}  # the first read misses it: the create then gets 409
    done = once(agent_cmd, policy_file(), root, fake_api.kubeconfig(tmp_path))
    assert done.returncode == 0, done.stderr
    assert len(fake_api.calls("POST", path.rsplit("/", 1)[0])) == 1
    (put,) = fake_api.calls("PUT", path)
    assert put["body"]["metadata"]["resourceVersion"] == "5"
    assert put["body"]["spec"]["holderIdentity"] == "n1"
    assert put["body"]["spec"]["leaseDurationSeconds"] == 90
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", put["body"]["spec"]["renewTime"])
