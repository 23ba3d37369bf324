"""Detection quality: trainwarden's detectors beside three public rules, on a labelled corpus of
real loss curves (benchmarks/curves/, built by make_corpus.py from real small trainings).

    python benchmarks/detection.py [--quick] [--policy FILE] [--verbose]

Scoring, the same for every detector:
- a rebound (label `onset`) is found when an alarm falls in [onset, next onset or the end);
  latency = the first such alarm's step - onset (trainwarden alarms at the end of a window);
- an alarm before a curve's first onset, or anywhere on a healthy or overfit curve, is a false
  alarm; alarms less than one window apart count as one;
- overfitting: an `overfit` finding on an overfit curve at or after its label onset is a hit;
  one on any other curve, or before the onset, is a false alarm (the public rules have none).
trainwarden's rebound alarms are its spike, nan and divergence findings. The baselines see every
step's loss as their callbacks do:
- Lightning SpikeDetection (mode relative, window 10, rtol 2.0, warmup 1, finite_only): alarm
  when the loss is not finite or exceeds the running mean of the previous 10 losses by more
  than 2x that mean;
- llm-foundry KillLossSpike (window 100, outlier_multiplier 2, patience 4): a loss >= 2x the
  rolling mean of the previous 100 is an outlier; the 5th consecutive outlier alarms;
- Megatron's spiky-loss check (threshold 10): alarm when the loss exceeds 10x the largest of the
  previous 100 losses (or is not finite).
Target: recall 100%, zero false alarms, median latency within one window (50 steps).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path

from common import machine, table, verdict

from trainwarden.supervisor.detectors import REBOUND_KINDS, LossDetectors, feed
from trainwarden.supervisor.policy import load_policy
from trainwarden.supervisor.replay import curve_windows, read_csv

CURVES = Path(__file__).resolve().parent / "curves"


# ------------------------------------------------------------------ baselines
def lightning(losses: list[float], steps: list[int]) -> list[int]:
    alarms, recent = [], deque(maxlen=10)
    for step, x in zip(steps, losses):
        if not math.isfinite(x):
            alarms.append(step)
            continue
        if len(recent) >= 1:  # warmup=1
            mean = sum(recent) / len(recent)
            if x - mean > abs(mean) * 2.0:
                alarms.append(step)
        recent.append(x)
    return alarms


def llm_foundry(losses: list[float], steps: list[int]) -> list[int]:
    alarms, recent, outliers = [], deque(maxlen=100), 0
    for step, x in zip(steps, losses):
        if len(recent) == recent.maxlen:
            mean = sum(recent) / len(recent)
            outliers = outliers + 1 if (not math.isfinite(x) or x >= 2 * mean) else 0
            if outliers >= 5:
                alarms.append(step)
        recent.append(x if math.isfinite(x) else recent[-1] if recent else 0.0)
    return alarms


def megatron(losses: list[float], steps: list[int]) -> list[int]:
    alarms, recent = [], deque(maxlen=100)
    for step, x in zip(steps, losses):
        if not math.isfinite(x) or (recent and x > 10 * max(recent)):
            alarms.append(step)
        if math.isfinite(x):
            recent.append(x)
    return alarms


# -------------------------------------------------------------------- scoring
def episodes(alarms: Iterable[int], gap: int) -> list[int]:
    """Alarms closer than `gap` steps are one alarm (a rule that fires every step is one alarm)."""
    out: list[int] = []
    for a in sorted(alarms):
        if not out or a - out[-1] >= gap:
            out.append(a)
    return out


class Score:
    def __init__(self) -> None:
        self.found = 0
        self.total = 0
        self.false = 0
        self.latencies: list[int] = []
        self.missed: list[str] = []
        self.false_at: list[str] = []

    def add(self, name: str, onsets: list[int], end: int, alarms: list[int], gap: int) -> None:
        alarms = episodes(alarms, gap)
        first = onsets[0] if onsets else end + 1
        for a in alarms:
            if a < first:
                self.false += 1
                self.false_at.append(f"{name}@{a}")
        for i, onset in enumerate(onsets):
            upto = onsets[i + 1] if i + 1 < len(onsets) else end + 1
            hits = [a for a in alarms if onset <= a < upto]
            self.total += 1
            if hits:
                self.found += 1
                self.latencies.append(hits[0] - onset)
            else:
                self.missed.append(f"{name}@{onset}")

    def row(self, who: str) -> list[object]:
        recall = f"{self.found}/{self.total} ({100 * self.found / max(1, self.total):.0f}%)"
        med = f"{statistics.median(self.latencies):.0f}" if self.latencies else "-"
        mx = f"{max(self.latencies)}" if self.latencies else "-"
        return [who, recall, self.false, med, mx]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few curves only (a smoke test)")
    parser.add_argument("--policy", help="policy TOML whose detector settings to score")
    parser.add_argument("--verbose", action="store_true", help="list misses and false alarms")
    args = parser.parse_args()
    settings = load_policy(args.policy).detect
    labels = json.loads((CURVES / "labels.json").read_text())
    names = sorted(labels)
    if args.quick:
        names = [n for i, n in enumerate(names) if i % 4 == 0]
    print(machine())
    print(f"corpus: {len(names)} curves from {CURVES.relative_to(CURVES.parents[1])}; window {settings.window}")
    rules: dict[str, Callable[[list[float], list[int]], list[int]]] = {
        "Lightning SpikeDetection": lightning, "llm-foundry KillLossSpike": llm_foundry, "Megatron spiky loss": megatron}
    scores = {"trainwarden": Score(), **{k: Score() for k in rules}}
    overfit = Score()
    t0 = time.perf_counter()
    tw_time = 0.0
    for name in names:
        label = labels[name]
        curve = read_csv(CURVES / f"{name}.csv")
        end = curve.steps[-1]
        rebound_onsets = label["onsets"] if label["label"] == "rebound" else []
        t1 = time.perf_counter()
        found = feed(LossDetectors(settings), curve_windows(curve, settings.window), curve.vals)
        tw_time += time.perf_counter() - t1
        scores["trainwarden"].add(name, rebound_onsets, end, [f.step for f in found if f.kind in REBOUND_KINDS], settings.window)
        for who, rule in rules.items():
            scores[who].add(name, rebound_onsets, end, rule(curve.losses, curve.steps), settings.window)
        overfit_onsets = label["onsets"] if label["label"] == "overfit" else []
        overfit.add(name, overfit_onsets, end, [f.step for f in found if f.kind == "overfit"], settings.window)
    n_rebounds = scores["trainwarden"].total
    print(f"{sum(1 for n in names if labels[n]['label'] == 'healthy')} healthy, "
          f"{sum(1 for n in names if labels[n]['label'] == 'rebound')} with {n_rebounds} rebounds, "
          f"{sum(1 for n in names if labels[n]['label'] == 'overfit')} overfitting; "
          f"{sum(len(read_csv(CURVES / f'{n}.csv').losses) for n in names)} steps\n")
    print(table(["detector", "recall", "false alarms", "median latency (steps)", "max latency"],
                [s.row(who) for who, s in scores.items()]))
    print()
    print(table(["overfitting", "found", "false alarms", "median latency (steps)", "max latency"], [overfit.row("trainwarden")]))
    if args.verbose:
        for who, s in [*scores.items(), ("overfit", overfit)]:
            print(f"{who}: missed {s.missed or '-'}; false alarms {s.false_at or '-'}")
    print(f"\ntrainwarden detectors: {tw_time:.2f}s for the whole corpus; benchmark {time.perf_counter() - t0:.1f}s")
    tw = scores["trainwarden"]
    med = statistics.median(tw.latencies) if tw.latencies else math.inf
    print(f"recall (target 100%): {verdict(tw.found == tw.total)}")
    print(f"false alarms (target 0): {verdict(tw.false == 0 and overfit.false == 0)}")
    print(f"median latency (target <= {settings.window} steps): {verdict(med <= settings.window)}")
    def better(s: Score) -> bool:
        s_med = statistics.median(s.latencies) if s.latencies else math.inf
        return tw.found >= s.found and tw.false <= s.false and (tw.found > s.found or tw.false < s.false or med < s_med)
    beats = all(better(s) for who, s in scores.items() if who != "trainwarden")
    print(f"better than each public rule (target: more found, fewer false alarms): {verdict(beats)}")


if __name__ == "__main__":
    main()
