"""Distributed runs: the real examples under torchrun, 2 ranks on gloo, steered through the store.

Each torchrun start costs a few seconds (two Python processes importing torch on 2 cores), so
every test here checks several behaviours of one job.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import cli, wait_for
from trainwarden.agent.dist import SHARDED_MIN_TORCH, sharded_supported
from trainwarden.agent.store import Store

pytestmark = pytest.mark.timeout(240)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def torchrun(module: str, *args: object, nproc: int = 2) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
         "-m", module, *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)


def finish(proc: subprocess.Popen[str], timeout: float = 180) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]
    return out


def store_step(run: Path) -> int:
    try:
        with Store.open(run) as s:
            return s.run().step if s.run().status == "running" else -1
    except Exception:
        return -1


def reports(folder: Path, nproc: int = 2) -> list[dict]:
    return [json.loads((folder / f"rank-{r}.json").read_text()) for r in range(nproc)]


def assert_ranks_agree(folder: Path) -> list[dict]:
    """Every rank ended at the same step with the same LR, parameters and applied commands."""
    got = reports(folder)
    for key in ("step", "lr", "lr_groups", "params", "applied"):
        assert got[0][key] == got[1][key], (key, got[0][key], got[1][key])
    return got


def windows_are_unique(run: Path) -> None:
    """Rank 0 alone wrote the store: no window or step recorded twice on a branch."""
    with Store.open(run) as s:
        for b in s.branches():
            starts = [w.first_step for w in s.windows(b.id)]
            assert len(starts) == len(set(starts)), starts


def test_ddp_run_records_saves_and_applies_commands_on_every_rank_at_the_same_step(tmp_path: Path) -> None:
    run, rep = tmp_path / "ddp", tmp_path / "rep"
    proc = torchrun("trainwarden.examples.train_ddp", "--run-dir", run, "--steps", 1000, "--step-delay", 0.004,
                    "--report", rep)
    wait_for(lambda: store_step(run) >= 300, timeout=90, interval=0.2, what="the DDP run to pass step 300")
    lr = cli("lr", run, "2e-4", "--timeout", "30")
    assert lr.returncode == 0, lr.stderr
    back = cli("rollback", run, "--best", "--timeout", "30")
    assert back.returncode == 0, back.stderr
    assert "rolled back" in back.stdout
    out = finish(proc)
    assert "2 ranks" in out

    got = assert_ranks_agree(rep)
    kinds = [kind for _, kind, _ in got[0]["applied"]]
    assert kinds == ["set_lr", "rollback"]
    assert got[0]["step"] == 1000
    with Store.open(run) as s:
        info = s.run()
        assert info.pid == int((rep / "pid-0").read_text())  # rank 0's process owns the run row
        assert info.status == "finished"
        ready = s.checkpoints(["ready"])
        assert ready and all(c.path.endswith(".pt") for c in ready)
        assert len(s.branches()) == 2  # the rollback forked a branch; the old one is kept
        for c in ready:  # each rank's RNG states are in the single file rank 0 wrote
            state = torch.load(run / c.path, weights_only=True)
            assert len(state["rng_ranks"]) == 2
    windows_are_unique(run)


@pytest.mark.skipif(not sharded_supported(), reason=f"FSDP2 and sharded checkpoints need torch >= {SHARDED_MIN_TORCH}")
def test_fsdp_sharded_checkpoints_commands_pause_and_resharded_resume(tmp_path: Path) -> None:
    run, rep = tmp_path / "fsdp", tmp_path / "rep"
    # Both timeouts (the job's process group and trainwarden's) far shorter than the pause below.
    # FSDP on CPUs is slow enough (~30 ms a step on 2 cores) without --step-delay.
    proc = torchrun("trainwarden.examples.train_fsdp", "--run-dir", run, "--steps", 300, "--window", 25,
                    "--val-every", 100, "--report", rep, "--dist-timeout", 3)
    wait_for(lambda: store_step(run) >= 100, timeout=90, interval=0.2, what="the FSDP run to pass step 100")
    assert cli("pause", run, "--timeout", "30").returncode == 0
    time.sleep(7)  # more than twice the timeouts: nobody may time out while paused
    with Store.open(run) as s:
        paused_at = s.run().step
        assert s.run().status == "paused"
    assert cli("lr", run, "--scale", "0.5", "--timeout", "30").returncode == 0  # applied while paused
    assert cli("rollback", run, "--last", "--timeout", "30").returncode == 0
    assert cli("resume", run, "--timeout", "30").returncode == 0
    finish(proc)

    got = assert_ranks_agree(rep)
    assert [k for _, k, _ in got[0]["applied"]] == ["pause", "scale_lr", "rollback", "resume"]
    assert got[0]["applied"][0][2] == paused_at
    with Store.open(run) as s:
        ready = s.checkpoints(["ready"])
        assert ready and all(c.path.endswith(".dcp") for c in ready)
        for c in ready:
            folder = run / c.path
            assert (folder / "trainwarden.json").is_file() and (folder / ".metadata").is_file()
            assert len(list(folder.glob("*.distcp"))) == 2  # both ranks wrote their shards
        best = min(ready, key=lambda c: c.loss)

    # For inference: one plain file, the same weights as the sharded checkpoint.
    out = tmp_path / "model.pt"
    exported = cli("export", run, str(best.id), "-o", out)
    assert exported.returncode == 0, exported.stderr
    weights = torch.load(out, weights_only=True)
    from trainwarden.examples.train_ddp import make_model, parse
    model = make_model(parse([]), 32, torch.device("cpu"))
    model.load_state_dict(weights)  # strict: every key matches the bare model

    # Resharding: the 2-rank checkpoint resumes in one process on a plain model.
    import trainwarden.agent as tw
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with tw.attach(run, model=model, optimizer=optimizer, distributed_checkpoint=True,
                   config=tw.AgentConfig(handle_signals=False)) as again:
        assert again.resume() == 300
        for _ in range(20):
            loss = model(torch.randn(8, 32)).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            again.record(loss)
    with Store.open(run) as s:
        final = max(s.checkpoints(["ready"]), key=lambda c: c.id)
        assert final.step == 320 and final.kind == "final"


def launch(root: Path, name: str, *job: object, restarts: int = 2) -> subprocess.Popen[str]:
    """`trainwarden run --nproc-per-node 2` as a user types it."""
    return subprocess.Popen(
        ["trainwarden", "run", "--root", str(root), "--name", name, "--nproc-per-node", "2",
         "--max-restarts", str(restarts), "--backoff", "0.5", "--", sys.executable, "-m", *map(str, job)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)


def test_kill_9_of_one_rank_restarts_the_group_which_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    root, rep = tmp_path / "runs", tmp_path / "rep"
    run = root / "ddp"
    proc = launch(root, "ddp", "trainwarden.examples.train_ddp", "--steps", 1000, "--step-delay", 0.004,
                  "--report", rep)

    def saved_past_200() -> bool:
        try:
            with Store.open(run) as s:
                return any(c.step >= 200 for c in s.checkpoints(["ready"]))
        except Exception:
            return False
    wait_for(saved_past_200, timeout=90, interval=0.2, what="a checkpoint past step 200")
    first_rank1 = int((rep / "pid-1").read_text())
    os.kill(first_rank1, signal.SIGKILL)
    out = finish(proc)

    assert int((rep / "pid-1").read_text()) != first_rank1  # the group was started again
    got = assert_ranks_agree(rep)
    assert got[0]["step"] == 1000
    with Store.open(run) as s:
        kinds = [e.kind for e in s.events()]
        resumed = [e for e in s.events() if e.kind == "resumed"]
        assert s.run().status == "finished"
    assert "job_restarted" in kinds, out[-2000:]
    assert resumed and resumed[-1].step >= 200  # continued from the checkpoint, not from step 0
    windows_are_unique(run)


def test_the_daemon_rolls_back_a_two_rank_run_after_a_real_rebound(tmp_path: Path, daemon) -> None:
    root, rep = tmp_path / "runs", tmp_path / "rep"
    policy = tmp_path / "policy.toml"
    policy.write_text("cooldown_steps = 50\nrollback_margin_steps = 10\n")
    d = daemon(root, policy=policy)
    d.wait_log("watching")
    proc = launch(root, "jump", "trainwarden.examples.train_ddp", "--steps", 1200, "--window", 10,
                  "--lr-jump", "400:30", "--step-delay", 0.004, "--report", rep, restarts=0)
    finish(proc)
    run = root / "jump"
    with Store.open(run) as s:
        ivs = s.interventions()
        assert ivs and ivs[0].mode == "auto" and ivs[0].status == "applied", d.text()[-2000:]
        assert 390 <= ivs[0].onset <= 440  # the LR jump is at step 400
        rollback = s.command(ivs[0].commands[0])
        assert rollback.kind == "rollback" and rollback.status == "applied"
        assert len(s.branches()) >= 2
    got = assert_ranks_agree(rep)  # the same rollbacks and LR cuts, at the same steps, on both ranks
    kinds = [k for _, k, _ in got[0]["applied"]]
    assert "rollback" in kinds and "scale_lr" in kinds


NODE_LOCAL_JOB = """
import sys, torch, torch.distributed as dist
import trainwarden.agent as tw
dist.init_process_group("gloo")
rank = dist.get_rank()
model = torch.nn.Linear(2, 1)
# Each rank its own folder: as if every node had the run folder on its local disk.
folder = sys.argv[1] + (f"/node{rank}" if sys.argv[2] == "separate" else "") + "/run"
try:
    run = tw.attach(folder, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
except tw.AttachError as exc:
    print(f"rank {rank}: {exc}", flush=True)
    sys.exit(3)
run.close()
print(f"rank {rank}: attached", flush=True)
"""


def test_ranks_that_cannot_see_rank_0s_checkpoints_folder_are_refused_at_attach(tmp_path: Path) -> None:
    """(The shared case, one node, is every other test here.)"""
    script = tmp_path / "job.py"
    script.write_text(NODE_LOCAL_JOB)
    env = {**ENV, "TRAINWARDEN_SHARED_CHECK_S": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script), str(tmp_path), "separate"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode != 0
    assert "rank 1 (host" in done.stdout and "storage every node shares" in done.stdout
    with Store.open(tmp_path / "node0" / "run") as s:
        assert s.run().status == "crashed"
        assert [e.kind for e in s.events()][-1] == "attach_refused"
    assert not (tmp_path / "node1" / "run" / "trainwarden.db").exists()  # rank 1 wrote no store


MEAN_JOB = """
import json, sys, torch, torch.distributed as dist
import trainwarden.agent as tw
dist.init_process_group("gloo")
rank = dist.get_rank()
model = torch.nn.Linear(2, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for mode, window, steps in (("mean", 10, 25), ("rank0", 10, 25), ("mean", 1000, 2500)):
    config = tw.AgentConfig(window=window, loss_across_ranks=mode, save_on_close=False, save_every_steps=10**9)
    run = tw.attach(f"{sys.argv[1]}/{mode}-{window}", model=model, optimizer=opt, config=config)
    for step in range(steps):  # full windows and a partial one, flushed by close()
        run.record(float(rank + 1) * (step + 1))
    run.close()
# The exchange itself: values that fit its one collective, and bigger ones on one rank or all.
from trainwarden.agent.dist import join
group = join(60)
got = [group.exchange(mine) for mine in ([rank], "x" * 10_000 if rank == 0 else rank, {"r": rank, "n": list(range(3000))})]
json.dump(got, open(f"{sys.argv[1]}/exchange-{rank}.json", "w"))
group.close()
dist.destroy_process_group()
"""


def test_the_store_shows_rank_0s_loss_or_the_mean_and_the_exchange_takes_any_size(tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text(MEAN_JOB)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script), str(tmp_path)], capture_output=True, text=True, env=ENV, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    # rank r records (r + 1) * step; windows of 1000 shared losses are too big for the exchange's
    # single collective and take its second round
    for name, scale, steps in (("mean-10", 1.5, 25), ("rank0-10", 1.0, 25), ("mean-1000", 1.5, 2500)):
        with Store.open(tmp_path / name) as s:
            losses = [loss for _, _, loss in s.history()]
        assert losses == pytest.approx([scale * (step + 1) for step in range(steps)]), name
    expected = [[[0], [1]], ["x" * 10_000, 1], [{"r": r, "n": list(range(3000))} for r in (0, 1)]]
    for rank in (0, 1):
        assert json.loads((tmp_path / f"exchange-{rank}.json").read_text()) == expected
