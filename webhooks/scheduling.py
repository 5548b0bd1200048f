"""Scheduling merges of the built-in RuntimeClass admission plugin, reproduced exactly.

On legacy clusters sandgate does what `plugin/pkg/admission/runtimeclass` does on newer ones:
merge the runtime's nodeSelector into the pod (a different value for the same key is a conflict)
and merge its tolerations with `pkg/util/tolerations.MergeTolerations`. The demo uses the same two
functions to emulate the API server, so they follow the Go code line by line, including its order
of results and its notion of one toleration being a superset of another.

Tolerations are handled in their JSON wire form (dicts with key/operator/value/effect/
tolerationSeconds); an absent field compares like Go's zero value.
"""

from __future__ import annotations

from typing import Any, Mapping

_NO_EXECUTE = "NoExecute"


class NodeSelectorConflict(ValueError):
    """The runtime's nodeSelector and the pod's nodeSelector give one key different values."""

    def __init__(self, key: str, runtime_value: str, pod_value: str):
        self.key = key
        self.runtime_value = runtime_value
        self.pod_value = pod_value
        # Same text as the built-in plugin, so users see one message whichever component merged.
        super().__init__(f"conflict: runtimeClass.scheduling.nodeSelector[{key}] = {runtime_value}; "
                         f"pod.spec.nodeSelector[{key}] = {pod_value}")


def merge_node_selector(pod_selector: Mapping[str, str] | None, runtime_selector: Mapping[str, str]) -> dict:
    """The pod's nodeSelector with the runtime's merged in, as the RuntimeClass plugin's setScheduling does.

    Returns a new dict (the inputs are not modified): the pod's entries in their order, then the
    runtime's new keys. Raises NodeSelectorConflict when a key already has another value.
    """
    if not pod_selector:
        return dict(runtime_selector)
    merged = dict(pod_selector)
    for key, runtime_value in runtime_selector.items():
        pod_value = merged.get(key)
        if pod_value is not None and pod_value != runtime_value:
            raise NodeSelectorConflict(key, runtime_value, pod_value)
        merged[key] = runtime_value
    return merged


def _fields(toleration: Mapping[str, Any]) -> tuple:
    """The five fields Go's semantic equality compares, with absent fields as Go zero values."""
    return (toleration.get("key") or "", toleration.get("operator") or "", toleration.get("value") or "",
            toleration.get("effect") or "", toleration.get("tolerationSeconds"))


def is_superset(ss: Mapping[str, Any], t: Mapping[str, Any]) -> bool:
    """Whether toleration `ss` tolerates everything `t` tolerates (Go: tolerations.isSuperset)."""
    if _fields(ss) == _fields(t):
        return True
    ss_key, ss_op, ss_value, ss_effect, ss_seconds = _fields(ss)
    t_key, t_op, t_value, t_effect, t_seconds = _fields(t)
    # An empty key with operator Exists matches every key.
    if t_key != ss_key and (ss_key != "" or ss_op != "Exists"):
        return False
    # An empty effect matches every effect.
    if t_effect != ss_effect and ss_effect != "":
        return False
    if ss_effect == _NO_EXECUTE and ss_seconds is not None:
        if t_seconds is None or t_seconds > ss_seconds:
            return False
    if ss_op in ("Equal", ""):
        return t_op == "Equal" and t_value == ss_value
    return ss_op == "Exists"


def merge_tolerations(existing: list[Mapping[str, Any]], extra: list[Mapping[str, Any]]) -> list[dict]:
    """Merge two toleration lists like Go's tolerations.MergeTolerations(existing, extra).

    Every toleration of both lists is kept, in order (existing first), unless an earlier kept one
    or a later different one is a superset of it: a toleration already covered is never added
    twice, and a narrower one is dropped in favour of a broader one. Returns new dicts.
    """
    every = list(existing) + list(extra)
    merged: list[Mapping[str, Any]] = []
    for i, t in enumerate(every):
        if any(is_superset(kept, t) for kept in merged):
            continue
        # Of two equal tolerations the first is kept, so only a later *different* superset wins.
        if any(_fields(t) != _fields(later) and is_superset(later, t) for later in every[i + 1:]):
            continue
        merged.append(t)
    return [dict(t) for t in merged]


# Taints the node lifecycle controller puts on a node that stops reporting; the DefaultTolerationSeconds
# admission plugin gives every pod a 300 s NoExecute toleration for each.
NOT_READY_TAINT = "node.kubernetes.io/not-ready"
UNREACHABLE_TAINT = "node.kubernetes.io/unreachable"


def tolerates_no_execute_taint(toleration: Mapping[str, Any], taint_key: str) -> bool:
    """Whether `toleration` tolerates the value-less NoExecute taint `taint_key` (Go: Toleration.ToleratesTaint)."""
    effect = toleration.get("effect") or ""
    if effect and effect != _NO_EXECUTE:
        return False
    key = toleration.get("key") or ""
    if key and key != taint_key:
        return False
    operator = toleration.get("operator") or "Equal"
    if operator == "Exists":
        return True
    return operator == "Equal" and not toleration.get("value")


def with_edge_toleration_seconds(tolerations: list[Mapping[str, Any]], seconds: int) -> list[dict]:
    """The tolerations with the not-ready/unreachable NoExecute taints tolerated for at least `seconds`.

    An edge node that loses its link to the control plane turns unreachable; with the default 300 s
    its sandboxed pods would be evicted although they still run fine. The taint manager evicts
    after the *minimum* tolerationSeconds of all tolerations matching the taint (those without
    tolerationSeconds tolerate forever and do not count). So every toleration matching either
    taint with a smaller tolerationSeconds, wildcards such as {operator: Exists, effect: NoExecute}
    included, is raised to `seconds` (the defaulted 300 s among them), and when none matches, one
    is added. Tolerations that already tolerate at least as long, or forever, stay as written.
    """
    result = [dict(t) for t in tolerations]
    for taint in (NOT_READY_TAINT, UNREACHABLE_TAINT):
        matching = [t for t in result if tolerates_no_execute_taint(t, taint)]
        for t in matching:
            current = t.get("tolerationSeconds")
            if isinstance(current, int) and current < seconds:
                t["tolerationSeconds"] = seconds
        if not matching:
            result.append({"key": taint, "operator": "Exists", "effect": _NO_EXECUTE, "tolerationSeconds": seconds})
    return result
