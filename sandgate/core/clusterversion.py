"""Kubernetes version parsing and the behaviour each version needs from sandgate.

RuntimeClass (node.k8s.io/v1beta1) exists from 1.14. From 1.16 the built-in RuntimeClass admission
merges `scheduling` (nodeSelector, tolerations) into pods and, when the PodOverhead feature gate is
on, sets `spec.overhead`; PodOverhead is alpha (off by default) in 1.16-1.17 and on by default from
1.18. Without PodOverhead the scheduler cannot account for the sandbox, so sandgate does the whole
job itself (Mode.WEBHOOK_MERGES, printed as "legacy").
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

MIN_SUPPORTED = (1, 14)

_VERSION_RE = re.compile(r"^v?(\d+)\.(\d+)(?:[.+\-].*)?$")


class VersionError(ValueError):
    """A cluster version string that cannot be understood or is not supported."""


class Mode(str, enum.Enum):
    """How the webhook routes a pod for a given cluster."""

    # The API server's RuntimeClass admission adds scheduling and overhead: set runtimeClassName only.
    # (The value stays "runtimeclass": it is what logs, the demo and `--dry-run` output print.)
    APISERVER_MERGES = "runtimeclass"
    # No PodOverhead in the API server: the webhook merges scheduling and pads requests itself.
    WEBHOOK_MERGES = "legacy"


@dataclass(frozen=True, order=True)
class ClusterVersion:
    """A Kubernetes minor version (patch level never changes sandgate's behaviour)."""

    major: int
    minor: int

    @classmethod
    def parse(cls, text: str) -> "ClusterVersion":
        """Parse "1.15", "v1.24.1", "v1.24.1+k3s1" or "1.24.1-gke.1"; refuse versions before 1.14."""
        m = _VERSION_RE.match(str(text).strip())
        if not m:
            raise VersionError(f'cannot parse Kubernetes version "{text}" (expected e.g. "1.15" or "v1.24.1")')
        version = cls(int(m.group(1)), int(m.group(2)))
        if (version.major, version.minor) < MIN_SUPPORTED:
            raise VersionError(
                f"Kubernetes {version} is not supported: sandgate needs RuntimeClass, available from "
                f"{MIN_SUPPORTED[0]}.{MIN_SUPPORTED[1]}"
            )
        return version

    @classmethod
    def from_version_info(cls, info: dict) -> "ClusterVersion":
        """Build from the API server's /version answer ({"major": "1", "minor": "24+", "gitVersion": ...})."""
        git = info.get("gitVersion") or info.get("git_version")
        if git:
            return cls.parse(git)
        major = re.sub(r"\D", "", str(info.get("major", "")))
        minor = re.sub(r"\D", "", str(info.get("minor", "")))
        return cls.parse(f"{major}.{minor}")

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}"

    @property
    def runtimeclass_scheduling(self) -> bool:
        """The API server merges RuntimeClass.scheduling into pods (1.16+)."""
        return (self.major, self.minor) >= (1, 16)

    @property
    def pod_overhead_default(self) -> bool:
        """PodOverhead is on by default (1.18+; alpha and off by default in 1.16-1.17)."""
        return (self.major, self.minor) >= (1, 18)

    @property
    def admission_v1(self) -> bool:
        """admissionregistration.k8s.io/v1 and AdmissionReview v1 are served (1.16+)."""
        return (self.major, self.minor) >= (1, 16)

    def mode(self, pod_overhead: bool | None = None) -> Mode:
        """The routing mode; `pod_overhead` overrides the version's PodOverhead default when not None."""
        overhead_on = self.pod_overhead_default if pod_overhead is None else pod_overhead
        if self.runtimeclass_scheduling and overhead_on:
            return Mode.APISERVER_MERGES
        return Mode.WEBHOOK_MERGES
