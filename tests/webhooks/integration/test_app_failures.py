"""Failures inside the decision never admit a pod: the Flask app in-process with a failing decider
(a crash cannot be injected into the real server from outside)."""

from __future__ import annotations

import logging

import pytest

from sandgate.core.clusterversion import ClusterVersion
from sandgate.core.policy import PolicyStore
from support import EXAMPLE_POLICY
from webhook_harness import review
from webhooks import app as webhook_app
from webhooks.metrics import Metrics


@pytest.fixture
def client(monkeypatch):
    def crash(*_):
        raise KeyError("spec")

    monkeypatch.setitem(webhook_app.DECIDERS, "mutate", crash)
    state = webhook_app.WebhookState(policies=PolicyStore(EXAMPLE_POLICY), start_version=ClusterVersion.parse("1.24"),
                                     metrics=Metrics())
    return webhook_app.create_app(state).test_client()


@pytest.mark.parametrize("version", ["v1", "v1beta1"])
def test_an_exception_in_the_decision_is_a_denial_logged_with_the_uid(client, caplog, version):
    doc = review("01-create-bare-pod", version)
    with caplog.at_level(logging.ERROR, logger="sandgate.webhook"):
        res = client.post("/mutate/runv", json=doc)
    assert res.status_code == 200
    out = res.get_json()
    assert out["apiVersion"] == doc["apiVersion"]
    response = out["response"]
    assert response["allowed"] is False and "patch" not in response
    assert response["status"]["code"] == 500
    assert "internal error" in response["status"]["message"] and doc["request"]["uid"] in response["status"]["message"]
    failure = next(r for r in caplog.records if r.getMessage() == "decision failed; denying the request")
    assert failure.uid == doc["request"]["uid"] and failure.exc_info
