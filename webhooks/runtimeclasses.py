"""RuntimeClass existence on 1.14-1.15, where no admission plugin checks it.

From 1.16 the built-in RuntimeClass admission plugin refuses a pod naming a RuntimeClass that does
not exist (`pod rejected: RuntimeClass "x" not found`, Forbidden). Before that the pod is admitted
and only fails at the kubelet, stuck in ContainerCreating. When the webhook has API access, the
validating guard refuses such a pod at admission with the built-in plugin's words.

Like the built-in plugin, names seen to exist are remembered (for `ttl` seconds) and a name not
known is looked up live (GET node.k8s.io/v1beta1 runtimeclasses/<name>, bounded by a timeout), so
a RuntimeClass created a moment ago is never refused. The check only helps users, it guards
nothing: when the API cannot answer, the pod is admitted as the API server itself would.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable
from urllib.parse import quote

from kubernetes.client.exceptions import ApiException

from sandgate.core.rawapi import RawApi
from webhooks.review import AdmissionRequest, Verdict
from webhooks.routing import pod_spec

log = logging.getLogger(__name__)

PATH = "/apis/node.k8s.io/v1beta1/runtimeclasses/{name}"
HTTP_NOT_FOUND = 404


class RuntimeClassLookup:
    """Whether a RuntimeClass exists: True, False, or None when the API cannot say."""

    def __init__(self, api_factory: Callable[[], RawApi], ttl: float = 60.0,
                 timeout: tuple[float, float] = (2.0, 3.0)):
        self._api_factory = api_factory
        self._api: RawApi | None = None
        self._ttl = ttl
        self._timeout = timeout
        self._seen: dict[str, float] = {}  # name -> monotonic time it was last seen to exist
        self._lock = threading.Lock()

    def exists(self, name: str) -> bool | None:
        """True if the RuntimeClass `name` exists, False if the API server says it does not, else None."""
        now = time.monotonic()
        with self._lock:
            seen = self._seen.get(name)
        if seen is not None and now - seen < self._ttl:
            return True
        try:
            if self._api is None:
                self._api = self._api_factory()
            self._api.request("GET", PATH.format(name=quote(name, safe="")), timeout=self._timeout)
        except ApiException as exc:
            if exc.status == HTTP_NOT_FOUND:
                return False
            log.warning("RuntimeClass lookup failed; not checked", extra={"runtime_class": name, "status": exc.status})
            return None
        except Exception as exc:  # unreachable, timeout, TLS: the check is a convenience, never a guard
            log.warning("RuntimeClass lookup failed; not checked", extra={"runtime_class": name, "error": repr(exc)})
            return None
        with self._lock:
            self._seen[name] = now
        return True


def missing_runtime_class(req: AdmissionRequest, exists: Callable[[str], bool | None]) -> Verdict | None:
    """The built-in plugin's refusal of a pod created with a RuntimeClass that does not exist, or None."""
    if req.kind != "Pod" or req.group or req.operation != "CREATE" or req.sub_resource or not req.object:
        return None
    name = pod_spec(req.object).get("runtimeClassName")
    if not isinstance(name, str) or not name or exists(name) is not False:
        return None
    return Verdict(allowed=False, code=403, reason="runtime-class-not-found",
                   message=f'pod rejected: RuntimeClass "{name}" not found')
