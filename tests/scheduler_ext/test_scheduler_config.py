"""The shipped kube-scheduler configurations: every generation parses, names its fields exactly as the
Go types spell them (kube-scheduler decodes v1beta2+ strictly), and points at what the extender serves."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from sandgate.core import keys
from sandgate.core.clusterversion import ClusterVersion
from sandgate.core.policy import PolicyStore, load_policy
from scheduler_ext.app import Runtime, create_app
from scheduler_ext.state import ClusterCache
from support import EXAMPLE_POLICY, REPO

SCHEDULER = REPO / "manifests" / "scheduler"
CA_PLACEHOLDER = "${SANDGATE_CA_BUNDLE}"

# json tags of k8s.io/kube-scheduler/config/v1 LegacyExtender (Policy, <= 1.22) ...
LEGACY_FIELDS = {"urlPrefix", "filterVerb", "preemptVerb", "prioritizeVerb", "weight", "bindVerb", "enableHttps",
                 "tlsConfig", "httpTimeout", "nodeCacheCapable", "managedResources", "ignorable"}
# ... and of the Extender type of KubeSchedulerConfiguration v1beta1 (config/v1.Extender), v1beta2, v1beta3, v1.
EXTENDER_FIELDS = LEGACY_FIELDS - {"enableHttps"} | {"enableHTTPS"}
TLS_FIELDS = {"insecure", "serverName", "certFile", "keyFile", "caFile", "certData", "keyData", "caData"}
GENERATIONS = ["v1beta1", "v1beta2", "v1beta3", "v1"]


def served_verbs() -> set[str]:
    """The POST routes of the real extender app."""
    store = PolicyStore(EXAMPLE_POLICY)
    cache = ClusterCache(store.current, ClusterVersion(1, 24))
    app = create_app(Runtime(store, cache, "snapshot"))
    return {path.lstrip("/") for method, path in app.routes if method == "POST"}


def shipped_handlers() -> list[str]:
    """The runtime handlers of the shipped policy (manifests/base/policy.yaml)."""
    return sorted(load_policy(REPO / "manifests" / "base" / "policy.yaml").handlers)


def check_extender(ext: dict, allowed: set[str]) -> None:
    assert set(ext) <= allowed, f"unknown fields {set(ext) - allowed}"
    assert set(ext["tlsConfig"]) <= TLS_FIELDS
    assert ext["tlsConfig"]["caData"] == CA_PLACEHOLDER
    assert ext["urlPrefix"] == "https://sandgate-extender.sandgate-system.svc:8888"
    assert ext["nodeCacheCapable"] is True
    assert ext["ignorable"] is False
    assert isinstance(ext["weight"], int) and ext["weight"] > 0
    verbs = {ext[k] for k in ("filterVerb", "prioritizeVerb", "preemptVerb")}
    assert verbs == served_verbs()
    # kube-scheduler binds (and counts the slots): an extender bind verb would take that over
    assert "bindVerb" not in ext
    # called only for pods that request a slot of some handler; the scheduler keeps counting them
    assert sorted(ext["managedResources"], key=lambda r: r["name"]) == [{"name": keys.sandbox_resource(h), "ignoredByScheduler": False}
                                       for h in shipped_handlers()]


def test_legacy_policy_file():
    doc = json.loads((SCHEDULER / "scheduler-policy.legacy.json").read_text())
    assert (doc["kind"], doc["apiVersion"]) == ("Policy", "v1")
    # predicates/priorities absent = the defaults; an empty list would switch them all off
    assert set(doc) == {"kind", "apiVersion", "extenders"}
    [ext] = doc["extenders"]
    check_extender(ext, LEGACY_FIELDS)
    assert ext["enableHttps"] is True
    # LegacyExtender.HTTPTimeout is a time.Duration: an integer of nanoseconds, not "5s"
    assert ext["httpTimeout"] == 5_000_000_000


@pytest.mark.parametrize("version", GENERATIONS)
def test_kube_scheduler_configuration(version):
    doc = yaml.safe_load((SCHEDULER / f"kube-scheduler-config.{version}.yaml").read_text())
    assert doc["apiVersion"] == f"kubescheduler.config.k8s.io/{version}"
    assert doc["kind"] == "KubeSchedulerConfiguration"
    assert set(doc) == {"apiVersion", "kind", "clientConnection", "extenders"}
    [ext] = doc["extenders"]
    check_extender(ext, EXTENDER_FIELDS)
    assert ext["enableHTTPS"] is True
    assert re.fullmatch(r"\d+s", ext["httpTimeout"])  # metav1.Duration


def test_every_generation_is_shipped():
    names = {p.name for p in SCHEDULER.iterdir()}
    assert names == {"scheduler-policy.legacy.json"} | {f"kube-scheduler-config.{v}.yaml" for v in GENERATIONS}
