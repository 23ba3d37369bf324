"""One run's watcher (supervisor/watch.py) ticked in-process against a real store that this test
writes as an agent would, to pin down races a subprocess test would hit only by chance."""
from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from trainwarden.agent.records import InterventionInfo
from trainwarden.agent.store import Store
from trainwarden.agent.window import window_stats
from trainwarden.supervisor.policy import Policy
from trainwarden.supervisor.watch import RunWatch

rng = random.Random(0)


def losses(factor: float = 1.0) -> list[float]:
    return [factor * math.exp(rng.gauss(0, 0.1)) for _ in range(50)]


@pytest.fixture
def agent(tmp_path: Path):
    s = Store.open(tmp_path / "run", create=True)
    yield s
    s.close()


def start(s: Store) -> None:
    s.init_run("run", {}, "test")
    now = time.time()
    s.update_run(status="running", pid=1, host="elsewhere", started_at=now, heartbeat_at=now)


def window(s: Store, k: int, factor: float = 1.0) -> None:
    values = losses(factor)
    with s.transaction():
        s.add_window(0, k * 50 + 1, values, window_stats(values), 1e-3, 50.0)
        s.update_run(step=k * 50 + 50)


def test_a_commit_during_a_tick_is_seen_by_the_next_tick(agent: Store) -> None:
    start(agent)
    window(agent, 0)
    cid, rel = agent.add_checkpoint(50, 0, 1.0, "best")
    (agent.run_dir / rel).write_bytes(b"x")
    agent.checkpoint_ready(cid, 1, "xxh3_128:0")
    for k in range(1, 9):
        window(agent, k)
    lines: list[str] = []
    watch = RunWatch(agent.run_dir, Policy(), lambda level, line: lines.append(line))
    watch.tick(time.time())
    assert agent.commands() == []

    store = watch._store
    read_checkpoints = store.checkpoints

    def rebound_meanwhile(*a, **kw):  # after the tick has read the windows, before it ends
        store.checkpoints = read_checkpoints
        window(agent, 9, 5.0)
        return read_checkpoints(*a, **kw)

    store.checkpoints = rebound_meanwhile
    agent.update_run(heartbeat_at=time.time())
    watch.tick(time.time())
    assert agent.commands() == []  # the rebound landed after this tick's read
    watch.tick(time.time())  # no other commit since: the next tick must still see it
    assert [c.kind for c in agent.commands()] == ["rollback", "scale_lr"]
    assert any("spike" in line for line in lines)
    watch.close()


def test_a_store_without_its_run_row_yet_is_not_an_error(agent: Store) -> None:
    lines: list[tuple[str, str]] = []
    watch = RunWatch(agent.run_dir, Policy(), lambda level, line: lines.append((level, line)))
    watch.tick(time.time())
    assert watch.error is None and lines == []
    start(agent)
    watch.tick(time.time())
    assert watch.run is not None and watch.run.status == "running" and watch.error is None
    watch.close()


class Agent:
    """Writes a store as trainwarden's agent does: 50-step windows, a checkpoint every 100 steps,
    and commands applied at a window boundary once they have waited `lag` windows (the agent polls),
    each acknowledged with the event the agent writes beside it (naming the command and branch).
    `loss(step, agent)` is the run's loss level at a step, given the agent's branch and LR cuts."""

    def __init__(self, s: Store, loss: Callable[[int, "Agent"], float], seed: int = 0, lag: int = 1) -> None:
        self.s, self.loss, self.rng, self.lag = s, loss, random.Random(seed), lag
        self.step = self.branch = 0
        self.multiplier = 1.0
        self.waited: dict[int, int] = {}  # pending command -> window boundaries it has waited
        start(s)

    def window(self) -> None:
        first = self.step + 1
        values = [self.loss(first + i, self) * math.exp(self.rng.gauss(0, 0.1)) for i in range(50)]
        stats = window_stats(values)
        with self.s.transaction():
            self.s.add_window(self.branch, first, values, stats, 1e-3 * self.multiplier, 50.0)
            self.step += 50
            self.s.update_run(step=self.step, heartbeat_at=time.time())
        if self.step % 100 == 0 and stats["nonfinite"] == 0:
            cid, rel = self.s.add_checkpoint(self.step, self.branch, stats["mean"], "last")
            (self.s.run_dir / rel).write_bytes(b"x")
            self.s.checkpoint_ready(cid, 1, "xxh3_128:0")

    def boundary(self) -> None:
        """Apply the commands that have waited `lag` window boundaries."""
        for c in self.s.commands("pending"):
            if self.waited.get(c.id, 0) >= self.lag:
                self.apply(c.id, c.kind, c.args)
            else:
                self.waited[c.id] = self.waited.get(c.id, 0) + 1

    def apply(self, cid: int, kind: str, args: dict) -> None:
        with self.s.transaction():
            if kind == "rollback":
                target = self.s.checkpoint(args["target"])
                self.branch, self.step = self.s.next_branch_id(), target.step
                self.s.add_branch(self.branch, target.branch, target.step, target.id, "rollback")
                self.s.update_run(branch=self.branch, step=self.step)
                event = "rollback"
            else:
                assert kind == "scale_lr", kind
                self.multiplier *= args["factor"]
                self.s.update_run(lr_multiplier=self.multiplier)
                event = "lr_changed"
            self.s.ack_command(cid, "applied", kind, self.step)
            self.s.add_event(event, "info", f"{kind} (command {cid})", step=self.step, branch=self.branch,
                             data={"command": cid})


def drive(agent: Agent, watch: RunWatch, windows: int, until: Callable[[], bool] = lambda: False, fast: bool = True) -> None:
    """The run and the daemon side by side: after each window the daemon ticks; when `fast`, the run
    writes its new branch's first window right after a rollback, before the daemon looks."""
    for _ in range(windows):
        agent.window()
        branch = agent.branch
        agent.boundary()
        if fast and agent.branch != branch:
            agent.window()
        watch.tick(time.time())
        if until():
            return


def base(step: int) -> float:
    return 0.25 * math.exp(-step / 5000)


def judged_windows_end(s: Store, iv: InterventionInfo, cooldown: int) -> int:
    """Last step of the windows a remedy must be judged on: three full windows past its onset and
    its cooldown, counted from the step its rollback restored."""
    fork = max(s.command(i).applied_step for i in iv.commands)
    return max(iv.onset, fork + cooldown) + 150


@pytest.mark.parametrize("lag", [1, 2, 4])
@pytest.mark.parametrize("fast", [True, False])
def test_a_remedy_is_judged_on_its_own_branch_past_the_onset_not_on_the_abandoned_one(
        agent: Store, lag: int, fast: bool) -> None:
    """The issue: an LR schedule that jumps at step 1200 needs three cuts. The second cut's rollback
    used to be judged cured at once when the new branch wrote a window before the daemon looked:
    the abandoned branch's last step was taken as the new branch's, and the level came from the new
    branch's first windows, before the troubled step. However late the agent applies the cut and
    whenever the daemon looks, the verdicts are the same."""
    def loss(step: int, a: Agent) -> float:
        return base(step) * (2.5 if step > 1200 and a.multiplier > 0.125 else 1.0)

    run = Agent(agent, loss, lag=lag)
    policy = Policy()  # 200-step cooldown, cure_ratio 1.25, LR halved per cut
    watch = RunWatch(agent.run_dir, policy, lambda level, line: None)
    drive(run, watch, 150, until=lambda: any(e.kind == "cured" for e in agent.events()), fast=fast)
    watch.close()
    ivs = [iv for iv in agent.interventions() if iv.status == "applied"]
    cures = [e for e in agent.events() if e.kind == "cured"]
    assert len(cures) == 1, [iv.outcome for iv in ivs]
    assert run.multiplier == 0.125  # cut until the loss came down, not "cured" with the loss 2.5x high
    cured = agent.intervention(cures[0].data["intervention"])
    assert cured.id == ivs[-1].id and all(iv.outcome.startswith("not cured") for iv in ivs[:-1])
    # Each cut is judged against the level before the onset (or its own checkpoint's loss if higher):
    # the first cut's checkpoint loss must not become the next cuts' "level before the onset".
    assert {iv.level_before for iv in ivs} == {ivs[0].level_before}
    for iv in ivs:
        judged = [e for e in agent.events() if e.data.get("intervention") == iv.id and e.kind == "cured"]
        judged += [e for e in agent.events() if e.data.get("key") == f"cure:{iv.id}"]
        assert judged and judged[0].step == judged_windows_end(agent, iv, policy.cooldown_steps)


# Only non-finite losses are acted on by the detectors here; spikes are observed. So the one way a
# high level after a cure can lead to a cut is the watcher's own follow-up of the cure.
NAN_ONLY = Policy.model_validate({"modes": {"spike": "observe", "divergence": "observe"}})


def nan_at_1201(step: int, a: Agent) -> float:
    return math.nan if a.branch == 0 and 1200 < step <= 1250 else base(step)


def test_a_level_that_settles_high_after_a_cure_is_a_finding_and_a_further_cut(agent: Store) -> None:
    def loss(step: int, a: Agent) -> float:
        return nan_at_1201(step, a) * (2.0 if a.branch == 1 and step > 1600 else 1.0)

    run = Agent(agent, loss)
    watch = RunWatch(agent.run_dir, NAN_ONLY, lambda level, line: None)
    drive(run, watch, 60, until=lambda: run.step >= 1400 and run.branch == 1)
    first = agent.interventions()[0]
    assert first.finding == "nan" and first.status == "applied" and first.outcome is None  # judged at 1450, not before
    drive(run, watch, 60, until=lambda: any(e.kind == "cured" for e in agent.events()))
    assert agent.intervention(first.id).outcome == "cured" and run.step == 1450
    drive(run, watch, 60, until=lambda: len(agent.interventions()) > 1)
    relapsed = agent.intervention(first.id).outcome
    assert relapsed.startswith("cured, then relapsed") and "from step 1601" in relapsed
    second = agent.interventions()[1]
    assert (second.mode, second.onset, second.step, second.status) == ("cure", 1601, 1750, "issued")
    assert [agent.command(i).kind for i in second.commands] == ["rollback", "scale_lr"]
    assert agent.checkpoint(agent.command(second.commands[0]).args["target"]).step <= 1551
    watch.close()

    # A daemon restarted now (or killed at any moment before) neither repeats nor loses it.
    events = len(agent.events())
    again = RunWatch(agent.run_dir, NAN_ONLY, lambda level, line: None)
    again.tick(time.time())
    assert len(agent.interventions()) == 2 and len(agent.events()) == events
    drive(run, again, 40, until=lambda: agent.intervention(second.id).outcome is not None)
    assert agent.intervention(second.id).outcome == "cured"  # branch 2 is healthy
    again.close()


def test_a_remedy_is_not_judged_on_a_branch_someone_else_rolled_back_to(agent: Store) -> None:
    run = Agent(agent, lambda step, a: nan_at_1201(step, a) * (3.0 if a.branch == 2 else 1.0))
    watch = RunWatch(agent.run_dir, NAN_ONLY, lambda level, line: None)
    drive(run, watch, 60, until=lambda: run.branch == 1)
    mine = agent.interventions()[0]
    drive(run, watch, 2)
    early = next(c for c in agent.checkpoints(["ready"]) if c.step == 600)
    run.apply(agent.add_command("rollback", {"target": early.id}, "operator"), "rollback", {"target": early.id})
    drive(run, watch, 30)  # branch 2, forked from branch 0 at step 600: foreign to the remedy
    assert run.branch == 2 and run.step == 600 + 30 * 50
    assert agent.intervention(mine.id).outcome is None
    assert [e.kind for e in agent.events() if e.kind == "cured"] == []
    watch.close()


def test_an_intervention_the_run_ended_before_applying_is_closed_not_left_waiting(agent: Store) -> None:
    start(agent)
    window(agent, 0)
    cid, rel = agent.add_checkpoint(50, 0, 1.0, "best")
    (agent.run_dir / rel).write_bytes(b"x")
    agent.checkpoint_ready(cid, 1, "xxh3_128:0")
    for k in range(1, 9):
        window(agent, k)
    watch = RunWatch(agent.run_dir, Policy(), lambda level, line: None)
    watch.tick(time.time())
    window(agent, 9, 5.0)
    watch.tick(time.time())
    [iv] = agent.interventions()
    assert iv.status == "issued" and all(c.status == "pending" for c in agent.commands())
    agent.update_run(status="finished", step=500, ended_at=time.time())  # the job ends without reading them
    watch.tick(time.time())
    [iv] = agent.interventions()
    assert iv.status == "rejected"
    assert {(c.status, c.result) for c in agent.commands()} == {("rejected", "not applied: the run finished at step 500 first")}
    assert any(e.kind == "intervention_rejected" for e in agent.events())
    watch.close()
