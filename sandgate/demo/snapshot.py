"""The cluster snapshot the extender serves from: a Kubernetes `List` of Nodes, Pods and agent Leases.

It has the shape of `kubectl get nodes,pods,leases -A -o yaml` and only the contract keys of
`sandgate.core.keys`. The extender judges a heartbeat's freshness against the current time, so the
snapshot is generated at run time: healthy nodes renewed seconds ago, the stale one long ago.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sandgate.core import keys
from sandgate.demo.scenario import ExistingPod, NodeSpec, Scenario
from sandgate.core.policy import Policy

KUBELET_VERSION = "v{version}.3"


def micro_time(when: dt.datetime) -> str:
    """A metav1.MicroTime: RFC 3339 in UTC with microseconds."""
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _time(when: dt.datetime) -> str:
    return when.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def node_object(node: NodeSpec, cluster_version: str, now: dt.datetime) -> dict[str, Any]:
    """The Node as the API server stores it, with what the sandgate agent published on it."""
    labels = {
        "kubernetes.io/hostname": node.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": node.arch,
        **node.labels,
    }
    annotations = {"node.alpha.kubernetes.io/ttl": "0"}
    for handler, capacity in node.runtimes.items():
        labels[keys.runtime_label(handler)] = keys.RUNTIME_LABEL_VALUE
        annotations[keys.capacity_annotation(handler)] = str(capacity)
    resources = {"cpu": node.cpu, "memory": node.memory, "pods": str(node.max_pods)}
    # What the kubelet publishes from the agent's device plugin: one slot per sandbox, per handler.
    resources.update({keys.sandbox_resource(h): str(c) for h, c in node.runtimes.items()})
    started = now - dt.timedelta(days=12)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"node/{node.name}")),
            "creationTimestamp": _time(started),
            "labels": labels,
            "annotations": annotations,
        },
        "spec": {"taints": [t.to_k8s() for t in node.taints]} if node.taints else {},
        "status": {
            "capacity": dict(resources),
            "allocatable": dict(resources),
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "kubelet is posting ready status",
                "lastHeartbeatTime": _time(now), "lastTransitionTime": _time(started),
            }],
            "nodeInfo": {
                "architecture": node.arch, "operatingSystem": "linux",
                "kubeletVersion": KUBELET_VERSION.format(version=cluster_version),
                "containerRuntimeVersion": "containerd://1.7.13",
            },
        },
    }


def existing_pod_object(pod: ExistingPod, policy: Policy, now: dt.datetime) -> dict[str, Any]:
    """A running pod already bound to its node; a sandboxed one holds its slot, as the webhook routed it."""
    requests = {"cpu": pod.cpu, "memory": pod.memory}
    resources = {"requests": requests}
    spec: dict[str, Any] = {
        "nodeName": pod.node,
        "containers": [{"name": "main", "image": "registry.example/app:1", "resources": resources}],
    }
    if pod.runtime_class:
        spec["runtimeClassName"] = pod.runtime_class
        profile = policy.profile_for_runtime_class(pod.runtime_class)
        if profile is not None:
            requests[keys.sandbox_resource(profile.handler)] = "1"
            resources["limits"] = {keys.sandbox_resource(profile.handler): "1"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod.name,
            "namespace": pod.namespace,
            "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"pod/{pod.namespace}/{pod.name}")),
            "creationTimestamp": _time(now - dt.timedelta(hours=3)),
        },
        "spec": spec,
        "status": {"phase": "Running"},
    }


def lease_object(node: NodeSpec, policy: Policy, now: dt.datetime) -> dict[str, Any]:
    """The agent's heartbeat Lease for `node`, last renewed `node.heartbeat_age_seconds` ago."""
    renewed = now - dt.timedelta(seconds=node.heartbeat_age_seconds)
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": keys.agent_lease_name(node.name), "namespace": policy.agent.namespace},
        "spec": {
            "holderIdentity": f"sandgate-agent/{node.name}",
            "leaseDurationSeconds": policy.agent.lease_duration_seconds,
            "acquireTime": micro_time(now - dt.timedelta(days=1)),
            "renewTime": micro_time(renewed),
        },
    }


def snapshot(scenario: Scenario, policy: Policy, cluster_version: str, now: dt.datetime) -> dict[str, Any]:
    """The whole snapshot as a Kubernetes List."""
    items = [node_object(n, cluster_version, now) for n in scenario.nodes]
    items += [existing_pod_object(p, policy, now) for p in scenario.existing]
    items += [lease_object(n, policy, now) for n in scenario.nodes]
    return {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items}
