"""manifests/components/agent-configure: `--configure` from a one-shot init container that can write only
containerd's drop-in directory and holds no service-account token; the agent container keeps its own."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from sandgate.cli import build_parser
from support import REPO
from test_manifests import INSTALLS, _args, one, policy_of, render_with_components, validate_for

TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
# The component needs the kube-root-ca.crt ConfigMap (1.20+) and bound token projection (GA 1.20).
TARGETS = ["install/modern", "install/modern-cert-manager", "install/modern-1.30", "overlays/modern"]


@pytest.fixture(scope="module", params=TARGETS)
def rendered(request, tmp_path_factory):
    return request.param, render_with_components(tmp_path_factory.mktemp("kz") / "k", request.param, "agent-configure")


def agent_spec(docs: list[dict]) -> dict:
    return one(docs, "DaemonSet", "sandgate-agent")["spec"]["template"]["spec"]


def test_every_object_validates_against_its_target_schemas(rendered):
    target, docs = rendered
    for version in INSTALLS[target][1]:
        for doc in docs:
            if not doc["apiVersion"].startswith("cert-manager.io/"):
                validate_for(doc, version)


def test_the_pod_passes_the_api_servers_volume_rules(rendered):
    """pkg/apis/core/validation: unique volume and container names, mounts naming existing volumes with
    unique paths, projected paths unique, a projected token of 10 minutes to 2^32 seconds."""
    _, docs = rendered
    spec = agent_spec(docs)
    names = [v["name"] for v in spec["volumes"]]
    assert len(names) == len(set(names))
    containers = spec["initContainers"] + spec["containers"]
    assert len({c["name"] for c in containers}) == len(containers)
    for c in containers:
        paths = [m["mountPath"] for m in c["volumeMounts"]]
        assert len(paths) == len(set(paths)), c["name"]
        assert {m["name"] for m in c["volumeMounts"]} <= set(names), c["name"]
    [projected] = [v["projected"] for v in spec["volumes"] if "projected" in v]
    paths = []
    for source in projected["sources"]:
        kind, body = next(iter(source.items()))
        paths += [body["path"]] if kind == "serviceAccountToken" else [i["path"] for i in body["items"]]
        if kind == "serviceAccountToken":
            assert 600 <= body["expirationSeconds"] <= 2 ** 32
    assert sorted(paths) == ["ca.crt", "namespace", "token"]  # what the in-cluster client reads


def test_only_the_agent_container_holds_a_token(rendered):
    _, docs = rendered
    spec = agent_spec(docs)
    assert spec["automountServiceAccountToken"] is False  # nothing is injected into any container
    volumes = {v["name"]: v for v in spec["volumes"]}
    [init] = spec["initContainers"]
    [agent] = spec["containers"]
    token_volumes = {n for n, v in volumes.items() if "projected" in v or "secret" in v}
    assert not [m for m in init["volumeMounts"] if m["name"] in token_volumes or m["mountPath"] == TOKEN_DIR]
    [token] = [m for m in agent["volumeMounts"] if m["mountPath"] == TOKEN_DIR]
    assert token["readOnly"] is True and "serviceAccountToken" in str(volumes[token["name"]]["projected"])


def test_the_init_container_writes_only_the_drop_in_directory(rendered, tmp_path):
    _, docs = rendered
    spec = agent_spec(docs)
    [init] = spec["initContainers"]
    args = build_parser().parse_args(_args(init))
    assert (args.command, args.once, args.configure, args.drop_in_only) == ("agent", True, True, True)
    assert args.kubeconfig is None and not args.dry_run
    [agent] = spec["containers"]
    assert not build_parser().parse_args(_args(agent)).configure  # the long-running agent never writes configs
    assert init["image"] == agent["image"]
    sc = init["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"] and sc["capabilities"]["drop"] == ["ALL"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    policy = policy_of(docs)
    writable, read_only = [], {}
    for m in init["volumeMounts"]:
        host_path = volumes[m["name"]].get("hostPath")
        if host_path is None:
            continue
        assert host_path["type"] == "Directory"  # never created on a node
        assert m["mountPath"] == args.root + host_path["path"]
        if m.get("readOnly"):
            read_only[host_path["path"]] = m
        else:
            writable.append(host_path["path"])
    assert writable == [policy.agent.drop_in_dir]
    assert any(policy.agent.containerd_config.startswith(p + "/") for p in read_only)  # main config: read-only
    assert not [p for p in read_only if p.startswith(("/run", "/var/run"))]  # no CRI socket: containerd unreachable
    # The writable directory is nested in the read-only /etc/containerd mount (the runtime mounts the deeper path last).
    assert any(policy.agent.drop_in_dir.startswith(p + "/") for p in read_only)


def test_the_init_containers_flags_pass_the_commands_own_checks(rendered, tmp_path):
    """The rendered args, run by the real command, get past its flag checks (to the missing policy file)."""
    _, docs = rendered
    [init] = agent_spec(docs)["initContainers"]
    argv = [a.replace("/etc/sandgate/policy/policy.yaml", str(tmp_path / "absent.yaml")) for a in _args(init)]
    done = subprocess.run([sys.executable, "-m", "sandgate", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "NODE_NAME": "n1"})
    assert done.returncode == 2 and "absent.yaml" in done.stderr and "--drop-in-only" not in done.stderr
