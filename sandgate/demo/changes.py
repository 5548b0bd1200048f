"""Short, human-readable descriptions of what an admission step changed in a pod."""

from __future__ import annotations

from typing import Any, Mapping


def _toleration(t: Mapping[str, Any]) -> str:
    text = t.get("key") or "*"
    if t.get("operator") == "Exists":
        text += " (exists)"
    elif t.get("value"):
        text += f"={t['value']}"
    if t.get("effect"):
        text += f":{t['effect']}"
    if t.get("tolerationSeconds") is not None:
        text += f" for {t['tolerationSeconds']}s"
    return text


def _resources(spec: Mapping[str, Any]) -> dict[tuple[str, str, str], str]:
    """(container, requests|limits, resource) -> quantity for every container."""
    out = {}
    for group in ("initContainers", "containers"):
        for c in spec.get(group) or []:
            resources = c.get("resources") or {}
            for kind in ("requests", "limits"):
                for name, value in (resources.get(kind) or {}).items():
                    out[(c.get("name", "?"), kind, name)] = str(value)
    return out


def describe(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """What changed between two versions of a pod, one short phrase per change."""
    out: list[str] = []
    b_spec, a_spec = before.get("spec") or {}, after.get("spec") or {}
    if b_spec.get("runtimeClassName") != a_spec.get("runtimeClassName"):
        out.append(f"runtimeClassName={a_spec.get('runtimeClassName')}")
    b_sel, a_sel = b_spec.get("nodeSelector") or {}, a_spec.get("nodeSelector") or {}
    for key, value in a_sel.items():
        if b_sel.get(key) != value:
            out.append(f"nodeSelector {key}={value}")
    b_tols = b_spec.get("tolerations") or []
    a_tols = a_spec.get("tolerations") or []
    for t in a_tols:
        if t not in b_tols:
            out.append(f"toleration {_toleration(t)}")
    for t in b_tols:
        if t not in a_tols and not any(x.get("key") == t.get("key") for x in a_tols if x not in b_tols):
            out.append(f"dropped toleration {_toleration(t)}")
    if b_spec.get("overhead") != a_spec.get("overhead") and a_spec.get("overhead"):
        out.append("overhead " + " ".join(f"{k}={v}" for k, v in a_spec["overhead"].items()))
    b_res, a_res = _resources(b_spec), _resources(a_spec)
    for key, value in a_res.items():
        if b_res.get(key) != value:
            container, kind, name = key
            old = b_res.get(key, "none")
            out.append(f"{container} {kind}.{name} {old} -> {value}")
    b_ann = (before.get("metadata") or {}).get("annotations") or {}
    a_ann = (after.get("metadata") or {}).get("annotations") or {}
    for key, value in a_ann.items():
        if b_ann.get(key) != value:
            out.append(f"annotation {key}={value}")
    return out
