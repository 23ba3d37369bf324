"""A HELD-OUT set of labelled real language-model loss curves for scoring rebound detectors.

    python benchmarks/curves/lm_holdout/make_lm_holdout.py              # train every curve, one at a time
    python benchmarks/curves/lm_holdout/make_lm_holdout.py --only NAME  # one curve (repeatable); others kept
    python benchmarks/curves/lm_holdout/make_lm_holdout.py --plots      # also redraw plots/NAME.png
    python benchmarks/curves/lm_holdout/make_lm_holdout.py --no-train --plots   # check/plot the CSVs written
    python benchmarks/curves/lm_holdout/make_lm_holdout.py --zoom NAME:LO:HI    # extra zoom PNG (labelling aid)
    python benchmarks/curves/lm_holdout/make_lm_holdout.py --report     # the README tables

The training machinery (model, data, optimizer, LR schedule, CSV format, plot style, label checks)
is imported unchanged from ../lm/make_lm_corpus.py; this file only defines NEW recipes (new seeds,
all >= 200 and absent from that file) and its own hand-written LABELS table, written after looking at
each plots/NAME.png and before any check or detector ran on the curve (see README.md). Every entry
of labels.json has "split": "holdout".

Trainings run one at a time, each with torch.set_num_threads(1) (set inside lm.train).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("make_lm_corpus", HERE.parent / "lm" / "make_lm_corpus.py")
lm = importlib.util.module_from_spec(_spec)
sys.modules["make_lm_corpus"] = lm
_spec.loader.exec_module(lm)

Recipe = lm.Recipe

# ---------------------------------------------------------------------------------------------
# The recipes (setup only; what happened is in LABELS, written after viewing the plots).
# ---------------------------------------------------------------------------------------------

CURVES: list[Recipe] = [
    # ---- base / tiny: sensible LRs (expected healthy) ----
    Recipe("base_wcos_b24_d80_b95", "warm-up 250 + cosine, peak 4e-3", 4e-3, 24, 2200, 211, d=80, warmup=250,
           schedule="wcos", beta2=0.95),
    Recipe("base_exp_b12_l3_untied", "warm-up 150, then ExponentialLR x0.1 per 1000 steps, peak 4e-3", 4e-3, 12,
           2000, 223, layers=3, warmup=150, schedule="exp", tie=False),
    Recipe("base_const_b32_b999", "constant LR 2e-3 from step 1", 2e-3, 32, 2000, 241, beta2=0.999),
    Recipe("tiny_b2_b95", "batch 2, warm-up 100, constant 1.5e-3", 1.5e-3, 2, 2500, 227, warmup=100, beta2=0.95),
    Recipe("tiny_b3_wcos_noclip", "batch 3, warm-up 150 + cosine, peak 2.5e-3, no clipping", 2.5e-3, 3, 2500, 229,
           warmup=150, schedule="wcos", clip=None),
    # ---- hot: high constant LR after a warm-up; whatever happens, happens by itself ----
    Recipe("hot_b32_lr3e-2_clip_s233", "warm-up 300, then constant 3e-2, clipping at 1.0", 3e-2, 32, 2000, 233,
           warmup=300),
    Recipe("hot_b16_lr25e-3_b999_s239", "warm-up 200, then constant 2.5e-2, no clipping", 2.5e-2, 16, 2000, 239,
           warmup=200, clip=None, beta2=0.999),
    Recipe("hot_b16_lr6e-2_s317", "warm-up 300, then constant 6e-2", 6e-2, 16, 2000, 317, warmup=300, clip=None),
    Recipe("hot_b16_lr55e-3_b999_s331", "warm-up 300, then constant 5.5e-2", 5.5e-2, 16, 2000, 331, warmup=300,
           clip=None, beta2=0.999),
    Recipe("hot_b12_lr5e-2_b95_s337", "warm-up 300, then constant 5e-2", 5e-2, 12, 2000, 337, warmup=300, clip=None,
           beta2=0.95),
    Recipe("hot_b16_lr65e-3_s347", "warm-up 300, then constant 6.5e-2", 6.5e-2, 16, 2000, 347, warmup=300,
           clip=None),
    # ---- warm: a warm-up to a peak that is too high ----
    Recipe("warm_b16_w800_lr12e-2", "warm-up 800 to 1.2e-1, then constant", 1.2e-1, 16, 2000, 313, warmup=800,
           clip=None),
    # ---- switch: the training stream switches at once to a harder chain ----
    Recipe("switch_b12_a055", "constant 3e-3; from step 1200 all sequences from a harder chain (alpha 0.55)",
           3e-3, 12, 2200, 349, warmup=200, mix=(1200, 0, 0.55)),
    Recipe("switch_b8_d112_b999_a065", "constant 2e-3; from step 1700 all sequences from a harder chain "
           "(alpha 0.65)", 2e-3, 8, 2400, 257, d=112, warmup=200, beta2=0.999, mix=(1700, 0, 0.65)),
    # ---- ramp: the harder chain's share rises 0 -> 100% over 180-250 steps ----
    Recipe("ramp_b16_a06_r250", "constant 3e-3; harder chain (alpha 0.6) ramped in over steps 1400-1650",
           3e-3, 16, 2400, 263, warmup=200, mix=(1400, 250, 0.6)),
    Recipe("ramp_b10_d80_wcos_a05_r180", "warm-up 200 + cosine 4e-3; harder chain (alpha 0.5) ramped in over "
           "steps 1100-1280", 4e-3, 10, 2200, 269, d=80, warmup=200, schedule="wcos", mix=(1100, 180, 0.5)),
    # ---- lrjump: the LR multiplied from a step on ----
    Recipe("lrjump_b12_noclip_x15", "constant 2.5e-3, no clipping; LR x15 from step 1300", 2.5e-3, 12, 2200, 271,
           warmup=200, clip=None, lr_events=((1300, 15.0),)),
    Recipe("lrjump_b6_x6", "batch 6, constant 2e-3; LR x6 from step 1500", 2e-3, 6, 2400, 277, warmup=200,
           lr_events=((1500, 6.0),)),
    Recipe("lrjump_b16_d96_b95_x3", "constant 6e-3; LR x3 from step 1000", 6e-3, 16, 2000, 281, d=96, warmup=200,
           beta2=0.95, lr_events=((1000, 3.0),)),
    # ---- twice: two caused events ~900-950 steps apart ----
    Recipe("twice_b12_switch_lrx6", "constant 3e-3; harder chain (alpha 0.65) from 1000; LR x6 from 1950",
           3e-3, 12, 2600, 283, warmup=200, mix=(1000, 0, 0.65), lr_events=((1950, 6.0),)),
    Recipe("twice_b16_lrx4_ramp", "constant 3e-3; LR x4 from 900; harder chain (alpha 0.55) ramped in over "
           "1850-2050", 3e-3, 16, 2700, 293, warmup=200, mix=(1850, 200, 0.55), lr_events=((900, 4.0),)),
    # ---- blowup: a very high LR from step 1, no warm-up, no clipping, beta2 0.999 ----
    Recipe("blowup_b12_lr025_exp", "LR 0.25 from step 1, ExponentialLR x0.1 per 1000 steps", 0.25, 12, 2000, 307,
           schedule="exp", beta2=0.999, clip=None),
    Recipe("blowup_b16_d80_lr015_untied", "constant LR 0.15 from step 1", 0.15, 16, 2000, 311, d=80, beta2=0.999,
           clip=None, tie=False),
]

# ---------------------------------------------------------------------------------------------
# The labels: written by hand after looking at plots/NAME.png, before any check ran on the curve.
# name: (onsets, kinds, what happened). An empty onset list means healthy. Same rule as ../lm.
# ---------------------------------------------------------------------------------------------

LABELS: dict[str, tuple[list[int], list[str], str]] = {
    # base / tiny: no rise anywhere
    "base_wcos_b24_d80_b95": ([], [], "healthy; plateau ~3.6, drop at ~400, slow decline to ~2.7"),
    "base_exp_b12_l3_untied": ([], [], "healthy; plateau ~3.5, drop at ~800-950, flat ~2.9 as the LR decays"),
    "base_const_b32_b999": ([], [], "healthy; drop at ~350, slow decline to ~2.77 (a ~1% uptick in the last 20 steps)"),
    "tiny_b2_b95": ([], [], "healthy, very noisy; never leaves the bigram plateau (~3.55), median wanders +-3%"),
    "tiny_b3_wcos_noclip": ([], [], "healthy, very noisy; slow decline 3.65 -> 3.45 on the plateau"),
    # hot: high constant LR after a warm-up
    "hot_b32_lr3e-2_clip_s233": ([], [], "healthy at a high LR (clipped): drop at ~300, slow decline to ~2.85"),
    "hot_b16_lr25e-3_b999_s239": ([], [], "healthy at a high LR: plateau ~3.55, slow steady decline to ~3.25, no drop"),
    "hot_b16_lr6e-2_s317": ([597, 1401], ["spike", "level_shift"],
                            "plateau ~3.58; spike to ~4.15 at 597 (back by ~700); jump to ~4.15 at 1401 that stays "
                            "(~4.1); a ~1.02x wiggle at ~1080 not labelled"),
    "hot_b16_lr55e-3_b999_s331": ([543], ["level_shift"], "settled at ~3.58, jumped to ~4.14 at 543 and stayed"),
    "hot_b12_lr5e-2_b95_s337": ([], [], "healthy at a high LR: noisy plateau at ~3.59 from ~300, no rise"),
    "hot_b16_lr65e-3_s347": ([764, 1240], ["spike", "level_shift"],
                             "plateau ~3.6; spike to ~3.95 at 764 (back by ~835); jump to ~4.15 at 1240 that stays"),
    # warm: a warm-up to a peak that is too high
    "warm_b16_w800_lr12e-2": ([465], ["step"], "plateau ~3.6; from 465 (LR 7e-2, still warming up) a rise over "
                              "~20 steps to ~4.13 that stays"),
    # switch: the loss steps up at the switch step
    "switch_b12_a055": ([1200], ["step"], "step 2.91 -> 3.27 at the switch, settles ~3.2"),
    "switch_b8_d112_b999_a065": ([1700], ["step"], "step 2.86 -> 3.13 at the switch, stays ~3.12"),
    # ramp: the loss climbs over the ramp from its first step and stays up
    "ramp_b16_a06_r250": ([1400], ["climb"], "climb 2.84 -> 3.16 over ~250 steps from 1400, stays ~3.15"),
    "ramp_b10_d80_wcos_a05_r180": ([1100], ["climb"], "climb 2.89 -> 3.22 over ~180 steps from 1100, stays ~3.2"),
    # lrjump: a sharp rise at the LR change; stays (step) or decays back within 1.05x (spike)
    "lrjump_b12_noclip_x15": ([1300], ["step"], "jump 2.88 -> ~4.0 at the LR change, settles ~3.62 and stays"),
    "lrjump_b6_x6": ([1500], ["spike"], "the loss had just dropped to ~3.03 (drop ~1200-1450); jump to ~3.52 at the LR "
                     "change, decays back to ~3.05 by ~1800 and ~3.0 by the end"),
    "lrjump_b16_d96_b95_x3": ([1000], ["spike"], "rise 2.87 -> ~3.04 (x1.06) at the LR change, decays back to ~2.9 "
                              "by ~1350"),
    # twice: two caused events
    "twice_b12_switch_lrx6": ([1000, 1950], ["step", "spike"],
                              "step 2.94 -> 3.21 at the switch (just after the drop), stays ~3.15; jump to ~3.5 at "
                              "the LR change, decays to ~3.2 (~1.03x) by ~2300"),
    "twice_b16_lrx4_ramp": ([900, 1850], ["spike", "climb"],
                            "jump 2.92 -> ~3.15 at the LR change, back to ~2.95 by ~1100 and ~2.9 by ~1300; climb "
                            "2.88 -> 3.2 over the ramp from 1850 (median bends at ~1890), stays ~3.2"),
    # blowup: within ~5 steps the loss is 3x the starting 4.16, and back near it within ~40
    "blowup_b12_lr025_exp": ([2], ["blowup"], "loss to ~13.6 at step 5, back to ~4.2 by ~35; then slow decline "
                             "4.12 -> 4.02"),
    "blowup_b16_d80_lr015_untied": ([2], ["blowup"], "loss to ~9 at step 7, back to ~4.2 by ~35; then flat at ~4.12"),
}

# The lm machinery reads these module globals: point it at this folder, these recipes and labels.
lm.HERE = HERE
lm.CURVES = CURVES
lm.LABELS = LABELS
lm.split_of = lambda name: "holdout"


def zoom(name: str, lo: int, hi: int, out: Path) -> None:
    """A labelling aid: raw loss + 25-step rolling median over [lo, hi], no onsets drawn."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = lm.read_csv(name)
    rm = lm.rolling_median(rows)
    hi = min(hi, len(rows))
    steps = [r[0] for r in rows[lo - 1:hi]]
    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    ax.plot(steps, [r[1] for r in rows[lo - 1:hi]], lw=0.5, color="#a9bfd6")
    ax.plot(steps, rm[lo - 1:hi], lw=1.6, color="black")
    seen = rm[lo - 1:hi]
    span = max(seen) / min(seen)
    ax.set_ylim(min(seen) / span ** 0.3 / 1.02, max(seen) * span ** 0.3 * 1.02)
    ax.grid(alpha=0.3)
    ax.set_xlim(lo, hi)
    ax.set_title(f"{name}: steps {lo}-{hi}", fontsize=9)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / f"{name}_{lo}_{hi}.png", dpi=70)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", metavar="NAME", action="append", help="these curves only (repeatable)")
    parser.add_argument("--no-train", action="store_true", help="use the CSVs already written")
    parser.add_argument("--plots", action="store_true", help="(re)draw plots/NAME.png")
    parser.add_argument("--report", action="store_true", help="print the README tables (all curves)")
    parser.add_argument("--zoom", metavar="NAME:LO:HI", action="append", help="draw a zoom PNG (labelling aid)")
    parser.add_argument("--zoom-dir", default="/tmp/lm_holdout_zoom", help="where --zoom writes")
    parser.add_argument("--probe", metavar="NAME:STEP", action="append", help="as in ../lm (after labelling)")
    args = parser.parse_args()
    if args.zoom:
        for arg in args.zoom:
            name, lo, hi = arg.rsplit(":", 2)
            zoom(name, int(lo), int(hi), Path(args.zoom_dir))
        return
    if args.probe:
        for arg in args.probe:
            name, step = arg.rsplit(":", 1)
            lm.probe(lm.read_csv(name), int(step))
        return
    if args.report:
        lm.report({r.name: lm.read_csv(r.name) for r in CURVES if r.name in LABELS})
        return
    curves = CURVES
    if args.only:
        curves = [r for r in CURVES if r.name in args.only]
        if len(curves) != len(args.only):
            sys.exit(f"unknown curve in {args.only}; known: {', '.join(r.name for r in CURVES)}")

    t0 = time.perf_counter()
    results: dict[str, list] = {}
    if args.no_train:
        results = {r.name: lm.read_csv(r.name) for r in curves}
    else:
        for r in curves:                     # one training at a time, one torch thread (set in lm.train)
            _, rows, seconds = lm.train(r)
            lm.write_csv(r, rows)
            results[r.name] = rows
            if args.plots:
                lm.plot(r, rows)
            print(f"{r.name:36s} {len(rows):5d} steps {seconds:5.0f} s", flush=True)
        print(f"{len(curves)} trainings in {time.perf_counter() - t0:.0f} s")

    labels_path = HERE / "labels.json"
    labels = json.loads(labels_path.read_text()) if labels_path.exists() else {}
    for r in curves:
        rows = results[r.name]
        if args.plots:
            lm.plot(r, rows)
        if r.name not in LABELS:
            print(f"{r.name}: not labelled yet")
            continue
        lm.check(r, rows)
        labels[r.name] = lm.labels_entry(r, rows)
    rank = {r.name: i for i, r in enumerate(CURVES)}
    labels = {k: v for k, v in sorted(labels.items(), key=lambda kv: rank.get(kv[0], len(rank))) if k in rank}
    labels_path.write_text(json.dumps(labels, indent=2) + "\n")


if __name__ == "__main__":
    main()
