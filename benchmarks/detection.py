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
from dataclasses import dataclass, field
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


@dataclass
class Score:
    """One detector's results over a set of curves."""

    found: int = 0
    total: int = 0
    false: int = 0
    repeats: int = 0
    latencies: list[int] = field(default_factory=list)
    onset_errors: list[int] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)
    false_at: list[str] = field(default_factory=list)

    def add(self, name: str, onsets: list[int], end: int, alarms: list[tuple[int, int | None]], gap: int) -> None:
        """`alarms`: (step, estimated onset or None) of each alarm, in any order."""
        steps = episodes([a for a, _ in alarms], gap)
        onset_of = {a: o for a, o in sorted(alarms, reverse=True)}  # the first alarm at a step wins
        first = onsets[0] if onsets else end + 1
        for a in steps:
            if a < first:
                self.false += 1
                self.false_at.append(f"{name}@{a}")
        for i, onset in enumerate(onsets):
            upto = onsets[i + 1] if i + 1 < len(onsets) else end + 1
            hits = [a for a in steps if onset <= a < upto]
            self.total += 1
            if hits:
                self.found += 1
                self.repeats += len(hits) - 1
                self.latencies.append(hits[0] - onset)
                if onset_of.get(hits[0]) is not None:
                    self.onset_errors.append(abs(onset_of[hits[0]] - onset))
            else:
                self.missed.append(f"{name}@{onset}")

    def row(self, who: str, with_onsets: bool = True) -> list[object]:
        recall = f"{self.found}/{self.total} ({100 * self.found / max(1, self.total):.0f}%)" if self.total else "-"
        return [who, recall, self.false, self.repeats, _med(self.latencies), _max(self.latencies),
                *([_med(self.onset_errors), _max(self.onset_errors)] if with_onsets else [])]


def _med(xs: list[int]) -> str:
    return f"{statistics.median(xs):.0f}" if xs else "-"


def _max(xs: list[int]) -> str:
    return f"{max(xs)}" if xs else "-"


HEADERS = ["detector", "recall", "false alarms", "repeats", "median latency", "max latency"]
ONSET_HEADERS = ["median onset error", "max onset error"]


@dataclass(frozen=True)
class Corpus:
    """A folder of labelled curves and the names to score in it."""

    title: str
    folder: Path
    names: list[str]
    labels: dict[str, dict]

    def kinds(self, name: str) -> list[str]:
        """The kind of each labelled onset (the MLP/GRU corpus names it in the curve's name)."""
        label = self.labels[name]
        if "kinds" in label:
            return list(label["kinds"])
        return [name.split("_")[1]] * len(label["onsets"])


def load_corpora(which: str, split: str, quick: bool) -> list[Corpus]:
    out = []
    for title, key, folder in (("MLP/GRU", "mlp", CURVES), ("LM", "lm", CURVES / "lm"),
                               ("LM held-out", "holdout", CURVES / "lm_holdout")):
        if which not in ("all", key) or not (folder / "labels.json").exists():
            continue
        labels = json.loads((folder / "labels.json").read_text())
        if key == "holdout":  # one split: every curve is held out
            out.append(Corpus(title, folder, sorted(labels)[::4] if quick else sorted(labels), labels))
            continue
        for part in (("tune", "test") if title == "LM" and split == "both" else (split,)):
            names = sorted(n for n in labels if part in ("both", "all") or labels[n].get("split", part) == part)
            if quick:
                names = names[::4]
            suffix = f" ({part} split)" if title == "LM" and part not in ("both", "all") else ""
            out.append(Corpus(title + suffix, folder, names, labels))
    return out


Rule = Callable[[list[float], list[int]], list[int]]


def score(corpus: Corpus, settings, rules: dict[str, Rule]) -> tuple[dict[str, Score], dict[str, Score], Score, float]:
    """(scores per detector, trainwarden's scores per kind, overfit score, trainwarden's seconds)."""
    scores = {"trainwarden": Score(), **{k: Score() for k in rules}}
    per_kind: dict[str, Score] = {}
    overfit = Score()
    tw_time = 0.0
    for name in corpus.names:
        label = corpus.labels[name]
        curve = read_csv(corpus.folder / f"{name}.csv")
        end = curve.steps[-1]
        rebound_onsets = label["onsets"] if label["label"] == "rebound" else []
        t1 = time.perf_counter()
        found = feed(LossDetectors(settings), curve_windows(curve, settings.window), curve.vals)
        tw_time += time.perf_counter() - t1
        alarms = [(f.step, f.onset) for f in found if f.kind in REBOUND_KINDS]
        scores["trainwarden"].add(name, rebound_onsets, end, alarms, settings.window)
        for who, rule in rules.items():
            scores[who].add(name, rebound_onsets, end, [(a, None) for a in rule(curve.losses, curve.steps)], settings.window)
        if rebound_onsets:
            # Per kind: each onset scored alone (up to the next onset), no false alarms counted here.
            kinds = corpus.kinds(name)
            for i, (onset, kind) in enumerate(zip(rebound_onsets, kinds)):
                upto = rebound_onsets[i + 1] - 1 if i + 1 < len(rebound_onsets) else end
                later = [(a, o) for a, o in alarms if a >= onset]
                per_kind.setdefault(kind, Score()).add(name, [onset], upto, later, settings.window)
        overfit_onsets = label["onsets"] if label["label"] == "overfit" else []
        overfit.add(name, overfit_onsets, end, [(f.step, f.onset) for f in found if f.kind == "overfit"], settings.window)
    return scores, per_kind, overfit, tw_time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few curves only (a smoke test)")
    parser.add_argument("--policy", help="policy TOML whose detector settings to score")
    parser.add_argument("--corpus", choices=["all", "mlp", "lm", "holdout"], default="all",
                        help="which corpus (default: all; holdout = benchmarks/curves/lm_holdout)")
    parser.add_argument("--split", choices=["both", "tune", "test", "all"], default="both",
                        help="LM corpus: score the tune and test splits apart (both), one of them, or all together")
    parser.add_argument("--verbose", action="store_true", help="list misses and false alarms")
    args = parser.parse_args()
    settings = load_policy(args.policy).detect
    print(machine())
    rules: dict[str, Rule] = {
        "Lightning SpikeDetection": lightning, "llm-foundry KillLossSpike": llm_foundry, "Megatron spiky loss": megatron}
    t0 = time.perf_counter()
    met: list[bool] = []
    for corpus in load_corpora(args.corpus, args.split, args.quick):
        labels = corpus.labels
        scores, per_kind, overfit, tw_time = score(corpus, settings, rules)
        tw = scores["trainwarden"]
        count = {k: sum(1 for n in corpus.names if labels[n]["label"] == k) for k in ("healthy", "rebound", "overfit")}
        print(f"\n## {corpus.title}: {len(corpus.names)} curves from {corpus.folder.relative_to(CURVES.parents[1])}; "
              f"window {settings.window}")
        print(f"{count['healthy']} healthy, {count['rebound']} with {tw.total} rebounds"
              + (f", {count['overfit']} overfitting" if count["overfit"] else "")
              + f"; trainwarden's detectors took {tw_time:.2f}s\n")
        print(table(HEADERS + ONSET_HEADERS, [s.row(who, who == "trainwarden") if who == "trainwarden"
                                              else s.row(who, False) + ["-", "-"] for who, s in scores.items()]))
        print()
        print(table(["kind (trainwarden)", "recall", "false alarms", "repeats", "median latency", "max latency",
                     *ONSET_HEADERS], [s.row(kind)[:2] + ["-"] + s.row(kind)[3:] for kind, s in sorted(per_kind.items())]))
        if count["overfit"]:
            print()
            print(table(["overfitting", "found", "false alarms", "repeats", "median latency", "max latency"],
                        [overfit.row("trainwarden", False)]))
        if args.verbose:
            for who, s in [*scores.items(), ("overfit", overfit)]:
                if s.total or s.false:
                    print(f"{who}: missed {s.missed or '-'}; false alarms {s.false_at or '-'}")
        med = statistics.median(tw.latencies) if tw.latencies else math.inf
        med_onset = statistics.median(tw.onset_errors) if tw.onset_errors else math.inf
        checks = [
            ("recall (target 100%)", tw.found == tw.total),
            ("false alarms (target 0)", tw.false == 0 and overfit.false == 0),
            (f"median latency (target <= {settings.window} steps)", med <= settings.window),
            (f"median onset error (target <= {settings.window} steps)", med_onset <= settings.window),
        ]
        def better(s: Score) -> bool:
            s_med = statistics.median(s.latencies) if s.latencies else math.inf
            return tw.found >= s.found and tw.false <= s.false and (tw.found > s.found or tw.false < s.false or med < s_med)
        checks.append(("better than each public rule (more found, fewer false alarms)",
                       all(better(s) for who, s in scores.items() if who != "trainwarden")))
        print()
        for what, ok in checks:
            print(f"{corpus.title}: {what}: {verdict(ok)}")
            met.append(ok)
    print(f"\nbenchmark {time.perf_counter() - t0:.1f}s; all targets: {verdict(all(met))}")


if __name__ == "__main__":
    main()
