"""Label efficiency of the ranking strategies on the demo benchmark scene (oracle simulation).

Draws the seeded synthetic benchmark scene (``model.synth``, Ashburn layout), times one forward
and one training pass of the chosen U-Net to estimate the run time, runs
:func:`loop.simulate.run_simulation` and prints the label-efficiency figures:

* the fraction of pool chips the best strategy needs to reach 95% of the full-label model's
  holdout IoU, and
* its holdout IoU minus random's at a 10% labelling budget (mean over seeds).

The defaults (4096 x 2048 px scene at difficulty 0.25 = 96 pool chips + 32 held-out chips, plus
a whole second scene of seed 2 held out (128 chips; the strip alone holds too few data centers to
tell strategies apart: one missed building moves a model's IoU by about 0.2), depth-4 U-Net, at
least 480 chip passes per round, 5 rounds of 5 chips (26% of the pool), strategies random and
entropy, 3 seeds, a full-label reference of 3 seeds trained for 20 epochs, runs trained two at a
time with one thread each) take the widest U-Net (base 16, 12 or 8 channels) whose
measured-speed estimate fits ``--budget-min`` (60) on this CPU.
Until 2026-12-05 the defaults were 128 passes, 6 rounds and bald as a third strategy: rounds that
short left 12-chip models far under what the same chips give when trained longer
(``bench/passive.py``), so the passes went up and, to stay within the hour, bald and the
rounds past 25% went. Later that day runs went parallel (2 jobs x 1 thread train ~40% more chips
per second than 1 x 2 threads here) and the time saved went to more passes per round (576
instead of 512) and to the full-label reference of one model per seed (one model's IoU moved
from 0.557 to 0.419 with only its thread count changed). On 2026-12-06 the pool doubled
(2048 -> 4096 px wide, 3 -> 6 chips per round): with 48 chips the 10% budget was 4.8 chips,
between the cold-start round and the first model-ranked one, and one seed whose random draw held
a single positive chip decided the figure. On 2026-12-08 the rounds went from 4 of 6 chips to 5 of 5
(480 passes each, the same training per run): with rounds of 6 the 10% budget (9.6 chips) was
interpolated 40% from the cold-start round, where no strategy but the cold start has acted yet;
with rounds of 5 the second round (10 chips, the first model-ranked one) is at the budget.
``--estimate-only``
prints the estimates without running, ``--quick`` runs a reduced version in a few minutes.

Usage: ``.venv/bin/python bench/simulate.py [--quick] [--estimate-only] [--output-dir bench/out/simulate]``
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

from loop.cli_project import print_summary  # noqa: E402
from loop.simulate import SimulationConfig, config_dict, run_simulation  # noqa: E402
from model.synth import SynthConfig, generate_scene  # noqa: E402
from model.unet import UNet, UNetConfig  # noqa: E402

PASSES = {"random": 1, "entropy": 1, "margin": 1, "tta": 8, "bald": 8}


def time_passes(unet: UNetConfig, chip: int, threads: int) -> tuple[float, float]:
    """Seconds per chip of a forward pass and of a training step (forward + backward), batch 8."""
    torch.set_num_threads(threads)
    model = UNet(unet)
    x = torch.randn(8, 4, chip, chip)
    opt = torch.optim.AdamW(model.parameters())
    model.eval()
    with torch.inference_mode():
        model(x)
        t0 = time.perf_counter()
        model(x)
        fwd = (time.perf_counter() - t0) / 8
    model.train()
    for i in range(4):  # the first step allocates (and was half the figure when two were timed)
        if i == 1:
            t0 = time.perf_counter()
        opt.zero_grad()
        model(x).mean().backward()
        opt.step()
    step = (time.perf_counter() - t0) / 24
    return fwd, step


def estimate_s(config: SimulationConfig, n_pool: int, n_hold: int, fwd: float, step: float) -> float:
    """Rough run time: training chip-passes, ranking forward passes, holdout evaluation, plus overhead.

    With ``config.jobs`` > 1 the runs share the jobs (the full-label reference, the longest, first).
    """
    labelled = [config.batch * r for r in range(1, config.rounds + 1)]
    passes = [max(n * config.epochs, config.train_passes) for n in labelled]
    train = sum(0.8 * p * step + 0.2 * p * fwd for p in passes)
    rank = sum(PASSES.get(s, 1) for s in config.strategies) / len(config.strategies) * sum(
        (n_pool - n) * fwd for n in labelled[:-1])
    evaluate = config.rounds * n_hold * fwd
    overhead = config.rounds * 3.0  # Lightning trainer setup, store writes, chip reads
    run = train + rank + evaluate + overhead  # one strategy and seed
    full_passes = n_pool * config.full_epochs if config.full_epochs else max(3 * config.epochs * n_pool,
                                                                              10 * config.train_passes)
    full = full_passes * step if config.full_label else 0.0  # one reference model (one per seed are trained)
    total = config.seeds * (full + len(config.strategies) * run)
    return max(full, total / config.jobs) if config.jobs > 1 else total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048, help="scene height (and default width) in pixels")
    ap.add_argument("--width", type=int, default=4096,
                    help="scene width in pixels (0: --size; 4096 x 2048 gives a 96-chip pool, 2048 before 2026-12-06)")
    ap.add_argument("--holdout", type=float, default=0.25,
                    help="right-hand share of the scene kept for scoring (as simulate --holdout)")
    ap.add_argument("--scene-seed", type=int, default=1)
    ap.add_argument("--holdout-scene-seed", type=int, default=2,
                    help="also score every model on a whole second scene drawn with this seed (same size, "
                         "difficulty and density), held out with the strip; -1: the strip only (before 2026-12-05)")
    ap.add_argument("--difficulty", type=float, default=0.25, help="generator difficulty (as bench/train.py)")
    ap.add_argument("--density", type=float, default=3.0, help="building density (3: ~18 data centers in 2048 px)")
    ap.add_argument("--strategies", default="random,entropy",
                    help="tta works too but ranks at 8 forward passes per chip, too slow for the 60-minute run")
    ap.add_argument("--rounds", type=int, default=5, help="label-and-retrain rounds (4 of 6 chips before 2026-12-08)")
    ap.add_argument("--batch", type=int, default=5,
                    help="chips reviewed per round: 5 puts the second round (10 chips) at the 10%% budget of the "
                         "96-chip pool (6 before 2026-12-08, 3 with the 48-chip pool before 2026-12-06)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--train-passes", type=int, default=480,
                    help="minimum chip passes per round (576 before 2026-12-08: 5 rounds x 480 train as much as 4 x 576)")
    ap.add_argument("--full-epochs", type=int, default=20,
                    help="epochs of the full-label reference (it should converge: it sets the 95%% line); "
                         "20 over 96 chips = the 1,920 chip passes of 40 over the earlier 48")
    ap.add_argument("--no-full-label", action="store_true",
                    help="skip the full-label reference (as simulate --no-full-label): no 95%% figure, the "
                         "strategies' rounds only, e.g. more seeds of the first rounds")
    ap.add_argument("--finetune-lr-factor", type=float, default=0.25,
                    help="warm-started rounds train at the learning rate times this")
    ap.add_argument("--pos-weight", type=float, default=2.0, help="BCE weight of data-center pixels")
    ap.add_argument("--base-channels", type=int, default=None,
                    help="U-Net width; default the widest of 16, 12, 8 whose estimate fits --budget-min")
    ap.add_argument("--budget-min", type=float, default=60.0, help="run-time budget for choosing the width")
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of each job")
    ap.add_argument("--jobs", type=int, default=2,
                    help="runs trained at once, each in its own process (2 x 1 thread does ~40%% more steps per "
                         "second than 1 x 2 threads on this 2-core CPU)")
    ap.add_argument("--output-dir", type=Path, default=Path("bench/out/simulate"))
    ap.add_argument("--quick", action="store_true", help="reduced run: 1024 px, 2 strategies, 1 seed, 3 rounds")
    ap.add_argument("--estimate-only", action="store_true")
    ap.add_argument("--first-pick", choices=("cold_start", "random"), default="cold_start",
                    help="first round of the uncertainty strategies: the cold-start queue, or the random chips")
    args = ap.parse_args()
    if args.quick:
        args.size, args.width, args.strategies, args.seeds, args.rounds, args.batch = 1024, 0, "random,entropy", 1, 3, 2
        args.epochs, args.base_channels, args.train_passes = 2, args.base_channels or 8, 48

    out = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    width = args.width or args.size
    cols, rows = width // 256, args.size // 256
    pool_cols = min(max(round(cols * (1 - args.holdout)), 1), cols - 1)  # as loop.simulate.split_scene
    n_pool, n_hold = pool_cols * rows, (cols - pool_cols) * rows
    n_hold += cols * rows if args.holdout_scene_seed >= 0 else 0  # the whole second scene
    print(f"scene {width} x {args.size} px: {n_pool} pool chips, {n_hold} held-out chips; "
          f"10% budget = {0.1 * n_pool:.1f} chips")
    for base in [args.base_channels] if args.base_channels else [16, 12, 8]:
        config = SimulationConfig(
            strategies=tuple(args.strategies.split(",")), rounds=args.rounds, batch=args.batch, seeds=args.seeds,
            epochs=args.epochs, train_passes=args.train_passes, full_epochs=args.full_epochs, pos_weight=args.pos_weight,
            finetune_lr_factor=args.finetune_lr_factor, holdout_fraction=args.holdout,
            base_channels=base, depth=args.depth,
            threads=args.threads, jobs=args.jobs, first_pick=args.first_pick, full_label=not args.no_full_label,
        )
        unet = UNetConfig(base_channels=base, depth=args.depth, dropout=config.dropout)
        fwd, step = time_passes(unet, 256, args.threads)
        est = estimate_s(config, n_pool, n_hold, fwd, step)
        print(f"base {base} ({args.jobs} jobs x {args.threads} threads): forward {fwd * 1000:.0f} ms/chip, training step "
              f"{step * 1000:.0f} ms/chip -> estimated run time {est / 60:.1f} min")
        if est <= args.budget_min * 60:
            break
    else:
        print(f"warning: no width fits {args.budget_min:.0f} min on this (possibly shared) CPU; using base {base}")
    print(f"config: {json.dumps(config_dict(config))}")
    if args.estimate_only:
        return 0

    shape = f"{args.size}" if width == args.size else f"{width}x{args.size}"
    tif = out / f"scene_{shape}_s{args.scene_seed}_diff{args.difficulty:g}_dens{args.density:g}.tif"
    truth = tif.with_suffix(".geojson")
    if not (tif.exists() and truth.exists()):
        generate_scene(tif, truth, SynthConfig(width=width, height=args.size, seed=args.scene_seed,
                                               difficulty=args.difficulty, density=args.density))
    holdout_scenes = []
    if args.holdout_scene_seed >= 0:
        extra = out / f"holdout_{shape}_s{args.holdout_scene_seed}_diff{args.difficulty:g}_dens{args.density:g}.tif"
        if not (extra.exists() and extra.with_suffix(".geojson").exists()):
            generate_scene(extra, extra.with_suffix(".geojson"),
                           SynthConfig(width=width, height=args.size, seed=args.holdout_scene_seed,
                                       difficulty=args.difficulty, density=args.density))
        holdout_scenes.append((extra, extra.with_suffix(".geojson")))
    t0 = time.perf_counter()

    def progress(done: int, total: int, info: dict) -> None:
        what = " ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in info.items())
        print(f"  [{done}/{total}] {time.perf_counter() - t0:7.0f} s  {what}", flush=True)

    result = run_simulation(tif, truth, out / "run", config, progress=progress, holdout_scenes=holdout_scenes)
    elapsed = time.perf_counter() - t0
    print_summary(result.summary)
    print(f"elapsed: {elapsed / 60:.1f} min (estimated {est / 60:.1f} min)")
    print(f"wrote {result.csv_path} and {result.png_path}")
    summary = {**result.summary, "elapsed_s": round(elapsed, 1), "config": config_dict(config),
               "seconds_per_round": float(np.mean([r["train_s"] + r["rank_s"] for r in result.rows]))}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
