"""Hostile clients against the real extender (one worker, TLS): a thousand quiet, half-open and slow
connections do not keep kube-scheduler's requests from being answered. Counts, not timings."""

from __future__ import annotations

import json
import ssl

from bench.slowconn import Flood, ordinary
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
    flood = Flood("127.0.0.1", port, 1000, 120, tmp_path)
    try:
        opened = flood.wait_open(1000)
        assert opened["open"] >= 950, opened
        fresh = ordinary("127.0.0.1", port, "/filter", json.dumps(request).encode(), ctx, 20, 40, fresh=True,
                         check=check)
        kept = ordinary("127.0.0.1", port, "/filter", json.dumps(request).encode(), ctx, 20, 40, fresh=False,
                        check=check)
        stats = flood.stats()
    finally:
        flood.stop()
    assert (fresh["answered"], fresh["failures"]) == (40, 0), fresh["first_failures"]
    assert (kept["answered"], kept["failures"]) == (40, 0), kept["first_failures"]
    assert stats["closed_by_server"] >= 500, stats
