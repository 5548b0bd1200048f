"""Keep the agent's resident memory small on edge nodes: skip two eager `__init__`s of the `kubernetes` package.

`import kubernetes.<anything>` first runs kubernetes/__init__.py, which imports client, config,
dynamic, watch, stream, utils, leaderelection and informer; the dynamic client alone pulls in
kubernetes_validate and jsonschema. `import kubernetes.config.<anything>` first runs
kubernetes/config/__init__.py, which imports the kubeconfig loader and with it requests, oauthlib
and the typed ApiClient (pydantic). The agent needs the client's Configuration and REST layer and,
in a pod, the in-cluster loader (sandgate.core.rawapi), so it registers both packages as bare modules
on their real paths: submodules then import normally, the rest never loads. A kubeconfig that needs
the full loader still imports it (as a submodule). Measured by bench/agent.py (docs/benchmarks.md).
"""

from __future__ import annotations

import importlib.util
import sys
import types

PACKAGES = ("kubernetes", "kubernetes.config")


def skip_kubernetes_package_init() -> bool:
    """Register the PACKAGES without running their __init__; False when already imported or absent."""
    if PACKAGES[0] in sys.modules:
        return False
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.submodule_search_locations is None:
            return False
        package = types.ModuleType(name)
        package.__spec__ = spec
        package.__path__ = list(spec.submodule_search_locations)
        package.__file__ = spec.origin
        sys.modules[name] = package
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(sys.modules[parent], child, package)
    return True
