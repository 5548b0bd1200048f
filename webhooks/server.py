"""`sandgate webhook`: validate everything, then serve the Flask app with gunicorn over TLS.

Start-up order matters: the policy, the certificate and the cluster version are checked in the
master process BEFORE gunicorn binds, so a bad configuration exits non-zero with a clear message
instead of serving half-configured. Workers (gthread, keep-alive) build the Flask app, the metrics
and the namespace watch after the fork.
"""

from __future__ import annotations

import argparse
import gc
import glob
import json
import logging
import os
import shutil
import sys
import tempfile
from datetime import timedelta

from gunicorn import glogging
from kubernetes.client.exceptions import ApiException
from gunicorn.app.base import BaseApplication

from sandgate.core import jsonlog
from sandgate.core.clusterversion import ClusterVersion, VersionError
from sandgate.core.kube import KubeConfigError, load_api_client, server_version
from sandgate.core.policy import PolicyError, PolicyStore
from webhooks.tls import CertificateError, ReloadingContext

log = logging.getLogger("sandgate.webhook")

# The API server's webhook client (Go net/http) keeps idle connections for 90 s. A server that
# closed them sooner would race the client's next request on a closing socket; parked keep-alive
# connections wait in the worker's poller and hold no thread, so a longer timeout costs only a fd.
KEEPALIVE_SECONDS = 120
WORKER_CONNECTIONS = 1000
METRICS_DIR_PREFIX = "sandgate-metrics-"


class JsonGunicornLogger(glogging.Logger):
    """gunicorn's error and access logs as JSON lines through the root logger (sandgate.core.jsonlog)."""

    def setup(self, cfg) -> None:
        """Route gunicorn.error/gunicorn.access to the root JSON handler instead of gunicorn's own."""
        self.cfg = cfg
        self._access_log_enabled = True
        self.loglevel = self.LOG_LEVELS.get(cfg.loglevel.lower(), logging.INFO)
        for logger, level in ((self.error_log, self.loglevel), (self.access_log, logging.INFO)):
            logger.handlers[:] = []
            logger.propagate = True
            logger.setLevel(level)

    def access(self, resp, req, environ, request_time: timedelta) -> None:
        """One JSON line per HTTP request with the facts as fields."""
        status = resp.status.split(None, 1)[0] if isinstance(resp.status, str) else resp.status
        self.access_log.info("request", extra={
            "method": environ.get("REQUEST_METHOD"), "path": environ.get("PATH_INFO"),
            "status": int(status) if str(status).isdigit() else status, "bytes": getattr(resp, "sent", None),
            "duration_ms": round(request_time.total_seconds() * 1000, 3),
            "remote": environ.get("REMOTE_ADDR"), "user_agent": environ.get("HTTP_USER_AGENT"),
        })


class WebhookApplication(BaseApplication):
    """gunicorn run programmatically: options from the CLI, the app built in each worker."""

    def __init__(self, options: dict, app_factory):
        self.options = options
        self.app_factory = app_factory
        super().__init__()

    def load_config(self) -> None:
        """Apply the options this gunicorn version knows (control_socket_* are 25.1+)."""
        for key, value in self.options.items():
            if key in self.cfg.settings:
                self.cfg.set(key, value)

    def load(self):
        """Build the WSGI app (runs in the worker, after fork)."""
        return self.app_factory()


def settle_heap(worker=None) -> None:
    """Move everything alive once the worker has built its app out of the collector's sight.

    The worker holds ~65,000 long-lived objects (Flask, the kubernetes client, the policy); every
    full collection walked all of them, 30-180 ms measured under load, a few times a minute at a
    few hundred requests/s, and each pass stalled the requests in flight (bench/webhook.py p99). Frozen
    objects are never scanned again; request garbage is still collected as before.
    """
    gc.collect()
    gc.freeze()


def gunicorn_options(host: str, port: int, workers: int, threads: int, tls: ReloadingContext,
                     log_level: str = "info") -> dict:
    """The gunicorn settings of the webhook (also used by bench/webhook.py for its no-op baseline)."""
    return {
        "bind": [_bind(host, port)],
        "worker_class": "gthread",
        "workers": workers,
        "threads": threads,
        "worker_connections": WORKER_CONNECTIONS,
        "keepalive": KEEPALIVE_SECONDS,
        "certfile": tls.cert_file,
        "keyfile": tls.key_file,
        # Called for every accepted connection: hands out the current (possibly rotated) context.
        "ssl_context": lambda conf, default_factory: tls.context(),
        "logger_class": JsonGunicornLogger,
        "loglevel": log_level,
        "accesslog": "-",
        "errorlog": "-",
        "graceful_timeout": 15,
        "proc_name": "sandgate-webhook",
        "post_worker_init": settle_heap,
        # A control socket would be a second, unauthenticated management endpoint; we need none.
        "control_socket_disable": True,
    }


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


def _bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _pod_reader(kubeconfig: str | None):
    """GET one pod as wire JSON, with a deadline (the agent guard's lookup for pod-bound tokens)."""
    from kubernetes import client

    api = None

    def get_pod(namespace: str, name: str) -> dict:
        nonlocal api
        if api is None:
            api = client.CoreV1Api(load_api_client(kubeconfig))
        resp = api.read_namespaced_pod(name, namespace, _preload_content=False, _request_timeout=(3, 5))
        return json.loads(resp.data)

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
        "bind": _bind(args.host, args.port), "cluster_version": str(version),
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
        runtime_classes = RuntimeClassLookup(lambda: load_api_client(args.kubeconfig)) \
            if namespaces_off is None else None
        pod_nodes = None
        if api_available:
            from webhooks.guards import PodNodes
            pod_nodes = PodNodes(_pod_reader(args.kubeconfig))
        state = WebhookState(policies=policies, start_version=version, metrics=metrics, cluster_version=override,
                             namespaces=cache, namespaces_off=namespaces_off or "", tls=tls,
                             runtime_classes=runtime_classes, pod_nodes=pod_nodes)
        return create_app(state)

    options = gunicorn_options(args.host, args.port, args.workers, args.threads, tls, args.log_level)
    options["child_exit"] = lambda arbiter, worker: mark_worker_dead(worker.pid)
    master_pid = os.getpid()
    try:
        WebhookApplication(options, build_app).run()
    finally:
        # Workers leave through this frame too (they are forked inside run()); only the master cleans up.
        if os.getpid() == master_pid:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0
