"""The SandboxPolicy: the one contract every component reads (webhook, extender, agent).

`model` holds the typed dataclasses, `parse` the strict parser (every error by key path), `store` the
file loader and the reloading store. The public names are re-exported here.
"""

from sandgate.core.policy.model import (API_VERSION, FORBIDDABLE, KIND, RESERVED_PROFILE_NAMES, STRATEGIES,
                                        AgentSettings, Overhead, Policy, PolicyError, Profile, SchedulingSettings,
                                        Toleration)
from sandgate.core.policy.parse import parse_policy
from sandgate.core.policy.store import PolicyStore, load_policy

__all__ = ["API_VERSION", "FORBIDDABLE", "KIND", "RESERVED_PROFILE_NAMES", "STRATEGIES", "AgentSettings",
           "Overhead", "Policy", "PolicyError", "PolicyStore", "Profile", "SchedulingSettings", "Toleration",
           "load_policy", "parse_policy"]
