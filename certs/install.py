"""`sandgate certs install`: keep the in-cluster certificates valid without ever changing what clients trust.

Run by the certgen Job at install (with --create-ca, the webhook configurations and --drop-binding)
and by the renewal CronJob (leaves only). One long-lived CA, kept in the Secret sandgate-ca, signs
one leaf per server (webhook, extender). Renewing a leaf reuses that CA, so the webhooks' caBundle
and kube-scheduler's static tlsConfig.caData, set once, stay valid across every renewal.

Least privilege: every Secret is pre-created by the manifests (this code only reads and updates
named Secrets, it never creates one), the webhook configurations are only patched in caBundle, and
the install Job deletes its own RoleBinding and ClusterRoleBinding when it is done.

Order, so that no moment exists in which the API server or the scheduler distrusts a serving pod:
the CA first, then the caBundle (the CA plus any older CA a leaf Secret still names), then the
leaves, then the bindings.
"""

from __future__ import annotations

import argparse
import base64
import copy
import datetime as dt
import logging
import time
from dataclasses import dataclass

import jsonpatch
from cryptography import x509

from certs.generate import (CA, CA_FILE, CA_KEY_FILE, CERT_FILE, KEY_FILE, CertError, issue, new_ca,
                            service_dns_names)

ADMISSION_GROUP = "admissionregistration.k8s.io"
ADMISSION_VERSIONS = ("v1", "v1beta1")
KINDS = {"mutating": "MutatingWebhookConfiguration", "validating": "ValidatingWebhookConfiguration"}
BINDING_KINDS = ("rolebinding", "clusterrolebinding")

log = logging.getLogger("sandgate.certs")


class InstallError(RuntimeError):
    """A step failed in a way retrying will not fix; the message says which object and why."""


@dataclass(frozen=True)
class Leaf:
    """A serving certificate to keep valid: Secret name -> Service it serves."""

    secret: str
    service: str

    @classmethod
    def parse(cls, text: str) -> "Leaf":
        secret, sep, service = text.partition("=")
        if not sep or not secret or not service:
            raise argparse.ArgumentTypeError(f'"{text}" is not SECRET=SERVICE')
        return cls(secret, service)


def _decode(data: dict[str, str] | None, key: str) -> bytes:
    value = (data or {}).get(key) or ""
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        return b""


def stored_ca(data: dict[str, str] | None) -> CA | None:
    """The CA kept in the CA Secret's data, None when it holds none; CertError when it is corrupt."""
    cert, key = _decode(data, CA_FILE), _decode(data, CA_KEY_FILE)
    if not cert and not key:
        return None
    ca = CA(cert, key)
    try:
        ca.private_key()
    except ValueError as exc:
        raise CertError(f"the CA Secret holds no valid ca.crt/ca.key pair ({exc}); it is never replaced "
                        f"automatically, since that would change what clients trust (docs/install.md)") from exc
    return ca


def leaf_problem(data: dict[str, str] | None, ca: CA, names: list[str], now: dt.datetime,
                 renew_days: int) -> str | None:
    """Why the leaf Secret must be (re)issued, or None when it is good for more than renew_days."""
    cert_pem, key_pem = _decode(data, CERT_FILE), _decode(data, KEY_FILE)
    if not cert_pem or not key_pem:
        return "empty"
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        cert.verify_directly_issued_by(ca.certificate)
    except (ValueError, TypeError):
        return "not signed by the current CA"
    except Exception as exc:  # cryptography's InvalidSignature
        return f"not signed by the current CA ({type(exc).__name__})"
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "no subjectAltName"
    missing = set(names) - set(sans.get_values_for_type(x509.DNSName))
    if missing:
        return f"does not name {', '.join(sorted(missing))}"
    if cert.not_valid_after_utc - now <= dt.timedelta(days=renew_days):
        return f"expires {cert.not_valid_after_utc.isoformat()}"
    return None


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


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


class Cluster:
    """The API calls the installer makes, through the kubernetes client."""

    def __init__(self, api, discovery_cache: str | None = None):
        from kubernetes import client
        from kubernetes.dynamic import DynamicClient

        self.core = client.CoreV1Api(api)
        self.rbac = client.RbacAuthorizationV1Api(api)
        # Discovery says which admissionregistration version the server has (v1beta1 only on 1.14-1.15).
        self.dynamic = DynamicClient(api, cache_file=discovery_cache)

    def read_secret(self, namespace: str, name: str):
        """The Secret (a client model); InstallError when it is missing: the manifests create every Secret."""
        from kubernetes.client.rest import ApiException

        try:
            return self.core.read_namespaced_secret(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                raise InstallError(f"Secret {namespace}/{name} does not exist; it is created empty by the "
                                   f"manifests (this job may not create Secrets): apply them first") from None
            raise

    def update_secret(self, secret, data: dict[str, str]) -> None:
        """Replace the Secret's data; its resourceVersion makes a concurrent writer fail, not win silently."""
        secret.data = {**(secret.data or {}), **data}
        self.core.replace_namespaced_secret(secret.metadata.name, secret.metadata.namespace, secret)

    def patch_ca_bundle(self, kind: str, name: str, ca_bundle: str) -> str:
        """Set caBundle on every webhook of the named configuration; return the API version used."""
        from kubernetes.dynamic.exceptions import NotFoundError, ResourceNotFoundError

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

    def delete_binding(self, kind: str, namespace: str, name: str) -> None:
        """Delete a RoleBinding or ClusterRoleBinding; already gone is fine."""
        from kubernetes.client.rest import ApiException

        try:
            if kind == "rolebinding":
                self.rbac.delete_namespaced_role_binding(name, namespace)
            else:
                self.rbac.delete_cluster_role_binding(name)
        except ApiException as exc:
            if exc.status != 404:
                raise


def retrying(step, attempts: int, delay: float):
    """Run `step`; API errors and not-yet-created objects are retried up to `attempts` tries in all."""
    from kubernetes.client.rest import ApiException
    from kubernetes.dynamic.exceptions import DynamicApiError

    for attempt in range(1, max(attempts, 1)):
        try:
            return step()
        except (ApiException, DynamicApiError, InstallError) as exc:
            log.warning("retrying", extra={"attempt": attempt, "error": getattr(exc, "reason", None) or str(exc)})
            time.sleep(delay)
    return step()


def ensure_ca(cluster: Cluster, args: argparse.Namespace, now: dt.datetime) -> tuple[CA, str]:
    """The kept CA; a new one only with --create-ca and only while the CA Secret holds none."""
    secret = cluster.read_secret(args.namespace, args.ca_secret)
    ca = stored_ca(secret.data)
    if ca is not None:
        return ca, "kept"
    if not args.create_ca:
        raise InstallError(f"Secret {args.namespace}/{args.ca_secret} holds no CA yet; the install Job creates it "
                           f"(--create-ca), renewal never does")
    ca = new_ca(f"sandgate-ca {args.namespace}", now)
    cluster.update_secret(secret, {CA_FILE: _b64(ca.cert_pem), CA_KEY_FILE: _b64(ca.key_pem)})
    return ca, "created"


def install(cluster: Cluster, args: argparse.Namespace, now: dt.datetime) -> dict:
    """Make the CA, the caBundles and every leaf consistent; return a summary for the log."""
    ca, ca_action = retrying(lambda: ensure_ca(cluster, args, now), args.attempts, args.delay)
    leaves = {leaf.secret: cluster.read_secret(args.namespace, leaf.secret) for leaf in args.leaf}
    # A leaf Secret may still name an older CA (a first run after an older sandgate): keep trusting
    # it until its pods serve the new leaf; the next install run drops it.
    old_cas = [_decode(s.data, CA_FILE) for s in leaves.values()]
    ca_bundle = bundle(ca.cert_pem, *old_cas)
    patched = {}
    for kind_key, kind in KINDS.items():
        for name in getattr(args, kind_key):
            patched[f"{kind}/{name}"] = retrying(lambda: cluster.patch_ca_bundle(kind, name, ca_bundle),
                                                 args.attempts, args.delay)
    renewed = {}
    for leaf in args.leaf:
        names = service_dns_names(leaf.service, args.namespace)
        problem = leaf_problem(leaves[leaf.secret].data, ca, names, now, args.renew_days)
        if problem is None:
            renewed[leaf.secret] = "kept"
            continue
        fresh = issue(ca, leaf.service, args.namespace, now=now)
        cluster.update_secret(leaves[leaf.secret], {CERT_FILE: _b64(fresh.cert_pem), KEY_FILE: _b64(fresh.key_pem),
                                                    CA_FILE: _b64(ca.cert_pem)})
        renewed[leaf.secret] = f"issued ({problem})"
    for ref in args.drop_binding:
        kind, _, rest = ref.partition("/")
        namespace, _, name = rest.rpartition("/")
        cluster.delete_binding(kind, namespace, name)
    return {"ca": ca_action, "leaves": renewed, "patched": patched, "dropped": list(args.drop_binding)}


def _binding(text: str) -> str:
    kind, _, rest = text.partition("/")
    parts = rest.split("/")
    if kind not in BINDING_KINDS or not all(parts) or len(parts) != (2 if kind == "rolebinding" else 1):
        raise argparse.ArgumentTypeError(f'"{text}" is not rolebinding/NAMESPACE/NAME or clusterrolebinding/NAME')
    return text


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Flags of `sandgate certs install` (the certgen Job and the renewal CronJob pass them)."""
    p.add_argument("--namespace", required=True, help="namespace of the Secrets and the Services")
    p.add_argument("--ca-secret", required=True, help="Secret keeping the CA (ca.crt, ca.key)")
    p.add_argument("--create-ca", action="store_true", help="create the CA when the CA Secret holds none (install only)")
    p.add_argument("--leaf", action="append", type=Leaf.parse, default=[], metavar="SECRET=SERVICE",
                   help="kubernetes.io/tls Secret to keep valid for Service SERVICE (repeatable)")
    p.add_argument("--mutating", action="append", default=[], metavar="NAME",
                   help="MutatingWebhookConfiguration whose caBundle to set (repeatable)")
    p.add_argument("--validating", action="append", default=[], metavar="NAME",
                   help="ValidatingWebhookConfiguration whose caBundle to set (repeatable)")
    p.add_argument("--drop-binding", action="append", type=_binding, default=[], metavar="KIND/[NS/]NAME",
                   help="RoleBinding or ClusterRoleBinding to delete when done (the job's own grants)")
    p.add_argument("--renew-days", type=int, default=30, help="reissue a leaf expiring sooner (default 30)")
    p.add_argument("--attempts", type=int, default=30, help="tries per API step (default 30)")
    p.add_argument("--delay", type=float, default=2.0, help="seconds between tries (default 2)")
