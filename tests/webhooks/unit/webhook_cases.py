"""Test helpers of the webhook decision tests: captured AdmissionReviews as AdmissionRequests, policies."""

from __future__ import annotations

import copy
from dataclasses import replace
from typing import Any

import yaml

from sandgate.core.policy import parse_policy
from webhooks.review import AdmissionRequest

from support import EXAMPLE_POLICY, HANDMADE_FIXTURES, load_fixture

# Every captured admission request, both AdmissionReview versions.
CASES = ["01-create-bare-pod", "02-create-nodeselector-tolerations", "03a-create-runtimeclass-runv",
         "03b-create-runtimeclass-gvisor", "04-create-by-replicaset-controller",
         "05a-create-init-limits-special-keys", "05b-create-tilde-in-keys-rejected-by-validation",
         "06-create-hostnetwork-privileged", "07-create-dry-run-server", "08a-update-kubectl-label",
         "08b-update-kubectl-replace", "08c-update-dry-run-server"]
VERSIONS = ["v1", "v1beta1"]
FIXTURES = [f"{version}-{case}" for version in VERSIONS for case in CASES]


def request_from_review(review: dict[str, Any]) -> AdmissionRequest:
    """The AdmissionRequest of a decoded AdmissionReview (test-local; the server has its own parser)."""
    r = review["request"]
    return AdmissionRequest(
        uid=r["uid"], api_version=review["apiVersion"], kind=r["kind"]["kind"], group=r["kind"]["group"],
        operation=r["operation"], namespace=r["namespace"], name=r.get("name"), dry_run=bool(r.get("dryRun")),
        object=r.get("object"), old_object=r.get("oldObject"), sub_resource=r.get("subResource") or None)


def fixture_request(name: str) -> AdmissionRequest:
    """The request of a captured fixture, e.g. fixture_request("v1-01-create-bare-pod")."""
    return request_from_review(load_fixture(f"admission/{name}.json"))


def handmade_request(name: str) -> AdmissionRequest:
    """The request of a hand-made fixture, e.g. handmade_request("v1-09-update-ephemeralcontainers-privileged")."""
    return request_from_review(load_fixture(f"admission/{name}.json", HANDMADE_FIXTURES))


def pod_request(pod: dict, namespace: str = "payments-sandbox", operation: str = "CREATE",
                kind: str = "Pod", group: str = "", sub_resource: str | None = None) -> AdmissionRequest:
    """A request for a hand-made pod."""
    return AdmissionRequest(uid="test-uid", api_version="admission.k8s.io/v1", kind=kind, group=group,
                            operation=operation, namespace=namespace, name=pod.get("metadata", {}).get("name"),
                            dry_run=False, object=copy.deepcopy(pod), sub_resource=sub_resource)


def with_object(req: AdmissionRequest, pod: dict) -> AdmissionRequest:
    """The same request carrying another pod."""
    return replace(req, object=pod)


def example_doc() -> dict:
    return yaml.safe_load(EXAMPLE_POLICY.read_text())


def policy_from(doc: dict):
    return parse_policy(doc)
