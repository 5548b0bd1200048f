"""The API server's built-in RuntimeClass admission plugin (plugin/pkg/admission/runtimeclass), emulated.

From 1.16 the plugin merges a RuntimeClass's `scheduling` (nodeSelector, tolerations) into a pod
that names it; when PodOverhead is on (default from 1.18) it also sets `spec.overhead` from the
RuntimeClass and, in the validation phase, rejects a pod whose overhead differs. Before 1.16 there
is no such plugin and RuntimeClasses carry only a handler. The merges themselves are the webhook's
own copies of the plugin's code (`webhooks.scheduling`), so both sides agree by construction.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Mapping

from sandgate.core.clusterversion import ClusterVersion
from sandgate.core.policy import Policy
from sandgate.core.quantity import parse_field
from webhooks.scheduling import NodeSelectorConflict, merge_node_selector, merge_tolerations


class Forbidden(Exception):
    """The plugin refused the pod; the message is the API server's text."""


@dataclass(frozen=True)
class RuntimeClass:
    """A node.k8s.io RuntimeClass, as the install ships it for the cluster's version."""

    name: str
    handler: str
    overhead: Mapping[str, str] | None = None  # overhead.podFixed
    node_selector: Mapping[str, str] = field(default_factory=dict)  # scheduling.nodeSelector
    tolerations: tuple[Mapping[str, Any], ...] = ()  # scheduling.tolerations

    @property
    def has_scheduling(self) -> bool:
        """The RuntimeClass has a `scheduling` section."""
        return bool(self.node_selector or self.tolerations)


def runtime_classes(policy: Policy, version: ClusterVersion) -> dict[str, RuntimeClass]:
    """The RuntimeClasses for each profile: handler only before 1.16, overhead only with PodOverhead."""
    out = {}
    for profile in policy.profiles.values():
        overhead = None
        if version.pod_overhead_default and profile.overhead is not None and profile.overhead.pod_fixed:
            overhead = dict(profile.overhead.pod_fixed)
        scheduling = version.runtimeclass_scheduling
        out[profile.runtime_class_name] = RuntimeClass(
            name=profile.runtime_class_name,
            handler=profile.handler,
            overhead=overhead,
            node_selector=dict(profile.node_selector) if scheduling else {},
            tolerations=tuple(t.to_k8s() for t in profile.tolerations) if scheduling else (),
        )
    return out


def _forbidden(pod: Mapping[str, Any], reason: str) -> Forbidden:
    name = (pod.get("metadata") or {}).get("name", "")
    return Forbidden(f'pods "{name}" is forbidden: {reason}')


def _same_resources(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> bool:
    """apiequality.Semantic.DeepEqual on two ResourceLists: same names, quantities equal by value."""
    a, b = a or {}, b or {}
    return a.keys() == b.keys() and all(parse_field(a[k], k) == parse_field(b[k], k) for k in a)


@dataclass(frozen=True)
class RuntimeClassAdmission:
    """The plugin as it is configured on an API server of `version`."""

    classes: Mapping[str, RuntimeClass]
    version: ClusterVersion

    @property
    def enabled(self) -> bool:
        """The API server has the plugin (1.16+)."""
        return self.version.runtimeclass_scheduling

    @property
    def overhead_enabled(self) -> bool:
        """The PodOverhead feature gate is on (default from 1.18)."""
        return self.version.pod_overhead_default

    def _runtime_class(self, pod: Mapping[str, Any]) -> RuntimeClass | None:
        name = (pod.get("spec") or {}).get("runtimeClassName")
        if name is None:
            return None
        if name not in self.classes:
            raise _forbidden(pod, f'pod rejected: RuntimeClass "{name}" not found')
        return self.classes[name]

    def admit(self, pod: Mapping[str, Any]) -> dict[str, Any]:
        """The mutating half: a new pod with overhead and scheduling merged; raises Forbidden."""
        out = copy.deepcopy(dict(pod))
        if not self.enabled:
            return out
        rc = self._runtime_class(out)
        if rc is None:
            return out
        spec = out.setdefault("spec", {})
        if self.overhead_enabled and rc.overhead is not None:
            if spec.get("overhead") is not None and not _same_resources(rc.overhead, spec["overhead"]):
                raise _forbidden(out, "pod rejected: Pod's Overhead doesn't match RuntimeClass's defined Overhead")
            spec["overhead"] = dict(rc.overhead)
        if rc.has_scheduling:
            try:
                selector = merge_node_selector(spec.get("nodeSelector"), rc.node_selector)
            except NodeSelectorConflict as exc:
                raise _forbidden(out, str(exc)) from None
            if selector:
                spec["nodeSelector"] = selector
            tolerations = merge_tolerations(spec.get("tolerations") or [], list(rc.tolerations))
            if tolerations:
                spec["tolerations"] = tolerations
        return out

    def validate(self, pod: Mapping[str, Any]) -> None:
        """The validating half: the pod's overhead must be exactly its RuntimeClass's; raises Forbidden."""
        if not (self.enabled and self.overhead_enabled):
            return
        rc = self._runtime_class(pod)
        overhead = (pod.get("spec") or {}).get("overhead")
        if rc is not None and rc.overhead is not None:
            if not _same_resources(rc.overhead, overhead):
                raise _forbidden(pod, "pod rejected: Pod's Overhead doesn't match RuntimeClass's defined Overhead")
        elif overhead is not None:
            raise _forbidden(pod, "pod rejected: Pod Overhead set without corresponding RuntimeClass defined Overhead")
