"""How far can the simulation's learner get on a few chips? Passive learning to convergence.

``bench/simulate.py`` asks how many reviewed chips the best ranking strategy needs to reach 95% of
the full-label model's holdout IoU. Every round there trains briefly (warm start, >= 128 chip
passes). This script separates the two questions inside that figure: with *no* time limit per
round, what holdout IoU does the same U-Net reach from k labelled chips? Each model here trains
from scratch for as many chip passes as the full-label reference (pool chips x ``--full-epochs``),
on the same scene, pool/holdout split, settings and scorer as the simulation:

* ``random``: k chips drawn at random (one line per seed);
* ``positive``: the k chips with the most data-center pixels (what an ideal uncertainty ranking
  that only ever picked buildings would label);
* ``all``: every pool chip (the simulation's full-label reference, retrained here).

If even the k = 25% models stay under 95% of the full-label IoU, no ranking strategy can meet the
label-efficiency target with this learner; the gap is the learner's, not the queue's.

Usage: ``.venv/bin/python bench/passive.py [--sizes 12,24] [--seeds 2] [--output-dir bench/out/passive]``
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loop.simulate import SimulationConfig, evaluate, pool_pairs, split_scene  # noqa: E402
from model.masks import load_footprints  # noqa: E402
from model.scene import open_scene  # noqa: E402
from model.synth import SynthConfig, generate_scene  # noqa: E402
from model.train import TrainConfig, fit  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--scene-seed", type=int, default=1)
    ap.add_argument("--difficulty", type=float, default=0.25)
    ap.add_argument("--density", type=float, default=3.0)
    ap.add_argument("--sizes", default="12,24", help="labelled-chip counts k to train on (random and positive)")
    ap.add_argument("--seeds", type=int, default=2, help="random draws per k")
    ap.add_argument("--full-epochs", type=int, default=40, help="as bench/simulate.py: sets the chip passes of every run")
    ap.add_argument("--no-full", action="store_true", help="skip retraining the all-chips reference")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--output-dir", type=Path, default=Path("bench/out/passive"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    tif = out / f"scene_{args.size}_s{args.scene_seed}_diff{args.difficulty:g}_dens{args.density:g}.tif"
    truth = tif.with_suffix(".geojson")
    if not (tif.exists() and truth.exists()):
        generate_scene(tif, truth, SynthConfig(width=args.size, height=args.size, seed=args.scene_seed,
                                               difficulty=args.difficulty, density=args.density))
    sim = SimulationConfig()  # the simulation's learner settings
    scene = open_scene(tif)
    gt = load_footprints(truth).to_crs(scene.crs)
    pool_tif, holdout = split_scene(scene, gt, out, sim.holdout_fraction, sim.chip_size)
    pool = open_scene(pool_tif)
    pairs = pool_pairs(pool, gt, sim.chip_size)
    n_pool = len(pairs)
    passes = n_pool * args.full_epochs
    pos_px = np.array([int(m.sum()) for _, m in pairs])
    print(f"scene {args.size} px: {n_pool} pool chips ({int((pos_px > 0).sum())} with a data center), "
          f"{holdout.labels.max()} held-out data centers; {passes} chip passes per model", flush=True)

    runs: list[tuple[str, int, list[int]]] = []
    if not args.no_full:
        runs.append(("all", 0, list(range(n_pool))))
    for k in (int(s) for s in args.sizes.split(",")):
        runs.append(("positive", 0, sorted(np.argsort(-pos_px, kind="stable")[:k].tolist())))
        for seed in range(args.seeds):
            runs.append(("random", seed, sorted(np.random.default_rng(1000 + seed).permutation(n_pool)[:k].tolist())))
    rows = []
    for pick, seed, idx in runs:
        t0 = time.perf_counter()
        tc = TrainConfig(epochs=-(-passes // len(idx)), batch_size=sim.batch_size, lr=sim.lr, pos_weight=sim.pos_weight,
                         base_channels=sim.base_channels, depth=sim.depth, dropout=sim.dropout, seed=seed,
                         accelerator="cpu", gate_seconds=0)
        ckpt = fit([pairs[i] for i in idx], [], tc)
        scores = evaluate(ckpt, holdout, sim.chip_size, sim.min_object_px)
        row = {"pick": pick, "seed": seed, "k": len(idx), "fraction": round(len(idx) / n_pool, 3),
               "n_positive": int((pos_px[idx] > 0).sum()), "epochs": tc.epochs,
               "iou": round(scores["iou"], 4), "object_f1": round(scores["object_f1"], 4),
               "train_s": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    (out / "passive.json").write_text(json.dumps(rows, indent=2))
    full = next((r["iou"] for r in rows if r["pick"] == "all"), None)
    print("\n| pick | k (fraction) | chips with a data center | epochs | holdout IoU | object F1 | % of all-chips IoU |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        share = f"{100 * r['iou'] / full:.0f}%" if full else "-"
        print(f"| {r['pick']} (seed {r['seed']}) | {r['k']} ({r['fraction']:.0%}) | {r['n_positive']} | {r['epochs']} "
              f"| {r['iou']:.3f} | {r['object_f1']:.3f} | {share} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
