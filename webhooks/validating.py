"""Validate: the fail-closed guard that no routed pod is created outside its sandbox.

Its webhook configuration uses `failurePolicy: Fail`, and it runs after every mutating webhook,
so it catches a pod the mutating webhook never saw (skipped, bypassed, misconfigured) or that a
later mutation changed. It routes the pod by the same rules as admit and refuses it when its
`spec.runtimeClassName` is not the profile's or it uses a feature the profile forbids. It never
patches.
"""

from __future__ import annotations

from sandgate.core.clusterversion import Mode
from sandgate.core.policy import Policy
from webhooks.forbidden import forbidden_message
from webhooks.review import AdmissionRequest, NamespaceFacts, Verdict
from webhooks.mutating import audit_annotations, unrouted_verdict
from webhooks.routing import Outcome, pod_spec, resolve


def validate(req: AdmissionRequest, policy: Policy, mode: Mode, facts: NamespaceFacts) -> Verdict:
    """Allow or refuse one admission request; pure, never patches.

    `mode` is accepted for symmetry with admit: the guarantee checked (the pod runs in its
    sandbox runtime, without forbidden features) is the same on every cluster version.
    """
    decision = resolve(req, policy, facts)
    if decision.outcome is not Outcome.ROUTE:
        # Warnings were already given by the mutating webhook; repeating them adds noise.
        return unrouted_verdict(decision) if decision.outcome is Outcome.DENY else \
            Verdict(allowed=True, reason=decision.reason)
    profile = decision.profile
    audit = audit_annotations(decision)
    forbidden = forbidden_message(req.object, profile)
    if forbidden:
        return Verdict(allowed=False, message=forbidden, reason="forbidden", profile=profile.name,
                       audit_annotations=audit)
    actual = pod_spec(req.object).get("runtimeClassName")
    if actual != profile.runtime_class_name:
        shown = "it is not set" if actual is None else f'got "{actual}"'
        return Verdict(allowed=False, reason="runtime-class-mismatch", profile=profile.name, audit_annotations=audit,
                       message=f'spec.runtimeClassName: sandbox profile "{profile.name}" requires '
                               f'"{profile.runtime_class_name}", {shown} (was the sandgate mutating webhook '
                               f"skipped?)")
    return Verdict(allowed=True, reason="routed", profile=profile.name, audit_annotations=audit)
