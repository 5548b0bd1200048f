"""The webhook configurations the install ships, and the API server's namespaceSelector matching.

The shipped Mutating/ValidatingWebhookConfigurations (manifests/overlays/*/) hold one entry per
profile, each selecting namespaces whose isolation label names that profile (the default profile
also takes the value "sandboxed") and calling `/<phase>/<profile>` with failurePolicy Fail; one
opt-in entry for namespaces without the label (`/<phase>/opt-in`, failurePolicy Ignore, skipping
namespaces labelled `keys.IGNORE_NAMESPACE_LABEL`); and, for validation, one entry for a label
that names no profile (`/validate`). From 1.21 the API server labels every namespace with its
name, and the entries also exclude the exempt namespaces by that label. The API server calls
each entry whose namespaceSelector matches the pod's namespace; this module reproduces that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from sandgate.core import keys
from sandgate.core.clusterversion import ClusterVersion
from sandgate.core.policy import Policy

MUTATE = "mutate"
VALIDATE = "validate"
# Set by the API server on every namespace from 1.21 (NamespaceDefaultLabelName).
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
NAMESPACE_NAME_LABEL_SINCE = ClusterVersion(1, 21)
# timeoutSeconds of every shipped entry (docs/webhook-serving.md): above the server's own handshake (3 s)
# and request-read (5 s) deadlines, far above its answer time under 1,000 hostile connections.
TIMEOUT_SECONDS = 10


class SelectorError(ValueError):
    """A label selector this emulation cannot evaluate (unknown operator)."""


@dataclass(frozen=True)
class WebhookEntry:
    """One webhook of a Mutating/ValidatingWebhookConfiguration."""

    name: str  # e.g. runv.mutate.sandgate.io
    path: str  # e.g. /mutate/runv
    namespace_selector: Mapping[str, Any]  # metav1.LabelSelector, wire form
    profile: str | None  # None for the opt-in and unknown-profile entries
    failure_policy: str = "Fail"  # what the API server does when the webhook cannot be reached
    reinvocation_policy: str | None = None  # mutating entries: "IfNeeded" = called again after later changes
    timeout_seconds: int = TIMEOUT_SECONDS  # the API server gives up (and applies failure_policy) after this


def selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """Whether a metav1.LabelSelector selects an object with `labels` (an empty selector selects all)."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, operator, values = expr["key"], expr["operator"], expr.get("values") or []
        present = key in labels
        if operator == "In":
            ok = present and labels[key] in values
        elif operator == "NotIn":
            ok = not present or labels[key] not in values
        elif operator == "Exists":
            ok = present
        elif operator == "DoesNotExist":
            ok = not present
        else:
            raise SelectorError(f'label selector operator "{operator}" is not one of In, NotIn, Exists, DoesNotExist')
        if not ok:
            return False
    return True


def webhook_entries(policy: Policy, phase: str, version: ClusterVersion) -> list[WebhookEntry]:
    """The entries of the shipped configuration for `phase` (MUTATE or VALIDATE), in order."""
    label = policy.namespace_label
    # reinvocationPolicy exists from 1.15, but the legacy install (for 1.14 too) leaves it out.
    reinvocation = "IfNeeded" if phase == MUTATE and version.admission_v1 else None
    not_exempt = []
    if version >= NAMESPACE_NAME_LABEL_SINCE:
        not_exempt = [{"key": NAMESPACE_NAME_LABEL, "operator": "NotIn", "values": sorted(policy.exempt_namespaces)}]
    entries = []
    for name in policy.profiles:
        values = [name] + ([keys.SANDBOXED_VALUE] if name == policy.default_profile else [])
        selector = {"matchExpressions": [{"key": label, "operator": "In", "values": values}, *not_exempt]}
        entries.append(WebhookEntry(f"{name}.{phase}.{keys.DOMAIN}", f"/{phase}/{name}", selector, name,
                                    reinvocation_policy=reinvocation))
    if policy.allow_pod_opt_in:
        selector = {"matchExpressions": [{"key": label, "operator": "DoesNotExist"},
                                         {"key": keys.IGNORE_NAMESPACE_LABEL, "operator": "DoesNotExist"},
                                         *not_exempt]}
        entries.append(WebhookEntry(f"optin.{phase}.{keys.DOMAIN}", f"/{phase}/{keys.OPT_IN_PATH_SEGMENT}",
                                    selector, None, failure_policy="Ignore", reinvocation_policy=reinvocation))
    if phase == VALIDATE:
        known = [*policy.profiles, keys.SANDBOXED_VALUE]
        selector = {"matchExpressions": [{"key": label, "operator": "Exists"},
                                         {"key": label, "operator": "NotIn", "values": known}, *not_exempt]}
        entries.append(WebhookEntry(f"unknown-profile.{phase}.{keys.DOMAIN}", f"/{phase}", selector, None))
    return entries


def entries_for_namespace(entries: list[WebhookEntry], labels: Mapping[str, str]) -> list[WebhookEntry]:
    """The entries the API server calls for a pod in a namespace with `labels`."""
    return [e for e in entries if selector_matches(e.namespace_selector, labels)]


def namespace_labels(name: str, labels: Mapping[str, str], version: ClusterVersion) -> dict[str, str]:
    """The namespace's labels as the API server has them: from 1.21 it adds kubernetes.io/metadata.name."""
    out = dict(labels)
    if version >= NAMESPACE_NAME_LABEL_SINCE:
        out[NAMESPACE_NAME_LABEL] = name
    return out
