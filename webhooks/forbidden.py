"""Pod features a sandbox profile forbids, each found by the field path that enables it.

A sandbox isolates a pod from its node; host namespaces, privileged containers, host paths and
host ports reach around that isolation (and most MicroVM runtimes cannot honour them anyway), so a
routed pod that asks for one is refused with the exact field to remove.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping

from sandgate.core.jsonshape import as_list, as_object
from sandgate.core.policy import FORBIDDABLE, Profile
from webhooks.routing import pod_spec



def _host_flag(name: str) -> Callable[[Mapping[str, Any]], Iterator[str]]:
    def find(spec: Mapping[str, Any]) -> Iterator[str]:
        if spec.get(name) is True:
            yield f"spec.{name}"
    return find


def _privileged(spec: Mapping[str, Any]) -> Iterator[str]:
    # App containers first: they are what users look at; init and ephemeral ones run as privileged too.
    for kind in ("containers", "initContainers", "ephemeralContainers"):
        for i, container in enumerate(as_list(spec.get(kind))):
            if as_object(as_object(container).get("securityContext")).get("privileged") is True:
                yield f"spec.{kind}[{i}].securityContext.privileged"


def _host_path(spec: Mapping[str, Any]) -> Iterator[str]:
    for i, volume in enumerate(as_list(spec.get("volumes"))):
        if as_object(volume).get("hostPath") is not None:
            yield f"spec.volumes[{i}].hostPath"


def _host_port(spec: Mapping[str, Any]) -> Iterator[str]:
    for kind in ("containers", "initContainers"):
        for i, container in enumerate(as_list(spec.get(kind))):
            for j, port in enumerate(as_list(as_object(container).get("ports"))):
                # hostPort 0 (or absent) means "no host port".
                if as_object(port).get("hostPort"):
                    yield f"spec.{kind}[{i}].ports[{j}].hostPort"


_FINDERS: dict[str, Callable[[Mapping[str, Any]], Iterator[str]]] = {
    "hostNetwork": _host_flag("hostNetwork"),
    "hostPID": _host_flag("hostPID"),
    "hostIPC": _host_flag("hostIPC"),
    "privileged": _privileged,
    "hostPath": _host_path,
    "hostPort": _host_port,
}


def forbidden_fields(pod: Mapping[str, Any], profile: Profile) -> list[str]:
    """Every field path of `pod` that uses a feature `profile` forbids, in policy.FORBIDDABLE order."""
    spec = pod_spec(pod)
    return [path for feature in FORBIDDABLE if feature in profile.forbid for path in _FINDERS[feature](spec)]


def forbidden_message(pod: Mapping[str, Any], profile: Profile) -> str | None:
    """The denial message naming the first forbidden field of `pod`, or None when there is none."""
    paths = forbidden_fields(pod, profile)
    if not paths:
        return None
    more = f" (also: {', '.join(paths[1:])})" if len(paths) > 1 else ""
    return f'{paths[0]} is forbidden by sandbox profile "{profile.name}"{more}'
