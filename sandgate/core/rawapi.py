"""A raw-JSON Kubernetes API client for small, plain requests (the node agent; the webhook's RuntimeClass lookup).

It is the `kubernetes` package's own `Configuration` (auth, TLS files, proxy, in-cluster token
refresh) and REST layer (`RESTClientObject`, urllib3), without the parts that only a typed client
needs: `ApiClient` pulls in pydantic and the response deserialiser (about 9.5 MiB resident), and
`kubernetes.config.kube_config` pulls in requests and oauthlib for its auth plugins (about 6 MiB).
Bodies go out and come back as JSON exactly as given, which the agent needs anyway (a typed Lease
would re-serialise `renewTime` and lose its MicroTime form).
Written against the REST layer of the client generation requirements.lock pins (37.x:
`RESTClientObject.request` returns the response unread and raises nothing on an HTTP status).

Credentials: without a kubeconfig, the in-cluster service account (`load_incluster_config`, which
re-reads the rotating token). A kubeconfig that uses only a server, a CA file, a token (or token
file) and client certificate files is read here; any other kubeconfig (embedded `*-data`, `exec`,
`auth-provider`, basic auth, a proxy, a TLS server name...) goes through the
library's full loader, so every kubeconfig the client accepts still works, at its memory cost.
"""

from __future__ import annotations

import os
from typing import Any

import yaml
from kubernetes.client.configuration import Configuration
from kubernetes.client.exceptions import ApiException
from kubernetes.client.rest import RESTClientObject

JSON = "application/json"
# What this module reads itself; anything else in the context's cluster or user goes to the full loader.
_CLUSTER_KEYS = {"server", "certificate-authority", "insecure-skip-tls-verify", "extensions"}
_USER_KEYS = {"token", "tokenFile", "client-certificate", "client-key", "extensions"}


class RawApiConfigError(RuntimeError):
    """No usable Kubernetes credentials were found (message is for the operator)."""


def _named(entries: Any, name: Any, what: str) -> dict[str, Any] | None:
    """The `what` object of the entry called `name` in a kubeconfig list, None if absent or oddly shaped."""
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and entry.get("name") == name and isinstance(entry.get(what), dict):
            return entry[what]
    return None


def _simple_kubeconfig(path: str) -> Configuration | None:
    """A Configuration from a kubeconfig this module can read whole; None for any other (full loader)."""
    try:
        with open(path, encoding="utf-8") as f:
            document = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        return None  # the full loader reports it in its own words
    if not isinstance(document, dict):
        return None
    context = _named(document.get("contexts"), document.get("current-context"), "context")
    if context is None:
        return None
    cluster = _named(document.get("clusters"), context.get("cluster"), "cluster")
    user = _named(document.get("users"), context.get("user"), "user") if context.get("user") else {}
    if cluster is None or user is None or not isinstance(cluster.get("server"), str):
        return None
    if set(cluster) - _CLUSTER_KEYS or set(user) - _USER_KEYS:
        return None
    base = os.path.dirname(os.path.abspath(path))  # relative file names are relative to the kubeconfig

    def file(value: Any) -> str:
        return os.path.join(base, value) if isinstance(value, str) and value else ""

    cfg = Configuration()
    cfg.host = cluster["server"].rstrip("/")
    if cluster.get("certificate-authority"):
        cfg.ssl_ca_cert = file(cluster["certificate-authority"])
    cfg.verify_ssl = not cluster.get("insecure-skip-tls-verify", False)
    token = user.get("token")
    if not token and user.get("tokenFile"):
        try:
            with open(file(user["tokenFile"]), encoding="utf-8") as f:
                token = f.read().strip()
        except OSError as exc:
            raise RawApiConfigError(f"cannot read the kubeconfig's tokenFile: {exc}") from exc
    if token:
        cfg.api_key = {"authorization": f"Bearer {token}"}
    if user.get("client-certificate") or user.get("client-key"):
        cfg.cert_file, cfg.key_file = file(user.get("client-certificate")), file(user.get("client-key"))
    return cfg


def load_configuration(kubeconfig: str | None = None) -> Configuration:
    """The client Configuration from `kubeconfig` if given, else from the in-cluster service account."""
    try:
        if kubeconfig is None:
            from kubernetes.config.incluster_config import load_incluster_config

            cfg = Configuration()
            load_incluster_config(client_configuration=cfg)
            return cfg
        simple = _simple_kubeconfig(kubeconfig)
        if simple is not None:
            return simple
        from kubernetes.config.kube_config import load_kube_config

        cfg = Configuration()
        load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        return cfg
    except RawApiConfigError:
        raise
    except Exception as exc:  # the library raises ConfigException, OSError, KeyError, TypeError on bad files
        where = f"kubeconfig {kubeconfig}" if kubeconfig else "in-cluster service account (use --kubeconfig outside a cluster)"
        raise RawApiConfigError(f"cannot load Kubernetes credentials from {where}: {exc}") from exc


class RawApi:
    """Sends JSON bodies to API paths and returns the raw answer; non-2xx answers raise ApiException."""

    def __init__(self, configuration: Configuration):
        self.configuration = configuration
        self.rest = RESTClientObject(configuration)

    def request(self, method: str, path: str, body: Any = None, content_type: str = JSON,
                timeout: float | tuple[float, float] = (5, 15)) -> bytes:
        """One request (`path` from the server root, e.g. /api/v1/nodes/x); the answer's body bytes."""
        headers = {"Accept": JSON, "User-Agent": "sandgate"}
        if body is not None:
            headers["Content-Type"] = content_type
        for auth in self.configuration.auth_settings().values():  # calls the in-cluster token refresh hook
            if auth.get("in") == "header" and auth.get("value"):
                headers[auth["key"]] = auth["value"]
        resp = self.rest.request(method, self.configuration.host + path, headers=headers, body=body,
                                 _request_timeout=timeout)
        raw = resp.read()
        if not 200 <= resp.status <= 299:
            raise ApiException(status=resp.status, reason=resp.reason, body=raw.decode(errors="replace"))
        return raw
