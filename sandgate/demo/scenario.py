"""The demo's built-in world: a small edge cluster, its namespaces, and the pods a user creates.

Everything here is data (typed dataclasses) plus the two builders that produce it: `builtin()`
(the hand-written story the default run tells) and `synthetic(n)` (a larger mixed workload for
`--pods N`). Turning this data into wire objects (the snapshot, AdmissionReviews) happens elsewhere.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Mapping

from sandgate.core import keys

# Labels the operator sets (the profiles' nodeSelectors), as in examples/policy.yaml.
RUNV_NODE_LABEL = ("runtime", "runv")
GVISOR_NODE_LABEL = ("sandbox.io/gvisor", "true")
RUNV_TAINT_KEY = "sandbox.io/runtime"
EDGE_ROLE_LABEL = "node-role.kubernetes.io/edge"
ZONE_LABEL = "topology.kubernetes.io/zone"

RUNV_HANDLER = "runv"
GVISOR_HANDLER = "runsc"

STALE_HEARTBEAT_SECONDS = 15 * 60


@dataclass(frozen=True)
class Taint:
    """A node taint."""

    key: str
    value: str
    effect: str = "NoSchedule"

    def to_k8s(self) -> dict[str, str]:
        """The taint in Kubernetes wire form."""
        return {"key": self.key, "value": self.value, "effect": self.effect}


@dataclass(frozen=True)
class NodeSpec:
    """One node of the demo cluster and what its sandgate agent publishes about it."""

    name: str
    site: str  # "cloud" or "edge"
    cpu: str
    memory: str
    runtimes: Mapping[str, int] = field(default_factory=dict)  # handler -> sandbox capacity (agent)
    labels: Mapping[str, str] = field(default_factory=dict)  # set by the operator
    taints: tuple[Taint, ...] = ()
    heartbeat_age_seconds: int = 4  # age of the agent's Lease renewTime when the demo starts
    arch: str = "amd64"
    max_pods: int = 110
    note: str = ""  # what is special about the node, for the report


@dataclass(frozen=True)
class ExistingPod:
    """A pod already running in the cluster when the demo starts (part of the snapshot)."""

    name: str
    namespace: str
    node: str
    cpu: str = "200m"
    memory: str = "256Mi"
    runtime_class: str | None = None


@dataclass(frozen=True)
class Namespace:
    """A namespace and its labels (the webhook configurations select on them)."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DemoPod:
    """A pod a user creates (what `kubectl create -f` sends, before any defaulting)."""

    name: str
    namespace: str
    story: str  # one line: what this pod demonstrates
    image: str = "nginx:1.25"
    cpu: str = "100m"
    memory: str = "128Mi"
    annotations: Mapping[str, str] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    privileged: bool = False

    @property
    def ref(self) -> str:
        """namespace/name."""
        return f"{self.namespace}/{self.name}"

    def manifest(self) -> dict[str, Any]:
        """The Pod as the user wrote it."""
        container: dict[str, Any] = {
            "name": "main",
            "image": self.image,
            "resources": {"requests": {"cpu": self.cpu, "memory": self.memory}},
        }
        if self.privileged:
            container["securityContext"] = {"privileged": True}
        metadata: dict[str, Any] = {"name": self.name, "namespace": self.namespace, "labels": {"app": self.name}}
        if self.annotations:
            metadata["annotations"] = dict(self.annotations)
        spec: dict[str, Any] = {"containers": [container]}
        if self.node_selector:
            spec["nodeSelector"] = dict(self.node_selector)
        return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


@dataclass(frozen=True)
class Scenario:
    """A whole demo run's input."""

    title: str
    nodes: tuple[NodeSpec, ...]
    namespaces: tuple[Namespace, ...]
    existing: tuple[ExistingPod, ...]
    pods: tuple[DemoPod, ...]


def demo_policy_document(cluster_version: str) -> dict[str, Any]:
    """The SandboxPolicy the demo runs with (the example policy, with gVisor's real handler name)."""
    return {
        "apiVersion": "sandgate.io/v1alpha1",
        "kind": "SandboxPolicy",
        "clusterVersion": cluster_version,
        "namespaceLabel": keys.DEFAULT_NAMESPACE_LABEL,
        "podAnnotation": keys.DEFAULT_POD_ANNOTATION,
        "defaultProfile": "runv",
        "allowPodOptIn": True,
        "exemptNamespaces": ["kube-system", "sandgate-agent", "sandgate-system"],
        "profiles": {
            "runv": {
                "runtimeClassName": "runv",
                "handler": RUNV_HANDLER,
                "overhead": {
                    "podFixed": {"cpu": "100m", "memory": "50Mi"},
                    "memoryPercentOfRequests": 2,
                    "memoryMin": "64Mi",
                    "memoryMax": "512Mi",
                },
                "nodeSelector": {RUNV_NODE_LABEL[0]: RUNV_NODE_LABEL[1]},
                "tolerations": [{"key": RUNV_TAINT_KEY, "operator": "Equal", "value": "runv",
                                 "effect": "NoSchedule"}],
                "forbid": ["hostNetwork", "hostPID", "hostIPC", "privileged", "hostPath", "hostPort"],
                "edgeTolerationSeconds": 86400,
            },
            "gvisor": {
                "runtimeClassName": "gvisor",
                "handler": GVISOR_HANDLER,
                "nodeSelector": {GVISOR_NODE_LABEL[0]: GVISOR_NODE_LABEL[1]},
                "forbid": ["hostNetwork", "hostPID", "hostIPC", "privileged", "hostPath", "hostPort"],
            },
        },
    }


def _namespaces() -> tuple[Namespace, ...]:
    label = keys.DEFAULT_NAMESPACE_LABEL
    return (
        Namespace("shop", {}),
        Namespace("tenant-a", {label: keys.SANDBOXED_VALUE}),
        Namespace("ci-runners", {label: "gvisor"}),
        Namespace("edge-analytics", {label: "runv"}),
        # The install labels the system namespaces so no sandgate webhook entry ever selects them.
        Namespace("kube-system", {keys.IGNORE_NAMESPACE_LABEL: "true"}),
    )


def _cluster(copy: int) -> tuple[list[NodeSpec], list[ExistingPod]]:
    """One copy of the edge cluster; copy 0 is the built-in one, with the plain names."""
    def n(family: str, i: int) -> str:
        return f"{family}-{copy * 2 + i}" if family in ("cloud-kata", "edge-kata") else f"{family}-{copy + 1}"

    runv_label = {RUNV_NODE_LABEL[0]: RUNV_NODE_LABEL[1]}
    gvisor_label = {GVISOR_NODE_LABEL[0]: GVISOR_NODE_LABEL[1]}
    runv_taint = (Taint(RUNV_TAINT_KEY, "runv"),)
    edge = {EDGE_ROLE_LABEL: ""}
    nodes = [
        NodeSpec(n("cloud-kata", 1), "cloud", "8", "32Gi", {RUNV_HANDLER: 3}, {**runv_label, ZONE_LABEL: "eu-1a"},
                 runv_taint, note="Kata pool (tainted: sandboxes only)"),
        NodeSpec(n("cloud-kata", 2), "cloud", "8", "32Gi", {RUNV_HANDLER: 2}, {**runv_label, ZONE_LABEL: "eu-1b"},
                 runv_taint, note="Kata pool, full: every sandbox slot is taken"),
        NodeSpec(n("cloud-gvisor", 0), "cloud", "4", "16Gi", {GVISOR_HANDLER: 4},
                 {**gvisor_label, ZONE_LABEL: "eu-1a"}, note="gVisor pool"),
        NodeSpec(n("cloud-general", 0), "cloud", "8", "32Gi", {}, {ZONE_LABEL: "eu-1b"},
                 note="no sandbox runtime"),
        NodeSpec(n("edge-kata", 1), "edge", "4", "8Gi", {RUNV_HANDLER: 2, GVISOR_HANDLER: 2},
                 {**runv_label, **gvisor_label, **edge, ZONE_LABEL: "store-17"}, note="edge box with Kata and gVisor"),
        NodeSpec(n("edge-kata", 2), "edge", "4", "8Gi", {RUNV_HANDLER: 2}, {**runv_label, **edge, ZONE_LABEL: "store-23"},
                 heartbeat_age_seconds=STALE_HEARTBEAT_SECONDS,
                 note="agent heartbeat stale (site offline): no new sandboxes"),
        NodeSpec(n("edge-gw", 0), "edge", "1", "2Gi", {}, {**runv_label, **edge, ZONE_LABEL: "store-23"},
                 arch="arm64", note='labelled runtime=runv by hand, but no /dev/kvm: the agent advertises nothing'),
    ]
    existing = [
        ExistingPod(f"billing-api-{copy}", "tenant-a", nodes[0].name, "500m", "1Gi", "runv"),
        ExistingPod(f"report-{copy}-a", "tenant-a", nodes[1].name, "1", "2Gi", "runv"),
        ExistingPod(f"report-{copy}-b", "tenant-a", nodes[1].name, "1", "2Gi", "runv"),
        ExistingPod(f"build-cache-{copy}", "ci-runners", nodes[2].name, "500m", "1Gi", "gvisor"),
        ExistingPod(f"postgres-{copy}", "shop", nodes[3].name, "500m", "2Gi"),
    ]
    return nodes, existing


def builtin() -> Scenario:
    """The default run: one pod per behaviour worth seeing."""
    nodes, existing = _cluster(0)
    ann = keys.DEFAULT_POD_ANNOTATION
    pods = (
        DemoPod("storefront", "shop", "trusted pod in an unlabelled namespace"),
        DemoPod("coredns-autoscaler", "kube-system", "system pod: its namespace is never sent to the webhook",
                image="registry.k8s.io/cpa/cluster-proportional-autoscaler:1.8.5", cpu="20m", memory="10Mi"),
        DemoPod("camera-feed", "edge-analytics", "edge workload in a namespace routed to runv",
                cpu="250m", memory="256Mi", node_selector={EDGE_ROLE_LABEL: ""}),
        DemoPod("plugin-runner", "shop", "opt-in: a pod in a trusted namespace asks for runv",
                annotations={ann: "runv"}),
        DemoPod("web", "tenant-a", "pod in a sandboxed namespace gets the default profile"),
        DemoPod("worker", "tenant-a", "larger pod: the request-dependent overhead shows as padding",
                cpu="500m", memory="2Gi"),
        DemoPod("headless-browser", "tenant-a", "annotation asks for another profile: refused, the namespace's profile is locked",
                annotations={ann: "gvisor"}),
        DemoPod("debug-shell", "tenant-a", "privileged container in a sandboxed namespace",
                image="busybox:1.36", privileged=True),
        DemoPod("escape-hatch", "tenant-a", 'opt-out annotation "none" in a sandboxed namespace',
                annotations={ann: keys.OPT_OUT_VALUE}),
        DemoPod("pinned-runc", "tenant-a", "nodeSelector runtime=runc conflicts with the runv profile",
                node_selector={RUNV_NODE_LABEL[0]: "runc"}),
        DemoPod("build-42", "ci-runners", "pod in a namespace routed to gvisor", image="golang:1.22",
                cpu="500m", memory="512Mi"),
        DemoPod("batch-overflow", "tenant-a", "one runv pod too many: every Kata node is full, stale or absent"),
    )
    return Scenario("built-in edge cluster", tuple(nodes), _namespaces(), tuple(existing), pods)


# (weight, builder(i) -> DemoPod) for the synthetic mix: mostly routine pods, some denials.
def _synthetic_kinds() -> list[tuple[int, Any]]:
    ann = keys.DEFAULT_POD_ANNOTATION
    return [
        (30, lambda i, r: DemoPod(f"web-{i:04d}", "shop", "trusted", cpu=r.choice(["50m", "100m", "200m"]),
                                  memory=r.choice(["64Mi", "128Mi", "256Mi"]))),
        (25, lambda i, r: DemoPod(f"tenant-{i:04d}", "tenant-a", "sandboxed namespace",
                                  memory=r.choice(["128Mi", "256Mi", "512Mi"]))),
        (15, lambda i, r: DemoPod(f"build-{i:04d}", "ci-runners", "gvisor namespace", cpu="250m", memory="256Mi")),
        (10, lambda i, r: DemoPod(f"edge-{i:04d}", "edge-analytics", "edge runv namespace",
                                  node_selector={EDGE_ROLE_LABEL: ""})),
        (6, lambda i, r: DemoPod(f"optin-{i:04d}", "shop", "opt-in", annotations={ann: r.choice(["runv", "gvisor"])})),
        (5, lambda i, r: DemoPod(f"sys-{i:04d}", "kube-system", "exempt", cpu="20m", memory="32Mi")),
        (4, lambda i, r: DemoPod(f"priv-{i:04d}", "tenant-a", "privileged", privileged=True)),
        (3, lambda i, r: DemoPod(f"optout-{i:04d}", "tenant-a", "opt-out", annotations={ann: keys.OPT_OUT_VALUE})),
        (2, lambda i, r: DemoPod(f"pinned-{i:04d}", "tenant-a", "nodeSelector conflict",
                                 node_selector={RUNV_NODE_LABEL[0]: "runc"})),
    ]


def synthetic(count: int, seed: int = 1) -> Scenario:
    """`count` pods of a mixed workload (fixed seed: the same run every time) on a cluster sized for them.

    The cluster is the built-in one, repeated once per 15 pods: its free Kata slots then cover
    about two thirds of the runv pods, so the run shows routing, denials and capacity running out.
    """
    if count < 1:
        raise ValueError("--pods must be at least 1")
    copies = max(1, math.ceil(count / 15))
    nodes: list[NodeSpec] = []
    existing: list[ExistingPod] = []
    for c in range(copies):
        more_nodes, more_pods = _cluster(c)
        nodes += more_nodes
        existing += more_pods
    rng = random.Random(seed)
    kinds = _synthetic_kinds()
    weights = [w for w, _ in kinds]
    pods = tuple(rng.choices(kinds, weights)[0][1](i, rng) for i in range(count))
    return Scenario(f"synthetic workload of {count} pods", tuple(nodes), _namespaces(), tuple(existing), pods)
