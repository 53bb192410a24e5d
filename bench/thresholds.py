"""Holdout scores of a simulation's saved models at a range of decision thresholds.

``bench/simulate.py`` scores every model at its own threshold (0.5: the simulation's rounds keep
no validation chips to tune one on). A strategy whose chips make a model paint more pixels is then
judged partly on calibration. This script takes the models a run kept (``run/runs/*/rounds/``,
``run/runs/full-s*.pt``), computes each one's held-out probabilities once and prints, per
strategy and round, the mean pixel IoU at each threshold, each model's best threshold, and
best-minus-random at every threshold. It checks first that each model, at its own threshold,
scores its CSV row again.

Usage: ``.venv/bin/python bench/thresholds.py --output-dir bench/out/simulate`` (the
``--output-dir`` of ``bench/simulate.py``, whose scene and held-out scene it reads).
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loop.simulate import (  # noqa: E402
    holdout_probabilities,
    load_truth,
    read_holdout_scene,
    score_probabilities,
    split_scene,
)
from model.checkpoint import load_checkpoint  # noqa: E402
from model.scene import open_scene  # noqa: E402


def only(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    if len(found) != 1:
        sys.exit(f"error: {folder}: expected one {pattern} (bench/simulate.py's scene), found {len(found)}")
    return found[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output-dir", type=Path, default=Path("bench/out/simulate"),
                    help="bench/simulate.py's --output-dir (its scene, held-out scene and run/)")
    ap.add_argument("--thresholds", default="0.3,0.4,0.5,0.6,0.7,0.8,0.9")
    ap.add_argument("--holdout", type=float, default=0.25, help="as bench/simulate.py --holdout")
    ap.add_argument("--chip-size", type=int, default=256)
    ap.add_argument("--min-object-px", type=int, default=100)
    args = ap.parse_args()
    thresholds = [float(t) for t in args.thresholds.split(",")]
    out, run = args.output_dir, args.output_dir / "run"
    csv_path = run / "simulation.csv"
    if not csv_path.exists():
        sys.exit(f"error: {csv_path} not found: run bench/simulate.py --output-dir {out} first")
    tif = only(out, "scene_*.tif")
    scene = open_scene(tif)
    with tempfile.TemporaryDirectory() as tmp:
        _, strip = split_scene(scene, load_truth(tif.with_suffix(".geojson"), scene), Path(tmp), args.holdout,
                               args.chip_size)
    holdout = [strip] + [read_holdout_scene(p, p.with_suffix(".geojson")) for p in sorted(out.glob("holdout_*.tif"))]
    with csv_path.open() as fh:
        rows = list(csv.DictReader(fh))

    results = []  # (strategy, seed, round, n_reviewed, {threshold: scores})
    for row in rows:
        strategy, seed, rnd = row["strategy"], int(row["seed"]), int(row["round"])
        path = (run / "runs" / f"full-s{seed}.pt" if strategy == "full"
                else run / "runs" / f"{strategy}-s{seed}" / "rounds" / f"round{rnd}.pt")
        if not path.exists():
            sys.exit(f"error: {path} not found: this run kept no models (simulations before 2026-12-08 did not)")
        ckpt = load_checkpoint(path)
        probs = holdout_probabilities(ckpt, holdout, args.chip_size)
        own = score_probabilities(probs, holdout, ckpt.threshold, args.min_object_px)["iou"]
        if abs(own - float(row["iou"])) > 1e-3:
            sys.exit(f"error: {path} scores IoU {own:.4f} at its threshold, its row says {row['iou']}: "
                     "the models are not the run's")
        scores = {t: score_probabilities(probs, holdout, t, args.min_object_px) for t in thresholds}
        results.append((strategy, seed, rnd, int(row["n_reviewed"]), scores))
        best = max(thresholds, key=lambda t: scores[t]["iou"])
        print(f"{strategy:8s} seed {seed} round {rnd} ({row['n_reviewed']} chips): IoU {own:.3f} at "
              f"{ckpt.threshold:g}, best {scores[best]['iou']:.3f} at {best:g} (precision "
              f"{scores[best]['precision']:.2f}, recall {scores[best]['recall']:.2f})", flush=True)

    print("\nmean holdout IoU by threshold")
    print(f"{'strategy':8s} {'round':>5s} {'chips':>5s}  " + "  ".join(f"{t:>5g}" for t in thresholds))
    means: dict[tuple[str, int], np.ndarray] = {}
    for key in dict.fromkeys((r[0], r[2]) for r in results):
        mine = [r for r in results if (r[0], r[2]) == key]
        means[key] = np.array([np.mean([r[4][t]["iou"] for r in mine]) for t in thresholds])
        print(f"{key[0]:8s} {key[1]:5d} {mine[0][3]:5d}  " + "  ".join(f"{v:5.3f}" for v in means[key]))
    for (strategy, rnd), m in means.items():
        if strategy not in ("random", "full") and ("random", rnd) in means:
            diff = (m - means[("random", rnd)]) * 100
            print(f"{strategy} minus random, round {rnd}, IoU points: " + "  ".join(f"{d:+5.1f}" for d in diff))
    out_csv = out / "thresholds.csv"
    with out_csv.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["strategy", "seed", "round", "n_reviewed", "threshold", "iou", "precision", "recall",
                         "object_f1"])
        for strategy, seed, rnd, n, scores in results:
            for t, s in scores.items():
                writer.writerow([strategy, seed, rnd, n, t, *(round(s[k], 4) for k in
                                                            ("iou", "precision", "recall", "object_f1"))])
    print(f"wrote {out_csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
