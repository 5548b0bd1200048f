"""Hostile clients against the real extender (one worker, TLS): a thousand quiet, half-open and slow
connections do not keep kube-scheduler's requests from being answered. Counts, not timings."""

from __future__ import annotations

import json
import ssl

from bench.slowconn import measure
from slow_clients import assert_answered_under_flood
from certs.generate import generate, write
from support import load_fixture


def test_a_thousand_quiet_connections_leave_filter_answered(extender, k8s, tmp_path):
    write(generate("sandgate-extender", "sandgate-system", ips=["127.0.0.1"]), tmp_path)
    crt, key, ca = tmp_path / "tls.crt", tmp_path / "tls.key", tmp_path / "ca.crt"
    nodes = k8s.manifest_nodes()
    server = extender(k8s.snapshot_list(nodes, k8s.fresh_leases(nodes)), "--cert-file", str(crt),
                      "--key-file", str(key), "--tls-handshake-timeout", "2", "--request-timeout", "2", tls=ca)
    port = int(server.url.rsplit(":", 1)[1])
    request = load_fixture("extender/filter-ncc-true-runv-pod.json")

    def check(doc: dict) -> None:
        assert doc["NodeNames"] == request["NodeNames"] and not doc.get("Error")

    ctx = ssl.create_default_context(cafile=str(ca))
    result = measure("extender", port, "/filter", json.dumps(request).encode(), ctx, 1000, 4.0, tmp_path,
                     check=check)
    assert_answered_under_flood(result, 40)
