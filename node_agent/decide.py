"""The agent's decision: `decide(host facts, policy) -> Decision`, pure (no file, socket or process here).

One cycle's questions, answered from the facts node_agent.host gathered:

- Which containerd release runs here, and by which evidence (policy, CRI Version RPC, binary)?
  The release decides how containerd merges its config files (see node_agent.containerd).
- Which handlers does the runtime really have? containerd's own answer (CRI Status verbose,
  info["config"]) when its socket answers, else the file model; when both exist they are
  cross-checked and a handler they disagree on is not advertised.
- What must `--configure` write so that the effective config gains the wanted handlers and
  nothing else moves? Refused when the containerd release is unknown.
- What the Node's labels and annotations should say.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sandgate.core.policy import Policy

from node_agent import containerd, crio
from node_agent.containerd import ConfigurePlan, ContainerdConfig, ContainerdConfigError, ContainerdVersion
from node_agent.discovery import RuntimeStatus, capacities, discover, node_patch
from node_agent.host import HostFacts, cri_runtime_tables

# The two rule sets an unknown release may follow; discovery then trusts only what both agree on.
_RULES_1X, _RULES_2X = ContainerdVersion(1, 7), ContainerdVersion(2, 0)


@dataclass(frozen=True)
class Options:
    """The command's switches that change the decision."""

    configure: bool = False
    dry_run: bool = False
    drop_in_only: bool = False  # the init container: write nothing outside the drop-in directory
    stamp: str = "19700101T000000Z"  # names this cycle's backups (UTC)


@dataclass
class Decision:
    """Everything one cycle found and decided; to_json() is the dry-run document."""

    node: str
    manager: str
    statuses: list[RuntimeStatus]
    capacities: dict[str, int]
    patch: dict[str, Any]
    config: ContainerdConfig | None = None
    config_error: str | None = None
    containerd_version: ContainerdVersion | None = None
    version_source: str | None = None
    cri_endpoint: str | None = None
    source: str = "files"  # where the handlers came from: "cri" or "files"
    plan: ConfigurePlan = field(default_factory=ConfigurePlan)
    configure_error: str | None = None
    warnings: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # handlers the CRI and the files disagree on
    crio_files: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        """The dry-run document (keys node, nodePatch, containerd, runtimes are a contract)."""
        plan, config = self.plan, self.config
        return {
            "node": self.node,
            "nodePatch": self.patch,
            "containerd": {
                "config": config.path if config else None,
                "version": config.version if config else None,
                "imports": config.imports if config else [],
                "error": self.config_error,
                "dropIns": [{"path": c.path, "content": c.content} for c in plan.drop_ins],
                "mainConfig": plan.main_config.to_json() if plan.main_config else None,
                "edits": [c.to_json() for c in plan.edits],
                "skipped": list(plan.skipped),
                "configureError": self.configure_error,
                "runtimeManager": self.manager,
                "containerdVersion": str(self.containerd_version) if self.containerd_version else None,
                "versionSource": self.version_source,
                "criEndpoint": self.cri_endpoint,
                "handlersFrom": self.source,
                "warnings": self.warnings,
                "problems": self.problems,
                **({"crioFiles": list(self.crio_files)} if self.manager == "crio" else {}),
            },
            "runtimes": [s.to_json() for s in self.statuses],
        }


def containerd_version(facts: HostFacts, policy: Policy) -> tuple[ContainerdVersion | None, str | None]:
    """(release, evidence): the policy's agent.containerdVersion, else the CRI Version RPC, else the binary."""
    setting = policy.agent.containerd_version
    if setting != "auto":
        return containerd.parse_version(setting), "policy agent.containerdVersion"
    version = facts.cri.version
    if version is not None and version.runtime_name == "containerd":
        parsed = containerd.parse_version(version.runtime_version)
        if parsed is not None:
            return parsed, f"CRI Version RPC ({version.runtime_version})"
    parsed, binary = facts.binary_version
    if parsed is not None:
        return parsed, f"{binary} --version"
    return None, None


def _wanted(policy: Policy) -> dict[str, tuple[str | None, dict[str, Any]]]:
    return {p.handler: (p.runtime_type, p.runtime_options) for p in policy.profiles.values()}


def _file_runtimes(facts: HostFacts, version: ContainerdVersion | None
                   ) -> tuple[ContainerdConfig | None, dict[str, dict[str, Any]], list[str]]:
    """(config, runtimes, problems) of the config files; unknown release: only what both rule sets agree on."""
    assert facts.snapshot is not None
    if version is not None:
        config = containerd.resolve(facts.snapshot, version)
        return config, config.runtimes(), config.problems()
    newer = containerd.resolve(facts.snapshot, _RULES_2X)
    if newer.version >= 3:  # only containerd 2.x reads a version 3 config: its rules alone apply
        return newer, newer.runtimes(), newer.problems()
    older = containerd.resolve(facts.snapshot, _RULES_1X)
    agreed = {h: t for h, t in older.runtimes().items() if newer.runtimes().get(h) == t}
    problems = sorted(set(older.problems()) | set(newer.problems()))
    return newer, agreed, problems


def _cross_check(live: dict[str, dict[str, Any]], files: dict[str, dict[str, Any]],
                 expected_new: tuple[str, ...]) -> tuple[dict[str, str], list[str]]:
    """(vetoes, warnings) for handlers containerd's running config and its files disagree on."""
    vetoes: dict[str, str] = {}
    for handler in sorted(set(live) | set(files)):
        if handler in expected_new:
            continue  # the configure plan adds it; the reload makes them agree
        if handler not in live:
            vetoes[handler] = ("in containerd's config files but not in its running config (CRI Status): "
                               "containerd was not restarted, or a drop-in replaced the section holding it")
        elif handler not in files:
            vetoes[handler] = ("in containerd's running config (CRI Status) but not in its config files: "
                               "it disappears at the next containerd restart")
        elif live[handler].get("runtime_type") != files[handler].get("runtime_type"):
            vetoes[handler] = (f"runtime_type differs: running config {live[handler].get('runtime_type')!r}, "
                               f"config files {files[handler].get('runtime_type')!r}")
    return vetoes, [f"handler {h}: {reason}; not advertised" for h, reason in vetoes.items()]


def decide(facts: HostFacts, policy: Policy, node_name: str, options: Options,
           node: dict[str, Any] | None, allocatable: Decimal) -> Decision:
    """The whole cycle's decision over `facts` (see the module docstring)."""
    if facts.manager == "crio":
        decision = _decide_crio(facts, policy, node_name, options)
    else:
        decision = _decide_containerd(facts, policy, node_name, options)
    decision.capacities = capacities(decision.statuses, policy, allocatable)
    meta = (node or {}).get("metadata") or {}
    decision.patch = node_patch(decision.capacities, meta.get("labels"), meta.get("annotations"))
    return decision


def _unusable(policy: Policy, reason: str, manager: str = "containerd") -> list[RuntimeStatus]:
    return [RuntimeStatus(h, None, None, False, f"{manager} configuration unusable: {reason}")
            for h in sorted(policy.handlers)]


def _decide_containerd(facts: HostFacts, policy: Policy, node_name: str, options: Options) -> Decision:
    version, source = containerd_version(facts, policy)
    d = Decision(node_name, "containerd", [], {}, {}, containerd_version=version, version_source=source,
                 cri_endpoint=facts.cri.endpoint)
    if version is None:
        d.warnings.append("containerd version unknown (no CRI answer, no containerd binary under --root): "
                          "discovery trusts only handlers that containerd 1.x and 2.x rules agree on; "
                          "set agent.containerdVersion")
    if facts.cri.error:
        d.warnings.append(f"CRI socket {facts.cri.endpoint} did not answer ({facts.cri.error}): "
                          "handlers come from the config files")
    files: dict[str, dict[str, Any]] = {}
    d.config_error = facts.snapshot_error
    if facts.snapshot is not None and d.config_error is None:
        try:
            d.config, files, d.problems = _file_runtimes(facts, version)
        except ContainerdConfigError as exc:
            d.config_error = str(exc)
    if options.configure:
        _plan(d, facts, policy, options)
    if d.config_error is not None:
        d.statuses = _unusable(policy, d.config_error)
        return d
    if options.dry_run and d.plan.changed and facts.snapshot is not None:
        after = facts.snapshot.with_files({c.path: c.content for c in d.plan.files})
        d.config = containerd.resolve(after, d.containerd_version or _RULES_2X)  # a plan implies a known version
        files = d.config.runtimes()
    live = cri_runtime_tables(facts.cri.status) if facts.cri.status is not None else None
    vetoes: dict[str, str] = {}
    if live is not None and "config" in facts.cri.status.info:
        vetoes, warnings = _cross_check(live, files, d.plan.handlers if options.dry_run else ())
        d.warnings.extend(warnings)
        d.mismatched = sorted(vetoes)
        runtimes = {**live, **{h: files[h] for h in d.plan.handlers if h in files}} if options.dry_run else live
        d.source = "cri"
    else:
        runtimes = files
    d.statuses = discover(facts, runtimes, policy, vetoes)
    return d


def _plan(d: Decision, facts: HostFacts, policy: Policy, options: Options) -> None:
    """Fill d.plan / d.configure_error for --configure."""
    if d.config_error is not None or d.config is None or facts.snapshot is None:
        return
    if d.containerd_version is None:
        d.configure_error = ("refusing to configure: the containerd version is unknown (no CRI Version answer on "
                             f"{facts.cri.endpoint}, no containerd binary under --root); set agent.containerdVersion "
                             'to the node\'s release, e.g. "1.7" or "2.0"')
        return
    if d.problems:
        d.configure_error = "refusing to configure a containerd config that is already broken: " + "; ".join(d.problems)
        return
    try:
        d.plan = containerd.plan_configure(facts.snapshot, d.config, policy.agent.drop_in_dir, _wanted(policy),
                                           options.stamp, drop_in_only=options.drop_in_only)
    except ContainerdConfigError as exc:
        d.configure_error = str(exc)
        return
    if options.drop_in_only:
        _confine(d, policy.agent.drop_in_dir)


def _confine(d: Decision, directory: str) -> None:
    """--drop-in-only: refuse a plan touching any file outside `directory` (the container's one writable mount)."""
    outside = [c.path for c in d.plan.files if posixpath.dirname(c.path) != posixpath.normpath(directory)]
    if outside:
        d.configure_error = (f"refusing to configure with --drop-in-only: the plan writes {outside}, outside "
                             f"{directory}, the only directory this mode may write")
        d.plan = ConfigurePlan(skipped=d.plan.skipped)


def _decide_crio(facts: HostFacts, policy: Policy, node_name: str, options: Options) -> Decision:
    d = Decision(node_name, "crio", [], {}, {}, cri_endpoint=facts.cri.endpoint, config_error=facts.snapshot_error,
                 crio_files=tuple(facts.crio_files))
    if d.config_error is not None:
        d.statuses = _unusable(policy, d.config_error, "CRI-O")
        return d
    try:
        config = crio.resolve(facts.crio_files)
    except ContainerdConfigError as exc:
        d.config_error = str(exc)
        d.statuses = _unusable(policy, d.config_error, "CRI-O")
        return d
    runtimes = config.runtimes()
    if options.configure:
        d.plan = crio.plan_configure(config, policy.agent.crio_drop_in_dir, _wanted(policy))
        if options.drop_in_only:
            _confine(d, policy.agent.crio_drop_in_dir)
        if options.dry_run and d.plan.changed:
            runtimes = crio.resolve({**facts.crio_files, **{c.path: c.content for c in d.plan.files}}).runtimes()
    d.statuses = discover(facts, runtimes, policy)
    return d
