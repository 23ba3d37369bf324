"""Sharded (DCP) checkpoints in one process (`distributed_checkpoint=True`): contents, rollback,
and every way a folder can go bad. The 2-rank cases are in test_distributed.py."""
from __future__ import annotations

import json

import pytest
import torch
import torch.distributed.checkpoint as dcp
from conftest import FAST, cli, issue, train_until_acked
from tiny_train import build, params_digest, train_step

import trainwarden.agent as tw
from trainwarden.agent import dist as twdist
from trainwarden.agent.checkpoint import CheckpointCorrupt
from trainwarden.agent.store import Store

pytestmark = pytest.mark.skipif(not twdist.sharded_supported(),
                                reason=f"sharded checkpoints need torch >= {twdist.SHARDED_MIN_TORCH}")
if twdist.sharded_supported():
    from trainwarden.agent import sharded


def attach(run_dir, **config):
    model, opt, sched, batch = build(hidden=32, scheduler="step", steps=400)
    settings = dict(window=10, save_every_steps=10, keep_best=20, keep_last=20) | FAST | config
    run = tw.attach(run_dir, model=model, optimizer=opt, scheduler=sched, distributed_checkpoint=True,
                    config=tw.AgentConfig(**settings))
    return run, model, lambda: train_step(model, opt, sched, batch)


def train(run, step, n: int) -> None:
    for _ in range(n):
        run.record(step())
        if run.step % run.config.window == 0:
            run.flush()


def ready(run_dir) -> list:
    with Store.open(run_dir) as s:
        return s.checkpoints(["ready"])


def test_a_sharded_checkpoint_is_a_verified_folder_that_resumes_exactly(run_dir) -> None:
    run, model, step = attach(run_dir)
    train(run, step, 30)
    run.flush()
    digest_at_30 = params_digest(model)
    run.close()
    ckpts = ready(run_dir)
    assert [c.step for c in ckpts] == [10, 20, 30]
    for c in ckpts:
        folder = run_dir / c.path
        assert folder.is_dir() and c.path.endswith(".dcp")
        marker = json.loads((folder / "trainwarden.json").read_text())
        assert ".metadata" in marker["files"] and c.checksum.startswith("xxh3_128:")
        sharded.verify(folder, c.checksum)

    again, model2, step2 = attach(run_dir)
    assert again.resume() == 30
    assert params_digest(model2) == digest_at_30
    assert len(again._recorder.history) == 30  # the loss history came back with the weights
    again.close()


def test_rollback_to_a_sharded_checkpoint_restores_weights_and_forks(run_dir) -> None:
    run, model, step = attach(run_dir)
    train(run, step, 20)
    run.flush()
    (ckpt,) = [c for c in ready(run_dir) if c.step == 20]
    train(run, step, 15)
    cid = issue(run_dir, "rollback", {"target": ckpt.id})
    train_until_acked(run, step, cid)
    with Store.open(run_dir) as s:
        assert s.command(cid).status == "applied", s.command(cid).result
        assert s.run().branch == 1
        assert s.branches()[-1].fork_step == 20
        assert f"checkpoint {ckpt.id} at step 20" in s.command(cid).result
    run.close()


def test_a_damaged_shard_is_skipped_on_resume_with_an_event(run_dir) -> None:
    run, model, step = attach(run_dir)
    train(run, step, 20)
    run.close()
    newest = max(ready(run_dir), key=lambda c: c.step)
    shard = next((run_dir / newest.path).glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])  # truncated

    again, _, _ = attach(run_dir)
    assert again.resume() == 10  # the older one
    again.close()
    with Store.open(run_dir) as s:
        assert s.checkpoint(newest.id).status == "corrupt"
        (event,) = [e for e in s.events() if e.kind == "checkpoint_corrupt"]
        assert shard.name in event.message and "truncated" in event.message


def test_a_folder_without_its_completion_marker_is_not_used(run_dir) -> None:
    run, _, step = attach(run_dir)
    train(run, step, 20)
    run.close()
    newest = max(ready(run_dir), key=lambda c: c.step)
    (run_dir / newest.path / "trainwarden.json").unlink()
    with pytest.raises(CheckpointCorrupt, match="no completion marker"):
        sharded.verify(run_dir / newest.path, newest.checksum)
    result = cli("export", run_dir, str(newest.id), "-o", run_dir.parent / "m.pt")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "no completion marker" in result.stderr


class _Evil:
    def __reduce__(self):
        return (print, ("this ran",))


def test_a_byte_entry_that_would_run_code_is_refused(tmp_path, capfd) -> None:
    """DCP itself unpickles byte entries with weights_only=False; ours never do."""
    folder = tmp_path / "ck.dcp"
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    state = sharded.save_state(model, optimizer, None, {}, 0)
    state[sharded.COMMON_KEY] = _Evil()  # a crafted entry: unpickling it would call print()
    dcp.save(state, checkpoint_id=str(folder), no_dist=True)
    with pytest.raises(CheckpointCorrupt, match="cannot be loaded"):
        sharded.load(folder, model, optimizer, 0, None)
    assert "this ran" not in capfd.readouterr().out


def test_an_unwritable_checkpoint_folder_fails_the_save_not_the_training(run_dir) -> None:
    run, _, step = attach(run_dir)
    train(run, step, 10)
    run.flush()
    folder = run_dir / "checkpoints"
    folder.chmod(0o500)
    blocker = folder / "blocked"
    try:
        # Running as root ignores modes: make the next folder name unusable instead.
        with Store.open(run_dir) as s:
            next_id = max(c.id for c in s.checkpoints()) + 1
        (folder / f"step-000000020-{next_id}.dcp").write_text("a file where the folder should go")
        train(run, step, 10)
        run.flush()
    finally:
        folder.chmod(0o700)
        blocker.unlink(missing_ok=True)
    train(run, step, 10)
    run.close()
    with Store.open(run_dir) as s:
        statuses = {c.step: c.status for c in s.checkpoints()}
        failed = [e for e in s.events() if e.kind == "checkpoint_failed"]
    assert statuses[20] == "failed" and statuses[30] == "ready"
    assert failed and "could not be written" in failed[0].message
