"""Install the certificates `sandgate certs generate` wrote: the TLS Secret and the webhooks' caBundle.

Runs in the certgen Job after `sandgate certs generate`. It is idempotent, so the Job can be run
again at any time (re-apply, or to renew):
- an existing Secret whose certificate is valid for more than --renew-days is kept, and only the
  caBundle is (re)patched from it, so re-running never rotates a working certificate;
- otherwise the new files replace the Secret, and the caBundle is patched first with the new CA
  followed by the old one, so the API server trusts the serving certificate both before and after
  the webhook pods pick up the new Secret (no window in which a fail-closed webhook is untrusted).

The webhook configurations are patched with an RFC 6902 patch guarded by a `test` of their
resourceVersion; admissionregistration.k8s.io/v1 is tried first, then v1beta1 (Kubernetes 1.14-1.15).
"""

from __future__ import annotations

import argparse
import base64
import copy
import datetime as dt
import logging
import sys
import time
from pathlib import Path

import jsonpatch
from cryptography import x509
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import DynamicApiError, NotFoundError, ResourceNotFoundError

from sandgate.core import jsonlog

ADMISSION_GROUP = "admissionregistration.k8s.io"
ADMISSION_VERSIONS = ("v1", "v1beta1")
KINDS = {"mutating": "MutatingWebhookConfiguration", "validating": "ValidatingWebhookConfiguration"}

log = logging.getLogger("sandgate.certgen")


class InstallError(RuntimeError):
    """A step failed in a way retrying will not fix; the message says which object and why."""


def cert_not_after(cert_pem: bytes) -> dt.datetime:
    """Expiry of the first certificate in `cert_pem` (UTC)."""
    return x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc


def keep_existing(secret_data: dict[str, str] | None, now: dt.datetime, renew_days: int) -> bool:
    """True when the Secret holds ca.crt, tls.crt and tls.key and the certificate outlives the renewal margin."""
    if not secret_data or not all(secret_data.get(k) for k in ("ca.crt", "tls.crt", "tls.key")):
        return False
    try:
        expires = cert_not_after(base64.b64decode(secret_data["tls.crt"]))
    except ValueError:
        return False
    return expires - now > dt.timedelta(days=renew_days)


def bundle(*ca_pems: bytes) -> str:
    """base64 caBundle of the given CA certificates, in order, without duplicates or empties."""
    seen: list[bytes] = []
    for pem in ca_pems:
        pem = pem.strip()
        if pem and pem not in seen:
            seen.append(pem)
    return base64.b64encode(b"\n".join(seen) + b"\n").decode("ascii")


def ca_bundle_patch(obj: dict, ca_bundle: str) -> list[dict]:
    """RFC 6902 operations setting clientConfig.caBundle on every webhook of `obj`, guarded by its resourceVersion."""
    wanted = copy.deepcopy(obj)
    for webhook in wanted.get("webhooks") or []:
        webhook.setdefault("clientConfig", {})["caBundle"] = ca_bundle
    ops = jsonpatch.make_patch(obj, wanted).patch
    if not ops:
        return []
    guard = {"op": "test", "path": "/metadata/resourceVersion", "value": obj["metadata"]["resourceVersion"]}
    return [guard, *ops]


def secret_body(name: str, namespace: str, files: dict[str, bytes]) -> client.V1Secret:
    """The kubernetes.io/tls Secret holding tls.crt, tls.key and ca.crt."""
    return client.V1Secret(
        metadata=client.V1ObjectMeta(name=name, namespace=namespace,
                                     labels={"app.kubernetes.io/name": "sandgate",
                                             "app.kubernetes.io/component": "webhook"}),
        type="kubernetes.io/tls",
        data={key: base64.b64encode(value).decode("ascii") for key, value in files.items()},
    )


def read_files(directory: Path) -> dict[str, bytes]:
    """The three files `sandgate certs generate` writes."""
    try:
        return {name: (directory / name).read_bytes() for name in ("ca.crt", "tls.crt", "tls.key")}
    except OSError as exc:
        raise InstallError(f"cannot read {exc.filename}: {exc.strerror} (did `sandgate certs generate` run?)") from exc


class Cluster:
    """The few API calls the installer makes, through the kubernetes client."""

    def __init__(self, api: client.ApiClient, discovery_cache: str | None = None):
        self.core = client.CoreV1Api(api)
        # The dynamic client discovers which admissionregistration version the server has; the
        # typed client has no v1beta1 API any more.
        self.dynamic = DynamicClient(api, cache_file=discovery_cache)

    def read_secret(self, name: str, namespace: str) -> dict[str, str] | None:
        """The Secret's data, or None when it does not exist."""
        try:
            return self.core.read_namespaced_secret(name, namespace).data or {}
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def write_secret(self, body: client.V1Secret, exists: bool) -> None:
        """Create the Secret, or replace its contents."""
        if exists:
            self.core.replace_namespaced_secret(body.metadata.name, body.metadata.namespace, body)
        else:
            self.core.create_namespaced_secret(body.metadata.namespace, body)

    def patch_ca_bundle(self, kind: str, name: str, ca_bundle: str) -> str:
        """Set caBundle on every webhook of the named configuration; return the API version used."""
        for version in ADMISSION_VERSIONS:
            try:
                resource = self.dynamic.resources.get(api_version=f"{ADMISSION_GROUP}/{version}", kind=kind)
            except ResourceNotFoundError:
                continue  # this version is not served (v1 before 1.16, v1beta1 from 1.22)
            try:
                obj = resource.get(name=name).to_dict()
            except NotFoundError:
                raise InstallError(f"{kind}/{name} not found in {ADMISSION_GROUP}/{version}") from None
            ops = ca_bundle_patch(obj, ca_bundle)
            if ops:
                resource.patch(name=name, body=ops, content_type="application/json-patch+json")
            return version
        raise InstallError(f"the API server serves no {ADMISSION_GROUP} version among {', '.join(ADMISSION_VERSIONS)}")


def retrying(step, attempts: int, delay: float):
    """Run `step`; API errors and not-yet-created objects are retried up to `attempts` tries in all."""
    for attempt in range(1, max(attempts, 1)):
        try:
            return step()
        except (ApiException, DynamicApiError, InstallError) as exc:
            log.warning("retrying", extra={"attempt": attempt, "error": getattr(exc, "reason", None) or str(exc)})
            time.sleep(delay)
    return step()


def install(cluster: Cluster, args: argparse.Namespace, now: dt.datetime) -> dict:
    """Make the Secret and the caBundles consistent; return a summary for the log."""
    existing = cluster.read_secret(args.secret, args.namespace)
    if keep_existing(existing, now, args.renew_days):
        ca_bundle = bundle(base64.b64decode(existing["ca.crt"]))
        action = "kept"
    else:
        files = read_files(Path(args.dir))
        old_ca = base64.b64decode(existing["ca.crt"]) if existing and existing.get("ca.crt") else b""
        ca_bundle = bundle(files["ca.crt"], old_ca)
        action = "replaced" if existing is not None else "created"
    patched = {}
    for kind_key, kind in KINDS.items():
        name = getattr(args, kind_key)
        patched[kind] = retrying(lambda: cluster.patch_ca_bundle(kind, name, ca_bundle), args.attempts, args.delay)
    if action != "kept":
        cluster.write_secret(secret_body(args.secret, args.namespace, files), exists=existing is not None)
        # Now the pods serve the new certificate; the next run drops the old CA from the bundle.
    return {"secret": f"{args.namespace}/{args.secret}", "action": action, "patched": patched}


def build_parser() -> argparse.ArgumentParser:
    """Flags of the installer (the certgen Job passes them all)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", required=True, help="directory with ca.crt, tls.crt, tls.key")
    p.add_argument("--secret", required=True, help="name of the kubernetes.io/tls Secret")
    p.add_argument("--namespace", required=True, help="namespace of the Secret")
    p.add_argument("--mutating", required=True, help="MutatingWebhookConfiguration name")
    p.add_argument("--validating", required=True, help="ValidatingWebhookConfiguration name")
    p.add_argument("--renew-days", type=int, default=30, help="replace a certificate expiring sooner (default 30)")
    p.add_argument("--attempts", type=int, default=30, help="tries per API step (default 30)")
    p.add_argument("--delay", type=float, default=2.0, help="seconds between tries (default 2)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point: load in-cluster credentials, install, log one JSON line; exit 1 with the reason on failure."""
    args = build_parser().parse_args(argv)
    jsonlog.configure("INFO")
    config.load_incluster_config()
    try:
        summary = install(Cluster(client.ApiClient()), args, dt.datetime.now(dt.timezone.utc))
    except (ApiException, DynamicApiError, InstallError) as exc:
        detail = getattr(exc, "body", None) or str(exc)
        log.error("certificate install failed", extra={"error": detail})
        return 1
    log.info("certificates installed", extra=summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
