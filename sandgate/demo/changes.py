"""Short, human-readable descriptions of what an admission step changed in a pod."""

from __future__ import annotations

from typing import Any, Mapping

from sandgate.core.quantity import parse_field

_MI = 1024 * 1024
_LONG_VALUE = 40


def quantity(value: Any) -> str:
    """A quantity as written, except plain byte counts, shown in Mi (the webhook writes exact bytes)."""
    text = str(value)
    if text.isdigit() and int(text) >= _MI:
        return f"{int(text) / _MI:.1f}Mi"
    return text


def toleration(t: Mapping[str, Any]) -> str:
    """A toleration in the compact form `key=value:Effect 86400s` (`key:Effect` for Exists)."""
    text = t.get("key") or "*"
    if t.get("operator") != "Exists" and t.get("value"):
        text += f"={t['value']}"
    if t.get("effect"):
        text += f":{t['effect']}"
    if t.get("tolerationSeconds") is not None:
        text += f" {t['tolerationSeconds']}s"
    return text


def _resources(spec: Mapping[str, Any]) -> dict[tuple[str, str], dict[str, str]]:
    """(container, requests|limits) -> {resource: quantity} for every container."""
    out: dict[tuple[str, str], dict[str, str]] = {}
    for group in ("initContainers", "containers"):
        for c in spec.get(group) or []:
            resources = c.get("resources") or {}
            for kind in ("requests", "limits"):
                out[(c.get("name", "?"), kind)] = {k: str(v) for k, v in (resources.get(kind) or {}).items()}
    return out


def _same_quantity(a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return a == b
    return parse_field(a, "quantity") == parse_field(b, "quantity")


def describe(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """What changed between two versions of a pod, one short phrase per kind of change."""
    out: list[str] = []
    b_spec, a_spec = before.get("spec") or {}, after.get("spec") or {}
    if b_spec.get("runtimeClassName") != a_spec.get("runtimeClassName"):
        out.append(f"runtimeClassName={a_spec.get('runtimeClassName')}")
    b_sel, a_sel = b_spec.get("nodeSelector") or {}, a_spec.get("nodeSelector") or {}
    added = [f"{k}={v}" for k, v in a_sel.items() if b_sel.get(k) != v]
    if added:
        out.append("nodeSelector " + ", ".join(added))
    b_tols, a_tols = b_spec.get("tolerations") or [], a_spec.get("tolerations") or []
    new = [t for t in a_tols if t not in b_tols]
    if new:
        out.append("tolerations " + ", ".join(toleration(t) for t in new))
    if b_spec.get("overhead") != a_spec.get("overhead") and a_spec.get("overhead"):
        out.append("overhead " + ", ".join(f"{k} {quantity(v)}" for k, v in a_spec["overhead"].items()))
    b_res = _resources(b_spec)
    for (container, kind), values in _resources(a_spec).items():
        old = b_res.get((container, kind), {})
        moved = [f"{name} {quantity(old.get(name, '0'))} -> {quantity(value)}"
                 for name, value in values.items() if not _same_quantity(old.get(name), value)]
        if moved:
            out.append(f"{container} {kind} " + ", ".join(moved))
    b_ann = (before.get("metadata") or {}).get("annotations") or {}
    a_ann = (after.get("metadata") or {}).get("annotations") or {}
    for key, value in a_ann.items():
        if b_ann.get(key) != value:
            out.append(f"annotation {key}" + (f"={value}" if len(str(value)) <= _LONG_VALUE else ""))
    return out
