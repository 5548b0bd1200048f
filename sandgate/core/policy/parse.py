"""Strict parsing of a decoded SandboxPolicy document into the typed model.

A policy with any error is refused as a whole, with every error listed by key path, so nothing ever
runs half configured. Unknown keys are errors too: a typo such as `namespaceLable` must not silently
fall back to a default.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any


from sandgate.core import keys
from sandgate.core.clusterversion import ClusterVersion, VersionError
from sandgate.core.quantity import QuantityError, parse_field
from sandgate.core.policy.model import (RUNTIME_OPTION_KEYS, RUNTIME_OPTION_PROGRAMS, RUNTIME_PROGRAM_DIRS,
                                        API_VERSION, FORBIDDABLE, KIND, RESERVED_PROFILE_NAMES, STRATEGIES,
                                        TAINT_EFFECTS, TOLERATION_OPERATORS, UNLABELLED_MODES, DNS_LABEL, DNS_SUBDOMAIN,
                                        QUALIFIED_NAME, CONTAINERD_VERSION, RUNTIME_MANAGERS, AgentSettings, Overhead, Policy, PolicyError, Profile,
                                        SchedulingSettings, Toleration)


class _Errors:
    """Collects "path: reason" messages while walking the document."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, reason: str) -> None:
        self.items.append(f"{path}: {reason}")


def _mapping(doc: Any, path: str, errs: _Errors, allowed: tuple[str, ...] | None = None) -> dict:
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        errs.add(path, f"must be a mapping, got {type(doc).__name__}")
        return {}
    if allowed is not None:
        for key in doc:
            if key not in allowed:
                errs.add(f"{path}.{key}" if path else str(key), f"unknown key (allowed: {', '.join(allowed)})")
    return doc


def _string(value: Any, path: str, errs: _Errors, default: str | None = None) -> str | None:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, str):
        errs.add(path, f"must be a string, got {value!r} (quote it in YAML)")
        return default
    return value


def _bool(value: Any, path: str, errs: _Errors, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        errs.add(path, f"must be true or false, got {value!r}")
        return default
    return value


def _int(value: Any, path: str, errs: _Errors, default: int | None, minimum: int = 0) -> int | None:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        errs.add(path, f"must be an integer, got {value!r}")
        return default
    if value < minimum:
        errs.add(path, f"must be >= {minimum}, got {value}")
        return default
    return value


def _quantity(value: Any, path: str, errs: _Errors) -> tuple[str, Decimal] | None:
    """A Kubernetes quantity, as written and parsed; YAML numbers (cpu: 1) are accepted."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        errs.add(path, f"must be a quantity such as 100m or 64Mi, got {value!r}")
        return None
    text = str(value)
    try:
        parsed = parse_field(value, path)
    except QuantityError as exc:
        errs.add(path, exc.reason)
        return None
    if parsed < 0:
        errs.add(path, f'must not be negative, got "{text}"')
        return None
    return text, parsed


def _string_map(doc: Any, path: str, errs: _Errors, check_keys: bool = True) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in _mapping(doc, path, errs).items():
        if check_keys and (not isinstance(key, str) or not QUALIFIED_NAME.match(key)):
            errs.add(f"{path}.{key}", "not a valid label key")
            continue
        text = _string(value, f"{path}.{key}", errs)
        if text is not None:
            out[str(key)] = text
    return out


def _string_list(doc: Any, path: str, errs: _Errors) -> tuple[str, ...]:
    if doc is None:
        return ()
    if not isinstance(doc, list):
        errs.add(path, f"must be a list, got {type(doc).__name__}")
        return ()
    out = []
    for i, item in enumerate(doc):
        text = _string(item, f"{path}[{i}]", errs)
        if text is not None:
            out.append(text)
    return tuple(out)


def _parse_cluster_version(value: Any, errs: _Errors) -> ClusterVersion | None:
    if value is None or value == "auto":
        return None
    if isinstance(value, float):
        # YAML reads 1.20 as the float 1.2; a float only round-trips for versions like 1.15.
        value = repr(value)
    if isinstance(value, bool) or not isinstance(value, str):
        errs.add("clusterVersion", f'must be "auto" or a version such as "1.15", got {value!r}')
        return None
    try:
        return ClusterVersion.parse(value)
    except VersionError as exc:
        errs.add("clusterVersion", f'{exc} (write it quoted, e.g. "1.20"; YAML reads 1.20 as 1.2)')
        return None


def _parse_pod_overhead(value: Any, errs: _Errors) -> bool | None:
    if value is None or value == "auto":
        return None
    if isinstance(value, bool):
        return value
    errs.add("podOverhead", f'must be "auto", true or false, got {value!r}')
    return None


def _parse_toleration(doc: Any, path: str, errs: _Errors) -> Toleration | None:
    before = len(errs.items)
    d = _mapping(doc, path, errs, ("key", "operator", "value", "effect", "tolerationSeconds"))
    key = _string(d.get("key"), f"{path}.key", errs, "")
    operator = _string(d.get("operator"), f"{path}.operator", errs, "Equal")
    value = _string(d.get("value"), f"{path}.value", errs, "")
    effect = _string(d.get("effect"), f"{path}.effect", errs, "")
    seconds = _int(d.get("tolerationSeconds"), f"{path}.tolerationSeconds", errs, None)
    if operator not in TOLERATION_OPERATORS:
        errs.add(f"{path}.operator", f'must be one of {", ".join(TOLERATION_OPERATORS)}, got "{operator}"')
    if effect not in TAINT_EFFECTS:
        errs.add(f"{path}.effect", f'must be one of NoSchedule, PreferNoSchedule, NoExecute, got "{effect}"')
    if operator == "Exists" and value:
        errs.add(f"{path}.value", "must be empty when operator is Exists")
    if not key and operator != "Exists":
        errs.add(f"{path}.operator", "must be Exists when key is empty")
    if seconds is not None and effect != "NoExecute":
        errs.add(f"{path}.tolerationSeconds", "is only allowed with effect NoExecute")
    if len(errs.items) != before:
        return None
    return Toleration(key or "", operator or "Equal", value or "", effect or "", seconds)


def _parse_overhead(doc: Any, path: str, errs: _Errors) -> Overhead | None:
    if doc is None:
        return None
    d = _mapping(doc, path, errs, ("podFixed", "memoryPercentOfRequests", "memoryMin", "memoryMax"))
    pod_fixed: dict[str, str] = {}
    for name, value in _mapping(d.get("podFixed"), f"{path}.podFixed", errs).items():
        parsed = _quantity(value, f"{path}.podFixed.{name}", errs)
        if parsed:
            pod_fixed[str(name)] = parsed[0]
    percent = None
    raw_percent = d.get("memoryPercentOfRequests")
    if raw_percent is not None:
        if isinstance(raw_percent, bool) or not isinstance(raw_percent, (int, float)) or not 0 <= raw_percent <= 100:
            errs.add(f"{path}.memoryPercentOfRequests", f"must be a number from 0 to 100, got {raw_percent!r}")
        else:
            percent = Decimal(str(raw_percent))
    bounds = {}
    for key in ("memoryMin", "memoryMax"):
        if d.get(key) is not None:
            parsed = _quantity(d[key], f"{path}.{key}", errs)
            bounds[key] = parsed[1] if parsed else None
    lo, hi = bounds.get("memoryMin"), bounds.get("memoryMax")
    if lo is not None and hi is not None and lo > hi:
        errs.add(f"{path}.memoryMin", "must not be greater than memoryMax")
    return Overhead(pod_fixed, percent, lo, hi)


_PROFILE_KEYS = ("runtimeClassName", "handler", "overhead", "nodeSelector", "tolerations", "forbid",
                 "edgeTolerationSeconds", "runtimeType", "runtimeOptions", "probe")


def _parse_profile(name: Any, doc: Any, errs: _Errors) -> Profile | None:
    path = f"profiles.{name}"
    if not isinstance(name, str) or not DNS_LABEL.match(name) or len(name) > 63:
        # It becomes a namespace-label value and a webhook path segment (/mutate/<profile>), which the
        # API server accepts only as a DNS-1123 label.
        errs.add(path, "profile name must be a DNS-1123 label (at most 63 lower-case letters, digits and "
                       "'-', starting and ending with a letter or digit)")
        return None
    if name in RESERVED_PROFILE_NAMES:
        errs.add(path, f'"{name}" is reserved and cannot name a profile: it is {RESERVED_PROFILE_NAMES[name]}')
        return None
    d = _mapping(doc, path, errs, _PROFILE_KEYS)
    rc = _string(d.get("runtimeClassName"), f"{path}.runtimeClassName", errs)
    if rc is None:
        errs.add(f"{path}.runtimeClassName", "is required")
    elif not DNS_SUBDOMAIN.match(rc) or len(rc) > 253:
        errs.add(f"{path}.runtimeClassName", f'"{rc}" is not a valid RuntimeClass name')
    handler = _string(d.get("handler"), f"{path}.handler", errs, rc)
    if handler and not DNS_LABEL.match(handler):
        errs.add(f"{path}.handler", f'"{handler}" is not a valid runtime handler name (DNS label)')
    tolerations = []
    raw_tols = d.get("tolerations")
    if raw_tols is not None and not isinstance(raw_tols, list):
        errs.add(f"{path}.tolerations", "must be a list")
    for i, t in enumerate(raw_tols or []):
        tol = _parse_toleration(t, f"{path}.tolerations[{i}]", errs)
        if tol:
            tolerations.append(tol)
    # Omitted means every host feature: each one reaches around the sandbox (Kata shares a hostPath
    # into the VM, gVisor's gofer serves it), so a profile must say `forbid: []` to allow them.
    forbid = FORBIDDABLE if d.get("forbid") is None else _string_list(d.get("forbid"), f"{path}.forbid", errs)
    for i, item in enumerate(forbid):
        if item not in FORBIDDABLE:
            errs.add(f"{path}.forbid[{i}]", f'unknown feature "{item}" (known: {", ".join(FORBIDDABLE)})')
    options = d.get("runtimeOptions")
    if options is not None and not isinstance(options, dict):
        errs.add(f"{path}.runtimeOptions", "must be a mapping")
    for key, value in (options or {}).items() if isinstance(options, dict) else ():
        where = f"{path}.runtimeOptions.{key}"
        if key not in RUNTIME_OPTION_KEYS:
            errs.add(where, f"not an allowed runtime option (allowed: {', '.join(RUNTIME_OPTION_KEYS)})")
        elif key == "SystemdCgroup":
            if not isinstance(value, bool):
                errs.add(where, f"must be true or false, got {value!r}")
        elif not isinstance(value, str) or not value:
            errs.add(where, f"must be a non-empty string, got {value!r}")
        elif key != "TypeUrl" and (not value.startswith("/") or "/../" in value + "/" or "/./" in value + "/"):
            errs.add(where, f'must be an absolute path without "." or ".." segments, got "{value}"')
        elif key in RUNTIME_OPTION_PROGRAMS and not value.startswith(RUNTIME_PROGRAM_DIRS):
            errs.add(where, f"names a program: it must be in {', '.join(RUNTIME_PROGRAM_DIRS)}, got \"{value}\"")
    probe = _string_list(d.get("probe"), f"{path}.probe", errs)
    return Profile(
        name=name,
        runtime_class_name=rc or "",
        handler=handler or "",
        overhead=_parse_overhead(d.get("overhead"), f"{path}.overhead", errs),
        node_selector=_string_map(d.get("nodeSelector"), f"{path}.nodeSelector", errs),
        tolerations=tuple(tolerations),
        forbid=frozenset(forbid),
        edge_toleration_seconds=_int(d.get("edgeTolerationSeconds"), f"{path}.edgeTolerationSeconds", errs, None),
        runtime_type=_string(d.get("runtimeType"), f"{path}.runtimeType", errs),
        runtime_options=dict(options) if isinstance(options, dict) else {},
        probe=probe,
    )


def _parse_agent(doc: Any, errs: _Errors) -> AgentSettings:
    d = _mapping(doc, "agent", errs, ("namespace", "leaseDurationSeconds", "maxSandboxes", "reservedMemory",
                                      "containerdConfig", "dropInDir", "reloadCommand", "containerdVersion",
                                      "criEndpoint", "runtimeManager", "crioConfig", "crioDropInDir",
                                      "reloadTimeoutSeconds", "metrics"))
    base = AgentSettings()
    reserved = base.reserved_memory
    if d.get("reservedMemory") is not None:
        parsed = _quantity(d["reservedMemory"], "agent.reservedMemory", errs)
        reserved = parsed[1] if parsed else reserved
    namespace = _string(d.get("namespace"), "agent.namespace", errs, base.namespace)
    if namespace and not DNS_LABEL.match(namespace):
        errs.add("agent.namespace", f'"{namespace}" is not a valid namespace name')
    containerd_version = _string(d.get("containerdVersion"), "agent.containerdVersion", errs, base.containerd_version)
    if not CONTAINERD_VERSION.match(containerd_version or ""):
        errs.add("agent.containerdVersion", f'must be "auto" or a containerd release such as "1.7" or "2.0", '
                                            f'got "{containerd_version}"')
        containerd_version = base.containerd_version
    cri_endpoint = _string(d.get("criEndpoint"), "agent.criEndpoint", errs, base.cri_endpoint)
    if not (cri_endpoint.startswith("unix:///") or cri_endpoint.startswith("/")):
        errs.add("agent.criEndpoint", f'must be unix:///<absolute path> or an absolute socket path, got "{cri_endpoint}"')
        cri_endpoint = base.cri_endpoint
    runtime_manager = _string(d.get("runtimeManager"), "agent.runtimeManager", errs, base.runtime_manager)
    if runtime_manager not in RUNTIME_MANAGERS:
        errs.add("agent.runtimeManager", f'must be one of {", ".join(RUNTIME_MANAGERS)}, got "{runtime_manager}"')
        runtime_manager = base.runtime_manager
    return AgentSettings(
        namespace=namespace or base.namespace,
        lease_duration_seconds=_int(d.get("leaseDurationSeconds"), "agent.leaseDurationSeconds", errs,
                                    base.lease_duration_seconds, minimum=1),
        max_sandboxes=_int(d.get("maxSandboxes"), "agent.maxSandboxes", errs, base.max_sandboxes),
        reserved_memory=reserved,
        containerd_config=_string(d.get("containerdConfig"), "agent.containerdConfig", errs, base.containerd_config),
        drop_in_dir=_string(d.get("dropInDir"), "agent.dropInDir", errs, base.drop_in_dir),
        reload_command=_string_list(d.get("reloadCommand"), "agent.reloadCommand", errs),
        containerd_version=containerd_version,
        cri_endpoint=cri_endpoint,
        runtime_manager=runtime_manager,
        crio_config=_string(d.get("crioConfig"), "agent.crioConfig", errs, base.crio_config),
        crio_drop_in_dir=_string(d.get("crioDropInDir"), "agent.crioDropInDir", errs, base.crio_drop_in_dir),
        reload_timeout_seconds=_int(d.get("reloadTimeoutSeconds"), "agent.reloadTimeoutSeconds", errs,
                                    base.reload_timeout_seconds, minimum=1),
        all_sandboxes=_bool(_mapping(d.get("metrics"), "agent.metrics", errs, ("allSandboxes",)).get("allSandboxes"),
                            "agent.metrics.allSandboxes", errs, base.all_sandboxes),
    )



def _parse_scheduling(doc: Any, errs: _Errors) -> SchedulingSettings:
    d = _mapping(doc, "scheduling", errs, ("strategy", "preferNonSandboxNodes", "reservationTimeoutSeconds",
                                           "allowedSchedulerNames"))
    base = SchedulingSettings()
    strategy = _string(d.get("strategy"), "scheduling.strategy", errs, base.strategy)
    if strategy not in STRATEGIES:
        errs.add("scheduling.strategy", f'must be one of {", ".join(STRATEGIES)}, got "{strategy}"')
        strategy = base.strategy
    return SchedulingSettings(
        strategy=strategy,
        prefer_non_sandbox_nodes=_bool(d.get("preferNonSandboxNodes"), "scheduling.preferNonSandboxNodes", errs,
                                       base.prefer_non_sandbox_nodes),
        reservation_timeout_seconds=_int(d.get("reservationTimeoutSeconds"), "scheduling.reservationTimeoutSeconds",
                                         errs, base.reservation_timeout_seconds, minimum=1),
        allowed_scheduler_names=(frozenset(_string_list(d["allowedSchedulerNames"], "scheduling.allowedSchedulerNames",
                                                        errs))
                                 if d.get("allowedSchedulerNames") is not None else base.allowed_scheduler_names),
    )


_TOP_KEYS = ("apiVersion", "kind", "clusterVersion", "podOverhead", "namespaceLabel", "podAnnotation",
             "defaultProfile", "allowPodOptIn", "exemptNamespaces", "profiles", "agent", "scheduling",
             "unlabelledNamespaces", "allowProfileOverride", "namespaceAdminGroups")


def parse_policy(doc: Any, source: str = "policy") -> Policy:
    """Validate a decoded policy document; raise PolicyError listing every problem by key path."""
    errs = _Errors()
    if not isinstance(doc, dict):
        raise PolicyError([f"the document must be a mapping, got {type(doc).__name__}"], source)
    _mapping(doc, "", errs, _TOP_KEYS)
    if doc.get("apiVersion") != API_VERSION:
        errs.add("apiVersion", f'must be "{API_VERSION}", got {doc.get("apiVersion")!r}')
    if doc.get("kind") != KIND:
        errs.add("kind", f'must be "{KIND}", got {doc.get("kind")!r}')
    version = _parse_cluster_version(doc.get("clusterVersion"), errs)
    pod_overhead = _parse_pod_overhead(doc.get("podOverhead"), errs)
    ns_label = _string(doc.get("namespaceLabel"), "namespaceLabel", errs, keys.DEFAULT_NAMESPACE_LABEL)
    if ns_label and not QUALIFIED_NAME.match(ns_label):
        errs.add("namespaceLabel", f'"{ns_label}" is not a valid label key')
    annotation = _string(doc.get("podAnnotation"), "podAnnotation", errs, keys.DEFAULT_POD_ANNOTATION)
    if annotation and not QUALIFIED_NAME.match(annotation):
        errs.add("podAnnotation", f'"{annotation}" is not a valid annotation key')
    profiles: dict[str, Profile] = {}
    raw_profiles = _mapping(doc.get("profiles"), "profiles", errs)
    if not raw_profiles:
        errs.add("profiles", "at least one profile is required")
    for name, body in raw_profiles.items():
        profile = _parse_profile(name, body, errs)
        if profile:
            profiles[name] = profile
    seen_rc: dict[str, str] = {}
    for profile in profiles.values():
        other = seen_rc.setdefault(profile.runtime_class_name, profile.name)
        if other != profile.name:
            errs.add(f"profiles.{profile.name}.runtimeClassName",
                     f'"{profile.runtime_class_name}" is already used by profile "{other}"')
    default = _string(doc.get("defaultProfile"), "defaultProfile", errs)
    if default is None:
        errs.add("defaultProfile", "is required")
    elif default not in raw_profiles:
        errs.add("defaultProfile", f'unknown profile "{default}" (profiles: {", ".join(map(str, raw_profiles))})')
    exempt = _string_list(doc.get("exemptNamespaces"), "exemptNamespaces", errs)
    unlabelled = _string(doc.get("unlabelledNamespaces"), "unlabelledNamespaces", errs, "trusted")
    if unlabelled not in UNLABELLED_MODES:
        errs.add("unlabelledNamespaces", f'must be one of {", ".join(UNLABELLED_MODES)}, got "{unlabelled}"')
    admin_groups = (_string_list(doc["namespaceAdminGroups"], "namespaceAdminGroups", errs)
                    if doc.get("namespaceAdminGroups") is not None else keys.DEFAULT_NAMESPACE_ADMIN_GROUPS)
    policy = Policy(
        cluster_version=version,
        pod_overhead=pod_overhead,
        namespace_label=ns_label or keys.DEFAULT_NAMESPACE_LABEL,
        pod_annotation=annotation or keys.DEFAULT_POD_ANNOTATION,
        default_profile=default or "",
        allow_pod_opt_in=_bool(doc.get("allowPodOptIn"), "allowPodOptIn", errs, False),
        exempt_namespaces=frozenset(exempt),
        profiles=profiles,
        agent=_parse_agent(doc.get("agent"), errs),
        scheduling=_parse_scheduling(doc.get("scheduling"), errs),
        source=source,
        unlabelled_namespaces=unlabelled if unlabelled in UNLABELLED_MODES else "trusted",
        allow_profile_override=_bool(doc.get("allowProfileOverride"), "allowProfileOverride", errs, False),
        namespace_admin_groups=admin_groups,
    )
    if errs.items:
        raise PolicyError(errs.items, source)
    return policy


