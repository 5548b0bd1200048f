"""Strict parsing of a decoded SandboxPolicy document into the typed model.

A policy with any error is refused as a whole, with every error listed by key path, so nothing ever
runs half configured. Unknown keys are errors too: a typo such as `namespaceLable` must not silently
fall back to a default.

Each section is a declarative table (policy key -> model field, reader, default, check) walked by one
generic function; the rules that relate several fields run as small functions after the table pass.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from typing import Any, Callable

from sandgate.core import keys
from sandgate.core.clusterversion import ClusterVersion, VersionError
from sandgate.core.quantity import QuantityError, parse_field
from sandgate.core.policy.model import (API_VERSION, CONTAINERD_VERSION, DNS_LABEL, DNS_SUBDOMAIN, FORBIDDABLE, KIND,
                                        QUALIFIED_NAME, RESERVED_PROFILE_NAMES, RUNTIME_MANAGERS,
                                        RUNTIME_OPTION_KEYS, RUNTIME_OPTION_PROGRAMS, RUNTIME_PROGRAM_DIRS, STRATEGIES,
                                        TAINT_EFFECTS, TOLERATION_OPERATORS, UNLABELLED_MODES, AgentSettings, Overhead,
                                        Policy, PolicyError, Profile, SchedulingSettings, Toleration)


class _Errors:
    """Collects "path: reason" messages while walking the document."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, path: str, reason: str) -> None:
        self.items.append(f"{path}: {reason}")


# A reader turns the raw value at a path into a typed value (the default when absent or invalid);
# a check validates the read value and returns what to keep (the default again when it is refused).
Reader = Callable[[Any, str, _Errors, Any], Any]
Check = Callable[[Any, str, _Errors, Any], Any]

_MODEL_DEFAULT: Any = object()


@dataclass(frozen=True)
class _Field:
    """One policy key of a section: where it goes in the model, how it is read and checked."""

    key: str
    attr: str | None  # None: validated only, not stored in the model
    read: Reader
    default: Any = _MODEL_DEFAULT  # the model field's own default unless given
    check: Check | None = None


def _table(model: type, *fields: _Field) -> tuple[_Field, ...]:
    """The section's fields with their defaults taken from the model's dataclass where not given."""
    defaults = {f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()
                for f in dataclasses.fields(model)
                if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING}
    return tuple(dataclasses.replace(f, default=defaults[f.attr]) if f.default is _MODEL_DEFAULT else f
                 for f in fields)


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


def _walk(doc: Any, path: str, errs: _Errors, table: tuple[_Field, ...]) -> dict[str, Any]:
    """Report unknown keys, then read and check each key of the table: model field name -> value."""
    d = _mapping(doc, path, errs, tuple(f.key for f in table))
    out: dict[str, Any] = {}
    for f in table:
        where = f"{path}.{f.key}" if path else f.key
        value = f.read(d.get(f.key), where, errs, f.default)
        if f.check is not None:
            value = f.check(value, where, errs, f.default)
        if f.attr is not None:
            out[f.attr] = value
    return out


# --- readers ---------------------------------------------------------------------------------------

def _raw(value: Any, path: str, errs: _Errors, default: Any) -> Any:
    return value


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


_positive_int = partial(_int, minimum=1)


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


def _quantity_value(value: Any, path: str, errs: _Errors, default: Decimal | None) -> Decimal | None:
    if value is None:
        return default
    parsed = _quantity(value, path, errs)
    return parsed[1] if parsed else default


def _string_map(doc: Any, path: str, errs: _Errors, default: dict[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in _mapping(doc, path, errs).items():
        if not isinstance(key, str) or not QUALIFIED_NAME.match(key):
            errs.add(f"{path}.{key}", "not a valid label key")
            continue
        text = _string(value, f"{path}.{key}", errs)
        if text is not None:
            out[str(key)] = text
    return out


def _string_list(doc: Any, path: str, errs: _Errors, default: Any = ()) -> Any:
    if doc is None:
        return default
    if not isinstance(doc, list):
        errs.add(path, f"must be a list, got {type(doc).__name__}")
        return ()
    out = []
    for i, item in enumerate(doc):
        text = _string(item, f"{path}[{i}]", errs)
        if text is not None:
            out.append(text)
    return tuple(out)


def _cluster_version(value: Any, path: str, errs: _Errors, default: None) -> ClusterVersion | None:
    if value is None or value == "auto":
        return None
    if isinstance(value, float):
        # YAML reads 1.20 as the float 1.2; a float only round-trips for versions like 1.15.
        value = repr(value)
    if isinstance(value, bool) or not isinstance(value, str):
        errs.add(path, f'must be "auto" or a version such as "1.15", got {value!r}')
        return None
    try:
        return ClusterVersion.parse(value)
    except VersionError as exc:
        errs.add(path, f'{exc} (write it quoted, e.g. "1.20"; YAML reads 1.20 as 1.2)')
        return None


def _pod_overhead(value: Any, path: str, errs: _Errors, default: None) -> bool | None:
    if value is None or value == "auto":
        return None
    if isinstance(value, bool):
        return value
    errs.add(path, f'must be "auto", true or false, got {value!r}')
    return None


def _pod_fixed(doc: Any, path: str, errs: _Errors, default: dict[str, str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in _mapping(doc, path, errs).items():
        parsed = _quantity(value, f"{path}.{name}", errs)
        if parsed:
            out[str(name)] = parsed[0]
    return out


def _percent(value: Any, path: str, errs: _Errors, default: Decimal | None) -> Decimal | None:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
        errs.add(path, f"must be a number from 0 to 100, got {value!r}")
        return default
    return Decimal(str(value))


def _runtime_options(options: Any, path: str, errs: _Errors, default: dict[str, Any]) -> dict[str, Any]:
    if options is None:
        return default
    if not isinstance(options, dict):
        errs.add(path, "must be a mapping")
        return default
    for key, value in options.items():
        where = f"{path}.{key}"
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
    return dict(options)


# --- single-field checks ---------------------------------------------------------------------------

def _one_of(choices: tuple[str, ...]) -> Check:
    def check(value: Any, path: str, errs: _Errors, default: Any) -> Any:
        if value not in choices:
            errs.add(path, f'must be one of {", ".join(choices)}, got "{value}"')
            return default
        return value
    return check


def _equals(expected: str) -> Check:
    def check(value: Any, path: str, errs: _Errors, default: Any) -> Any:
        if value != expected:
            errs.add(path, f'must be "{expected}", got {value!r}')
        return value
    return check


def _qualified_name(kind: str) -> Check:
    """A label or annotation key; an empty string means the default."""
    def check(value: str, path: str, errs: _Errors, default: str) -> str:
        if value and not QUALIFIED_NAME.match(value):
            errs.add(path, f'"{value}" is not a valid {kind} key')
        return value or default
    return check


def _namespace_name(value: str, path: str, errs: _Errors, default: str) -> str:
    if value and not DNS_LABEL.match(value):
        errs.add(path, f'"{value}" is not a valid namespace name')
    return value or default


def _containerd_version(value: str, path: str, errs: _Errors, default: str) -> str:
    if not CONTAINERD_VERSION.match(value or ""):
        errs.add(path, f'must be "auto" or a containerd release such as "1.7" or "2.0", got "{value}"')
        return default
    return value


def _cri_endpoint(value: str, path: str, errs: _Errors, default: str) -> str:
    if not (value.startswith("unix:///") or value.startswith("/")):
        errs.add(path, f'must be unix:///<absolute path> or an absolute socket path, got "{value}"')
        return default
    return value


def _runtime_class_name(value: str | None, path: str, errs: _Errors, default: None) -> str | None:
    if value is None:
        errs.add(path, "is required")
    elif not DNS_SUBDOMAIN.match(value) or len(value) > 253:
        errs.add(path, f'"{value}" is not a valid RuntimeClass name')
    return value


def _known_features(value: tuple[str, ...], path: str, errs: _Errors, default: Any) -> frozenset[str]:
    for i, item in enumerate(value):
        if item not in FORBIDDABLE:
            errs.add(f"{path}[{i}]", f'unknown feature "{item}" (known: {", ".join(FORBIDDABLE)})')
    return frozenset(value)


def _frozen(value: Any, path: str, errs: _Errors, default: Any) -> frozenset:
    return frozenset(value)


# --- sections --------------------------------------------------------------------------------------

_TOLERATION = _table(
    Toleration,
    _Field("key", "key", _string),
    _Field("operator", "operator", _string),
    _Field("value", "value", _string),
    _Field("effect", "effect", _string),
    _Field("tolerationSeconds", "toleration_seconds", _int),
)


def _toleration_rules(t: dict[str, Any], path: str, errs: _Errors) -> None:
    if t["operator"] not in TOLERATION_OPERATORS:
        errs.add(f"{path}.operator", f'must be one of {", ".join(TOLERATION_OPERATORS)}, got "{t["operator"]}"')
    if t["effect"] not in TAINT_EFFECTS:
        errs.add(f"{path}.effect", f'must be one of NoSchedule, PreferNoSchedule, NoExecute, got "{t["effect"]}"')
    if t["operator"] == "Exists" and t["value"]:
        errs.add(f"{path}.value", "must be empty when operator is Exists")
    if not t["key"] and t["operator"] != "Exists":
        errs.add(f"{path}.operator", "must be Exists when key is empty")
    if t["toleration_seconds"] is not None and t["effect"] != "NoExecute":
        errs.add(f"{path}.tolerationSeconds", "is only allowed with effect NoExecute")


def _tolerations(raw: Any, path: str, errs: _Errors, default: tuple) -> tuple[Toleration, ...]:
    if raw is None:
        return default
    if not isinstance(raw, list):
        errs.add(path, "must be a list")
        return default
    out = []
    for i, doc in enumerate(raw):
        where = f"{path}[{i}]"
        before = len(errs.items)
        values = _walk(doc, where, errs, _TOLERATION)
        _toleration_rules(values, where, errs)
        if len(errs.items) == before:
            out.append(Toleration(**values))
    return tuple(out)


_OVERHEAD = _table(
    Overhead,
    _Field("podFixed", "pod_fixed", _pod_fixed),
    _Field("memoryPercentOfRequests", "memory_percent_of_requests", _percent),
    _Field("memoryMin", "memory_min", _quantity_value),
    _Field("memoryMax", "memory_max", _quantity_value),
)


def _overhead(doc: Any, path: str, errs: _Errors, default: None) -> Overhead | None:
    if doc is None:
        return None
    values = _walk(doc, path, errs, _OVERHEAD)
    lo, hi = values["memory_min"], values["memory_max"]
    if lo is not None and hi is not None and lo > hi:
        errs.add(f"{path}.memoryMin", "must not be greater than memoryMax")
    return Overhead(**values)


_PROFILE = _table(
    Profile,
    _Field("runtimeClassName", "runtime_class_name", _string, None, _runtime_class_name),
    _Field("handler", "handler", _string, None),
    _Field("overhead", "overhead", _overhead),
    _Field("nodeSelector", "node_selector", _string_map),
    _Field("tolerations", "tolerations", _tolerations),
    # Omitted means every host feature: each one reaches around the sandbox (Kata shares a hostPath
    # into the VM, gVisor's gofer serves it), so a profile must say `forbid: []` to allow them.
    _Field("forbid", "forbid", _string_list, check=_known_features),
    _Field("edgeTolerationSeconds", "edge_toleration_seconds", _int),
    _Field("runtimeType", "runtime_type", _string),
    _Field("runtimeOptions", "runtime_options", _runtime_options),
    _Field("probe", "probe", _string_list),
)


def _profile_name_ok(name: Any, path: str, errs: _Errors) -> bool:
    if not isinstance(name, str) or not DNS_LABEL.match(name) or len(name) > 63:
        # It becomes a namespace-label value and a webhook path segment (/mutate/<profile>), which the
        # API server accepts only as a DNS-1123 label.
        errs.add(path, "profile name must be a DNS-1123 label (at most 63 lower-case letters, digits and "
                       "'-', starting and ending with a letter or digit)")
        return False
    if name in RESERVED_PROFILE_NAMES:
        errs.add(path, f'"{name}" is reserved and cannot name a profile: it is {RESERVED_PROFILE_NAMES[name]}')
        return False
    return True


def _handler_rule(values: dict[str, Any], path: str, errs: _Errors) -> None:
    """The handler defaults to the runtimeClassName, and either way must be a DNS label."""
    if values["handler"] is None:
        values["handler"] = values["runtime_class_name"]
    handler = values["handler"]
    if handler and not DNS_LABEL.match(handler):
        errs.add(f"{path}.handler", f'"{handler}" is not a valid runtime handler name (DNS label)')


def _profile(name: Any, doc: Any, errs: _Errors) -> Profile | None:
    path = f"profiles.{name}"
    if not _profile_name_ok(name, path, errs):
        return None
    values = _walk(doc, path, errs, _PROFILE)
    _handler_rule(values, path, errs)
    values["runtime_class_name"] = values["runtime_class_name"] or ""
    values["handler"] = values["handler"] or ""
    return Profile(name=name, **values)


def _profiles(doc: Any, path: str, errs: _Errors, default: dict) -> dict[str, Profile]:
    raw = _mapping(doc, path, errs)
    if not raw:
        errs.add(path, "at least one profile is required")
    profiles: dict[str, Profile] = {}
    for name, body in raw.items():
        profile = _profile(name, body, errs)
        if profile:
            profiles[name] = profile
    return profiles


def _unique_runtime_class_names(profiles: dict[str, Profile], errs: _Errors) -> None:
    seen: dict[str, str] = {}
    for profile in profiles.values():
        other = seen.setdefault(profile.runtime_class_name, profile.name)
        if other != profile.name:
            errs.add(f"profiles.{profile.name}.runtimeClassName",
                     f'"{profile.runtime_class_name}" is already used by profile "{other}"')


def _default_profile_rule(default: str | None, raw_profiles: Any, errs: _Errors) -> None:
    """defaultProfile is required and names a profile of the document (even one with errors)."""
    names = list(raw_profiles) if isinstance(raw_profiles, dict) else []
    if default is None:
        errs.add("defaultProfile", "is required")
    elif default not in names:
        errs.add("defaultProfile", f'unknown profile "{default}" (profiles: {", ".join(map(str, names))})')


def _section(model: type, table: tuple[_Field, ...]) -> Reader:
    """A reader for a nested section without cross-field rules: the model built from its table."""
    def read(doc: Any, path: str, errs: _Errors, default: Any) -> Any:
        return model(**_walk(doc, path, errs, table))
    return read


_METRICS = _table(AgentSettings, _Field("allSandboxes", "all_sandboxes", _bool))


def _metrics(doc: Any, path: str, errs: _Errors, default: bool) -> bool:
    return _walk(doc, path, errs, _METRICS)["all_sandboxes"]


_AGENT = _table(
    AgentSettings,
    _Field("namespace", "namespace", _string, check=_namespace_name),
    _Field("leaseDurationSeconds", "lease_duration_seconds", _positive_int),
    _Field("maxSandboxes", "max_sandboxes", _int),
    _Field("reservedMemory", "reserved_memory", _quantity_value),
    _Field("containerdConfig", "containerd_config", _string),
    _Field("dropInDir", "drop_in_dir", _string),
    _Field("reloadCommand", "reload_command", _string_list),
    _Field("containerdVersion", "containerd_version", _string, check=_containerd_version),
    _Field("criEndpoint", "cri_endpoint", _string, check=_cri_endpoint),
    _Field("runtimeManager", "runtime_manager", _string, check=_one_of(RUNTIME_MANAGERS)),
    _Field("crioConfig", "crio_config", _string),
    _Field("crioDropInDir", "crio_drop_in_dir", _string),
    _Field("reloadTimeoutSeconds", "reload_timeout_seconds", _positive_int),
    _Field("metrics", "all_sandboxes", _metrics),
)

_SCHEDULING = _table(
    SchedulingSettings,
    _Field("strategy", "strategy", _string, check=_one_of(STRATEGIES)),
    _Field("preferNonSandboxNodes", "prefer_non_sandbox_nodes", _bool),
    _Field("reservationTimeoutSeconds", "reservation_timeout_seconds", _positive_int),
    _Field("allowedSchedulerNames", "allowed_scheduler_names", _string_list, check=_frozen),
)

_TOP = _table(
    Policy,
    _Field("apiVersion", None, _raw, None, _equals(API_VERSION)),
    _Field("kind", None, _raw, None, _equals(KIND)),
    _Field("clusterVersion", "cluster_version", _cluster_version, None),
    _Field("podOverhead", "pod_overhead", _pod_overhead, None),
    _Field("namespaceLabel", "namespace_label", _string, keys.DEFAULT_NAMESPACE_LABEL, _qualified_name("label")),
    _Field("podAnnotation", "pod_annotation", _string, keys.DEFAULT_POD_ANNOTATION, _qualified_name("annotation")),
    _Field("defaultProfile", "default_profile", _string, None),
    _Field("allowPodOptIn", "allow_pod_opt_in", _bool, False),
    _Field("exemptNamespaces", "exempt_namespaces", _string_list, (), _frozen),
    _Field("profiles", "profiles", _profiles, {}),
    _Field("agent", "agent", _section(AgentSettings, _AGENT)),
    _Field("scheduling", "scheduling", _section(SchedulingSettings, _SCHEDULING)),
    _Field("unlabelledNamespaces", "unlabelled_namespaces", _string, check=_one_of(UNLABELLED_MODES)),
    _Field("allowProfileOverride", "allow_profile_override", _bool),
    _Field("namespaceAdminGroups", "namespace_admin_groups", _string_list),
)


def parse_policy(doc: Any, source: str = "policy") -> Policy:
    """Validate a decoded policy document; raise PolicyError listing every problem by key path."""
    errs = _Errors()
    if not isinstance(doc, dict):
        raise PolicyError([f"the document must be a mapping, got {type(doc).__name__}"], source)
    values = _walk(doc, "", errs, _TOP)
    _unique_runtime_class_names(values["profiles"], errs)
    _default_profile_rule(values["default_profile"], doc.get("profiles"), errs)
    if errs.items:
        raise PolicyError(errs.items, source)
    return Policy(**values, source=source)
