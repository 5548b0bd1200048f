"""The containerd config model (pure): merge, import and version rules, and what a plan changes.

The real `containerd config dump` judges the model on 1.6 in test_containerd_config.py; here the
rules of both release lines are pinned, and a property test checks on generated split configs that
applying a plan changes the modelled effective config by exactly the wanted runtime tables.
"""

from __future__ import annotations

import tomli_w
from hypothesis import given, settings
from hypothesis import strategies as st

from node_agent.containerd import (ConfigSnapshot, ContainerdVersion, parse_version, plan_configure, resolve,
                                   version_from_banner)

V16, V20 = ContainerdVersion(1, 6), ContainerdVersion(2, 0)
CRI = "io.containerd.grpc.v1.cri"


def runtimes_doc(**handlers: str) -> dict:
    return {"version": 2, "plugins": {CRI: {"containerd": {"runtimes": {
        h: {"runtime_type": t} for h, t in handlers.items()}}}}}


def test_versions_parse_from_cri_and_banners():
    assert parse_version("1.6.20~ds1") == V16
    assert parse_version("v1.7.2") == ContainerdVersion(1, 7)
    assert parse_version("2.0.0-rc.1") == V20
    assert parse_version("latest") is None
    assert version_from_banner("containerd github.com/containerd/containerd/v2 v2.1.3 abc123\n") == ContainerdVersion(2, 1)
    assert version_from_banner("containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3") == V16
    assert version_from_banner("runc version 1.1.5") is None


def test_1x_replaces_the_plugin_section_2x_merges_it():
    snapshot = ConfigSnapshot("/c/config.toml", {
        "/c/config.toml": 'version = 2\nimports = ["/c/kata.toml"]\n[plugins."io.containerd.grpc.v1.cri"]\n'
                          'sandbox_image = "pause:3.9"\n' + tomli_w.dumps(runtimes_doc(runc="io.containerd.runc.v2"))
                          .replace("version = 2\n", ""),
        "/c/kata.toml": tomli_w.dumps(runtimes_doc(kata="io.containerd.kata.v2")),
    })
    old, new = resolve(snapshot, V16), resolve(snapshot, V20)
    assert set(old.runtimes()) == {"kata"} and "sandbox_image" not in old.cri()
    assert old.problems()  # runc, the default runtime, is gone
    assert old.cri_owner == "/c/kata.toml"
    assert set(new.runtimes()) == {"runc", "kata"} and new.cri()["sandbox_image"] == "pause:3.9"
    assert new.problems() == []


def test_imports_load_breadth_first_and_only_star_globs():
    snapshot = ConfigSnapshot("/c/main.toml", {
        "/c/main.toml": 'imports = ["a.toml", "/c/d/*.toml", "/c/b[1].toml"]\n',
        "/c/a.toml": 'imports = ["nested.toml"]\n',
        "/c/nested.toml": "", "/c/d/1.toml": "", "/c/d/2.toml": "", "/c/b[1].toml": "",
    }, globs={"/c/d/*.toml": ("/c/d/1.toml", "/c/d/2.toml")})
    order = ["/c/a.toml", "/c/d/1.toml", "/c/d/2.toml", "/c/b[1].toml", "/c/nested.toml"]
    assert resolve(snapshot, V16).imports == order == resolve(snapshot, V20).imports


def test_relative_globs_follow_the_release():
    snapshot = ConfigSnapshot("/etc/containerd/config.toml", {"/etc/containerd/config.toml": 'imports = ["conf.d/*.toml"]\n'},
                              globs={"/conf.d/*.toml": ("/conf.d/x.toml",),
                                     "/etc/containerd/conf.d/*.toml": ("/etc/containerd/conf.d/y.toml",)})
    snapshot.texts.update({"/conf.d/x.toml": "", "/etc/containerd/conf.d/y.toml": ""})
    assert resolve(snapshot, V16).imports == ["/conf.d/x.toml"]  # 1.x: against the daemon's cwd, /
    assert resolve(snapshot, V20).imports == ["/etc/containerd/conf.d/y.toml"]


TYPES = st.sampled_from(["io.containerd.runc.v2", "io.containerd.kata.v2", "io.containerd.runsc.v1"])
NAMES = st.sampled_from(["runc", "kata", "runsc", "gpu", "kata-fc"])


@st.composite
def split_configs(draw):
    """A main file and up to three imported files, each maybe naming the CRI section and other plugins."""
    files = {}
    count = draw(st.integers(0, 3))
    paths = [f"/c/{i}.toml" for i in range(count)]
    for path in ["/c/config.toml"] + paths:
        doc: dict = {"version": 2}
        if path == "/c/config.toml":
            doc["imports"] = paths
        if draw(st.booleans()):
            cri: dict = {"sandbox_image": draw(st.sampled_from(["pause:3.6", "pause:3.9"]))}
            if draw(st.booleans()):
                cri["containerd"] = {"runtimes": {n: {"runtime_type": draw(TYPES)}
                                                  for n in draw(st.sets(NAMES, max_size=3))}}
            doc["plugins"] = {CRI: cri}
        if draw(st.booleans()):
            doc.setdefault("plugins", {})["io.containerd.gc.v1.scheduler"] = {"pause_threshold": draw(st.floats(0, 1))}
        files[path] = tomli_w.dumps(doc)
    return ConfigSnapshot("/c/config.toml", files)


@settings(max_examples=150, deadline=None)
@given(split_configs(), st.sampled_from([V16, V20]), st.sets(st.sampled_from(["kata", "runsc", "wasm"]), min_size=1))
def test_a_plan_adds_exactly_the_wanted_tables(snapshot, version, wanted):
    before = resolve(snapshot, version)
    want = {h: ("io.containerd." + h + ".v1", {}) for h in wanted}
    plan = plan_configure(snapshot, before, "/c/conf.d", want, "20260101T000000Z")
    after = resolve(snapshot.with_files({c.path: c.content for c in plan.files}), version)
    added = {h: {"runtime_type": want[h][0]} for h in wanted if h not in before.runtimes()}
    assert set(plan.handlers) == set(added)
    assert after.runtimes() == {**before.runtimes(), **added}
    strip = lambda cri: {k: v for k, v in cri.items() if k != "containerd"}  # noqa: E731
    assert strip(after.cri()) == strip(before.cri())
    other = lambda cfg: {k: v for k, v in (cfg.effective.get("plugins") or {}).items() if k != CRI}  # noqa: E731
    assert other(after) == other(before)
    if not version.merges_plugin_sections:
        assert plan.drop_ins == ()  # 1.x: a drop-in would replace the whole CRI section
