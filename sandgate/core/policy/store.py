"""Loading a SandboxPolicy file, and the store that reloads it while a server runs."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import yaml

from sandgate.core.policy.model import Policy, PolicyError
from sandgate.core.policy.parse import parse_policy
from sandgate.core.reloading import SETTLE_SECONDS, ReloadingFiles


def load_policy(path: str | os.PathLike) -> Policy:
    """Read and validate a policy file (YAML or JSON); raise PolicyError naming the file and keys."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError([f"cannot read the file: {exc.strerror or exc}"], source) from exc
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError([f"not valid YAML: {exc}"], source) from exc
    return parse_policy(doc, source)


class PolicyStore(ReloadingFiles[Policy]):
    """The current policy of a running server, reloaded when its file changes (see sandgate.reloading)."""

    def __init__(self, path: str | os.PathLike, check_interval: float = 2.0,
                 on_reload: Callable[[Policy], None] | None = None, settle: float = SETTLE_SECONDS):
        self.path = str(path)
        super().__init__("policy", [self.path], lambda: load_policy(self.path), (PolicyError,),
                         check_interval, on_reload, settle)
