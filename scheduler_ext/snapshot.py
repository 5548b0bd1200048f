"""Serve without a cluster: load Nodes, Pods and Leases from a Kubernetes List file.

The file is what `kubectl get nodes,pods,leases -A -o yaml` (or `-o json`) prints: `kind: List`
with `items`, each item carrying its own `kind`. Objects of other kinds are ignored.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orjson
import yaml

from sandgate.core.clusterversion import ClusterVersion, VersionError
from sandgate.core.informer import parse_all
from scheduler_ext.state import ClusterCache

log = logging.getLogger(__name__)

# libyaml's loader is ~10x faster on a 5,000-node snapshot; PyYAML ships without it on some platforms.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class SnapshotError(ValueError):
    """The snapshot file cannot be used; the message names the file and the problem."""


def read_list(path: str | Path) -> list[dict[str, Any]]:
    """The items of the List in `path` (YAML or JSON)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SnapshotError(f"{path}: cannot read the snapshot: {exc.strerror or exc}") from exc
    try:
        doc = orjson.loads(data) if data.lstrip()[:1] == b"{" else yaml.load(data, Loader=_LOADER)
    except (orjson.JSONDecodeError, yaml.YAMLError) as exc:
        raise SnapshotError(f"{path}: not valid JSON or YAML: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("items"), list):
        raise SnapshotError(f"{path}: expected a Kubernetes List (kind: List with items), "
                            f"as printed by kubectl get nodes,pods,leases -A -o yaml")
    return doc["items"]


def kubelet_version(items: list[dict[str, Any]]) -> ClusterVersion | None:
    """The oldest kubelet version among the snapshot's Nodes (kubelets never run ahead of the API server)."""
    versions = []
    for item in items:
        if not isinstance(item, dict) or item.get("kind") != "Node":
            continue
        try:
            text = item["status"]["nodeInfo"]["kubeletVersion"]
            versions.append(ClusterVersion.parse(text))
        except (VersionError, TypeError, KeyError, AttributeError):
            continue
    return min(versions) if versions else None


def apply_snapshot(cache: ClusterCache, items: list[dict[str, Any]], source: str | Path) -> dict[str, int]:
    """Fill `cache` from the List's items; returns how many objects of each kind were loaded."""
    by_kind: dict[str, list[dict[str, Any]]] = {"Node": [], "Pod": [], "Lease": []}
    ignored = 0
    for item in items:
        bucket = by_kind.get(item.get("kind")) if isinstance(item, dict) else None
        if bucket is None:
            ignored += 1
        else:
            bucket.append(item)
    # One object at a time: an unreadable one is skipped (and shown in /readyz), never fatal.
    cache.node_store().replace(parse_all(by_kind["Node"], cache.parse_node, cache.skipped["nodes"]))
    cache.pod_store().replace(parse_all(by_kind["Pod"], cache.parse_pod, cache.skipped["pods"]))
    cache.lease_store().replace(parse_all(by_kind["Lease"], cache.parse_lease, cache.skipped["leases"]))
    for status in cache.sync.values():
        status.synced = True
    counts = {kind.lower() + "s": len(objs) for kind, objs in by_kind.items()}
    skipped = {kind: len(s.current) for kind, s in cache.skipped.items()}
    log.info("snapshot loaded", extra={"snapshot": str(source), **counts, "ignored": ignored, "skipped": skipped})
    return counts
