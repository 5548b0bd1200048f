"""A policy file rewritten in place, slowly, is never served half written (sandgate.core.reloading)."""

from __future__ import annotations

import threading
import time

import yaml

from sandgate.core.policy import PolicyStore

from support import EXAMPLE_POLICY


def block_style_policy(extra_profile: bool) -> str:
    """The example policy with `forbid` as a block list ending in privileged: a prefix cut before
    `- privileged` is still a valid policy, the dangerous kind of half-written file."""
    doc = yaml.safe_load(EXAMPLE_POLICY.read_text())
    doc["clusterVersion"] = "1.24"
    for profile in doc["profiles"].values():
        profile["forbid"] = [f for f in profile.get("forbid", []) if f != "privileged"] + ["privileged"]
    if extra_profile:
        doc["profiles"]["kata"] = {"runtimeClassName": "kata", "forbid": ["hostNetwork", "privileged"]}
    text = yaml.safe_dump(doc, default_flow_style=False, sort_keys=False)
    assert text.rstrip().endswith("- privileged")
    return text


def rewrite_in_place(path, text: str, chunks: int, pause: float) -> None:
    """Truncate and write `text` into the same inode in `chunks` pieces with `pause` between them."""
    size = -(-len(text) // chunks)
    with open(path, "w") as f:
        for start in range(0, len(text), size):
            f.write(text[start:start + size])
            f.flush()
            time.sleep(pause)


def test_a_slow_in_place_rewrite_is_loaded_only_once_complete(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(block_style_policy(extra_profile=False))
    store = PolicyStore(path, check_interval=0.01)
    seen, stop = [], threading.Event()

    def watch() -> None:
        while not stop.is_set():
            policy = store.current
            seen.append((store.generation, {name: p.forbid for name, p in policy.profiles.items()}))
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        rewrite_in_place(path, block_style_policy(extra_profile=True), chunks=12, pause=0.15)
        deadline = time.monotonic() + 10
        while store.generation < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        watcher.join()
    assert store.generation == 2, store.last_error
    assert "kata" in store.current.profiles
    # every policy ever handed out forbade privileged in every profile: no prefix was served
    for _generation, forbids in seen:
        assert all("privileged" in forbid for forbid in forbids.values()), forbids
    assert {generation for generation, _ in seen} == {1, 2}


def test_a_change_is_loaded_once_it_settles(tmp_path):
    path = tmp_path / "policy.yaml"
    path.write_text(block_style_policy(extra_profile=False))
    store = PolicyStore(path, check_interval=0, settle=0.2)
    path.write_text(block_style_policy(extra_profile=True))
    assert not store.reload_if_changed()  # just written: not yet proven stable
    deadline = time.monotonic() + 10
    while not store.reload_if_changed():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert "kata" in store.current.profiles and store.generation == 2
