"""`sandgate extender`: build the extender and serve it with gunicorn.

One gunicorn worker process with request threads (sandgate.core.serving): one cache (a 5,000-node cluster is
~10^6 objects) serves every request thread, where more workers would each list and watch the
cluster. Everything that can fail on bad input (policy, snapshot, cluster version, credentials) is
done in the master before gunicorn starts, so a mistake exits with a clear message instead of a
worker boot loop; the app is then preloaded and forked, and the informer threads start in the
worker, because threads do not survive fork.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable

from kubernetes import client

from sandgate.core import jsonlog, serving
from sandgate.core.clusterversion import ClusterVersion, VersionError
from sandgate.core.informer import Informer
from sandgate.core.kube import KubeConfigError, load_api_client, server_version
from sandgate.core.policy import Policy, PolicyError, PolicyStore
from sandgate.core.serving import CertificateError, ReloadingContext
from scheduler_ext.app import Runtime, create_app
from scheduler_ext.snapshot import SnapshotError, apply_snapshot, kubelet_version, read_list
from scheduler_ext.state import ClusterCache

log = logging.getLogger(__name__)

WATCH_SECONDS = 300  # server-side watch timeout; the watch is re-opened from the last resourceVersion


class StartupError(RuntimeError):
    """The extender cannot start; the message says what to fix."""


@dataclass
class Built:
    """A ready app and what to start in the worker process."""

    app: Any
    start_background: Callable[[], None]


def _version(args: argparse.Namespace, policy: Policy, fallback: Callable[[], ClusterVersion | None],
             where: str) -> ClusterVersion:
    try:
        if args.cluster_version:
            return ClusterVersion.parse(args.cluster_version)
    except VersionError as exc:
        raise StartupError(f"--cluster-version: {exc}") from None
    if policy.cluster_version is not None:
        return policy.cluster_version
    version = fallback()
    if version is None:
        raise StartupError(f"cannot tell the Kubernetes version {where}: pass --cluster-version X.Y "
                           f"or set clusterVersion in the policy")
    return version


def build(args: argparse.Namespace) -> Built:
    """Load the policy and the cluster state source, and assemble the app (no threads yet)."""
    store = PolicyStore(args.config)
    policy = store.current
    if args.snapshot:
        items = read_list(args.snapshot)
        version = _version(args, policy, lambda: kubelet_version(items),
                           "in snapshot mode (no API server; the snapshot's nodes carry no kubeletVersion)")
        cache = ClusterCache(policy, version)
        apply_snapshot(cache, items, args.snapshot)
        runtime = Runtime(store, cache, "snapshot")

        def start_background() -> None:
            return None
    else:
        try:
            api = load_api_client(args.kubeconfig)
        except KubeConfigError as exc:
            raise StartupError(str(exc)) from None

        def ask_api() -> ClusterVersion:
            try:
                return server_version(load_api_client(args.kubeconfig))
            except Exception as exc:  # any failure to reach /version is a startup error with its cause
                raise StartupError(f"cannot read the API server version ({exc}); pass --cluster-version") from None

        version = _version(args, policy, ask_api, "")
        cache = ClusterCache(policy, version)
        runtime = Runtime(store, cache, "cluster")

        def start_background() -> None:
            start_informers(api, cache, threading.Event())

    store.on_reload = cache.set_policy
    log.info("extender configured", extra={"policy": args.config, "source": runtime.source,
                                           "clusterVersion": str(version),
                                           "mode": cache.mode.value})
    app = create_app(runtime)
    if args.cert_file:
        app.metrics.watch_certificate(args.cert_file)
    return Built(app, start_background)


def start_informers(api: client.ApiClient, cache: ClusterCache, stop: threading.Event) -> list[Informer]:
    """List+watch Nodes (cluster), Pods (all namespaces) and heartbeat Leases (the agent's namespace)."""
    core = client.CoreV1Api(api)
    coordination = client.CoordinationV1Api(api)
    namespace = cache.policy.agent.namespace

    def list_leases(**kwargs: Any) -> Any:
        return coordination.list_namespaced_lease(namespace, **kwargs)

    informers = [
        Informer("nodes", core.list_node, cache.parse_node, cache.node_store(), stop,
                 watch_seconds=WATCH_SECONDS, clock=cache.clock),
        Informer("pods", core.list_pod_for_all_namespaces, cache.parse_pod, cache.pod_store(), stop,
                 watch_seconds=WATCH_SECONDS, clock=cache.clock),
        Informer("leases", list_leases, cache.parse_lease, cache.lease_store(), stop,
                 watch_seconds=WATCH_SECONDS, clock=cache.clock),
    ]
    for informer in informers:
        # The cache reports the informers' own status and skipped objects in /readyz and metrics.
        cache.sync[informer.kind] = informer.status
        cache.skipped[informer.kind] = informer.skipped
        informer.start()
    return informers


def _in_worker(start_background: Callable[[], None]) -> None:
    start_background()
    # The cache (a 5,000-node snapshot is ~10^6 objects) lives as long as the process.
    serving.settle_heap()


def gunicorn_options(args: argparse.Namespace, start_background: Callable[[], None]) -> dict[str, Any]:
    """gunicorn settings: one worker (sandgate.core.serving), JSON logs, TLS 1.2+ when a certificate is given."""
    tls = ReloadingContext(args.cert_file, args.key_file) if args.cert_file else None
    limits = serving.Limits(handshake_timeout=args.tls_handshake_timeout, request_timeout=args.request_timeout,
                            # kube-scheduler's Go client reuses connections; don't make it reconnect per pod
                            keepalive=75, max_connections=args.max_connections,
                            # ExtenderArgs carry whole Node objects when nodeCacheCapable is false
                            max_body=256 * 1024 * 1024)
    options = serving.gunicorn_options(args.host, args.port, workers=1, threads=args.threads, tls=tls,
                                       limits=limits, proc_name="sandgate-extender", log_level=args.log_level)
    options.update({
        "preload_app": True,
        "timeout": 60,
        "graceful_timeout": 10,
        "post_worker_init": lambda _worker: _in_worker(start_background),
    })
    return options


def serve(args: argparse.Namespace) -> int:
    """Run the extender until stopped; returns the exit code (2 on a configuration error)."""
    jsonlog.configure(args.log_level)
    if bool(args.cert_file) != bool(args.key_file):
        print("sandgate extender: --cert-file and --key-file go together", file=sys.stderr)
        return 2
    try:
        built = build(args)
    except (PolicyError, SnapshotError, StartupError) as exc:
        print(f"sandgate extender: {exc}", file=sys.stderr)
        return 2
    try:
        options = gunicorn_options(args, built.start_background)
    except CertificateError as exc:
        print(f"sandgate extender: serving certificate: {exc}", file=sys.stderr)
        return 2
    serving.raise_fd_limit(args.max_connections)
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    serving.GunicornApp(options, lambda: built.app).run()
    return 0
