"""Whatever a client sends, the extender's WSGI app answers 200 or 400 with a reason — never a 500 or a crash.

Hypothesis replaces fields of the captured kube-scheduler requests with arbitrary JSON (and hostile
quantities) and calls the app in-process, over a cache filled from the captured cluster.
"""

from __future__ import annotations

import copy
import io
import json

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sandgate.core import keys
from sandgate.core.clusterversion import ClusterVersion
from sandgate.core.informer import parse_all
from sandgate.core.policy import PolicyStore
from scheduler_ext.app import Runtime, create_app
from scheduler_ext.state import ClusterCache
from support import EXAMPLE_POLICY, load_fixture

HOSTILE = st.sampled_from(["1e999990", "NaN", "-Inf", "\u00b2", "-1", "1000m", "0", "1", "2", "", " 1", "9" * 40])
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8)
                    | HOSTILE, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                          max_size=3), max_leaves=8)
FIELDS = [
    ("spec", "runtimeClassName"),
    ("spec", "containers", 0, "resources", "requests", keys.sandbox_resource("runv")),
    ("spec", "containers", 0, "resources", "requests", "cpu"),
    ("spec", "containers", 0, "resources"),
    ("spec", "initContainers"),
    ("spec", "overhead"),
    ("spec", "nodeName"),
    ("metadata", "annotations"),
    ("metadata", "uid"),
    ("status", "phase"),
    ("spec",),
]


def app_for(version: ClusterVersion):
    store = PolicyStore(EXAMPLE_POLICY)
    cache = ClusterCache(store.current, version)
    nodes = load_fixture("MANIFEST.json")["extender"]["nodes"]
    cache.node_store().replace(parse_all(nodes, cache.parse_node, cache.skipped["nodes"]))
    return create_app(Runtime(store, cache, "snapshot"))


APPS = {v: app_for(v) for v in (ClusterVersion(1, 24), ClusterVersion(1, 15))}


def put(doc: dict, path: tuple, value) -> None:
    target = doc
    for step in path[:-1]:
        if isinstance(target, dict):
            target = target.setdefault(step, {})
        elif isinstance(target, list) and isinstance(step, int) and step < len(target):
            target = target[step]
        else:
            return
    if isinstance(target, dict):
        target[path[-1]] = value


def call(app, verb: str, body: bytes) -> tuple[str, bytes]:
    status = []
    environ = {"PATH_INFO": f"/{verb}", "REQUEST_METHOD": "POST", "CONTENT_LENGTH": str(len(body)),
               "wsgi.input": io.BytesIO(body)}
    chunks = app(environ, lambda s, headers: status.append(s))
    return status[0], b"".join(chunks)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["filter-ncc-true-runv-pod", "filter-ncc-false-runv-pod", "prioritize-ncc-true-runv-pod",
                        "preempt-ncc-true", "preempt-ncc-false"]),
       st.lists(st.tuples(st.sampled_from(FIELDS), JSON), min_size=1, max_size=3),
       st.sampled_from(list(APPS)))
def test_any_pod_gets_200_or_a_400_with_a_reason(name, changes, version):
    request = copy.deepcopy(load_fixture(f"extender/{name}.json"))
    for path, value in changes:
        put(request["Pod"], path, value)
    verb = name.split("-")[0]
    status, body = call(APPS[version], verb, json.dumps(request).encode())
    assert status in ("200 OK", "400 Bad Request"), (status, body[:300])
    answer = orjson.loads(body)
    if status.startswith("400"):
        assert answer["Error"]
    elif verb == "filter":
        assert answer["Error"] == "", answer["Error"]  # an internal error would be reported here
        sent = request.get("NodeNames") or [n["metadata"]["name"] for n in request["Nodes"]["items"]]
        named = set(answer["NodeNames"] or [n["metadata"]["name"] for n in (answer["Nodes"] or {}).get("items", [])])
        assert named | set(answer["FailedNodes"]) | set(answer["FailedAndUnresolvableNodes"]) <= set(sent)
