"""Connecting to the Kubernetes API with the official client: kubeconfig or in-cluster."""

from __future__ import annotations

from kubernetes import client, config

from sandgate.core.clusterversion import ClusterVersion


class KubeConfigError(RuntimeError):
    """No usable Kubernetes credentials were found."""


def load_api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """An ApiClient from `kubeconfig` if given, else the in-cluster service account."""
    try:
        if kubeconfig:
            return config.new_client_from_config(config_file=kubeconfig)
        cfg = client.Configuration()
        config.load_incluster_config(client_configuration=cfg)
        return client.ApiClient(cfg)
    except (config.ConfigException, OSError) as exc:
        where = f"kubeconfig {kubeconfig}" if kubeconfig else "in-cluster service account (use --kubeconfig outside a cluster)"
        raise KubeConfigError(f"cannot load Kubernetes credentials from {where}: {exc}") from exc


def server_version(api: client.ApiClient, timeout: float = 5.0) -> ClusterVersion:
    """The API server's version, from GET /version."""
    info = client.VersionApi(api).get_code(_request_timeout=timeout)
    return ClusterVersion.from_version_info(info.to_dict())
