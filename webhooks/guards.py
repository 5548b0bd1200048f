"""Admission guards for what RBAC cannot scope: the agent's writes and the namespace routing labels.

Served at /guard/agent (Nodes and Leases) and /guard/namespaces (Namespaces) for clusters without
ValidatingAdmissionPolicy; on 1.30+ the policies in manifests/components/admission-policies enforce
the same rules inside the API server. The decisions here are pure; the only effect, finding the
node of a pod-bound token on clusters whose tokens do not name the node, is `PodNodes`.

The agent's token is on every node. RBAC lets it patch every Node and write every Lease in its
namespace; these rules narrow that to: its own Node, only label and annotation keys under
`sandgate.io/`, never the spec or other metadata, and only its own heartbeat Lease.

Which node a request comes from is read from the token, by version (k8s.io/apiserver
pkg/authentication/serviceaccount/util.go):
* `authentication.kubernetes.io/node-name` (1.30+: ServiceAccountTokenPodNodeInfo, beta and on by
  default in 1.30, GA in 1.32; 1.29 with the alpha gate): used directly.
* `authentication.kubernetes.io/pod-name` + `pod-uid` (pod-bound projected tokens, the default for
  every pod from 1.22): the pod is looked up and its spec.nodeName used.
* Neither (legacy Secret-based tokens, usual on 1.14-1.21): the node is unknown; the key and spec
  scope still hold, but not "only its own Node" (docs/install.md says so). From 1.22 on every pod's
  token is bound to its pod, so an agent token naming neither was made by hand: it is refused.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any, Callable, Mapping

from sandgate.core import keys
from sandgate.core.jsonshape import as_object
from sandgate.core.policy import Policy
from webhooks.review import AdmissionRequest, UserInfo, Verdict

log = logging.getLogger(__name__)

# From this version on, every pod's service-account token is bound to its pod (BoundServiceAccountTokenVolume GA).
POD_BOUND_TOKENS_SINCE = (1, 22)
# Metadata the agent must never change on a Node (labels and annotations are checked key by key).
_FIXED_NODE_METADATA = ("ownerReferences", "finalizers", "deletionTimestamp")


def agent_username(policy: Policy) -> str:
    """The username the API server gives the agent's service-account token."""
    return f"system:serviceaccount:{policy.agent.namespace}:{keys.AGENT_SERVICE_ACCOUNT}"


def is_agent(user: UserInfo, policy: Policy) -> bool:
    """True when the request was sent with the agent's service-account token."""
    return user.username == agent_username(policy)


def token_node(user: UserInfo) -> str | None:
    """The node named in the token itself (1.30+), if any."""
    return user.extra_value(keys.EXTRA_NODE_NAME)


def token_pod(user: UserInfo) -> tuple[str, str] | None:
    """(pod name, pod uid) of a pod-bound token, if the token carries them."""
    name, uid = user.extra_value(keys.EXTRA_POD_NAME), user.extra_value(keys.EXTRA_POD_UID)
    return (name, uid) if name and uid else None


def _allow(reason: str, *warnings: str) -> Verdict:
    return Verdict(allowed=True, reason=reason, warnings=list(warnings))


def _deny(reason: str, message: str, code: int = 403) -> Verdict:
    return Verdict(allowed=False, reason=reason, message=message, code=code)


def _metadata(obj: Any) -> Mapping[str, Any]:
    return as_object(as_object(obj).get("metadata"))


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Keys added, removed or given another value, sorted."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def agent_node_change(old: Any, new: Any, node: str | None, name: str) -> str | None:
    """Why the agent on `node` may not make this Node change, or None when it may (pure)."""
    if node is not None and name != node:
        return f'the sandgate agent on node "{node}" may change only its own Node, not "{name}"'
    if not isinstance(old, dict) or not isinstance(new, dict):
        return "request.object and request.oldObject: both are needed to check an agent's Node change"
    if new.get("spec") != old.get("spec"):
        return "spec: the sandgate agent may not change a Node's spec (taints, unschedulable, podCIDR, ...)"
    old_meta, new_meta = _metadata(old), _metadata(new)
    for field in ("labels", "annotations"):
        outside = [k for k in changed_keys(as_object(old_meta.get(field)), as_object(new_meta.get(field)))
                   if not k.startswith(keys.AGENT_KEY_PREFIX)]
        if outside:
            return (f"metadata.{field}[{outside[0]}]: the sandgate agent may change only keys under "
                    f"{keys.AGENT_KEY_PREFIX}" + (f" (also: {', '.join(outside[1:])})" if outside[1:] else ""))
    for field in _FIXED_NODE_METADATA:
        if old_meta.get(field) != new_meta.get(field):
            return f"metadata.{field}: the sandgate agent may not change it"
    return None


def agent_lease_change(req: AdmissionRequest, policy: Policy, node: str | None) -> str | None:
    """Why the agent on `node` may not write this Lease, or None when it may (pure)."""
    where = f'{req.namespace}/{req.name or _metadata(req.object).get("name") or "<unnamed>"}'
    if req.namespace != policy.agent.namespace:
        return f"Lease {where}: the sandgate agent may write Leases only in {policy.agent.namespace}"
    if req.operation not in ("CREATE", "UPDATE"):
        return f"Lease {where}: the sandgate agent may only create and renew its heartbeat, not {req.operation}"
    name = _metadata(req.object).get("name") or req.name or ""
    if node is None:
        if not name.startswith(keys.AGENT_LEASE_PREFIX):
            return f'Lease {where}: the sandgate agent may write only heartbeat Leases ("{keys.AGENT_LEASE_PREFIX}<node>")'
        return None
    own = keys.agent_lease_name(node)
    if name != own:
        return f'Lease {where}: the sandgate agent on node "{node}" may write only its own heartbeat Lease "{own}"'
    spec = req.object.get("spec") if isinstance(req.object, dict) else None
    holder = spec.get("holderIdentity") if isinstance(spec, dict) else None
    if holder != node:
        return f'spec.holderIdentity: must be "{node}", the node the sandgate agent runs on, got {holder!r}'
    return None


def guard_agent(req: AdmissionRequest, policy: Policy, node: str | None, tokens_are_pod_bound: bool = False) -> Verdict:
    """Decide a Node or Lease write. `node` is where the agent's token comes from (None: unknown).

    Requests by anyone but the agent are allowed: the guard narrows the agent, nobody else. With
    `tokens_are_pod_bound` (1.22+) an agent token that names no node and no pod is refused.
    """
    if not is_agent(req.user, policy):
        return _allow("not-agent")
    if node is None and tokens_are_pod_bound:
        return _deny("agent-token-unbound", "the sandgate agent's token names neither its node nor its pod; on "
                                            "Kubernetes 1.22+ every pod's token does, so this one was made by hand")
    if req.kind == "Node" and req.group == "":
        if req.sub_resource or req.operation != "UPDATE":
            return _deny("agent-node-operation", f"the sandgate agent may only patch its Node's metadata, "
                                                 f"not {req.operation} {req.sub_resource or ''}".rstrip())
        problem = agent_node_change(req.old_object, req.object, node, req.name or _metadata(req.object).get("name", ""))
        reason = "agent-node"
    elif req.kind == "Lease" and req.group == "coordination.k8s.io":
        problem = agent_lease_change(req, policy, node)
        reason = "agent-lease"
    else:
        return _deny("agent-kind", f"the sandgate agent may not write {req.group or 'core'}/{req.kind}")
    if problem:
        return _deny(reason, problem)
    if node is None:
        return _allow(f"{reason}-node-unknown",
                      "sandgate: the agent's token names no node (a legacy token): only the key scope was checked")
    return _allow(reason)


def guard_namespace(req: AdmissionRequest, policy: Policy) -> Verdict:
    """Only `policy.namespace_admin_groups` may add, change or remove the routing labels of a namespace.

    The isolation label (policy namespaceLabel) and `sandgate.io/ignore` decide whether a
    namespace's pods are sandboxed; whoever may edit namespaces otherwise (a tenant's self-service
    portal, Capsule, HNC) must not be able to switch sandboxing off or on by a label.
    """
    if req.kind != "Namespace" or req.group != "" or req.operation not in ("CREATE", "UPDATE"):
        return _allow("not-applicable")
    old = as_object(_metadata(req.old_object).get("labels")) if req.operation == "UPDATE" else {}
    new = as_object(_metadata(req.object).get("labels"))
    guarded = (policy.namespace_label, keys.IGNORE_NAMESPACE_LABEL)
    touched = [k for k in changed_keys(old, new) if k in guarded]
    if not touched:
        return _allow("labels-unchanged")
    if set(req.user.groups) & set(policy.namespace_admin_groups):
        return _allow("namespace-admin")
    key = touched[0]
    action = "add" if key not in old else "remove" if key not in new else "change"
    return _deny("namespace-label-guarded",
                 f"metadata.labels[{key}]: only members of {', '.join(policy.namespace_admin_groups)} may {action} "
                 f"this label (it decides whether the namespace's pods are sandboxed); user "
                 f'"{req.user.username}" is not')


class PodNodeUnknown(RuntimeError):
    """The pod of a pod-bound token could not be looked up; the request is denied (503), never guessed."""


class PodNodes:
    """spec.nodeName of the agent pods that send requests, for tokens that do not name the node.

    A pod's UID is never reused and its nodeName never changes once set, so an answer is cached by
    UID for as long as the cache has room; only the first request of each agent pod costs a GET.
    """

    def __init__(self, get_pod: Callable[[str, str], Mapping[str, Any] | None], size: int = 4096):
        self._get_pod = get_pod
        self._size = size
        self._nodes: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def node_of(self, namespace: str, pod_name: str, pod_uid: str) -> str:
        """The node the pod runs on; PodNodeUnknown when it cannot be told."""
        with self._lock:
            if pod_uid in self._nodes:
                self._nodes.move_to_end(pod_uid)
                return self._nodes[pod_uid]
        try:
            pod = self._get_pod(namespace, pod_name)
        except Exception as exc:  # any failure of the lookup means "unknown", which denies
            raise PodNodeUnknown(f"cannot read pod {namespace}/{pod_name}: {type(exc).__name__}: {exc}") from exc
        meta = _metadata(pod)
        spec = pod.get("spec") if isinstance(pod, dict) else None
        node = spec.get("nodeName") if isinstance(spec, dict) else None
        if meta.get("uid") != pod_uid or not isinstance(node, str) or not node:
            raise PodNodeUnknown(f"pod {namespace}/{pod_name} with uid {pod_uid} is not a scheduled pod")
        if spec.get("serviceAccountName") != keys.AGENT_SERVICE_ACCOUNT:
            raise PodNodeUnknown(f"pod {namespace}/{pod_name} does not run as the agent's service account")
        with self._lock:
            self._nodes[pod_uid] = node
            while len(self._nodes) > self._size:
                self._nodes.popitem(last=False)
        return node


def agent_node(user: UserInfo, policy: Policy, pods: PodNodes | None) -> str | None:
    """The agent's node from its token, else from its pod; None when the token names neither.

    Raises PodNodeUnknown when the token names a pod that cannot be resolved.
    """
    node = token_node(user)
    if node is not None:
        return node
    pod = token_pod(user)
    if pod is None:
        return None
    if pods is None:
        raise PodNodeUnknown("the token names a pod, but the webhook has no API access to look it up")
    return pods.node_of(policy.agent.namespace, *pod)
