"""Train a small MLP sharded with FSDP2 (`fully_shard`), with sharded checkpoints, under trainwarden.

    torchrun --nproc-per-node 2 examples/train_fsdp.py --run-dir runs/fsdp
    trainwarden run --name fsdp --nproc-per-node 2 -- python -m trainwarden.examples.train_fsdp

The same loop as examples/train_ddp.py; only the wrapping differs. Because the parameters are
DTensors, the agent saves with torch.distributed.checkpoint: every rank writes its own shards
into one folder per checkpoint, in the background. `trainwarden export runs/fsdp best` writes
the full model as one file for inference; a checkpoint written by 2 ranks resumes on 1 or 4.
"""
from __future__ import annotations

from torch import nn

from trainwarden.examples.train_ddp import make_model, parse, setup, train


def main(argv: list[str] | None = None) -> None:
    args = parse(argv, default_dir="runs/fsdp", description=__doc__.splitlines()[0])
    device = setup(args)
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:  # torch 2.4-2.5 kept FSDP2 under _composable
        from torch.distributed._composable.fsdp import fully_shard  # type: ignore[no-redef]
    model: nn.Module = make_model(args, 32, device)
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    train(args, model, model, device)


if __name__ == "__main__":
    main()
