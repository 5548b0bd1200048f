"""What a demo run produced, in the shape the reports render: pods with their outcome, nodes with their slots."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from sandgate.core.clusterversion import ClusterVersion, Mode
from sandgate.demo.apiserver import AdmissionResult
from sandgate.demo.scenario import DemoPod, NodeSpec
from sandgate.demo.scheduler import ScheduleResult

DENIED = "denied"
UNSCHEDULABLE = "unschedulable"
SCHEDULED = "scheduled"


@dataclass
class PodOutcome:
    """One built-in or synthetic pod: how admission and scheduling went."""

    pod: DemoPod
    namespace_labels: Mapping[str, str]
    admission: AdmissionResult
    schedule: ScheduleResult | None  # None when admission refused the pod
    profile: str | None  # the profile the stored pod runs under (None: not sandboxed)
    handler: str | None
    seconds: float  # admission + scheduling, wall clock

    @property
    def component_error(self) -> str:
        """What went wrong in a component for this pod ("" when the webhook and extender behaved)."""
        return self.admission.component_error or (self.schedule.error if self.schedule else "")

    @property
    def status(self) -> str:
        """DENIED, UNSCHEDULABLE or SCHEDULED."""
        if not self.admission.allowed:
            return DENIED
        return SCHEDULED if self.schedule and self.schedule.node else UNSCHEDULABLE


@dataclass
class Placed:
    """A pod on a node."""

    ref: str
    handler: str | None  # sandbox runtime handler, None for an ordinary pod
    new: bool  # placed by this run (False: already in the snapshot)


@dataclass
class NodeView:
    """A node at the end of the run."""

    spec: NodeSpec
    heartbeat_stale: bool
    pods: list[Placed] = field(default_factory=list)

    @property
    def capacity(self) -> Mapping[str, int]:
        """handler -> sandbox slots the agent advertises."""
        return self.spec.runtimes

    def used(self, handler: str) -> int:
        """Sandboxes of `handler` on the node."""
        return sum(1 for p in self.pods if p.handler == handler)

    def new_sandboxes(self) -> int:
        """Sandboxes this run placed on the node."""
        return sum(1 for p in self.pods if p.new and p.handler)


@dataclass
class ComponentInfo:
    """A component the run started."""

    name: str
    pid: int
    url: str
    ready_after: float
    detail: str


@dataclass
class DemoRun:
    """Everything the reports need."""

    title: str
    version: ClusterVersion
    mode: Mode
    review_version: str
    synthetic: bool
    outcomes: list[PodOutcome]
    nodes: list[NodeView]
    components: list[ComponentInfo]
    workdir: str
    handlers: Mapping[str, str]  # profile -> handler
    seconds: float = 0.0  # the whole run, start to cleanup
