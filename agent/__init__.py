"""trainwarden's agent: embed it in a training loop.

    import trainwarden.agent as tw
    run = tw.attach("runs/gpt-small", model=model, optimizer=opt, scheduler=sched)
    run.resume()
    while run.step < max_steps:
        run.record(train_step())
        if run.should_stop:
            break
    run.close()

Importing this package is cheap: the parts that need torch load on first use, so the command
line (which shares the store module) starts fast and never imports torch.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "attach": "run", "Run": "run", "AttachError": "run", "ENV_RUN_DIR": "run",
    "AgentConfig": "config", "CheckpointCorrupt": "checkpoint", "CommandError": "commands",
    "Store": "store", "StoreError": "store", "NotAStoreError": "store", "StoreVersionError": "store",
}
__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'trainwarden.agent' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
