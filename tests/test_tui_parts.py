"""The TUI's pure parts: what the operator types for an LR, the health rules, the smoothed loss,
how windows split at a fork, and the chart's geometry."""
from __future__ import annotations

import math

import pytest

from trainwarden.agent.commands import CommandError
from trainwarden.agent.records import EventInfo, InterventionInfo, RunInfo, WindowInfo
from trainwarden.tui import plot
from trainwarden.tui.chart import Frame, Layer, Marker, fit_frame, render
from trainwarden.tui.dialogs import parse_lr
from trainwarden.tui.model import health, smoothed


class TestParseLR:
    @pytest.mark.parametrize("text, expected", [
        ("3e-4", ("set_lr", {"value": 3e-4})), (" 0.1 ", ("set_lr", {"value": 0.1})),
        ("x0.5", ("scale_lr", {"factor": 0.5})), ("×2", ("scale_lr", {"factor": 2.0})),
        ("* 0.25", ("scale_lr", {"factor": 0.25})), ("X0.5", ("scale_lr", {"factor": 0.5})),
    ])
    def test_values_and_factors(self, text, expected):
        assert parse_lr(text) == expected

    @pytest.mark.parametrize("text, why", [
        ("", "type a learning rate"), ("-1e-3", "greater than 0"), ("0", "greater than 0"), ("inf", "finite"),
        ("nan", "finite"), ("abc", "must be a number"), ("x", "must be a number"), ("x-2", "greater than 0"),
    ])
    def test_bad_input_says_why(self, text, why):
        with pytest.raises(CommandError, match=why):
            parse_lr(text)


def run(**kw) -> RunInfo:
    base = dict(name="r", status="running", pid=None, host=None, created_at=0.0, started_at=0.0, heartbeat_at=100.0,
                ended_at=None, step=1000, branch=0, lr=0.1, lr_multiplier=1.0, last_loss=1.0, config={}, agent_version="x")
    return RunInfo(**(base | kw))


def event(id: int, kind: str, step: int, branch: int = 0, time: float = 50.0, severity: str = "warning",
          source: str = "supervisor") -> EventInfo:
    return EventInfo(id=id, time=time, step=step, branch=branch, kind=kind, severity=severity, source=source,
                     message=f"{kind} at {step}", data={})


def intervention(id: int, finding: str, status: str, outcome: str | None = None) -> InterventionInfo:
    return InterventionInfo(id=id, created_at=0.0, finding=finding, onset=500, step=600, branch=0, mode="auto",
                            status=status, actions=[], commands=[], reason="why", level_before=1.0,
                            decided_by=None, decided_at=None, outcome=outcome)


class TestHealth:
    HISTORY = [(0, 0, None)]

    def test_a_spike_on_the_current_history_is_open(self):
        h = health(run(), "running", self.HISTORY, [event(1, "spike", 600)], [], None)
        assert (h.label, h.severity) == ("spike", "warning") and "spike at 600" in h.detail

    def test_a_rollback_to_before_it_closes_it(self):
        after = [(0, 0, 400), (1, 400, None)]  # branch 1 forked at step 400, before the spike at 600
        assert health(run(branch=1), "running", after, [event(1, "spike", 600)], [], None).label == "ok"

    def test_a_cured_event_closes_it_and_a_remedy_in_flight_reads_as_recovering(self):
        events = [event(1, "spike", 600), event(2, "cured", 900, severity="info")]
        assert health(run(), "running", self.HISTORY, events, [], None).label == "ok"
        h = health(run(), "running", self.HISTORY, events, [intervention(1, "spike", "applied")], None)
        assert (h.label, h.severity) == ("recovering (spike)", "warning")
        assert health(run(), "running", self.HISTORY, events, [intervention(1, "spike", "applied", "cured")], None).label == "ok"

    def test_the_worst_wins_and_a_spent_budget_needs_a_person(self):
        events = [event(1, "plateau", 300, severity="info"), event(2, "nan", 600, severity="error")]
        assert health(run(), "running", self.HISTORY, events, [], None).label == "nan"
        h = health(run(status="paused"), "paused", self.HISTORY, [],
                   [intervention(1, "spike", "applied", "not cured"), intervention(2, "budget", "applied")], None)
        assert (h.label, h.severity) == ("needs person", "error")

    def test_hangs_and_stalled_saves_close_when_life_returns(self):
        hung = [event(1, "hung", 600, time=120.0)]
        assert health(run(heartbeat_at=100.0), "running", self.HISTORY, hung, [], None).label == "hung"
        assert health(run(heartbeat_at=130.0), "running", self.HISTORY, hung, [], None).label == "ok"
        stalled = [event(1, "stalled_saves", 600, time=120.0)]
        assert health(run(), "running", self.HISTORY, stalled, [], 90.0).label == "stalled saves"
        assert health(run(), "running", self.HISTORY, stalled, [], 125.0).label == "ok"

    def test_a_crashed_or_stale_process(self):
        assert health(run(), "crashed", self.HISTORY, [], [], None).label == "crashed"
        assert health(run(), "stale", self.HISTORY, [], [], None).label == "stale"
        # Events from operators or the agent are not findings.
        assert health(run(), "running", self.HISTORY, [event(1, "spike", 600, source="cli")], [], None).label == "ok"


def window(id: int, branch: int, first: int, losses: list[float]) -> WindowInfo:
    finite = [v for v in losses if math.isfinite(v)]
    return WindowInfo(id=id, branch=branch, first_step=first, last_step=first + len(losses) - 1, count=len(losses),
                      mean=sum(finite) / len(finite) if finite else None, min=min(finite, default=None),
                      max=max(finite, default=None), std=0.0, nonfinite=len(losses) - len(finite), lr=0.1,
                      steps_per_s=10.0, losses=losses, time=0.0)


class TestSmoothed:
    def test_level_is_the_median_of_the_last_three_and_trend_compares_the_three_before(self):
        ws = [window(i, 0, i * 10 + 1, [m] * 10) for i, m in enumerate([4.0, 4.0, 4.0, 2.0, 100.0, 2.0])]
        level, trend = smoothed(ws)
        assert level == 2.0 and trend == pytest.approx(-0.5)  # one wild window does not move it
        assert smoothed(ws[:2]) == (4.0, None) and smoothed([]) == (None, None)


class TestSplitAtFork:
    def test_a_window_straddling_the_fork_is_cut_there(self):
        segments = [(0, 0, 25), (1, 25, None)]  # branch 1 forked at step 25
        pieces = plot.split(window(1, 0, 21, [1.0] * 10), segments)
        assert [(p.first, p.last, p.current) for p in pieces] == [(21, 25, True), (26, 30, False)]
        assert [(p.first, p.last, p.current) for p in plot.split(window(2, 1, 26, [1.0] * 10), segments)] == [(26, 35, True)]
        assert [p.current for p in plot.split(window(3, 2, 26, [1.0] * 10), segments)] == [False]


class TestChart:
    def test_geometry_labels_and_markers(self):
        line = [(float(x), 10.0 - x / 10) for x in range(0, 101)]
        layer = Layer("blue", lines=[line])
        frame = fit_frame([layer], 0, 100, log=False)
        assert frame is not None and frame.y0 == pytest.approx(0.0 - 0.0, abs=0.5) and frame.y1 > 10.0
        lines = render([layer], [Marker(100, "▲", "green"), Marker(0, "◆", "magenta")], frame, 60, 12)
        assert len(lines) == 12 and all(len(t.plain) == 60 for t in lines)
        markers = lines[-2].plain
        assert markers.rstrip().endswith("▲") and "◆" in markers[: markers.index("└") + 2]
        assert lines[0].plain.lstrip().startswith(f"{frame.y1:.3g}")
        # A falling line: the top-left cell and the bottom-right cell hold dots, the top-right none.
        plot_rows = [t.plain[t.plain.index("┤") + 1 if "┤" in t.plain else t.plain.index("│") + 1:] for t in lines[:-2]]
        assert plot_rows[0][0] != " " and plot_rows[-1][-1] != " " and plot_rows[0][-1] == " "

    def test_log_scale_and_nonfinite_values_break_the_line(self):
        layer = Layer("blue", lines=[[(0.0, 1.0), (1.0, float("nan")), (2.0, 100.0), (3.0, 0.0)]])
        frame = fit_frame([layer], 0, 3, log=True)
        assert frame.y0 < 0 < 2 < frame.y1  # log10 of 1 and 100; 0 cannot be drawn and is left out
        lines = render([layer], [], frame, 40, 10)
        top, bottom = (float(t.plain.split("┤")[0]) for t in (lines[0], lines[-3]))
        assert 100 < top < 200 and 0.5 < bottom < 1  # labels are losses, not their logarithms

    def test_a_rolled_back_branch_is_drawn_in_its_own_colour(self):
        from trainwarden.tui.model import Health, RunDetail

        ws = [window(1, 0, 1, [2.0] * 10), window(2, 0, 11, [1.5] * 10), window(3, 0, 21, [9.0] * 10),
              window(4, 1, 21, [1.2] * 10)]
        detail = RunDetail(path="x", run=run(branch=1, step=30), status="running", health=Health(label="ok", severity="ok"),
                           branches=[], segments=[(0, 0, 20), (1, 20, None)], windows=ws, val=[], checkpoints=[],
                           events=[], commands=[], interventions=[])
        layers, _, frame = plot.build(detail)
        by_style = {layer.style: layer for layer in layers}
        assert [y for line in by_style[plot.OLD].lines for _, y in line] == [9.0]
        assert [y for line in by_style[plot.CURRENT].lines for _, y in line] == pytest.approx([2.0, 1.5, 1.2])
        text = render(layers, [], frame, 50, 10)
        styles = {span.style for t in text for span in t.spans}
        assert plot.OLD in styles and plot.CURRENT in styles
        _, _, zoomed = plot.build(detail, zoom=10)
        assert (zoomed.x0, zoomed.x1) == (20, 30)

    def test_frame_is_none_without_data(self):
        assert fit_frame([Layer("x")], 0, 10, log=False) is None
        assert Frame(0, 1, 0, 1).log is False
