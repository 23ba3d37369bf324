"""The policy: TOML loading with errors that name the file and field, per-run overrides, and the
pure decision rules (modes, rollback target, cooldown, budget)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from trainwarden.supervisor.detectors import Finding
from trainwarden.supervisor.policy import (
    CheckpointChoice, Policy, PolicyError, RunRecord, cure_reference, cure_verdict, cured, decide, load_policy, relapse,
    rollback_target, window_level, with_run_overrides,
)


def spike(step: int = 1000, onset: int = 980, kind: str = "spike") -> Finding:
    return Finding(kind=kind, onset=onset, step=step, severity="error", message="rebound", data={"level_before": 0.5})


def record(**kw: object) -> RunRecord:
    base = dict(step=1000, status="running", interventions=0, cooldown_until=None, checkpoints=[
        CheckpointChoice(id=1, step=500, loss=0.9), CheckpointChoice(id=2, step=800, loss=0.6),
        CheckpointChoice(id=3, step=950, loss=0.55), CheckpointChoice(id=4, step=990, loss=0.7)])
    base.update(kw)
    return RunRecord(**base)


class TestLoading:
    def test_defaults_without_a_file(self) -> None:
        p = load_policy(None)
        assert p.mode("spike") == "auto" and p.mode("plateau") == "observe" and p.lr_scale == 0.5

    def test_a_file_sets_modes_remedy_and_detector_thresholds(self, tmp_path: Path) -> None:
        f = tmp_path / "policy.toml"
        f.write_text('lr_scale = 0.3\ncooldown_steps = 100\n[modes]\nspike = "ask"\n[detect]\nspike_ratio = 2.0\n')
        p = load_policy(f)
        assert (p.lr_scale, p.cooldown_steps, p.mode("spike"), p.detect.spike_ratio) == (0.3, 100, "ask", 2.0)

    @pytest.mark.parametrize("text, field", [
        ("lr_scale = -0.5", "lr_scale"),
        ("lr_scale = nan", "lr_scale"),
        ('[modes]\nspike = "sometimes"', "modes.spike"),
        ('[modes]\nhung = "auto"', "modes.hung"),
        ("[detect]\nspike_ratio = 0.9", "detect.spike_ratio"),
        ("max_interventions = 0", "max_interventions"),
        ("cooldown = 5", "cooldown"),  # a misspelt field is an error, not silently ignored
    ])
    def test_invalid_fields_are_named_with_the_file(self, tmp_path: Path, text: str, field: str) -> None:
        f = tmp_path / "bad.toml"
        f.write_text(text + "\n")
        with pytest.raises(PolicyError) as exc:
            load_policy(f)
        assert str(exc.value).startswith(f"{f}: {field}:")
        assert "\n" not in str(exc.value)

    def test_not_toml_and_missing_file(self, tmp_path: Path) -> None:
        f = tmp_path / "broken.toml"
        f.write_text("lr_scale = = 2\n")
        with pytest.raises(PolicyError, match="not valid TOML"):
            load_policy(f)
        with pytest.raises(PolicyError, match="no such policy file"):
            load_policy(tmp_path / "missing.toml")

    def test_run_overrides_merge_section_by_section(self, tmp_path: Path) -> None:
        base = Policy.model_validate({"modes": {"plateau": "ask"}, "detect": {"spike_ratio": 1.5}})
        (tmp_path / "warden.toml").write_text('[modes]\nspike = "observe"\n[detect]\nwarmup_windows = 8\n')
        p = with_run_overrides(base, tmp_path)
        assert (p.mode("spike"), p.mode("plateau"), p.detect.spike_ratio, p.detect.warmup_windows) == ("observe", "ask", 1.5, 8)

    def test_a_run_cannot_redirect_the_alerts(self, tmp_path: Path) -> None:
        (tmp_path / "warden.toml").write_text('[alerts]\nwebhook = "https://elsewhere.example/hook"\n')
        with pytest.raises(PolicyError, match="warden.toml: alerts: set in the daemon's policy only"):
            with_run_overrides(Policy(), tmp_path)


class TestDecide:
    def test_auto_rolls_back_to_the_best_checkpoint_before_the_onset_with_margin_and_halves_the_lr(self) -> None:
        d = decide(spike(), Policy(rollback_margin_steps=50), record())
        assert d.mode == "auto"
        assert [(a.kind, a.args) for a in d.actions] == [("rollback", {"target": 2}), ("scale_lr", {"factor": 0.5})]

    def test_best_by_loss_then_newest(self) -> None:
        ck = [CheckpointChoice(id=1, step=100, loss=0.5), CheckpointChoice(id=2, step=200, loss=0.5),
              CheckpointChoice(id=3, step=300, loss=None)]
        assert rollback_target(ck, 1000, 0).id == 2
        assert rollback_target(ck, 150, 0).id == 1
        assert rollback_target(ck, 50, 0) is None

    def test_a_paused_run_is_resumed_after_the_remedy(self) -> None:
        d = decide(spike(), Policy(), record(status="paused"))
        assert [a.kind for a in d.actions] == ["rollback", "scale_lr", "resume"]

    def test_observe_and_ask(self) -> None:
        assert decide(spike(), Policy.model_validate({"modes": {"spike": "observe"}}), record()).actions == []
        d = decide(spike(), Policy.model_validate({"modes": {"spike": "ask"}}), record())
        assert d.mode == "ask" and d.actions

    def test_held_during_cooldown_while_pending_and_when_stale(self) -> None:
        assert decide(spike(step=1000), Policy(), record(cooldown_until=1100)).mode == "held"
        assert decide(spike(step=1100), Policy(), record(cooldown_until=1100)).mode == "auto"
        assert decide(spike(), Policy(), record(waiting_for=3)).mode == "held"
        assert decide(spike(), Policy(act_within_s=60), record(), age_s=61).mode == "held"
        assert decide(spike(), Policy(act_within_s=60), record(), age_s=59).mode == "auto"
        assert decide(spike(), Policy(), record(status="finished")).mode == "held"

    def test_budget_spent_pauses_for_a_person(self) -> None:
        d = decide(spike(), Policy(max_interventions=3), record(interventions=3))
        assert d.mode == "budget" and [a.kind for a in d.actions] == ["pause"]
        assert decide(spike(), Policy(max_interventions=3), record(interventions=3, budget_exhausted=True)).mode == "held"

    def test_no_checkpoint_before_the_onset_still_cuts_the_lr(self) -> None:
        d = decide(spike(onset=400), Policy(), record())
        assert [a.kind for a in d.actions] == ["scale_lr"] and "no ready checkpoint" in d.reason

    def test_plateau_and_overfit_remedies(self) -> None:
        p = Policy.model_validate({"modes": {"plateau": "auto", "overfit": "auto"}, "plateau_lr_scale": 0.3})
        assert [(a.kind, a.args) for a in decide(spike(kind="plateau"), p, record()).actions] == [("scale_lr", {"factor": 0.3})]
        assert [a.kind for a in decide(spike(kind="overfit"), p, record()).actions] == ["stop"]


def test_the_readme_policy_example_loads(tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    example = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    f = tmp_path / "policy.toml"
    f.write_text(example)
    p = load_policy(f)
    assert p.max_interventions == 6 and p.detect.hung_after_s == 120


def test_docs_policy_md_lists_every_field_with_its_default():
    """docs/policy.md is the reference users read: it must not drift from the model."""
    import json as _json

    from pydantic import BaseModel

    doc = (Path(__file__).resolve().parent.parent / "docs" / "policy.md").read_text()

    def shown(value: object) -> str:
        if value is None:
            return "none"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, (str, list)):
            return _json.dumps(value)
        return repr(value)

    def walk(model: type[BaseModel]) -> list[tuple[str, str]]:
        rows = []
        for name, field in model.model_fields.items():
            default = field.get_default(call_default_factory=True)
            rows += walk(type(default)) if isinstance(default, BaseModel) else [(name, shown(default))]
        return rows

    missing = [(n, d) for n, d in walk(Policy) if f"| `{n}` | {'none' if d == 'none' else f'`{d}`'} |" not in doc]
    assert not missing, f"docs/policy.md lacks or misstates: {missing}"


class TestCure:
    def test_judged_against_the_level_before_the_onset(self) -> None:
        p = Policy(cure_ratio=1.25)
        assert cured(0.012, cure_reference(0.01, None), p) and not cured(0.013, cure_reference(0.01, None), p)

    def test_a_rollback_to_a_higher_loss_is_judged_against_that_loss(self) -> None:
        # Seen in a real run: rolled back to a checkpoint at loss 0.0248, the run at 0.0156 after the
        # cooldown (it had been at 0.0078 just before the onset). Judged against 0.0078 alone, each
        # further LR cut slowed it more, until the budget paused a healthy run.
        p = Policy(cure_ratio=1.25)
        ref = cure_reference(0.0078, 0.0248)
        assert ref == 0.0248 and cured(0.0156, ref, p)
        assert not cured(0.05, ref, p)  # still rebounding: a further cut
        assert cure_reference(0.02, 0.01) == 0.02  # a better checkpoint never tightens the rule
        assert cure_reference(0.02, float("nan")) == 0.02

    def test_judged_on_the_first_three_windows_past_the_cooldown_whenever_it_is_looked_at(self) -> None:
        p = Policy(cure_ratio=1.25)
        assert cure_verdict([0.2, 0.2], 0.2, p) is None  # too few windows yet
        assert cure_verdict([0.2, 0.9, 0.22], 0.2, p) == (True, 0.22)  # one wild window is ignored
        assert cure_verdict([0.58, 0.45, 0.2], 0.22, p) == (False, 0.45)
        # Windows that came later do not change the verdict: it is the run's, not the daemon's timing.
        assert cure_verdict([0.58, 0.45, 0.2, 0.2, 0.2, 0.2], 0.22, p) == (False, 0.45)

    def test_a_window_level_is_its_median_and_a_non_finite_loss_counts_as_high(self) -> None:
        assert window_level([0.3, 0.1, 0.2, 50.0, 0.2]) == 0.2
        assert window_level([0.1, float("nan"), float("nan")]) == math.inf
        assert window_level([]) == math.inf

    def test_after_a_cure_a_level_that_settles_above_the_bar_is_a_relapse(self) -> None:
        p = Policy(cure_ratio=1.25)
        assert relapse([0.2, 0.3, 0.2, 0.3, 0.3, 0.2], 0.2, p) is None  # single high windows: noise
        assert relapse([0.2, 0.35, 0.4, 0.51, 0.45], 0.2, p) == 3  # the 1.6-2.6x, three in a row
        assert relapse([0.25, 0.25, 0.25], 0.2, p) is None  # at the bar is still cured
