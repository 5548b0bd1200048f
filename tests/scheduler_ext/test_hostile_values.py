"""Quantities a tenant can put in a pod (the API server accepts `cpu: "1e999990"`) reach the extender:
each is a 400 naming the field, at once, for filter and prioritize, and the server goes on answering."""

from __future__ import annotations

import copy
import json

from support import load_fixture

ABSURD = ["1e999990", "NaN", "Infinity", "-Infinity", "8Ei", "1e2147483647", "1" * 5000]


def test_absurd_quantities_are_400s_naming_the_field(extender, k8s):
    nodes = k8s.manifest_nodes()
    server = extender(k8s.snapshot_list(nodes, k8s.fresh_leases(nodes)))
    good = load_fixture("extender/filter-ncc-true-runv-pod.json")
    for verb in ("filter", "prioritize"):
        for value in ABSURD:
            request = copy.deepcopy(good)
            request["Pod"]["spec"]["containers"][0].setdefault("resources", {})["requests"] = {"cpu": value}
            resp = server.post(verb, request)
            assert resp.status_code == 400, (verb, value, resp.text)
            assert "Pod.spec.containers[0].resources.requests.cpu: " in resp.json()["Error"]
    # a JSON NaN token is not JSON
    raw = json.dumps(good).replace('"NodeNames"', '"X": NaN, "NodeNames"', 1)
    resp = server.post("filter", raw)
    assert resp.status_code == 400 and "JSON" in resp.json()["Error"]
    healthy = server.post("filter", good)
    assert healthy.status_code == 200 and healthy.json()["NodeNames"] == good["NodeNames"]
