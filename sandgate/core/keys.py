"""Every label, annotation and object-name contract shared by the webhook, extender and agent.

This module is the only place these strings are written. Code, tests and manifest checks import
them from here; docs/contracts.md documents them for operators.
"""

DOMAIN = "sandgate.io"

# Policy defaults (the policy file may rename the namespace label and the pod annotation).
DEFAULT_NAMESPACE_LABEL = f"{DOMAIN}/isolation"
DEFAULT_POD_ANNOTATION = f"{DOMAIN}/runtime"
# Namespace-label value that selects the policy's defaultProfile.
SANDBOXED_VALUE = "sandboxed"
# Pod-annotation value that asks to stay unsandboxed (refused in a routed namespace).
OPT_OUT_VALUE = "none"

# Namespace label (any value) that keeps the API server from calling the pod opt-in webhook entry
# for the namespace at all. Needed on 1.14-1.20, which lack the kubernetes.io/metadata.name label,
# to keep kube-system and sandgate-system out of the webhook's path.
IGNORE_NAMESPACE_LABEL = f"{DOMAIN}/ignore"

# Node label published by the agent: the runtime handler works on this node.
RUNTIME_LABEL_PREFIX = f"{DOMAIN}/runtime."
RUNTIME_LABEL_VALUE = "true"
# Node annotation published by the agent: how many sandboxes of this handler the node can hold.
CAPACITY_ANNOTATION_PREFIX = f"{DOMAIN}/sandbox-capacity."

# Extended resource of one sandbox slot of a runtime handler: sandgate.io/sandbox-<handler>. The
# agent advertises the slots through the device plugin API, the webhook requests one in the first
# app container of every routed pod, and the scheduler counts them.
SANDBOX_RESOURCE_PREFIX = f"{DOMAIN}/sandbox-"

# Pod annotation written by the webhook when it pads container resources to emulate pod overhead.
PADDING_ANNOTATION = f"{DOMAIN}/overhead-padding"

# Namespace and ServiceAccount of the node agent; its heartbeat Leases live in that namespace.
DEFAULT_AGENT_NAMESPACE = "sandgate-agent"
AGENT_SERVICE_ACCOUNT = "sandgate-agent"
# Groups that may set, change or remove the isolation and ignore labels of a namespace by default
# (policy namespaceAdminGroups; the shipped ValidatingAdmissionPolicy names the same groups).
DEFAULT_NAMESPACE_ADMIN_GROUPS = ("system:masters", f"{DOMAIN}:namespace-admins")
# userInfo.extra keys the API server sets from a service-account token (k8s.io/apiserver
# pkg/authentication/serviceaccount/util.go): pod-name/pod-uid for pod-bound tokens, node-name
# from 1.30 on (ServiceAccountTokenPodNodeInfo, beta and on by default in 1.30, GA in 1.32).
EXTRA_NODE_NAME = "authentication.kubernetes.io/node-name"
EXTRA_POD_NAME = "authentication.kubernetes.io/pod-name"
EXTRA_POD_UID = "authentication.kubernetes.io/pod-uid"
# Namespace label (any value) that sends Lease writes in the namespace to the webhook's heartbeat guard.
AGENT_NAMESPACE_LABEL = f"{DOMAIN}/agent-namespace"
# Prefix of every Node label/annotation key the agent may write.
AGENT_KEY_PREFIX = f"{DOMAIN}/"

# Heartbeat Lease (coordination.k8s.io/v1) the agent renews for its node.
AGENT_LEASE_PREFIX = "sandgate-agent-"

# Keys of AdmissionReview auditAnnotations (the API server prefixes them with the webhook name).
AUDIT_PROFILE = "profile"
AUDIT_RULE = "rule"

# Path segment of /mutate/<segment> and /validate/<segment> used by the webhook entry for
# namespaces that carry no isolation label (pod opt-in). The API server requires every segment of
# a webhook service path to be a DNS-1123 subdomain, so the segment has the shape of a profile
# name; the policy reserves it (policy.RESERVED_PROFILE_NAMES) so the two can never collide.
OPT_IN_PATH_SEGMENT = "opt-in"


def runtime_label(handler: str) -> str:
    """Node label key advertising that `handler` is installed and healthy."""
    return RUNTIME_LABEL_PREFIX + handler


def sandbox_resource(handler: str) -> str:
    """Extended resource name of one sandbox slot of `handler`, e.g. sandgate.io/sandbox-runv."""
    return SANDBOX_RESOURCE_PREFIX + handler


def capacity_annotation(handler: str) -> str:
    """Node annotation key holding the sandbox capacity of `handler` on the node."""
    return CAPACITY_ANNOTATION_PREFIX + handler


def agent_lease_name(node_name: str) -> str:
    """Name of the heartbeat Lease the agent on `node_name` renews."""
    return AGENT_LEASE_PREFIX + node_name
