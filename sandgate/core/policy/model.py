"""The SandboxPolicy's typed model: profiles, overhead, agent and scheduling settings."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from typing import Any

from sandgate.core import keys
from sandgate.core.clusterversion import ClusterVersion
from sandgate.core.quantity import parse_field

API_VERSION = "sandgate.io/v1alpha1"
KIND = "SandboxPolicy"

# Pod features a profile may forbid, and the pod fields each one names in a denial.
FORBIDDABLE = ("hostNetwork", "hostPID", "hostIPC", "privileged", "hostPath", "hostPort")
TOLERATION_OPERATORS = ("Equal", "Exists")
TAINT_EFFECTS = ("", "NoSchedule", "PreferNoSchedule", "NoExecute")
STRATEGIES = ("spread", "binpack")
# The runtimeOptions a profile may set (the policy ConfigMap configures code on every node, so it
# names data, never a program of its choosing): containerd's runc/kata/runsc `options` keys and
# CRI-O's table keys. BinaryName, CriuPath, Root, privileged_without_host_devices and the like are
# refused. Keys naming a program must point into the directories shims are installed in.
RUNTIME_OPTION_KEYS = ("ConfigPath", "TypeUrl", "SystemdCgroup", "runtime_path", "runtime_config_path",
                       "runtime_root", "monitor_path")
RUNTIME_OPTION_PROGRAMS = ("runtime_path", "monitor_path")
RUNTIME_PROGRAM_DIRS = ("/usr/bin/", "/usr/local/bin/", "/opt/kata/bin/")
# What a namespace without the isolation label means (policy key unlabelledNamespaces).
UNLABELLED_MODES = ("trusted", "sandboxed")
# Names no profile may take, with why: values of the namespace label / pod annotation with a fixed
# meaning, and the webhook path segment of the pod opt-in entry (/mutate/<profile> vs /mutate/opt-in).
RESERVED_PROFILE_NAMES = {
    keys.SANDBOXED_VALUE: "the namespace-label and pod-annotation value that selects defaultProfile",
    keys.OPT_OUT_VALUE: "the pod-annotation value that asks to stay unsandboxed",
    keys.OPT_IN_PATH_SEGMENT: f"the webhook path segment of the pod opt-in entry (/mutate/{keys.OPT_IN_PATH_SEGMENT})",
}

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
QUALIFIED_NAME = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                             r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")


class PolicyError(ValueError):
    """The policy is invalid; `errors` holds one "key.path: reason" string per problem."""

    def __init__(self, errors: list[str], source: str = "policy"):
        self.errors = list(errors)
        self.source = source
        super().__init__(f"{source}: invalid policy:\n  " + "\n  ".join(self.errors))


@dataclass(frozen=True)
class Toleration:
    """A pod toleration, as a profile asks for it."""

    key: str = ""
    operator: str = "Equal"
    value: str = ""
    effect: str = ""
    toleration_seconds: int | None = None

    def to_k8s(self) -> dict[str, Any]:
        """The toleration in Kubernetes wire form (only the fields that are set)."""
        out: dict[str, Any] = {}
        if self.key:
            out["key"] = self.key
        out["operator"] = self.operator
        if self.value:
            out["value"] = self.value
        if self.effect:
            out["effect"] = self.effect
        if self.toleration_seconds is not None:
            out["tolerationSeconds"] = self.toleration_seconds
        return out


@dataclass(frozen=True)
class Overhead:
    """Sandbox overhead: a fixed part per pod plus an optional memory part that grows with requests.

    Quantities are kept both as written (for RuntimeClass manifests, which must match exactly) and
    as Decimal values in base units (cores, bytes) for arithmetic.
    """

    pod_fixed: dict[str, str] = field(default_factory=dict)
    memory_percent_of_requests: Decimal | None = None
    memory_min: Decimal | None = None
    memory_max: Decimal | None = None

    @property
    def pod_fixed_values(self) -> dict[str, Decimal]:
        """podFixed parsed to base units (cpu in cores, memory in bytes)."""
        return {name: parse_field(q, f"podFixed.{name}") for name, q in self.pod_fixed.items()}

    def memory_total(self, pod_memory_requests: Decimal) -> Decimal:
        """Whole memory overhead in bytes: fixed + percent of requests, clamped to [min, max], rounded up."""
        total = self.pod_fixed_values.get("memory", Decimal(0))
        if self.memory_percent_of_requests:
            total += pod_memory_requests * self.memory_percent_of_requests / Decimal(100)
        if self.memory_min is not None:
            total = max(total, self.memory_min)
        if self.memory_max is not None:
            total = min(total, self.memory_max)
        return total.to_integral_value(rounding=ROUND_CEILING)


@dataclass(frozen=True)
class Profile:
    """One sandbox runtime a pod can be routed to."""

    name: str
    runtime_class_name: str
    handler: str
    overhead: Overhead | None = None
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()
    forbid: frozenset[str] = frozenset(FORBIDDABLE)
    edge_toleration_seconds: int | None = None
    # Node-side facts for the agent: containerd runtime_type to configure, its options, an extra probe.
    runtime_type: str | None = None
    runtime_options: dict[str, Any] = field(default_factory=dict)
    probe: tuple[str, ...] = ()


@dataclass(frozen=True)
class AgentSettings:
    """Settings of the node agent (policy key `agent`)."""

    # A namespace of its own: the agent's token (on every node) can then write only its heartbeat
    # Leases, never the extender's objects or the TLS Secrets in sandgate-system.
    namespace: str = keys.DEFAULT_AGENT_NAMESPACE
    lease_duration_seconds: int = 90
    max_sandboxes: int = 110
    reserved_memory: Decimal = parse_field("512Mi", "agent.reservedMemory")
    containerd_config: str = "/etc/containerd/config.toml"
    drop_in_dir: str = "/etc/containerd/conf.d"
    reload_command: tuple[str, ...] = ()
    # "auto" (ask the node) or a release line such as "1.7" / "2.0": it decides containerd's merge rules.
    containerd_version: str = "auto"
    # The CRI socket (a path is resolved under --root); with CRI-O, the default means CRI-O's own socket.
    cri_endpoint: str = "unix:///run/containerd/containerd.sock"
    runtime_manager: str = "auto"  # auto | containerd | crio
    crio_config: str = "/etc/crio/crio.conf"
    crio_drop_in_dir: str = "/etc/crio/crio.conf.d"
    reload_timeout_seconds: int = 30  # after the reload, CRI Status must report RuntimeReady within this
    # agent.metrics.allSandboxes: also export runc (non-policy handler) sandboxes, for comparison.
    all_sandboxes: bool = False


DEFAULT_CRI_ENDPOINT = AgentSettings.cri_endpoint
RUNTIME_MANAGERS = ("auto", "containerd", "crio")
CONTAINERD_VERSION = re.compile(r"^(auto|[1-9][0-9]*\.(0|[1-9][0-9]*))$")


@dataclass(frozen=True)
class SchedulingSettings:
    """Settings of the scheduler extender (policy key `scheduling`)."""

    strategy: str = "spread"
    prefer_non_sandbox_nodes: bool = True
    reservation_timeout_seconds: int = 30
    # spec.schedulerName values a routed pod may carry: any other scheduler would skip the extender.
    allowed_scheduler_names: frozenset[str] = frozenset({"default-scheduler"})


@dataclass(frozen=True)
class Policy:
    """A validated SandboxPolicy."""

    cluster_version: ClusterVersion | None  # None: "auto", ask the API server
    pod_overhead: bool | None  # None: the version's default
    namespace_label: str
    pod_annotation: str
    default_profile: str
    allow_pod_opt_in: bool
    exempt_namespaces: frozenset[str]
    profiles: dict[str, Profile]
    agent: AgentSettings = field(default_factory=AgentSettings)
    scheduling: SchedulingSettings = field(default_factory=SchedulingSettings)
    source: str = "policy"
    # "sandboxed": a namespace without the isolation label routes to defaultProfile (secure by default).
    unlabelled_namespaces: str = "trusted"
    # False: in a labelled namespace a pod cannot pick another profile than the namespace's.
    allow_profile_override: bool = False
    # Groups allowed to set, change or remove the isolation and ignore namespace labels.
    namespace_admin_groups: tuple[str, ...] = keys.DEFAULT_NAMESPACE_ADMIN_GROUPS

    def profile_for_runtime_class(self, runtime_class_name: str | None) -> Profile | None:
        """The profile whose runtimeClassName is `runtime_class_name`, if any."""
        if not runtime_class_name:
            return None
        for profile in self.profiles.values():
            if profile.runtime_class_name == runtime_class_name:
                return profile
        return None

    def profile_named(self, value: str | None) -> Profile | None:
        """The profile a namespace-label or pod-annotation value names: "sandboxed" is defaultProfile."""
        if value == keys.SANDBOXED_VALUE:
            return self.profiles[self.default_profile]
        return self.profiles.get(value) if isinstance(value, str) else None

    @property
    def handlers(self) -> frozenset[str]:
        """Every runtime handler some profile uses."""
        return frozenset(p.handler for p in self.profiles.values())


