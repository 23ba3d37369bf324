"""The detectors are pure: plain lists of numbers in, findings out (as Lightning's EarlyStopping
is tested). Curves here are made with a seeded generator so each case is exact and repeatable;
benchmarks/detection.py scores the same code on real trainings."""
from __future__ import annotations

import math
import random

import pytest
from pydantic import ValidationError

from trainwarden.supervisor.detectors import (
    DetectorSettings, LivenessDetectors, LivenessObservation, LossDetectors, feed,
)

W = 50


class _W:
    def __init__(self, first: int, losses: list[float]) -> None:
        self.first_step, self.last_step, self.losses = first, first + len(losses) - 1, losses


def windows(losses: list[float], size: int = W) -> list[_W]:
    return [_W(1 + i, losses[i:i + size]) for i in range(0, len(losses), size)]


def run(losses: list[float], vals: list[tuple[int, float]] = (), **settings: float) -> list:
    return feed(LossDetectors(DetectorSettings(**settings)), windows(losses), list(vals))


def noisy(n: int, seed: int = 0, sigma: float = 0.5, floor: float = 0.2, scale: float = 2.0, tau: float = 800.0) -> list[float]:
    """A decaying loss with multiplicative minibatch noise (log-normal, sigma in log space)."""
    rng = random.Random(seed)
    return [(floor + scale * math.exp(-i / tau)) * math.exp(rng.gauss(0.0, sigma)) for i in range(n)]


def kinds(findings: list) -> list[str]:
    return [f.kind for f in findings]


class TestSpike:
    @pytest.mark.parametrize("seed", range(5))
    @pytest.mark.parametrize("sigma", [0.05, 0.5, 1.0])
    def test_noisy_healthy_curves_raise_nothing(self, seed: int, sigma: float) -> None:
        found = [f for f in run(noisy(6000, seed, sigma)) if f.kind != "plateau"]
        assert found == []

    def test_a_sudden_drop_is_not_a_spike(self) -> None:
        losses = noisy(4000, 1, 0.3)
        losses = [x * (0.1 if i >= 2000 else 1.0) for i, x in enumerate(losses)]  # LR decay at 2000
        assert [f for f in run(losses) if f.kind != "plateau"] == []

    @pytest.mark.parametrize("sigma", [0.05, 0.5])
    def test_a_rebound_is_found_within_a_window_with_its_onset(self, sigma: float) -> None:
        losses = noisy(4000, 2, sigma)
        onset = 2023
        losses = [x * (3.0 if i + 1 >= onset else 1.0) for i, x in enumerate(losses)]
        spikes = [f for f in run(losses) if f.kind == "spike"]
        assert len(spikes) == 1
        assert onset <= spikes[0].step <= onset + W
        assert abs(spikes[0].onset - onset) <= 10
        assert spikes[0].data["level_before"] == pytest.approx(0.2 + 2 * math.exp(-2000 / 800), rel=0.3)

    def test_a_small_rebound_inside_heavy_noise_is_not_reported(self) -> None:
        losses = noisy(4000, 3, 1.0)
        losses = [x * (1.15 if i >= 2000 else 1.0) for i, x in enumerate(losses)]
        assert [f for f in run(losses) if f.kind == "spike"] == []

    def test_reported_once_per_episode_and_again_after_recovery(self) -> None:
        losses = noisy(6000, 4, 0.2)
        losses = [x * (4.0 if 2000 <= i < 2400 or 4000 <= i < 4400 else 1.0) for i, x in enumerate(losses)]
        spikes = [f for f in run(losses) if f.kind == "spike"]
        assert [s.onset // 100 for s in spikes] == [20, 40]


    def test_a_short_flushed_window_is_not_judged(self) -> None:
        ws = windows(noisy(2000, 10, 0.5))
        short = _W(ws[-1].last_step + 1, [5.0, 6.0, 4.0])  # three wild steps flushed at a pause
        ws += [short] + [_W(short.last_step + 1 + i * W, w.losses) for i, w in enumerate(windows(noisy(1000, 11, 0.5, scale=0)))]
        assert [f for f in feed(LossDetectors(), ws, []) if f.kind == "spike"] == []
        ws[len(ws) - 21] = _W(short.first_step, [5.0, 6.0, 4.0] * 17)  # over a whole window: a spike
        assert [f.kind for f in feed(LossDetectors(), ws, []) if f.kind == "spike"] == ["spike"]


class TestLanguageModelShapes:
    """How language-model runs go wrong: small, certain shifts on smooth curves, slow climbs,
    early blow-ups and second rebounds (per-step noise of a few percent, as at batch 16 x 64 tokens)."""

    @pytest.mark.parametrize("seed", range(3))
    def test_a_mild_level_shift_on_a_smooth_curve_is_found_within_a_window(self, seed: int) -> None:
        losses = noisy(4000, seed, 0.03, floor=2.0, scale=2.0, tau=300)
        onset = 2023
        losses = [x * (1.12 if i + 1 >= onset else 1.0) for i, x in enumerate(losses)]
        found = [f for f in run(losses) if f.kind in ("spike", "divergence")]
        assert len(found) == 1
        assert onset <= found[0].step <= onset + W + W // 2
        assert abs(found[0].onset - onset) <= W // 2

    @pytest.mark.parametrize("seed", range(3))
    def test_a_slow_climb_that_stays_is_found_early_with_its_onset(self, seed: int) -> None:
        losses = noisy(4000, seed, 0.03, floor=2.2, scale=2.0, tau=300)
        onset = 2000  # climbs x1.4 over ~225 steps, then stays there
        losses = [x * math.exp(min(0.0015 * max(0, i + 1 - onset), math.log(1.4))) for i, x in enumerate(losses)]
        found = [f for f in run(losses) if f.kind in ("spike", "divergence")]
        # Found within the climb's first window: 50 steps of a bend fit a jump about as well, so
        # the shape may read either way; the onset (where a rollback goes) is what must be right.
        assert len(found) == 1 and found[0].data["shape"] in ("climb", "step")
        assert found[0].step <= onset + W
        assert abs(found[0].onset - onset) <= W

    def test_an_early_blowup_above_the_starting_loss_is_found(self) -> None:
        rng = random.Random(5)
        losses = [4.2 * math.exp(-i / 400) * math.exp(rng.gauss(0, 0.03)) for i in range(3000)]
        for i in range(30, 130):  # the first steps at too high an LR: up to ~5x the start, then back
            losses[i] *= 1 + 4 * math.sin(math.pi * (i - 30) / 100)
        found = [f for f in run(losses) if f.kind in ("spike", "divergence")]
        assert len(found) == 1 and found[0].data["shape"] == "blowup"
        assert found[0].step <= 100 and 10 <= found[0].onset <= 60

    def test_a_second_rebound_after_a_new_normal_is_a_new_finding(self) -> None:
        losses = noisy(5000, 6, 0.03, floor=2.0, scale=2.0, tau=300)
        losses = [x * (1.2 if i + 1 >= 1500 else 1.0) * (1.2 if i + 1 >= 2800 else 1.0) for i, x in enumerate(losses)]
        found = [f for f in run(losses) if f.kind in ("spike", "divergence")]
        assert [abs(f.onset - o) <= W // 2 for f, o in zip(found, (1500, 2800))] == [True, True]
        assert len(found) == 2

    def test_a_step_up_above_the_starting_loss_that_stays_is_reported_once(self) -> None:
        losses = noisy(5000, 7, 0.1, floor=0.2, scale=0.05, tau=5000)  # barely learning
        losses = [x * (2.5 if i + 1 > 1200 else 1.0) for i, x in enumerate(losses)]
        found = [f for f in run(losses) if f.kind in ("spike", "divergence")]
        assert [(f.kind, f.onset) for f in found] == [("spike", 1201)]

    @pytest.mark.parametrize("seed", range(3))
    def test_one_wild_window_of_a_batch_1_run_is_not_an_alarm(self, seed: int) -> None:
        # Steps spanning three orders of magnitude (log-normal, sigma 1.5); one window's median
        # 1.6x its neighbours', then back.
        losses = noisy(4000, seed, 1.5, floor=0.3, scale=1.0, tau=500)
        losses = [x * (1.6 if 2000 <= i < 2050 else 1.0) for i, x in enumerate(losses)]
        assert [f for f in run(losses) if f.kind in ("spike", "divergence")] == []


class TestNanAndDivergence:
    def test_first_non_finite_step_is_the_onset(self) -> None:
        losses = noisy(3000, 5, 0.2)
        losses[2110] = math.nan
        losses[2130] = math.inf
        found = [f for f in run(losses) if f.kind == "nan"]
        assert len(found) == 1 and found[0].onset == 2111 and found[0].severity == "error"
        assert found[0].step == 2150

    def test_slow_divergence_that_no_window_shows_is_found(self) -> None:
        losses = noisy(6000, 6, 0.3)
        # 0.1% per step from step 3000: a window rises 5%, well inside the noise, yet the curve
        # triples over 1100 steps.
        losses = [x * (math.exp(0.001 * (i - 3000)) if i >= 3000 else 1.0) for i, x in enumerate(losses)]
        found = [f for f in run(losses) if f.kind in ("spike", "divergence")]
        assert found and 3000 < found[0].step < 4300
        div = [f for f in found if f.kind == "divergence"]
        assert len(div) == 1 and 2700 <= div[0].onset <= 3300  # the onset is where the rise began


class TestPlateauAndOverfit:
    def test_plateau_after_the_configured_windows(self) -> None:
        flat = [1.0 * math.exp(random.Random(i).gauss(0, 0.05)) for i in range(3000)]
        found = [f for f in run(noisy(1000, 7, 0.05) + flat, plateau_windows=20) if f.kind == "plateau"]
        assert len(found) == 1 and found[0].severity == "info"
        assert 1000 + 20 * W <= found[0].step <= 1000 + 24 * W

    def test_overfit_when_val_rises_while_train_falls(self) -> None:
        losses = noisy(5000, 8, 0.1, floor=0.01, tau=1500)
        vals = [(s, 0.5 + 0.3 * ((s - 2000) / 1000) ** 2) for s in range(100, 5001, 100)]  # min at 2000
        found = [f for f in run(losses, vals) if f.kind == "overfit"]
        assert len(found) == 1 and 1800 <= found[0].onset <= 2200 and found[0].step > 2200

    def test_no_overfit_while_val_keeps_falling(self) -> None:
        losses = noisy(5000, 9, 0.1, floor=0.01, tau=1500)
        vals = [(s, 0.3 + 1.0 / (1 + s / 500) + random.Random(s).gauss(0, 0.01)) for s in range(100, 5001, 100)]
        assert [f for f in run(losses, vals) if f.kind == "overfit"] == []


def obs(now: float, **kw: object) -> LivenessObservation:
    base = dict(now=now, status="running", step=100, heartbeat_at=now, started_at=0.0, newest_ready_at=0.0,
                writing_since=None)
    base.update(kw)
    return LivenessObservation(**base)


class TestLiveness:
    def test_hung_when_the_heartbeat_stops(self) -> None:
        det = LivenessDetectors(DetectorSettings(hung_after_s=60, save_stall_s=1e9))
        assert det.observe(obs(10.0, heartbeat_at=5.0)) == []
        found = det.observe(obs(100.0, heartbeat_at=5.0))
        assert kinds(found) == ["hung"] and "no heartbeat for 95s" in found[0].message
        assert det.observe(obs(101.0, heartbeat_at=5.0)) == []  # once per episode

    def test_hung_when_the_step_stops_moving_though_the_heartbeat_goes_on(self) -> None:
        det = LivenessDetectors(DetectorSettings(stuck_after_s=300, save_stall_s=1e9))
        assert det.observe(obs(0.0)) == []
        assert det.observe(obs(200.0)) == []
        assert kinds(det.observe(obs(301.0))) == ["hung"]
        assert det.observe(obs(302.0, step=101)) == []

    def test_paused_runs_are_never_hung(self) -> None:
        det = LivenessDetectors(DetectorSettings(hung_after_s=1, stuck_after_s=1))
        assert det.observe(obs(1000.0, status="paused", heartbeat_at=0.0)) == []

    def test_stalled_saves_and_a_stuck_write(self) -> None:
        det = LivenessDetectors(DetectorSettings(save_stall_s=600, writing_stall_s=120))
        assert det.observe(obs(500.0)) == []
        found = det.observe(obs(700.0, step=101, writing_since=550.0))
        assert kinds(found) == ["stalled_saves", "stalled_saves"]
        assert "writing" in found[1].message


def test_settings_reject_nonsense_naming_the_field() -> None:
    with pytest.raises(ValidationError, match="spike_ratio"):
        DetectorSettings(spike_ratio=0.5)
    with pytest.raises(ValidationError, match="no_such"):
        DetectorSettings(no_such=1)
