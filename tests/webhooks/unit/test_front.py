"""The WSGI front that answers admission POSTs before Flask gives exactly Flask's answers."""

from __future__ import annotations

import io
import json

import pytest

from sandgate.core.clusterversion import ClusterVersion
from sandgate.core.policy import PolicyStore
from support import EXAMPLE_POLICY, load_fixture
from webhooks import app as webhook_app
from webhooks.metrics import Metrics

BARE = json.dumps(load_fixture("admission/v1-01-create-bare-pod.json")).encode()
PATHS = ["/mutate/runv", "/validate/runv", "/mutate/gvisor", "/mutate/opt-in", "/mutate/r%C3%BCnv", "/mutate/rünv",
         "/mutate", "/validate", "/mutate/", "/mutate/runv/", "/mutate/a/b", "/mutatex/runv", "//mutate/runv",
         "/healthz", "/nope"]
BODIES = [BARE, b"{", b"[1]", b"", b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}']


@pytest.fixture(scope="module")
def clients():
    state = webhook_app.WebhookState(policies=PolicyStore(EXAMPLE_POLICY), start_version=ClusterVersion.parse("1.24"),
                                     metrics=Metrics())
    fronted = webhook_app.create_app(state)
    assert isinstance(fronted.wsgi_app, webhook_app.AdmissionFront)
    flask_only = webhook_app.create_app(state)
    flask_only.wsgi_app = flask_only.wsgi_app.flask_wsgi
    return fronted.test_client(), flask_only.test_client()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("method", ["POST", "GET", "PUT"])
def test_front_answers_like_flask(clients, path, method):
    fronted, flask_only = clients
    for body in BODIES:
        for content_type in ("application/json", "application/json; charset=utf-8", "text/plain", None):
            headers = {"Content-Type": content_type} if content_type else {}
            got = fronted.open(path, method=method, data=body, headers=headers)
            want = flask_only.open(path, method=method, data=body, headers=headers)
            assert (got.status_code, got.get_data()) == (want.status_code, want.get_data()), (path, body[:20])
            assert got.headers["Content-Type"] == want.headers["Content-Type"]
            assert got.headers.get("Allow") == want.headers.get("Allow")



def test_a_body_shorter_than_its_content_length_is_a_400_naming_it(clients):
    """A client gone after part of its body (a plain gthread worker passes the short read on)."""
    fronted, _ = clients
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/mutate/runv", "CONTENT_TYPE": "application/json",
               "CONTENT_LENGTH": str(len(BARE)), "wsgi.input": io.BytesIO(BARE[:100]), "REMOTE_ADDR": "127.0.0.1"}
    answer = []
    body = b"".join(fronted.application.wsgi_app(environ, lambda status, headers: answer.append(status)))
    assert answer == ["400 BAD REQUEST"]
    assert json.loads(body) == {"error": f"body ended after 100 of its {len(BARE)} bytes (Content-Length)"}
