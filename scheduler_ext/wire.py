"""The scheduler-extender wire format (k8s.io/kube-scheduler/extender/v1), read and written exactly.

The Go types carry no json tags, so kube-scheduler sends Go field names (`Pod`, `NodeNames`, ...);
schedulers up to 1.15 sent lower-case tags (`pod`, `nodenames`). Go's decoder matches field names
case-insensitively (an exact match first), and so does `_field` here. Answers always use the Go
field names, which every scheduler version decodes.

Bodies are decoded and encoded with orjson: at 5,000 nodes the standard library's encoder alone
takes ~2 ms per filter answer, half the latency budget (see bench/extender.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import orjson


class WireError(ValueError):
    """A request the extender cannot read; the message says which field and why (HTTP 400)."""


_MISSING = object()


def _field(obj: Mapping[str, Any], name: str) -> Any:
    """obj[name] matched as Go's encoding/json does: exact key first, else case-insensitively."""
    if name in obj:
        return obj[name]
    lowered = name.lower()
    for key, value in obj.items():
        if isinstance(key, str) and key.lower() == lowered:
            return value
    return _MISSING


def decode(body: bytes, what: str) -> dict[str, Any]:
    """Decode a JSON object body or raise WireError."""
    if not body:
        raise WireError(f"empty request body: expected a JSON {what}")
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise WireError(f"request body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise WireError(f"{what} must be a JSON object, got {type(doc).__name__}")
    return doc


def _pod(doc: Mapping[str, Any], what: str) -> dict[str, Any]:
    pod = _field(doc, "Pod")
    if pod is _MISSING or pod is None:
        raise WireError(f"{what}.Pod is required")
    if not isinstance(pod, dict):
        raise WireError(f"{what}.Pod must be an object, got {type(pod).__name__}")
    if not isinstance(pod.get("metadata"), dict):
        raise WireError(f"{what}.Pod.metadata is required")
    return pod


@dataclass
class ExtenderArgs:
    """Filter/prioritize input: the pod and either full nodes (nodeCacheCapable=false) or names."""

    pod: dict[str, Any]
    nodes: list[dict[str, Any]] | None  # ExtenderArgs.Nodes.items
    node_names: list[str] | None  # ExtenderArgs.NodeNames

    @property
    def names(self) -> list[str]:
        """The candidate node names, in the order received."""
        if self.node_names is not None:
            return self.node_names
        return [n["metadata"]["name"] for n in self.nodes or []]


def parse_extender_args(body: bytes) -> ExtenderArgs:
    """Read ExtenderArgs; WireError names the offending field."""
    doc = decode(body, "ExtenderArgs")
    pod = _pod(doc, "ExtenderArgs")
    nodes = _field(doc, "Nodes")
    names = _field(doc, "NodeNames")
    nodes = None if nodes is _MISSING else nodes
    names = None if names is _MISSING else names
    if nodes is None and names is None:
        raise WireError("ExtenderArgs carries neither Nodes (nodeCacheCapable=false) nor NodeNames "
                        "(nodeCacheCapable=true)")
    items = None
    if nodes is not None:
        if not isinstance(nodes, dict):
            raise WireError(f"ExtenderArgs.Nodes must be a NodeList object, got {type(nodes).__name__}")
        items = nodes.get("items")
        items = [] if items is None else items
        if not isinstance(items, list):
            raise WireError("ExtenderArgs.Nodes.items must be a list")
        for i, node in enumerate(items):
            meta = node.get("metadata") if isinstance(node, dict) else None
            if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
                raise WireError(f"ExtenderArgs.Nodes.items[{i}].metadata.name is required")
    if names is not None:
        # map(type) runs in C: checking 5,000 names this way costs microseconds, a generator costs a millisecond
        if not isinstance(names, list) or (names and set(map(type, names)) != {str}):
            raise WireError("ExtenderArgs.NodeNames must be a list of strings")
    return ExtenderArgs(pod, items, names)


@dataclass
class Victims:
    """One candidate node's victims: UIDs always, full pods when nodeCacheCapable=false."""

    uids: list[str]
    pods: list[dict[str, Any]] | None
    num_pdb_violations: int


@dataclass
class PreemptionArgs:
    """ExtenderPreemptionArgs."""

    pod: dict[str, Any]
    victims: dict[str, Victims]  # node name -> victims


def _victims(node: str, value: Any, meta: bool) -> Victims:
    where = f"ExtenderPreemptionArgs.{'NodeNameToMetaVictims' if meta else 'NodeNameToVictims'}[{node}]"
    if not isinstance(value, dict):
        raise WireError(f"{where} must be an object")
    pods = _field(value, "Pods")
    pods = [] if pods is _MISSING or pods is None else pods
    if not isinstance(pods, list):
        raise WireError(f"{where}.Pods must be a list")
    pdb = _field(value, "NumPDBViolations")
    pdb = 0 if pdb is _MISSING or pdb is None else pdb
    if isinstance(pdb, bool) or not isinstance(pdb, int):
        raise WireError(f"{where}.NumPDBViolations must be an integer")
    uids = []
    for i, pod in enumerate(pods):
        if not isinstance(pod, dict):
            raise WireError(f"{where}.Pods[{i}] must be an object")
        uid = _field(pod, "UID") if meta else (pod.get("metadata") or {}).get("uid")
        if not isinstance(uid, str) or not uid:
            raise WireError(f"{where}.Pods[{i}].{'UID' if meta else 'metadata.uid'} is required")
        uids.append(uid)
    return Victims(uids, None if meta else pods, pdb)


def parse_preemption_args(body: bytes) -> PreemptionArgs:
    """Read ExtenderPreemptionArgs (full victims or MetaVictims, whichever is set)."""
    doc = decode(body, "ExtenderPreemptionArgs")
    pod = _pod(doc, "ExtenderPreemptionArgs")
    full = _field(doc, "NodeNameToVictims")
    meta = _field(doc, "NodeNameToMetaVictims")
    victims: dict[str, Victims] = {}
    for source, is_meta in ((full, False), (meta, True)):
        if source is _MISSING or source is None:
            continue
        if not isinstance(source, dict):
            kind = "NodeNameToMetaVictims" if is_meta else "NodeNameToVictims"
            raise WireError(f"ExtenderPreemptionArgs.{kind} must be an object keyed by node name")
        for node, value in source.items():
            victims[node] = _victims(node, value, is_meta)
    return PreemptionArgs(pod, victims)


def encode(doc: Any) -> bytes:
    """JSON bytes of an answer."""
    return orjson.dumps(doc)


def filter_result(args: ExtenderArgs, passed: list[str], failed: Mapping[str, str],
                  unresolvable: Mapping[str, str], knows_unresolvable: bool, error: str = "") -> bytes:
    """ExtenderFilterResult in the shape the request came in.

    With nodeCacheCapable=false kube-scheduler reads only `Nodes` (an answer with only NodeNames is
    silently read as "no node fits"), so the passing Node objects are echoed back as received.
    `FailedAndUnresolvableNodes` exists from kube-scheduler 1.20 on; older schedulers ignore it, so
    for them (`knows_unresolvable` False) those nodes are reported in `FailedNodes`.
    """
    if not knows_unresolvable and unresolvable:
        failed, unresolvable = {**failed, **unresolvable}, {}
    nodes = None
    if args.nodes is not None:
        keep = set(passed)
        nodes = {"metadata": {}, "items": [n for n in args.nodes if n["metadata"]["name"] in keep]}
    return encode({
        "Nodes": nodes,
        "NodeNames": passed if args.node_names is not None else None,
        "FailedNodes": failed,
        "FailedAndUnresolvableNodes": unresolvable,
        "Error": error,
    })


def filter_error(message: str) -> bytes:
    """A filter answer that reports an internal error (HTTP 200, as the scheduler expects)."""
    return encode({"Nodes": None, "NodeNames": None, "FailedNodes": {}, "FailedAndUnresolvableNodes": {},
                   "Error": message})


def preemption_result(kept: Mapping[str, Victims]) -> bytes:
    """ExtenderPreemptionResult: MetaVictims (pod UIDs) in both modes, as the scheduler reads them."""
    return encode({"NodeNameToMetaVictims": {
        node: {"Pods": [{"UID": uid} for uid in v.uids], "NumPDBViolations": v.num_pdb_violations}
        for node, v in kept.items()
    }})


def bad_request(reason: str) -> bytes:
    """Body of an HTTP 400 answer."""
    return encode({"Error": reason})
