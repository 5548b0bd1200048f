"""The real webhook never serves a policy file that is still being written in place."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import requests
import yaml

from webhook_harness import review

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from test_reloading import block_style_policy, rewrite_in_place  # noqa: E402


def test_privileged_pods_stay_denied_while_the_policy_is_rewritten_slowly(start_webhook):
    hook = start_webhook("--cluster-version", "1.24", "--no-namespace-watch",
                         policy=yaml.safe_load(block_style_policy(extra_profile=False)))
    hook.policy.write_text(block_style_policy(extra_profile=False))
    privileged = review("01-create-bare-pod")
    privileged["request"]["object"]["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    answers, stop = [], threading.Event()

    def ask() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                for path in ("/mutate/runv", "/validate/runv"):
                    answers.append(hook.post(path, privileged, session=session).json()["response"])
                time.sleep(0.02)

    asker = threading.Thread(target=ask)
    asker.start()
    try:
        rewrite_in_place(hook.policy, block_style_policy(extra_profile=True), chunks=12, pause=0.2)
        deadline = time.monotonic() + 20
        routed = None
        while time.monotonic() < deadline:
            routed = hook.post("/mutate/kata", review("01-create-bare-pod")).json()["response"]
            if routed["allowed"]:
                break
            time.sleep(0.2)
    finally:
        stop.set()
        asker.join()
    assert routed and routed["allowed"], routed  # the complete file did take effect
    assert answers and not any(a["allowed"] for a in answers), [a for a in answers if a["allowed"]][:1]
    assert all("privileged" in a["status"]["message"] for a in answers)
