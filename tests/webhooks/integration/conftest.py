"""Fixtures of the webhook integration tests (the harness itself is in webhook_harness.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# Test modules here import the harness by name; with --import-mode=importlib this directory is
# not on sys.path by itself.
sys.path.insert(0, str(Path(__file__).parent))

from webhook_harness import NAMESPACE, FakeKubeAPI, Webhook  # noqa: E402


@pytest.fixture(scope="module")
def start_webhook(tmp_path_factory):
    """Factory starting webhooks that are all stopped when the module ends."""
    started: list[Webhook] = []

    def start(*extra: str, policy: dict | None = None, pki: Path | None = None) -> Webhook:
        hook = Webhook(tmp_path_factory.mktemp("webhook"), *extra, policy=policy, pki=pki)
        started.append(hook)
        return hook.start()

    yield start
    for hook in started:
        hook.stop()


@pytest.fixture
def fake_api():
    """A fake API holding the fixtures' namespaces (one labelled sandboxed, one not)."""
    api = FakeKubeAPI({NAMESPACE: {"sandgate.io/isolation": "sandboxed", "team": "payments"},
                       "payments-trusted": {"team": "payments"}, "kube-system": {}})
    yield api
    api.close()
