"""`sandgate webhook`: validate everything, then serve the Flask app with gunicorn over TLS.

Start-up order matters: the policy, the certificate and the cluster version are checked in the
master process BEFORE gunicorn binds, so a bad configuration exits non-zero with a clear message
instead of serving half-configured. Workers (sandgate.core.serving: handshakes and request reads
on the event loop, deadlines on both, the app in request threads) build the Flask app, the metrics
and the namespace watch after the fork.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import shutil
import sys
import tempfile
from urllib.parse import quote

from kubernetes.client.exceptions import ApiException

from sandgate.core import jsonlog, serving
from sandgate.core.clusterversion import ClusterVersion, VersionError
from sandgate.core.kube import KubeConfigError, load_api_client, server_version
from sandgate.core.policy import PolicyError, PolicyStore
from sandgate.core.rawapi import RawApi, load_configuration
from sandgate.core.serving import CertificateError, ReloadingContext

log = logging.getLogger("sandgate.webhook")

# The API server's webhook client (Go net/http) keeps idle connections for 90 s. A server that
# closed them sooner would race the client's next request on a closing socket; parked keep-alive
# connections wait in the worker's event loop and hold no thread, so a longer timeout costs only a fd.
KEEPALIVE_SECONDS = 120
METRICS_DIR_PREFIX = "sandgate-metrics-"



def gunicorn_options(host: str, port: int, workers: int, threads: int, tls: ReloadingContext,
                     log_level: str = "info", limits: serving.Limits | None = None,
                     access_log: bool = False) -> dict:
    """The gunicorn settings of the webhook (also used by bench/webhook.py for its no-op baseline)."""
    limits = limits or serving.Limits(keepalive=KEEPALIVE_SECONDS)
    options = serving.gunicorn_options(host, port, workers=workers, threads=threads, tls=tls, limits=limits,
                                       proc_name="sandgate-webhook", log_level=log_level,
                                       access_log=access_log)
    options["post_worker_init"] = serving.settle_heap
    return options


def _fail(message: str, code: int = 2) -> int:
    log.error(message)
    print(f"sandgate webhook: {message}", file=sys.stderr)
    return code


def _metrics_dir() -> str:
    """A fresh PROMETHEUS_MULTIPROC_DIR named after this master, after removing those of dead masters.

    The master removes its own at exit; one killed with SIGKILL cannot, so the next start does.
    """
    base = tempfile.gettempdir()
    for stale in glob.glob(os.path.join(base, f"{METRICS_DIR_PREFIX}*")):
        try:
            pid = int(os.path.basename(stale)[len(METRICS_DIR_PREFIX):].split("-", 1)[0])
            if os.stat(stale).st_uid != os.getuid():
                continue
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(stale, ignore_errors=True)
        except (ValueError, OSError):
            continue
    return tempfile.mkdtemp(prefix=f"{METRICS_DIR_PREFIX}{os.getpid()}-")


def _pod_reader(kubeconfig: str | None):
    """GET one pod as wire JSON, with a deadline (the agent guard's lookup for pod-bound tokens)."""
    api = None

    def get_pod(namespace: str, name: str) -> dict:
        nonlocal api
        if api is None:
            api = RawApi(load_configuration(kubeconfig))
        path = f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(name, safe='')}"
        return json.loads(api.request("GET", path, timeout=(3, 5)))

    return get_pod


def serve(args: argparse.Namespace) -> int:
    """Run the webhook until stopped; returns (or exits with) the process exit code."""
    jsonlog.configure(args.log_level)
    try:
        policies = PolicyStore(args.config)
    except PolicyError as exc:
        return _fail(str(exc))
    try:
        tls = ReloadingContext(args.cert_file, args.key_file)
    except CertificateError as exc:
        return _fail(f"serving certificate: {exc}")
    policy = policies.current

    override = None
    if args.cluster_version:
        try:
            override = ClusterVersion.parse(args.cluster_version)
        except VersionError as exc:
            return _fail(f"--cluster-version: {exc}")

    api_error = None
    api_available = False
    if args.kubeconfig or os.environ.get("KUBERNETES_SERVICE_HOST"):
        try:
            load_api_client(args.kubeconfig)
            api_available = True
        except KubeConfigError as exc:
            if args.kubeconfig:
                return _fail(str(exc))
            api_error = str(exc)
    else:
        api_error = "no Kubernetes credentials (not running in a cluster and no --kubeconfig)"

    version = override or policy.cluster_version
    if version is None:
        if not api_available:
            return _fail(f"clusterVersion is auto and --cluster-version is not set, so the API server must be "
                         f"asked for its version, but {api_error}", 1)
        try:
            version = server_version(load_api_client(args.kubeconfig))
        except Exception as exc:  # any failure: unreachable, TLS, 403, unsupported version
            reason = f"HTTP {exc.status} {exc.reason}" if isinstance(exc, ApiException) else f"{type(exc).__name__}: {exc}"
            return _fail(f"clusterVersion is auto and --cluster-version is not set, and the API server's "
                         f"/version could not be read ({reason}); set --cluster-version X.Y to start without it", 1)

    if args.no_namespace_watch:
        namespaces_off = "disabled by --no-namespace-watch"
    elif not api_available:
        namespaces_off = f"disabled: {api_error}"
    else:
        namespaces_off = None
    if namespaces_off:
        log.warning("namespace cache off: /mutate and /validate without a profile will deny every pod; "
                    "the /<profile> paths work without API access", extra={"reason": namespaces_off})

    log.info("starting webhook", extra={
        "bind": serving.bind_address(args.host, args.port), "cluster_version": str(version),
        "version_source": "--cluster-version" if override else "policy" if policy.cluster_version else "api-server",
        "mode": version.mode(policy.pod_overhead).value, "workers": args.workers, "threads": args.threads,
        "policy": args.config, "namespace_cache": namespaces_off or "watch"})

    # Must precede the first import of prometheus_client (it picks its storage at import time).
    metrics_dir = _metrics_dir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    from webhooks.metrics import Metrics, mark_worker_dead

    def build_app():
        from webhooks.app import WebhookState, create_app
        from webhooks.namespaces import NamespaceCache
        from webhooks.runtimeclasses import RuntimeClassLookup

        metrics = Metrics()
        cache = None
        if namespaces_off is None:
            metrics.namespace_cache_synced.set(0)
            cache = NamespaceCache(lambda: load_api_client(args.kubeconfig),
                                   on_sync_change=lambda synced: metrics.namespace_cache_synced.set(int(synced)))
            cache.start()
        # Without API access (or an explicit --no-namespace-watch) the webhook makes no API calls at all.
        runtime_classes = RuntimeClassLookup(lambda: RawApi(load_configuration(args.kubeconfig))) \
            if namespaces_off is None else None
        pod_nodes = None
        if api_available:
            from webhooks.guards import PodNodes
            pod_nodes = PodNodes(_pod_reader(args.kubeconfig))
        state = WebhookState(policies=policies, start_version=version, metrics=metrics, cluster_version=override,
                             namespaces=cache, namespaces_off=namespaces_off or "", tls=tls,
                             runtime_classes=runtime_classes, pod_nodes=pod_nodes)
        return create_app(state)

    limits = serving.Limits(handshake_timeout=args.tls_handshake_timeout, request_timeout=args.request_timeout,
                            keepalive=KEEPALIVE_SECONDS, max_connections=args.max_connections)
    serving.raise_fd_limit(args.workers * limits.max_connections)
    options = gunicorn_options(args.host, args.port, args.workers, args.threads, tls, args.log_level, limits,
                               access_log=args.access_log)
    options["child_exit"] = lambda arbiter, worker: mark_worker_dead(worker.pid)
    master_pid = os.getpid()
    try:
        serving.GunicornApp(options, build_app).run()
    finally:
        # Workers leave through this frame too (they are forked inside run()); only the master cleans up.
        if os.getpid() == master_pid:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0
