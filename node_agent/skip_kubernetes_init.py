"""Keep the agent's resident memory small on edge nodes: skip the `kubernetes` package's eager __init__.

`import kubernetes.<anything>` first runs kubernetes/__init__.py, which imports client, config,
dynamic, watch, stream, utils, leaderelection and informer; the dynamic client alone pulls in
kubernetes_validate and jsonschema. The agent uses three submodules (utils.quantity through the
policy, config to load the kubeconfig, client.ApiClient to send requests), so it registers the
package as a bare module on its real path: submodules then import normally, the rest never loads.
Measured by bench/agent.py; it saves about 4 MiB of the agent's ~50 MiB.
"""

from __future__ import annotations

import importlib.util
import sys
import types

PACKAGE = "kubernetes"


def skip_kubernetes_package_init() -> bool:
    """Register `kubernetes` without running its __init__; False when it is already imported or absent."""
    if PACKAGE in sys.modules:
        return False
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.submodule_search_locations is None:
        return False
    package = types.ModuleType(PACKAGE)
    package.__spec__ = spec
    package.__path__ = list(spec.submodule_search_locations)
    package.__file__ = spec.origin
    sys.modules[PACKAGE] = package
    return True
