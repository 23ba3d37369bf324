"""Window statistics: pure code over a list of per-step losses."""
from __future__ import annotations

import math
import operator
from collections.abc import Sequence


def window_stats(values: Sequence[float]) -> dict[str, float | int | None]:
    """Mean, min, max and std of the finite values, and how many were NaN/inf."""
    total = sum(values)
    if values and math.isfinite(total):  # all finite (a NaN/inf makes the sum non-finite): C-speed path
        n = len(values)
        mean = total / n
        var = max(0.0, math.fsum(map(operator.mul, values, values)) / n - mean * mean)
        return {"mean": mean, "min": min(values), "max": max(values), "std": math.sqrt(var), "nonfinite": 0}
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return {"mean": None, "min": None, "max": None, "std": None, "nonfinite": len(values)}
    n = len(finite)
    mean = math.fsum(finite) / n
    var = math.fsum((v - mean) ** 2 for v in finite) / n
    return {"mean": mean, "min": min(finite), "max": max(finite), "std": math.sqrt(var), "nonfinite": len(values) - n}


def improved(loss: float | None, best: float | None, margin: float) -> bool:
    """True when `loss` beats `best` by the relative `margin` (works for negative losses too)."""
    if loss is None or not math.isfinite(loss):
        return False
    if best is None:
        return True
    return loss < best - margin * abs(best)
