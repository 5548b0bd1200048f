"""The namespace-label cache: the real kubernetes client against a fake API on loopback, alone and
inside the real webhook (`--kubeconfig`)."""

from __future__ import annotations

import base64
import json

import jsonpatch
import pytest
from kubernetes import client

from sandgate.core import keys
from webhook_harness import NAMESPACE, review, wait_for
from webhooks.namespaces import NamespaceCache

SANDBOXED = {"sandgate.io/isolation": "sandboxed", "team": "payments"}


@pytest.fixture
def cache(fake_api):
    def api_client():
        cfg = client.Configuration()
        cfg.host = fake_api.url
        return client.ApiClient(cfg)

    states: list[bool] = []
    cache = NamespaceCache(api_client, on_sync_change=states.append, watch_seconds=1, backoff_max=0.5)
    cache.states = states
    yield cache.start()
    cache.stop()


def test_lists_then_follows_the_watch_without_relisting(cache, fake_api):
    assert cache.lookup(NAMESPACE, wait=10) == SANDBOXED
    assert cache.synced and cache.states == [True]
    assert cache.lookup("payments-trusted") == {"team": "payments"}
    lists = fake_api.lists

    fake_api.set_labels("new-ns", {"sandgate.io/isolation": "gvisor"})
    assert cache.lookup("new-ns", wait=10) == {"sandgate.io/isolation": "gvisor"}
    fake_api.set_labels("payments-trusted", {"team": "payments", "sandgate.io/isolation": "sandboxed"})
    assert wait_for(lambda: cache.lookup("payments-trusted", wait=0).get("sandgate.io/isolation") == "sandboxed")
    fake_api.delete("new-ns")
    assert wait_for(lambda: cache.lookup("new-ns", wait=0) is None)
    assert fake_api.lists == lists  # events came from the watch, never from a GET per lookup


def test_unknown_namespace_is_none_after_a_short_wait(cache):
    assert cache.lookup(NAMESPACE, wait=10) is not None
    assert cache.lookup("never-created", wait=0.2) is None


def test_410_gone_relists(cache, fake_api):
    assert cache.lookup(NAMESPACE, wait=10) is not None
    lists = fake_api.lists
    # A change only a fresh list can reveal, then every watch from the current version expires.
    fake_api.set_labels("missed-ns", {"team": "x"}, record_event=False)
    fake_api.gone_below = fake_api.rv + 1
    assert cache.lookup("missed-ns", wait=10) == {"team": "x"}
    assert fake_api.lists > lists
    assert cache.synced


def test_failed_relist_fails_closed_then_recovers(cache, fake_api):
    assert cache.lookup(NAMESPACE, wait=10) is not None
    fake_api.fail_list_status = 403
    fake_api.gone_below = fake_api.rv + 1000
    assert wait_for(lambda: not cache.synced)
    assert cache.lookup(NAMESPACE, wait=0.1) is None
    assert "403" in cache.status() and "list and watch on namespaces" in cache.status()
    fake_api.fail_list_status = None
    fake_api.gone_below = 0
    assert cache.lookup(NAMESPACE, wait=10) == SANDBOXED
    assert cache.states == [True, False, True]


def patch_of(response: dict) -> list:
    return json.loads(base64.b64decode(response["patch"])) if "patch" in response else []


def test_webhook_routes_mutate_by_watched_namespace_labels(start_webhook, fake_api, tmp_path):
    fake_api.fail_list_status = 403  # RBAC missing at first
    # clusterVersion: auto in the example policy, answered by the fake API's /version.
    hook = start_webhook("--kubeconfig", str(fake_api.kubeconfig(tmp_path / "kubeconfig")))
    started = next(r for r in hook.log_records() if r.get("msg") == "starting webhook")
    assert started["cluster_version"] == "1.24" and started["version_source"] == "api-server"

    ready = hook.get("/readyz")
    assert ready.status_code == 503
    assert wait_for(lambda: any("namespaces: not synced" in line and "403" in line
                                for line in hook.get("/readyz").json().get("notReady", [])))
    denied = hook.post("/mutate", review("01-create-bare-pod")).json()["response"]
    assert denied["allowed"] is False and "namespace cache not synced" in denied["status"]["message"]
    assert any(r.get("msg") == "admission" and r.get("level") == "warning" for r in hook.log_records())

    fake_api.fail_list_status = None
    assert wait_for(lambda: hook.get("/readyz").status_code == 200, timeout=20)
    # Both workers must have synced before every request can be routed.
    assert wait_for(lambda: all(hook.get("/readyz", headers={"Connection": "close"}).status_code == 200
                                for _ in range(6)), timeout=20)

    routed = hook.post("/mutate", review("01-create-bare-pod", "v1beta1")).json()["response"]
    assert routed["allowed"] is True
    assert {"op": "add", "path": "/spec/runtimeClassName", "value": "runv"} in patch_of(routed)

    trusted = review("01-create-bare-pod")
    trusted["request"]["namespace"] = trusted["request"]["object"]["metadata"]["namespace"] = "payments-trusted"
    assert hook.post("/mutate", trusted).json()["response"] == {"uid": trusted["request"]["uid"], "allowed": True}

    fake_api.set_labels("payments-trusted", {"team": "payments", "sandgate.io/isolation": "gvisor"})
    relabelled = wait_for(lambda: patch_of(hook.post("/mutate", trusted, headers={"Connection": "close"})
                                           .json()["response"]), timeout=20)
    assert {"op": "add", "path": "/spec/runtimeClassName", "value": "gvisor"} in relabelled
    guard = hook.post("/validate", trusted).json()["response"]
    assert guard["allowed"] is False  # the pod as sent has no runtimeClassName: the guard refuses it


def test_on_1_15_a_pod_naming_a_missing_runtime_class_is_refused_like_the_builtin_plugin(start_webhook, fake_api,
                                                                                       tmp_path):
    kubeconfig = str(fake_api.kubeconfig(tmp_path / "kubeconfig"))
    hook = start_webhook("--kubeconfig", kubeconfig, "--cluster-version", "1.15", "--workers", "1")
    doc = review("01-create-bare-pod")
    mutated = hook.post("/mutate/runv", doc).json()["response"]
    doc["request"]["object"] = jsonpatch.apply_patch(doc["request"]["object"],
                                                     json.loads(base64.b64decode(mutated["patch"])))
    for _ in range(2):
        assert hook.post("/validate/runv", doc).json()["response"]["allowed"] is True
    assert fake_api.runtime_class_gets == 1  # seen to exist: remembered, not looked up for every pod

    # An unrouted pod in an opt-in namespace naming a RuntimeClass nobody created.
    plain = review("01-create-bare-pod")
    plain["request"]["object"]["spec"]["runtimeClassName"] = "kata"
    response = hook.post(f"/validate/{keys.OPT_IN_PATH_SEGMENT}", plain).json()["response"]
    assert response["allowed"] is False and response["status"]["code"] == 403
    assert response["status"]["message"] == 'pod rejected: RuntimeClass "kata" not found'
    fake_api.runtime_classes.add("kata")  # created a moment ago: looked up live, admitted
    assert hook.post(f"/validate/{keys.OPT_IN_PATH_SEGMENT}", plain).json()["response"]["allowed"] is True
