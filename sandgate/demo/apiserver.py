"""The API server's side of a pod CREATE, emulated: defaulting, the admission chain, persistence.

The chain is kube-apiserver's, in its order:
  1. defaulting and the built-in mutating plugins (ServiceAccount, DefaultTolerationSeconds,
     RuntimeClass from 1.16);
  2. the mutating webhooks whose namespaceSelector matches the pod's namespace, called over HTTPS
     with an AdmissionReview (v1 from 1.16, v1beta1 before); the returned JSON Patch is applied;
  3. if a webhook changed the pod, the built-in plugins run again (this is how RuntimeClass
     admission adds scheduling and overhead after the webhook set runtimeClassName);
  4. validation: the RuntimeClass plugin's overhead check, then the validating webhooks.
A denial at any step stops the chain, with the text the API server would return to kubectl.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
import random
import string
import uuid
from dataclasses import dataclass, field
from typing import Any, Mapping

import jsonpatch

from sandgate.core.clusterversion import ClusterVersion
from sandgate.demo import changes
from sandgate.demo.runtimeclass import Forbidden, RuntimeClassAdmission
from sandgate.demo.webhookconfig import WebhookEntry, entries_for_namespace
from sandgate.demo.httpclient import JsonClient, RequestFailed

V1 = "admission.k8s.io/v1"
V1BETA1 = "admission.k8s.io/v1beta1"
USER = {"username": "alice@example.com", "groups": ["developers", "system:authenticated"]}


@dataclass
class Step:
    """One admission step and what it changed in the pod."""

    actor: str  # e.g. 'webhook runv.mutate.sandgate.io' or 'RuntimeClass admission'
    changes: list[str]
    reinvoked: bool = False  # a webhook's second call (reinvocationPolicy IfNeeded)


@dataclass
class AdmissionResult:
    """How the API server answered the CREATE."""

    allowed: bool
    pod: dict[str, Any] | None  # the stored pod when allowed
    mutating: list[WebhookEntry] = field(default_factory=list)  # entries called
    validating: list[WebhookEntry] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    denied_by: str = ""  # which step refused the pod
    message: str = ""  # what kubectl would print
    warnings: list[str] = field(default_factory=list)
    audit: dict[str, str] = field(default_factory=dict)
    component_error: str = ""  # a webhook call failed or its answer was unusable (not a policy decision)


class Denied(Exception):
    """The chain stopped: `actor` refused the pod with `message` (`broken`: the webhook failed, not decided)."""

    def __init__(self, actor: str, message: str, broken: bool = False):
        super().__init__(message)
        self.actor = actor
        self.message = message
        self.broken = broken


def _suffix(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(5))


def default_pod(manifest: Mapping[str, Any], version: ClusterVersion, rng: random.Random) -> dict[str, Any]:
    """The pod after defaulting, ServiceAccount and DefaultTolerationSeconds admission (what webhooks see)."""
    pod = copy.deepcopy(dict(manifest))
    meta = pod.setdefault("metadata", {})
    meta["creationTimestamp"] = None
    spec = pod.setdefault("spec", {})
    if (version.major, version.minor) >= (1, 21):
        volume = {"name": f"kube-api-access-{_suffix(rng)}", "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {
                "apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}}]}}
    else:
        name = f"default-token-{_suffix(rng)}"
        volume = {"name": name, "secret": {"secretName": name, "defaultMode": 420}}
    spec.setdefault("volumes", []).append(volume)
    for container in spec.get("containers") or []:
        image = container.get("image", "")
        latest = ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")
        container.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        container.setdefault("volumeMounts", []).append({
            "name": volume["name"], "readOnly": True, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"})
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("serviceAccountName", "default")
    spec.setdefault("serviceAccount", "default")
    spec.setdefault("securityContext", {})
    spec.setdefault("schedulerName", "default-scheduler")
    tolerations = spec.setdefault("tolerations", [])
    for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"):
        if not any(t.get("key") == key and t.get("effect") in ("NoExecute", None, "") for t in tolerations):
            tolerations.append({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300})
    spec.setdefault("priority", 0)
    spec.setdefault("enableServiceLinks", True)
    if (version.major, version.minor) >= (1, 15):
        spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
    pod["status"] = {}
    return pod


def admission_review(pod: Mapping[str, Any], api_version: str, request_uid: str) -> dict[str, Any]:
    """An AdmissionReview CREATE request in the shape kube-apiserver sends."""
    meta = pod.get("metadata") or {}
    gvk = {"group": "", "version": "v1", "kind": "Pod"}
    gvr = {"group": "", "version": "v1", "resource": "pods"}
    request: dict[str, Any] = {"uid": request_uid, "kind": gvk, "resource": gvr, "requestKind": gvk,
                               "requestResource": gvr}
    if meta.get("name"):
        request["name"] = meta["name"]
    request.update({
        "namespace": meta.get("namespace"),
        "operation": "CREATE",
        "userInfo": USER,
        "object": pod,
        "oldObject": None,
        "dryRun": False,
        "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1", "fieldManager": "kubectl-create"},
    })
    return {"kind": "AdmissionReview", "apiVersion": api_version, "request": request}


def _qos_class(spec: Mapping[str, Any]) -> str:
    containers = (spec.get("containers") or []) + (spec.get("initContainers") or [])
    reqs = [(c.get("resources") or {}).get("requests") or {} for c in containers]
    lims = [(c.get("resources") or {}).get("limits") or {} for c in containers]
    if not any(reqs) and not any(lims):
        return "BestEffort"
    guaranteed = all(l.get("cpu") and l.get("memory") and r.get("cpu", l["cpu"]) == l["cpu"]
                     and r.get("memory", l["memory"]) == l["memory"] for r, l in zip(reqs, lims))
    return "Guaranteed" if guaranteed else "Burstable"


def persist(pod: dict[str, Any], now: dt.datetime) -> dict[str, Any]:
    """What storage adds on create: uid, resourceVersion, creationTimestamp, Pending status."""
    meta = pod["metadata"]
    meta["uid"] = str(uuid.uuid4())
    meta["resourceVersion"] = "1"
    meta["creationTimestamp"] = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    pod["status"] = {"phase": "Pending", "qosClass": _qos_class(pod.get("spec") or {})}
    return pod


class ApiServer:
    """The admission chain of one emulated kube-apiserver."""

    def __init__(self, version: ClusterVersion, webhook: JsonClient, mutating: list[WebhookEntry],
                 validating: list[WebhookEntry], runtimeclass: RuntimeClassAdmission,
                 namespaces: Mapping[str, Mapping[str, str]], seed: int = 1):
        self.version = version
        self.webhook = webhook
        self.mutating = mutating
        self.validating = validating
        self.runtimeclass = runtimeclass
        self.namespaces = namespaces
        self.review_version = self.review_version_for(version)
        self._rng = random.Random(seed)

    @staticmethod
    def review_version_for(version: ClusterVersion) -> str:
        """The AdmissionReview version an API server of `version` sends (v1 from 1.16, v1beta1 before)."""
        return V1 if version.admission_v1 else V1BETA1

    def _call(self, entry: WebhookEntry, pod: Mapping[str, Any], result: AdmissionResult) -> dict[str, Any]:
        """Call one webhook; return its response, or raise Denied as the API server would."""
        uid = str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
        review = admission_review(pod, self.review_version, uid)
        try:
            answer = self.webhook.post(f"{entry.path}?timeout={entry.timeout_seconds}s", review)
        except RequestFailed as exc:
            if entry.failure_policy == "Ignore":
                result.component_error = f'failed calling webhook "{entry.name}": {exc}'
                result.warnings.append(f"{result.component_error} (failurePolicy Ignore: admitted without it)")
                return {"allowed": True}
            raise Denied(f"webhook {entry.name}", f'Internal error occurred: failed calling webhook '
                                                 f'"{entry.name}": {exc}', broken=True) from None
        response = answer.get("response") if isinstance(answer, dict) else None
        if not isinstance(response, dict) or response.get("uid") != uid:
            raise Denied(f"webhook {entry.name}", f'Internal error occurred: failed calling webhook "{entry.name}": '
                                                 f'expected response.uid="{uid}", got {answer!r:.200}', broken=True)
        # kubectl prints each distinct warning once, however many webhook calls returned it.
        result.warnings += [w for w in response.get("warnings") or [] if w not in result.warnings]
        # The first call's annotations say why the pod was routed; a reinvocation only confirms it.
        for key, value in (response.get("auditAnnotations") or {}).items():
            result.audit.setdefault(f"{entry.name}/{key}", value)
        if not response.get("allowed"):
            status = response.get("status") or {}
            raise Denied(f"webhook {entry.name}", f'admission webhook "{entry.name}" denied the request: '
                                                 f'{status.get("message", "")}')
        return response

    def _mutate(self, entry: WebhookEntry, pod: dict[str, Any], result: AdmissionResult) -> dict[str, Any]:
        response = self._call(entry, pod, result)
        if not response.get("patch"):
            return pod
        if response.get("patchType") != "JSONPatch":
            raise Denied(f"webhook {entry.name}", f'Internal error occurred: webhook "{entry.name}" returned '
                                                 f'patchType {response.get("patchType")!r}, not "JSONPatch"',
                         broken=True)
        try:
            patch = jsonpatch.JsonPatch(json.loads(base64.b64decode(response["patch"])))
            return patch.apply(pod)
        except (ValueError, jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as exc:
            raise Denied(f"webhook {entry.name}", f'Internal error occurred: JSONPatch from webhook '
                                                 f'"{entry.name}" cannot be applied: {exc}', broken=True) from None

    def _builtin(self, pod: dict[str, Any], result: AdmissionResult) -> dict[str, Any]:
        try:
            after = self.runtimeclass.admit(pod)
        except Forbidden as exc:
            raise Denied("RuntimeClass admission", str(exc)) from None
        if after != pod:
            result.steps.append(Step("RuntimeClass admission", changes.describe(pod, after)))
        return after

    def _webhooks(self, entries: list[WebhookEntry], pod: dict[str, Any], result: AdmissionResult,
                  reinvoked: bool = False) -> tuple[dict[str, Any], bool]:
        """Call mutating webhooks in order; returns the pod and whether any of them changed it."""
        changed = False
        for entry in entries:
            before = pod
            pod = self._mutate(entry, pod, result)
            if pod != before:
                changed = True
                result.steps.append(Step(f"webhook {entry.name}", changes.describe(before, pod), reinvoked))
            elif reinvoked:
                result.steps.append(Step(f"webhook {entry.name}", [], reinvoked))
        return pod, changed

    def _mutating_phase(self, pod: dict[str, Any], result: AdmissionResult) -> dict[str, Any]:
        """Built-in plugins, then webhooks; a second pass when a webhook changed the pod.

        As kube-apiserver's reinvoker does: if a webhook changed the object, the built-in plugins
        run again (RuntimeClass admission then merges scheduling and overhead into the webhook's
        output), and a webhook with reinvocationPolicy IfNeeded is called once more when the
        object changed after its last call. A correct webhook answers that call with no patch.
        """
        pod = self._builtin(pod, result)
        pod, changed = self._webhooks(result.mutating, pod, result)
        if not changed:
            return pod
        after_webhooks = pod
        pod = self._builtin(pod, result)
        if pod != after_webhooks:
            again = [e for e in result.mutating if e.reinvocation_policy == "IfNeeded"]
            pod, _ = self._webhooks(again, pod, result, reinvoked=True)
        return pod

    def create(self, manifest: Mapping[str, Any], now: dt.datetime) -> AdmissionResult:
        """Run a pod CREATE through the whole chain."""
        namespace = (manifest.get("metadata") or {}).get("namespace", "default")
        labels = self.namespaces.get(namespace, {})
        result = AdmissionResult(allowed=False, pod=None,
                                 mutating=entries_for_namespace(self.mutating, labels),
                                 validating=entries_for_namespace(self.validating, labels))
        try:
            pod = self._mutating_phase(default_pod(manifest, self.version, self._rng), result)
            try:
                self.runtimeclass.validate(pod)
            except Forbidden as exc:
                raise Denied("RuntimeClass admission", str(exc)) from None
            for entry in result.validating:
                self._call(entry, pod, result)
        except Denied as exc:
            result.denied_by = exc.actor
            result.message = exc.message
            if exc.broken:
                result.component_error = exc.message
            return result
        result.allowed = True
        result.pod = persist(pod, now)
        return result
