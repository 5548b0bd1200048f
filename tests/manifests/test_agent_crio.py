"""manifests/components/agent-crio: the agent on CRI-O nodes reads CRI-O's config and socket, read-only."""

from __future__ import annotations

import pytest
import yaml

from node_agent import host
from sandgate.cli import build_parser
from sandgate.core.policy import parse_policy
from test_manifests import one, render_with_components


@pytest.mark.parametrize("install", ["install/modern", "install/legacy"])
def test_the_agent_finds_crio_and_its_socket_through_read_only_mounts(tmp_path, install):
    docs = render_with_components(tmp_path / "kz", install, "agent-crio")
    spec = one(docs, "DaemonSet", "sandgate-agent")["spec"]["template"]["spec"]
    container = spec["containers"][0]
    args = build_parser().parse_args(container["args"])
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {}
    for m in container["volumeMounts"]:
        path = volumes[m["name"]].get("hostPath", {}).get("path")
        if path is None or m["mountPath"] == args.device_plugin_dir:
            continue
        assert m.get("readOnly") is True and m["mountPath"] == args.root + path, m
        mounts[path] = m["mountPath"]
    assert not [p for p in mounts if "containerd" in p]  # a CRI-O node has no containerd paths to wait for
    assert {volumes[n]["hostPath"]["type"] for n in ("crio-config", "crio-run")} == {"Directory"}  # never created
    # The container's view of the host: only what is mounted (a CRI-O node's files in it).
    root = tmp_path / "root"
    for path in mounts:
        (root / args.root.strip("/") / path.strip("/")).mkdir(parents=True)
    cm = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("sandgate-policy"))
    policy = parse_policy(yaml.safe_load(cm["data"]["policy.yaml"]), "policy")
    on_host = host.Root(root / args.root.strip("/"))
    on_host.host(policy.agent.crio_config).write_text("[crio.runtime]\n")
    assert host.detect_manager(on_host, policy) == "crio"
    socket = host.cri_endpoint(policy.agent, "crio").removeprefix("unix://")
    assert socket == "/var/run/crio/crio.sock"
    assert any(socket.startswith(p + "/") for p in mounts)
    assert any(policy.agent.crio_drop_in_dir.startswith(p + "/") for p in mounts)
