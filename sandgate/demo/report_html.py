"""The HTML report: one self-contained page (inline CSS, no scripts, no external assets).

Nodes are drawn as boxes whose sandbox slots are cells coloured by runtime (solid: placed by this
run, hatched: already running, outlined: free); pods are listed with their decision and why.
"""

from __future__ import annotations

from html import escape

from sandgate.core import keys
from sandgate.demo import report_text
from sandgate.demo.results import DENIED, SCHEDULED, UNSCHEDULABLE, DemoRun, NodeView, PodOutcome

# One colour per runtime handler, in order of first appearance.
_PALETTE = ("#4f46e5", "#0d9488", "#c2410c", "#9333ea", "#0369a1")

_CSS = """
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1f2937;background:#f3f4f6}
header{background:#111827;color:#f9fafb;padding:20px 32px}
header h1{margin:0 0 4px;font-size:22px;font-weight:600}
header p{margin:2px 0;color:#d1d5db;max-width:1100px}
main{padding:16px 32px 40px}
h2{font-size:16px;margin:24px 0 10px;text-transform:uppercase;letter-spacing:.05em;color:#4b5563}
.chips{display:flex;gap:10px;flex-wrap:wrap;margin-top:12px}
.chip{background:#1f2937;border-radius:999px;padding:4px 12px;font-size:13px}
.chip b{font-size:15px;margin-right:4px}
.legend{display:flex;gap:18px;flex-wrap:wrap;font-size:13px;color:#4b5563;margin-bottom:10px}
.legend span{display:inline-flex;align-items:center;gap:6px}
.nodes{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:14px}
.node{background:#fff;border:1px solid #e5e7eb;border-radius:10px;padding:12px 14px;box-shadow:0 1px 2px #0000000d}
.node.stale{border:2px solid #dc2626;background:#fef2f2}
.node.full{border:2px solid #d97706}
.node h3{margin:0;font-size:15px;display:flex;justify-content:space-between;align-items:center;gap:6px}
.meta{font-size:12px;color:#6b7280;margin:2px 0 8px}
.badge{display:inline-block;border-radius:4px;padding:1px 6px;font-size:11px;font-weight:600;color:#fff}
.b-cloud{background:#2563eb}.b-edge{background:#7c3aed}.b-stale{background:#dc2626}.b-full{background:#d97706}
.b-fresh{background:#16a34a}
.rt{margin:6px 0}
.rt .name{font-size:12px;color:#374151;display:flex;justify-content:space-between}
.cells{display:flex;flex-wrap:wrap;gap:4px;margin-top:3px}
.cell{width:22px;height:22px;border-radius:4px;border:2px solid var(--c)}
.cell.new{background:var(--c)}
.cell.old{background:repeating-linear-gradient(45deg,var(--c) 0 3px,#fff 3px 6px)}
.none{font-size:12px;color:#9ca3af;font-style:italic}
.others{margin-top:8px;font-size:12px;color:#4b5563}
.pod{display:inline-block;background:#f3f4f6;border-radius:4px;padding:0 5px;margin:2px 2px 0 0}
.pod.new{background:#dcfce7}
.note{font-size:12px;color:#6b7280;margin-top:8px;font-style:italic}
table{border-collapse:collapse;width:100%;background:#fff;border-radius:10px;overflow:hidden;
box-shadow:0 1px 2px #0000000d}
th,td{text-align:left;padding:8px 10px;border-bottom:1px solid #e5e7eb;vertical-align:top}
th{background:#f9fafb;font-size:12px;text-transform:uppercase;color:#6b7280}
td.why{font-size:12px;color:#374151}
td.why div{margin:1px 0}
.story{color:#6b7280;font-style:italic}
.warn{color:#6b7280}
.denial{color:#b91c1c;font-weight:500}
.unsched{color:#b45309;font-weight:500}
.d-routed{background:#e0e7ff;color:#3730a3}.d-plain{background:#e5e7eb;color:#374151}
.d-denied{background:#fee2e2;color:#b91c1c}.d-unsched{background:#fef3c7;color:#92400e}
.dec{display:inline-block;border-radius:4px;padding:1px 7px;font-size:12px;font-weight:600;white-space:nowrap}
code{font:12px ui-monospace,SFMono-Regular,Menlo,monospace}
td.nowrap{white-space:nowrap}
table.summary{width:auto;min-width:420px}
.summary td,.summary th{text-align:right}.summary td:first-child,.summary th:first-child{text-align:left}
"""


def _colors(run: DemoRun) -> dict[str, str]:
    handlers = list(dict.fromkeys(run.handlers.values()))
    return {h: _PALETTE[i % len(_PALETTE)] for i, h in enumerate(handlers)}


def _runtime_names(run: DemoRun) -> dict[str, str]:
    """handler -> "profile (handler)" for labels."""
    return {h: f"{p} ({h})" if p != h else h for p, h in run.handlers.items()}


def _node(node: NodeView, colors: dict[str, str], names: dict[str, str], synthetic: bool) -> str:
    full = [h for h, c in node.capacity.items() if node.used(h) >= c]
    classes = "node" + (" stale" if node.heartbeat_stale else "") + (" full" if full and not node.heartbeat_stale else "")
    age = node.spec.heartbeat_age_seconds
    ago = f"{age // 60} min ago" if age >= 120 else f"{age} s ago"
    badges = f'<span class="badge b-{escape(node.spec.site)}">{escape(node.spec.site)}</span>'
    if node.heartbeat_stale:
        badges += ' <span class="badge b-stale">heartbeat stale</span>'
    elif full:
        badges += "".join(f' <span class="badge b-full">{escape(h)} full</span>' for h in full)
    parts = [f'<div class="{classes}"><h3><span>{escape(node.spec.name)}</span><span>{badges}</span></h3>',
             f'<div class="meta">{escape(node.spec.cpu)} CPU · {escape(node.spec.memory)} · {escape(node.spec.arch)}'
             f' · agent {"stale" if node.heartbeat_stale else "alive"}, renewed {ago}</div>']
    if not node.capacity:
        parts.append('<div class="none">no sandbox runtime advertised</div>')
    for handler, capacity in sorted(node.capacity.items()):
        color = colors.get(handler, "#6b7280")
        pods = [p for p in node.pods if p.handler == handler]
        cells = [f'<div class="cell {"new" if p.new else "old"}" style="--c:{color}" '
                 f'title="{escape(p.ref)}{" (placed by this run)" if p.new else " (already running)"}"></div>'
                 for p in pods]
        cells += [f'<div class="cell" style="--c:{color}55" title="free slot"></div>'] * max(0, capacity - len(pods))
        listed = "" if synthetic else "".join(
            f'<span class="pod{" new" if p.new else ""}">{escape(p.ref)}</span>' for p in pods)
        parts.append(f'<div class="rt"><div class="name"><span>{escape(names.get(handler, handler))}</span>'
                     f'<span>{len(pods)}/{capacity} slots</span></div><div class="cells">{"".join(cells)}</div>'
                     f'<div class="others">{listed}</div></div>')
    others = [p for p in node.pods if not p.handler]
    if others:
        if synthetic:
            parts.append(f'<div class="others">{len(others)} ordinary pod{"" if len(others) == 1 else "s"}</div>')
        else:
            chips = "".join(f'<span class="pod{" new" if p.new else ""}">{escape(p.ref)}</span>' for p in others)
            parts.append(f'<div class="others">ordinary pods: {chips}</div>')
    if node.spec.note and not synthetic:
        parts.append(f'<div class="note">{escape(node.spec.note)}</div>')
    parts.append("</div>")
    return "".join(parts)


def _decision(o: PodOutcome) -> str:
    if o.status == DENIED:
        return '<span class="dec d-denied">denied</span>'
    routed = (f'<span class="dec d-routed">{escape(o.profile)}</span>' if o.profile
              else '<span class="dec d-plain">not sandboxed</span>')
    if o.status == UNSCHEDULABLE:
        return routed + ' <span class="dec d-unsched">unschedulable</span>'
    return routed


def _why(o: PodOutcome, total_nodes: int) -> str:
    a = o.admission
    lines = [f'<div class="story">{escape(o.pod.story)}</div>']
    if a.mutating:
        lines.append("<div>webhook " + ", ".join(f"<code>{escape(e.path)}</code>" for e in a.mutating) + "</div>")
    else:
        lines.append("<div>no sandgate webhook selects this namespace</div>")
    for step in a.steps:
        actor = step.actor + (" (reinvoked)" if step.reinvoked else "")
        lines.append(f"<div><b>{escape(actor)}</b>: {escape('; '.join(step.changes) or 'no patch')}</div>")
    lines += [f'<div class="warn">kubectl warning: {escape(w)}</div>' for w in a.warnings]
    if not a.allowed:
        lines.append(f'<div class="denial">{escape(a.message)}</div>')
    s = o.schedule
    if s is not None:
        for node, reason in sorted({**s.extender_failed, **s.extender_unresolvable}.items()):
            lines.append(f"<div>extender: <b>{escape(node)}</b>: {escape(reason)}</div>")
        if s.error:
            lines.append(f'<div class="unsched">{escape(s.error)}</div>')
        elif not s.node:
            lines.append(f'<div class="unsched">{escape(s.diagnosis(total_nodes))}</div>')
    return "".join(lines)


def _summary(run: DemoRun) -> str:
    outcomes = run.outcomes
    rows = []
    for profile in run.handlers:
        group = [o for o in outcomes if o.status != DENIED and o.profile == profile]
        rows.append((f"routed to {profile}", group))
    rows.append(("not sandboxed", [o for o in outcomes if o.status != DENIED and not o.profile]))
    body = "".join(f"<tr><td>{escape(name)}</td><td>{len(g)}</td><td>{sum(o.status == SCHEDULED for o in g)}</td>"
                   f"<td>{sum(o.status == UNSCHEDULABLE for o in g)}</td></tr>" for name, g in rows)
    body += f"<tr><td>denied</td><td>{sum(o.status == DENIED for o in outcomes)}</td><td>-</td><td>-</td></tr>"
    return ('<table class="summary"><tr><th>outcome</th><th>pods</th><th>scheduled</th><th>unschedulable</th></tr>'
            + body + "</table>")


def render(run: DemoRun) -> str:
    """The whole page for `run`."""
    colors = _colors(run)
    names = _runtime_names(run)
    outcomes = run.outcomes
    latencies = [o.seconds * 1000 for o in outcomes]
    chips = [
        (len(outcomes), "pods"),
        (sum(1 for o in outcomes if o.profile and o.status != DENIED), "sandboxed"),
        (sum(o.status == DENIED for o in outcomes), "denied"),
        (sum(o.status == UNSCHEDULABLE for o in outcomes), "unschedulable"),
        (f"{report_text.percentile(latencies, 50):.1f} ms", "p50 per pod"),
        (f"{report_text.percentile(latencies, 99):.1f} ms", "p99 per pod"),
    ]
    legend = "".join(f'<span><span class="cell new" style="--c:{c}"></span>{escape(names.get(h, h))}</span>'
                     for h, c in colors.items())
    legend += ('<span><span class="cell old" style="--c:#6b7280"></span>already running</span>'
               '<span><span class="cell" style="--c:#6b728055"></span>free slot</span>')
    label = keys.DEFAULT_NAMESPACE_LABEL
    pod_rows = "".join(
        f'<tr><td class="nowrap"><b>{escape(o.pod.ref)}</b></td>'
        f"<td><code>{escape(o.namespace_labels.get(label, '-'))}</code></td>"
        f'<td>{_decision(o)}</td><td class="nowrap">{escape(o.schedule.node or "-") if o.schedule else "-"}</td>'
        f'<td class="why">{_why(o, len(run.nodes))}</td></tr>' for o in outcomes)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>sandgate demo: {escape(run.title)} on Kubernetes {run.version}</title><style>{_CSS}</style></head>
<body><header><h1>sandgate demo: {escape(run.title)}, Kubernetes {run.version}
({report_text.MODE_NAMES[run.mode]})</h1>
<p>{escape(report_text.mode_text(run))}</p>
<div class="chips">{"".join(f'<span class="chip"><b>{escape(str(v))}</b>{escape(k)}</span>' for v, k in chips)}</div>
</header><main>
<h2>Nodes and their sandboxes</h2><div class="legend">{legend}</div>
<div class="nodes">{"".join(_node(n, colors, names, run.synthetic) for n in run.nodes)}</div>
<h2>Summary</h2>{_summary(run)}
<h2>Pods</h2><table><tr><th>pod</th><th>{escape(label)}</th><th>decision</th><th>node</th><th>why</th></tr>
{pod_rows}</table>
</main></body></html>
"""
