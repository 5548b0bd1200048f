"""The terminal report: what ran, each pod's decision and why, each node's sandboxes, and a summary.

Columns are padded before colouring so they stay aligned; colour is used only when the output is
a terminal (and NO_COLOR is unset); non-UTF-8 terminals get ASCII slot bars and arrows.
"""

from __future__ import annotations

import math
import os
import shutil
import textwrap
from collections import Counter
from typing import TextIO

from sandgate.core import keys
from sandgate.core.clusterversion import Mode
from sandgate.demo.results import DENIED, SCHEDULED, UNSCHEDULABLE, DemoRun, NodeView, PodOutcome
from sandgate.demo.scheduler import EXTENDER_SCORE_SCALE, EXTENDER_WEIGHT

_PIPE_WIDTH = 120
_MAX_NODE_ROWS = 30
MODE_NAMES = {Mode.APISERVER_MERGES: "RuntimeClass mode", Mode.WEBHOOK_MERGES: "legacy mode"}
_CODES = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "blue": "34", "cyan": "36"}


class _Style:
    """How to write to one stream: colour, UTF-8 symbols, line width."""

    def __init__(self, stream: TextIO):
        self.color = stream.isatty() and not os.environ.get("NO_COLOR")
        self.utf8 = (getattr(stream, "encoding", "") or "").lower().replace("-", "") == "utf8"
        self.arrow = "→" if self.utf8 else "->"
        # Wrap to the terminal; a pipe or file gets a fixed, roomy width.
        self.width = shutil.get_terminal_size((_PIPE_WIDTH, 24)).columns if stream.isatty() else _PIPE_WIDTH

    def __call__(self, text: str, *styles: str) -> str:
        """`text` in the given styles (unchanged without colour)."""
        if not self.color or not styles:
            return text
        return "".join(f"\033[{_CODES[s]}m" for s in styles) + text + "\033[0m"

    def bar(self, used: int, total: int) -> str:
        """A small slot bar: one cell per slot, up to 12."""
        full, empty = ("■", "□") if self.utf8 else ("#", ".")
        shown = min(total, 12)
        filled = round(shown * used / total) if total else 0
        return full * filled + empty * (shown - filled)


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else ("es" if noun.endswith("x") else "s"))


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (0 for an empty list)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def mode_text(run: DemoRun) -> str:
    """What this cluster version means for sandgate, and what differs in the other mode (one paragraph)."""
    v = run.version
    review = run.review_version.rsplit("/", 1)[-1]
    if run.mode == Mode.APISERVER_MERGES:
        return (f"RuntimeClass mode: the API server ({v}) sends AdmissionReview {review}; the webhook sets only "
                "spec.runtimeClassName (plus request padding for the request-dependent part of the overhead). "
                "The API server's built-in RuntimeClass admission then merges the RuntimeClass's nodeSelector and "
                "tolerations and sets spec.overhead, which the scheduler adds to the pod's requests. Legacy "
                "clusters (try --cluster-version 1.15) have none of that: the webhook does it all itself.")
    builtin = ("the API server merges RuntimeClass scheduling but PodOverhead is off"
               if v.runtimeclass_scheduling else "the API server has no RuntimeClass admission and no PodOverhead")
    return (f"Legacy mode: on Kubernetes {v} {builtin}, and it sends AdmissionReview {review}. So the webhook "
            "merges the profile's nodeSelector and tolerations itself (refusing a conflicting nodeSelector with the "
            "built-in plugin's text) and pads container requests by the whole sandbox overhead, recorded in "
            f"{keys.PADDING_ANNOTATION}, so the scheduler and kubelet account for it. On 1.18+ (the default, "
            "1.24) the API server does this work from the RuntimeClass.")


def _isolation(outcome: PodOutcome, label: str) -> str:
    return outcome.namespace_labels.get(label, "-")


def _decision(outcome: PodOutcome) -> tuple[str, tuple[str, ...]]:
    if outcome.status == DENIED:
        return "denied", ("red", "bold")
    if outcome.profile:
        return f"routed: {outcome.profile}", ("cyan",)
    return "not sandboxed", ()


def _placement(outcome: PodOutcome) -> tuple[str, tuple[str, ...]]:
    if outcome.status == SCHEDULED:
        return outcome.schedule.node, ("green",)
    if outcome.status == UNSCHEDULABLE:
        return "unschedulable", ("yellow", "bold")
    return "-", ()


def selection_reason(outcome: PodOutcome, label: str) -> str:
    """Why the API server called the webhook entries it called (or none), from the namespace's labels."""
    labels = outcome.namespace_labels
    if label in labels:
        return f"namespace label {label}={labels[label]}"
    if keys.IGNORE_NAMESPACE_LABEL in labels:
        return f"namespace labelled {keys.IGNORE_NAMESPACE_LABEL}"
    return f"namespace has no {label} label"


def _admission_lines(outcome: PodOutcome, style: _Style, label: str) -> list[str]:
    a = outcome.admission
    arrow = style.arrow
    reason = selection_reason(outcome, label)
    if a.mutating:
        entry = a.mutating[0]
        line = f"admission: {reason} {arrow} {entry.name} {arrow} POST {entry.path}"
        rule = a.audit.get(f"{entry.name}/{keys.AUDIT_RULE}")
        if rule:
            line += f" {arrow} rule {rule}"
        lines = [line]
    else:
        lines = [f"admission: {reason} {arrow} no sandgate webhook selects it, never sent to sandgate"]
    for step in a.steps:
        if step.reinvoked:
            lines.append("webhook reinvoked after that (reinvocationPolicy IfNeeded): "
                         + ("; ".join(step.changes) if step.changes else "no patch, the mutation is idempotent"))
        else:
            actor = "webhook" if step.actor.startswith("webhook") else step.actor
            lines.append(f"{actor}: " + "; ".join(step.changes))
    if a.allowed and a.mutating and not any(s.actor.startswith("webhook") for s in a.steps):
        lines.append("webhook: allowed unchanged")
    if a.allowed and a.validating:
        lines.append("validation: " + ", ".join(f"POST {e.path}" for e in a.validating) + " allowed")
    if not a.allowed:
        lines.append(style(f"DENIED by {a.denied_by}: {a.message}", "red"))
    return lines


def _schedule_lines(outcome: PodOutcome, total_nodes: int, style: _Style) -> list[str]:
    s = outcome.schedule
    if s is None:
        return []
    arrow = style.arrow
    passed = f"{total_nodes - len(s.in_tree_failed)} pass in-tree filters"
    if s.in_tree_failed:
        counts = Counter(s.in_tree_failed.values())
        passed += " (" + ", ".join(f"{n} {reason}" for reason, n in sorted(counts.items())) + ")"
    steps = [f"{total_nodes} nodes", passed]
    rejected = {**s.extender_failed, **s.extender_unresolvable}
    if s.extender_input:
        steps.append(f"extender keeps {len(s.extender_input) - len(rejected)}")
    elif len(s.in_tree_failed) < total_nodes:
        steps.append("no sandbox slot requested, extender not called")
    if s.node:
        if s.extender_called and s.prioritize_skipped:
            steps.append("one node left, no prioritize")
        elif not s.extender_called:
            ranked = sorted(s.in_tree_scores, key=lambda n: (-s.in_tree_scores[n], n))
            steps.append("in-tree scores " + ", ".join(f"{n} {s.in_tree_scores[n]}" for n in ranked))
        else:
            ranked = sorted(s.in_tree_scores, key=lambda n: (-s.total(n), n))
            factor = EXTENDER_WEIGHT * EXTENDER_SCORE_SCALE
            steps.append(f"scores (extender x{factor} + in-tree) " + ", ".join(
                f"{n} {s.scores.get(n, 0)}x{factor}+{s.in_tree_scores[n]}" for n in ranked))
        steps.append(style(f"bound to {s.node}", "green"))
    lines = ["scheduler: " + f" {arrow} ".join(steps)]
    for node, reason in sorted(rejected.items()):
        lines.append(f"  extender rejected {node}: {reason}")
    if s.error:
        lines.append(style(f"UNSCHEDULABLE: {s.error}", "yellow"))
    elif not s.node:
        counts = Counter(s.in_tree_failed.values())
        parts = [f"{n} {reason}" for reason, n in sorted(counts.items())]
        if rejected:
            parts.append(f"{len(rejected)} rejected by the sandgate extender (above)")
        lines.append(style(f"UNSCHEDULABLE: 0/{total_nodes} nodes are available: {', '.join(parts)}", "yellow"))
    return lines


def _wrap(line: str, width: int, indent: str, hanging: str = "    ") -> list[str]:
    """Wrap one line; continuation lines are indented by `hanging` more."""
    return textwrap.wrap(line, width=width, initial_indent=indent, subsequent_indent=indent + hanging,
                         break_on_hyphens=False, break_long_words=False) or [indent]


def _table(rows: list[list[tuple[str, tuple[str, ...]]]], style: _Style, indent: str = "  ") -> list[str]:
    widths = [max(len(r[i][0]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for row in rows:
        cells = [style(text.ljust(w) if i < len(row) - 1 else text, *st)
                 for i, ((text, st), w) in enumerate(zip(row, widths))]
        out.append(indent + "  ".join(cells).rstrip())
    return out


def _pods(run: DemoRun, style: _Style, label: str) -> list[str]:
    header = [(h, ("bold",)) for h in ("POD", "ISOLATION LABEL", "DECISION", "NODE")]
    rows = [header] + [[(o.pod.ref, ()), (_isolation(o, label), ()), _decision(o), _placement(o)]
                       for o in run.outcomes]
    table = _table(rows, style)
    out = [style(f"PODS ({len(run.outcomes)})", "bold"), table[0]]
    for outcome, line in zip(run.outcomes, table[1:]):
        out.append(line)
        out.append("      " + style(f"# {outcome.pod.story}", "dim"))
        for detail in _admission_lines(outcome, style, label) + _schedule_lines(outcome, len(run.nodes), style):
            out += _wrap(detail, style.width, "      ")
    return out


def _heartbeat(node: NodeView) -> tuple[str, tuple[str, ...]]:
    age = node.spec.heartbeat_age_seconds
    ago = f"{age // 60}m ago" if age >= 120 else f"{age}s ago"
    return (f"STALE ({ago})", ("red",)) if node.heartbeat_stale else (f"fresh ({ago})", ())


def _slots(node: NodeView, handler: str, style: _Style) -> tuple[str, tuple[str, ...]]:
    total = node.capacity.get(handler)
    if total is None:
        return "-", ("dim",)
    used = node.used(handler)
    text = f"{used}/{total} {style.bar(used, total)}"
    if used >= total:
        return text + " full", ("yellow",)
    return text, ()


def _nodes(run: DemoRun, style: _Style) -> list[str]:
    handlers = list(dict.fromkeys(run.handlers.values()))
    header = [(h, ("bold",)) for h in ("NODE", "SITE", "AGENT HEARTBEAT", "RUNTIMES",
                                        *(f"{h} SLOTS" for h in handlers), "PODS (+ placed by this run)")]
    rows = [header]
    for node in run.nodes:
        if run.synthetic:
            new = sum(1 for p in node.pods if p.new)
            pods = f"{_plural(len(node.pods), 'pod')} ({new} new, {_plural(node.new_sandboxes(), 'new sandbox')})"
        else:
            pods = ", ".join(("+" if p.new else "") + p.ref for p in node.pods) or "-"
        rows.append([(node.spec.name, ()), (node.spec.site, ()), _heartbeat(node),
                     (",".join(sorted(node.capacity)) or "none", ()),
                     *(_slots(node, h, style) for h in handlers), (pods, ())])
    table = _table(rows, style)
    out = [style(f"NODES ({len(run.nodes)})", "bold"), table[0]]
    for node, line in zip(run.nodes, table[1:]):
        out.append(line)
        if node.spec.note and not run.synthetic:
            out.append("      " + style(f"# {node.spec.note}", "dim"))
    return out


def _node_groups(run: DemoRun, style: _Style) -> list[str]:
    """Nodes summed per family (cloud-kata-1, cloud-kata-2, ... -> cloud-kata), for large synthetic runs."""
    handlers = list(dict.fromkeys(run.handlers.values()))
    families: dict[str, list[NodeView]] = {}
    for node in run.nodes:
        families.setdefault(node.spec.name.rsplit("-", 1)[0], []).append(node)
    header = [(h, ("bold",)) for h in ("NODES", "COUNT", "STALE HEARTBEAT", *(f"{h} SLOTS USED" for h in handlers),
                                        "PODS", "NEW PODS")]
    rows = [header]
    for family, nodes in families.items():
        slots = []
        for h in handlers:
            total = sum(n.capacity.get(h, 0) for n in nodes)
            slots.append((f"{sum(n.used(h) for n in nodes)}/{total}" if total else "-", ()))
        rows.append([(f"{family}-*", ()), (str(len(nodes)), ()), (str(sum(n.heartbeat_stale for n in nodes)), ()),
                     *slots, (str(sum(len(n.pods) for n in nodes)), ()),
                     (str(sum(p.new for n in nodes for p in n.pods)), ())])
    return [style(f"NODES ({len(run.nodes)}, summed per kind)", "bold")] + _table(rows, style)


def summary_lines(run: DemoRun, style: _Style) -> list[str]:
    """Counts per outcome (they add up to the number of pods) and per-pod latency."""
    outcomes = run.outcomes
    rows = [[(h, ("bold",)) for h in ("OUTCOME", "PODS", "SCHEDULED", "UNSCHEDULABLE")]]
    groups = [(f"routed to {p}", [o for o in outcomes if o.status != DENIED and o.profile == p])
              for p in run.handlers]
    groups.append(("not sandboxed", [o for o in outcomes if o.status != DENIED and not o.profile]))
    for name, group in groups:
        rows.append([(name, ()), (str(len(group)), ()),
                     (str(sum(o.status == SCHEDULED for o in group)), ()),
                     (str(sum(o.status == UNSCHEDULABLE for o in group)), ())])
    denied = sum(o.status == DENIED for o in outcomes)
    rows.append([("denied", ()), (str(denied), ()), ("-", ()), ("-", ())])
    rows.append([("total", ("bold",)), (str(len(outcomes)), ("bold",)),
                 (str(sum(o.status == SCHEDULED for o in outcomes)), ("bold",)),
                 (str(sum(o.status == UNSCHEDULABLE for o in outcomes)), ("bold",))])
    latencies = [o.seconds * 1000 for o in outcomes]
    out = [style("SUMMARY", "bold")] + _table(rows, style)
    out.append(f"  per pod, admission + scheduling: p50 {percentile(latencies, 50):.1f} ms, "
               f"p99 {percentile(latencies, 99):.1f} ms, max {max(latencies, default=0):.1f} ms")
    out.append(f"  whole run {run.seconds:.1f} s (certificates, start-up, {len(outcomes)} pods, shutdown)")
    return out


def render(run: DemoRun, stream: TextIO) -> None:
    """Write the report for `run` to `stream`."""
    style = _Style(stream)
    label = keys.DEFAULT_NAMESPACE_LABEL
    lines = [style(f"sandgate demo: {run.title}, Kubernetes {run.version} ({MODE_NAMES[run.mode]})", "bold")]
    lines += _wrap(mode_text(run), style.width, "  ", hanging="")
    lines.append("")
    for c in run.components:
        lines.append(f"  {c.name:<9} pid {c.pid:<8} {c.url:<25} {c.detail} (ready in {c.ready_after:.1f} s)")
    lines.append(f"  {'workdir':<9} {run.workdir} (certificates, policy, snapshot, logs; removed, "
                 f"components stopped)")
    lines.append("")
    if not run.synthetic:
        lines += _pods(run, style, label) + [""]
    if len(run.nodes) > _MAX_NODE_ROWS:
        lines += _node_groups(run, style) + [""]
    else:
        lines += _nodes(run, style) + [""]
    lines += summary_lines(run, style)
    stream.write("\n".join(lines) + "\n")
    stream.flush()
