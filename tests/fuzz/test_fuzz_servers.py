"""Fuzzing the real servers: the webhook and the extender, each a `sandgate` subprocess over TLS,
get the captured AdmissionReviews and extender bodies (tests/fixtures/k8s-1.24) mutated by hypothesis:
values replaced by hostile ones (`1e999990`, NaN, nulls, wrong types, huge numbers, deep nesting),
keys dropped, duplicate keys added, bytes flipped.

Asserted for every request:
  * no 5xx, and a 200 never says "internal error";
  * a webhook 200 is an AdmissionReview in the request's apiVersion answering the request's uid;
  * a pod routed to a profile (auditAnnotations.profile) is never allowed without that profile's
    runtimeClassName once the returned patch is applied;
  * an extender 200 is the JSON object the verb answers with.

Bounded for CI: 60 examples per server (a few seconds). A longer run:
    SANDGATE_FUZZ_EXAMPLES=5000 python3 -m pytest tests/fuzz -q
and another seed: `--hypothesis-seed=N` (hypothesis' own pytest option).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import ssl
import subprocess
import sys
import http.client
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
import yaml
from hypothesis import HealthCheck, given, settings, strategies as st

from support import EXAMPLE_POLICY, FIXTURES, REPO, stop_process

EXAMPLES = int(os.environ.get("SANDGATE_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=False,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                       HealthCheck.data_too_large])

ADMISSION = sorted(p for p in (FIXTURES / "admission").glob("v*.json"))
# The verbs the extender serves (it binds nothing: kube-scheduler does).
EXTENDER = sorted(p for p in (FIXTURES / "extender").glob("*.json") if p.name.split("-", 1)[0] in
                  ("filter", "prioritize", "preempt"))
WEBHOOK_PATHS = ["/mutate/runv", "/validate/runv", "/mutate/gvisor", "/validate/gvisor", "/mutate/opt-in",
                 "/validate/opt-in", "/mutate", "/validate", "/mutate/none", "/validate/sandboxed"]
HOSTILE_STRINGS = ["1e999990", "-1e999990", "1e-999990", "NaN", "Infinity", "-Infinity", "8Ei", "1E", "",
                   "runv", "gvisor", "runc", "\x00", "é", "a" * 300, "100m", "64Mi", "0", "-1",
                   "9223372036854775807", "Always", "true", "privileged", "/", "~1", "<generated>"]


# ---- servers ------------------------------------------------------------------------------------

class Server:
    def __init__(self, name: str, args: list[str], workdir: Path):
        from certs.generate import generate, write

        write(generate("fuzz", "fuzz", ips=["127.0.0.1"]), workdir)
        with __import__("socket").socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.ctx = ssl.create_default_context(cafile=str(workdir / "ca.crt"))
        self.log_path = workdir / f"{name}.log"
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "sandgate", *args, "--cert-file", str(workdir / "tls.crt"),
             "--key-file", str(workdir / "tls.key"), "--host", "127.0.0.1", "--port", str(self.port),
             "--cluster-version", "1.24", "--log-level", "error"],
            cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT)
        self.conn: http.client.HTTPSConnection | None = None
        self._wait()

    def _wait(self) -> None:
        import time

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited {self.proc.returncode}"
            try:
                if self.request("GET", "/healthz", b"")[0] == 200:
                    return
            except OSError:
                self.conn = None
            time.sleep(0.1)
        raise AssertionError("server not healthy")

    def request(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        """One request on a kept-alive connection (reopened when the server closed it)."""
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=30)
            try:
                self.conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
                res = self.conn.getresponse()
                data = res.read()
                if res.will_close:
                    self.conn.close()
                    self.conn = None
                return res.status, data
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def last_log(self) -> str:
        """The server's last error log line (its traceback when a decision failed), for assertion messages."""
        self.log.flush()
        lines = [line for line in self.log_path.read_text(errors="replace").splitlines() if '"error"' in line]
        return lines[-1][-3000:] if lines else ""

    def stop(self) -> None:
        if self.conn is not None:
            self.conn.close()
        stop_process(self.proc, timeout=20)
        self.log.close()


@pytest.fixture(scope="module")
def webhook(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("fuzz-webhook")
    shutil.copy(EXAMPLE_POLICY, workdir / "policy.yaml")
    server = Server("webhook", ["webhook", "--config", str(workdir / "policy.yaml"), "--workers", "1",
                                "--no-namespace-watch"], workdir)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def extender(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("fuzz-extender")
    shutil.copy(EXAMPLE_POLICY, workdir / "policy.yaml")
    (workdir / "snapshot.json").write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": []}))
    server = Server("extender", ["extender", "--config", str(workdir / "policy.yaml"), "--snapshot",
                                 str(workdir / "snapshot.json")], workdir)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def runtime_classes() -> dict[str, str]:
    doc = yaml.safe_load(EXAMPLE_POLICY.read_text())
    return {name: p["runtimeClassName"] for name, p in doc["profiles"].items()}


# ---- mutations ----------------------------------------------------------------------------------

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
                      st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(HOSTILE_STRINGS),
                      st.text(max_size=20))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                             st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                          max_leaves=8)


# Where a tenant's input matters most: drawn half of the time (missing levels are created).
TARGETS = {
    "admission": [("request", "object", *p) for p in (
        ("spec", "runtimeClassName"), ("metadata", "generateName"), ("metadata", "name"),
        ("metadata", "annotations", "sandgate.io/runtime"), ("metadata", "annotations"),
        ("spec", "containers", 0, "resources", "requests", "cpu"),
        ("spec", "containers", 0, "resources", "limits", "memory"), ("spec", "containers", 0, "resources"),
        ("spec", "containers", 0, "securityContext", "privileged"), ("spec", "initContainers"),
        ("spec", "overhead", "memory"), ("spec", "tolerations"), ("spec", "nodeSelector"), ("spec", "hostNetwork"),
        ("spec", "containers"), ("spec",), ("metadata",))] + [
        ("request", "uid"), ("request", "namespace"), ("request", "operation"), ("request", "kind"),
        ("request", "name"), ("request", "dryRun"), ("request", "object"), ("apiVersion",)],
    "extender": [("Pod", *p) for p in (
        ("spec", "runtimeClassName"), ("spec", "containers", 0, "resources", "requests", "cpu"),
        ("spec", "containers", 0, "resources", "requests", "memory"), ("spec", "overhead", "cpu"),
        ("metadata", "annotations", "sandgate.io/runtime"), ("metadata", "uid"), ("spec", "nodeName"),
        ("status", "phase"), ("spec", "initContainers"))] + [
        ("NodeNames",), ("NodeNames", 0), ("Nodes", "items", 0, "status", "allocatable", "cpu"),
        ("Nodes", "items", 0, "metadata", "annotations", "sandgate.io/sandbox-capacity.runv"),
        ("Nodes", "items", 0, "metadata", "labels"), ("Nodes", "items"), ("PodUID",), ("Node",),
        ("NodeNameToMetaVictims",), ("NodeNameToVictims",)],
}


def _put(doc: Any, path: tuple, value: Any) -> None:
    """Set `value` at `path`, creating missing object levels; skipped where the shape does not allow it."""
    for step in path[:-1]:
        if isinstance(doc, dict):
            doc = doc.setdefault(step, {} if not isinstance(step, int) else [])
        elif isinstance(doc, list) and isinstance(step, int) and step < len(doc):
            doc = doc[step]
        else:
            return
    if isinstance(doc, dict) and not isinstance(path[-1], int):
        doc[path[-1]] = value
    elif isinstance(doc, list) and isinstance(path[-1], int) and path[-1] < len(doc):
        doc[path[-1]] = value


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every JSON path in `doc` (keys and list indexes)."""
    out = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            out.extend(_paths(value, prefix + (key,)))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            out.extend(_paths(value, prefix + (i,)))
    return out


def _set(doc: Any, path: tuple, value: Any, delete: bool) -> Any:
    if not path:
        return value
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return doc


@st.composite
def mutated(draw, fixtures: list[Path], targets: str) -> tuple[str, bytes]:
    """(the fixture's name, the bytes to send): a few value edits, then maybe a byte-level edit."""
    fixture = draw(st.sampled_from(fixtures))
    doc = json.loads(fixture.read_text())
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        if draw(st.booleans()):
            _put(doc, draw(st.sampled_from(TARGETS[targets])), draw(json_value))
            continue
        paths = [p for p in _paths(doc) if p]
        path = draw(st.sampled_from(paths))
        doc = _set(doc, path, draw(json_value), delete=draw(st.booleans()) and draw(st.booleans()))
    body = json.dumps(doc).encode()
    how = draw(st.sampled_from(["json", "json", "json", "duplicate-key", "bytes"]))
    if how == "duplicate-key":
        # a second runtimeClassName / uid / cpu member after the first: decoders keep the last
        key = draw(st.sampled_from([b'"runtimeClassName": ', b'"uid": ', b'"cpu": ', b'"spec": ']))
        at = body.find(key)
        if at >= 0:
            extra = json.dumps(draw(json_leaf)).encode()
            body = body[:at] + key + extra + b", " + body[at:]
    elif how == "bytes":
        at = draw(st.integers(min_value=0, max_value=len(body) - 1))
        body = body[:at] + draw(st.binary(max_size=4)) + body[at + draw(st.integers(0, 3)):]
    return fixture.name, body


def _sent(body: bytes) -> Any:
    """What the server decoded (Python's json, last duplicate wins), or None if it is not JSON."""
    try:
        return json.loads(body)
    except ValueError:
        return None


# ---- the properties -----------------------------------------------------------------------------

@FUZZ
@given(case=mutated(ADMISSION, "admission"), path=st.sampled_from(WEBHOOK_PATHS))
def test_webhook_never_500s_and_never_lets_a_routed_pod_through_unsandboxed(webhook, runtime_classes, case, path):
    _name, body = case
    status, data = webhook.request("POST", path, body)
    assert status < 500, (status, data[:500])
    if status != 200:
        assert status == 400 and "error" in json.loads(data), (status, data[:500])
        return
    sent = _sent(body)
    review = json.loads(data)
    assert review["kind"] == "AdmissionReview" and review["apiVersion"] == sent["apiVersion"]
    response = review["response"]
    assert response["uid"] == sent["request"]["uid"]
    assert isinstance(response["allowed"], bool)
    assert "internal error" not in response.get("status", {}).get("message", ""), webhook.last_log()
    profile = response.get("auditAnnotations", {}).get("profile")
    if response["allowed"] and profile is not None:
        pod = sent["request"]["object"]
        if "patch" in response:
            assert response["patchType"] == "JSONPatch"
            pod = jsonpatch.apply_patch(pod, json.loads(base64.b64decode(response["patch"])))
        assert pod["spec"]["runtimeClassName"] == runtime_classes[profile], (path, pod["spec"])


EXTENDER_ANSWER_KEYS = {"filter": {"NodeNames", "FailedNodes", "Error"}, "prioritize": None,
                        "preempt": {"NodeNameToMetaVictims"}}


@FUZZ
@given(case=mutated(EXTENDER, "extender"))
def test_extender_never_500s_and_answers_well_formed(extender, case):
    name, body = case
    verb = name.split("-", 1)[0]
    status, data = extender.request("POST", f"/{verb}", body)
    assert status < 500, (status, data[:500])
    answer = json.loads(data)
    if status != 200:
        assert status in (400, 413) and answer.get("Error"), (status, data[:500])
        return
    assert "internal error" not in json.dumps(answer), extender.last_log()
    expected = EXTENDER_ANSWER_KEYS[verb]
    if expected is None:
        assert isinstance(answer, list) and all({"Host", "Score"} <= set(a) for a in answer)
    else:
        assert isinstance(answer, dict) and set(answer) >= expected - {"Error"} - {"NodeNameToMetaVictims"}



def test_the_unmutated_fixtures_are_answered_200(webhook, extender):
    """The fuzzed servers really decide: every captured body, as captured, gets a 200."""
    for fixture in ADMISSION:
        status, data = webhook.request("POST", "/mutate/runv", fixture.read_bytes())
        assert status == 200 and json.loads(data)["kind"] == "AdmissionReview", (fixture.name, data[:300])
    for fixture in EXTENDER:
        status, data = extender.request("POST", "/" + fixture.name.split("-", 1)[0], fixture.read_bytes())
        assert status == 200 and "internal error" not in data.decode(), (fixture.name, data[:300])
