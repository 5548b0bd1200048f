"""Example admission requests for the guards: Nodes, Leases and Namespaces, as the API server sends them."""

from __future__ import annotations

import copy
import json

from sandgate.core import keys
from webhooks import wire

from support import REPO

POLICIES = REPO / "manifests/components/admission-policies"
AGENT = "system:serviceaccount:sandgate-agent:sandgate-agent"
TENANT = {"username": "alice", "groups": ["tenants", "system:authenticated"]}
ADMIN = {"username": "root", "groups": ["system:masters", "system:authenticated"]}


def agent_user(node: str | None = "node-a", pod: tuple[str, str] | None = None) -> dict:
    extra = {}
    if node is not None:
        extra[keys.EXTRA_NODE_NAME] = [node]
    if pod is not None:
        extra[keys.EXTRA_POD_NAME], extra[keys.EXTRA_POD_UID] = [pod[0]], [pod[1]]
    return {"username": AGENT, "groups": ["system:serviceaccounts", "system:serviceaccounts:sandgate-agent"],
            "extra": extra}


def node(name="node-a", labels=None, annotations=None, spec=None, **meta) -> dict:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})},
                         "annotations": dict(annotations or {}), **meta},
            "spec": spec if spec is not None else {"podCIDR": "10.0.0.0/24"}}


def lease(name="sandgate-agent-node-a", holder="node-a", namespace="sandgate-agent") -> dict:
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"holderIdentity": holder, "leaseDurationSeconds": 90}}


def namespace(labels=None, name="team-a") -> dict:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name, **(labels or {})}}}


def request(obj, old=None, user=None, operation="UPDATE", sub_resource=None) -> dict:
    """An admission.k8s.io/v1 AdmissionRequest as the API server sends it (and as VAP's `request`)."""
    target = obj or old
    group = target["apiVersion"].rpartition("/")[0]
    resource = {"Node": "nodes", "Lease": "leases", "Namespace": "namespaces"}[target["kind"]]
    meta = target["metadata"]
    return {"uid": "guard-uid", "kind": {"group": group, "version": "v1", "kind": target["kind"]},
            "resource": {"group": group, "version": "v1", "resource": resource},
            "subResource": sub_resource or "",
            "name": meta["name"], "namespace": meta.get("namespace", ""), "operation": operation,
            "userInfo": user or agent_user(), "object": obj, "oldObject": old, "dryRun": False}


def parsed(req: dict):
    return wire.parse_review(json.dumps({"apiVersion": wire.V1, "kind": "AdmissionReview", "request": req}).encode())


def changed(obj: dict, **edits) -> dict:
    out = copy.deepcopy(obj)
    for path, value in edits.items():
        where = out
        *parents, last = path.split("__")
        for p in parents:
            where = where.setdefault(p, {})
        if value is None:
            where.pop(last, None)
        else:
            where[last] = value
    return out




NS_SANDBOXED = namespace({keys.DEFAULT_NAMESPACE_LABEL: "sandboxed"})
