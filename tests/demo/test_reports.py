"""Report rendering without servers: colour only on a terminal, aligned columns, ASCII fallback, HTML escaping."""

from __future__ import annotations

import io
import re

import pytest

from sandgate.core.clusterversion import ClusterVersion, Mode
from sandgate.demo import report_html, report_text
from sandgate.demo.apiserver import AdmissionResult, Step
from sandgate.demo.results import ComponentInfo, DemoRun, NodeView, Placed, PodOutcome
from sandgate.demo.scenario import DemoPod, NodeSpec
from sandgate.demo.scheduler import ScheduleResult


class Terminal(io.StringIO):
    """A text stream that says it is a terminal."""

    def __init__(self, encoding: str = "utf-8"):
        super().__init__()
        self._encoding = encoding

    @property
    def encoding(self):
        return self._encoding

    def isatty(self):
        return True


def _run() -> DemoRun:
    routed = PodOutcome(
        DemoPod("web", "tenant-a", "a <b>sandboxed</b> pod"), {"sandgate.io/isolation": "sandboxed"},
        AdmissionResult(True, {"spec": {}}, steps=[Step("webhook runv.mutate.sandgate.io", ["runtimeClassName=runv"])]),
        ScheduleResult(node="kata-1", extender_input=["kata-1"], prioritize_skipped=True), "runv", "runv", 0.004)
    denied = PodOutcome(
        DemoPod("a-much-longer-pod-name", "tenant-a", "privileged"), {"sandgate.io/isolation": "sandboxed"},
        AdmissionResult(False, None, denied_by="webhook runv.mutate.sandgate.io",
                        message='admission webhook denied the request: spec.containers[0].securityContext.privileged'),
        None, None, None, 0.002)
    node = NodeView(NodeSpec("kata-1", "cloud", "8", "32Gi", {"runv": 2}), False,
                    [Placed("tenant-a/web", "runv", True)])
    return DemoRun("test", ClusterVersion(1, 24), Mode.APISERVER_MERGES, "admission.k8s.io/v1", False, [routed, denied],
                   [node], [ComponentInfo("webhook", 42, "https://127.0.0.1:1", 0.5, "gunicorn")], "/tmp/x",
                   {"runv": "runv"}, 1.0)


def test_colour_only_on_a_terminal(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    tty, pipe = Terminal(), io.StringIO()
    report_text.render(_run(), tty)
    report_text.render(_run(), pipe)
    assert "\033[" in tty.getvalue()
    assert "\033[" not in pipe.getvalue()
    monkeypatch.setenv("NO_COLOR", "1")
    quiet = Terminal()
    report_text.render(_run(), quiet)
    assert "\033[" not in quiet.getvalue()


def test_columns_are_aligned():
    out = io.StringIO()
    report_text.render(_run(), out)
    lines = out.getvalue().splitlines()
    rows = [line for line in lines if line.startswith(("  POD ", "  tenant-a/"))]
    assert len(rows) == 3
    assert len({row.index("sandboxed") for row in rows[1:]}) == 1
    assert len({row.index(word) for row, word in zip(rows, ("DECISION", "routed: runv", "denied"))}) == 1


def test_ascii_without_utf8():
    out = Terminal(encoding="ascii")
    report_text.render(_run(), out)
    text = out.getvalue()
    assert "■" not in text and "→" not in text and "1/2 #." in text


def test_summary_and_percentiles():
    out = io.StringIO()
    report_text.render(_run(), out)
    text = out.getvalue()
    table = [re.split(r"\s{2,}", line.strip()) for line in text[text.index("SUMMARY"):].splitlines()[2:6]]
    assert table == [["routed to runv", "1", "1", "0"], ["not sandboxed", "0", "0", "0"], ["denied", "1", "-", "-"],
                     ["total", "2", "1", "0"]]
    assert report_text.percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert report_text.percentile([1.0, 2.0, 3.0, 4.0], 99) == 4.0
    assert report_text.percentile([], 50) == 0.0


@pytest.mark.parametrize("synthetic", [False, True])
def test_html_escapes_and_draws_slots(synthetic):
    run = _run()
    run.synthetic = synthetic
    page = report_html.render(run)
    assert "<b>sandboxed</b>" not in page and "a &lt;b&gt;sandboxed&lt;/b&gt; pod" in page
    assert page.count('class="cell new"') == 2  # the placed sandbox + its legend swatch
    assert page.count('title="free slot"') == 1
    assert "1/2 slots" in page
