"""Training benchmark: the seed study's recipe vs ours on the demo benchmark, same chips, same CPU budget.

The demo benchmark is a set of synthetic NAIP-like scenes (real Ashburn and Santa Clara layouts).
Training chips come from the left part of each scene (the 256 px grid plus, as the seed study cut
its chips around known buildings, chips centred inside each labelled building); the right part is
a held-out test region never seen in training. Both recipes draw their training and validation
chips from the same pool, train for the same wall-clock budget, and are scored through the same
tiled detection pipeline on the test region:

- seed: U-Net base 32, two-class cross-entropy with equal weights, no augmentation, random chip
  split for validation, Adam(W) at a constant lr 1e-3, batch 8, threshold 0.5 (the study's defaults);
- ours: the same U-Net at half width (base 16: ~4x cheaper per step, so ~4x more epochs in the
  same budget), BCE + soft Dice with positive weighting, dihedral + radiometric augmentation,
  dropout before the head, lr cosine-annealed over the time budget, best-epoch selection on a
  spatially held-out validation band (no chip overlapping it is trained on), decision threshold
  chosen on that band by object F1 after training (model/calibrate.py);
- ours_sep (candidate, not run by default): ours plus separation weights on the background
  between close footprints (the U-Net paper's weight map, w0 10, sigma 20 px).

Prints pixel IoU, Dice, precision, recall and object F1 (IoU >= 0.5 one-to-one) of both.

Usage: python bench/train.py [--budget-s 1200] [--scenes 6] [--per-object 3] [--difficulty 0.25] [--side-by-side]
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import geopandas as gpd
import numpy as np
import rasterio
import torch
from rasterio.features import rasterize
from rasterio.windows import Window
from shapely.geometry import Point, box

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, synthetic_scene  # noqa: E402

from model.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from model.config import TrainConfig  # noqa: E402
from model.masks import rasterize_footprints  # noqa: E402
from model.metrics import counts_to_metrics, f1_from_counts, label_objects, match_objects  # noqa: E402
from model.predict_scene import PROB_SCALE, predict_scene  # noqa: E402
from model.scene import chip_windows, open_scene, read_window, write_geotiff  # noqa: E402
from model.train import fit, split_random, tune_threshold  # noqa: E402
from model.vectorize import vectorize_probability  # noqa: E402

SITES = ("ashburn", "santa_clara")
TRAIN_FRACTION = 0.7


class Chip(NamedTuple):
    image: np.ndarray
    mask: np.ndarray
    scene: str
    row: int
    col: int
    height: int  # rows of the training part the chip was cut from


def split_scene(tif: Path) -> tuple[Path, Path, gpd.GeoDataFrame]:
    """Crop a scene into a training part (left) and a held-out test part (right), both GeoTIFFs."""
    s = open_scene(tif)
    cut = int(round(s.width * TRAIN_FRACTION / 256)) * 256
    parts = []
    for name, win in (("train", Window(0, 0, cut, s.height)), ("test", Window(cut, 0, s.width - cut, s.height))):
        path = OUT / f"{tif.stem}_{name}.tif"
        if not path.exists():
            with rasterio.open(tif) as src:
                write_geotiff(path, src.read(window=win), s.crs, src.window_transform(win))
        parts.append(path)
    truth = gpd.read_file(tif.with_suffix(".geojson")).to_crs(s.crs)
    return parts[0], parts[1], truth


def training_chips(train_tif: Path, truth: gpd.GeoDataFrame, per_object: int, seed: int) -> list[Chip]:
    """Chips of the training part: the 256 px grid, plus (as the seed study cut its chips around
    known buildings) ``per_object`` chips centred on random points inside every labelled building,
    data centre or hard negative, so a scene's few data centres are seen from several framings."""
    s = open_scene(train_tif)
    pos = truth[truth["class"] == "datacenter"].geometry.values
    mask = rasterize_footprints(pos, None, s.crs, s.transform, (s.height, s.width))
    windows = [(int(w.row_off), int(w.col_off)) for w in chip_windows(s.width, s.height, 256)]
    rng = np.random.default_rng(seed)
    inv = ~s.transform
    for geom in truth.clip(box(*s.bounds)).geometry if per_object else []:
        if geom.is_empty:
            continue
        x0, y0, x1, y1 = geom.bounds
        for _ in range(per_object):
            for _try in range(100):  # rejection sampling of a point inside the footprint
                pt = Point(rng.uniform(x0, x1), rng.uniform(y0, y1))
                if geom.contains(pt):
                    break
            c, r = inv @ (pt.x, pt.y)
            windows.append((int(np.clip(r - 128, 0, s.height - 256)), int(np.clip(c - 128, 0, s.width - 256))))
    chips = []
    with rasterio.open(train_tif) as src:
        for r, c in windows:
            img = read_window(s, Window(c, r, 256, 256), src)
            chips.append(Chip(img, mask[r : r + 256, c : c + 256], train_tif.stem, r, c, s.height))
    return chips


def split_spatial(chips: list[Chip], val_rows: int) -> tuple[list[int], list[int]]:
    """Ours: validation on a held-out band (the bottom ``val_rows`` rows of every training part);
    chips that overlap the band at all are validation, so no training pixel is validated on."""
    val = [i for i, ch in enumerate(chips) if ch.row + 256 > ch.height - val_rows]
    val_set = set(val)
    return [i for i in range(len(chips)) if i not in val_set], val


def score(ckpt, test_tifs, truths, tag: str = "") -> dict[str, float]:
    """Pixel and object metrics of a checkpoint over the held-out regions via the detect pipeline,
    at the checkpoint's decision threshold (0.5 unless its recipe chose one on validation)."""
    threshold = ckpt.threshold
    pix = np.zeros(3)
    obj = np.zeros(3, int)
    for tif, truth in zip(test_tifs, truths, strict=True):
        s = open_scene(tif)
        prob = predict_scene(ckpt, s, OUT / f"eval_prob{tag}.tif", batch_size=2, device="cpu")
        with rasterio.open(prob) as src:
            p = src.read(1) >= max(int(np.ceil(threshold * PROB_SCALE)), 1)
        pos = truth[truth["class"] == "datacenter"]
        shape = (s.height, s.width)
        true_labels = rasterize(((g, i + 1) for i, g in enumerate(pos.geometry)), out_shape=shape,
                                transform=s.transform, fill=0, dtype="int32") if len(pos) else np.zeros(shape, "int32")
        t = true_labels > 0
        pix += (np.count_nonzero(p & t), np.count_nonzero(p & ~t), np.count_nonzero(~p & t))
        polys = vectorize_probability(prob, threshold, 100, 10.0, 0.6)
        pred_labels = rasterize(((g, i + 1) for i, g in enumerate(polys.geometry)), out_shape=shape,
                                transform=s.transform, fill=0, dtype="int32") if len(polys) else np.zeros(shape, "int32")
        true_objects = label_objects(t)[0] if not len(pos) else true_labels
        m = match_objects(pred_labels, true_objects)
        obj += (m["tp"], m["fp"], m["fn"])
    out = counts_to_metrics(*pix)
    out["object_f1"] = f1_from_counts(*obj)["f1"]
    out["threshold"] = threshold
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget-s", type=float, default=1200.0, help="training wall-clock budget per recipe")
    ap.add_argument("--difficulty", type=float, default=0.25)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--scenes", type=int, default=6, help="synthetic scenes, alternating Ashburn and Santa Clara")
    ap.add_argument("--typical-scenes", type=int, default=0,
                    help="also train and test on this many scenes of typical data-center density (copies only, "
                    "5%% data centers; seeds 11, 12, ...), where hard negatives dominate")
    ap.add_argument("--per-object", type=int, default=3,
                    help="extra chips centred inside each labelled building (0: the grid only)")
    ap.add_argument("--recipes", default="seed,ours",
                    help="which recipes to train (comma-separated): seed, ours, ours_sep (candidate)")
    ap.add_argument("--tag", default="", help="suffix of this run's output files (runs side by side)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--score-only", action="store_true",
                    help="do not train: score the checkpoints an earlier run with the same --tag saved")
    ap.add_argument("--side-by-side", action="store_true",
                    help="train the recipes at the same time, one process and one thread each (each gets one "
                    "core for the budget; both see the same machine speed, which drifts between runs here)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    if a.side_by_side:
        side_by_side(a)
        return
    test_tifs, truths, chips = [], [], []
    typical = [synthetic_scene(a.size, seed=11 + k, difficulty=a.difficulty, real_layout=False, positive_share=0.05)
               for k in range(a.typical_scenes)]
    for k, tif in enumerate([synthetic_scene(a.size, seed=k + 1, difficulty=a.difficulty, site=SITES[k % 2])
                             for k in range(a.scenes)] + typical):
        tr, te, truth = split_scene(tif)
        test_tifs.append(te)
        truths.append(truth)
        chips += training_chips(tr, truth, a.per_object, seed=k)
    n_pos = sum(int(ch.mask.any()) for ch in chips)
    n_test = sum(int(t[t["class"] == "datacenter"].intersects(box(*open_scene(te).bounds)).sum())
                 for t, te in zip(truths, test_tifs, strict=True))
    print(f"demo benchmark: {a.scenes} scenes + {a.typical_scenes} typical {a.size}x{a.size} (difficulty {a.difficulty:g}), "
          f"{len(chips)} training chips ({n_pos} with data centers; grid + {a.per_object} per building), "
          f"test = right {1 - TRAIN_FRACTION:.0%} of each scene; budget {a.budget_s:.0f} s per recipe, "
          f"{a.threads} threads")
    pairs = [(ch.image, ch.mask) for ch in chips]
    splits = {"seed": split_random(len(chips), 0.2, seed=0), "ours": split_spatial(chips, val_rows=384)}
    splits["ours_sep"] = splits["ours"]
    base = TrainConfig(epochs=1000, batch_size=8, lr=1e-3, base_channels=32, depth=4, accelerator="cpu",
                       max_time_s=a.budget_s, seed=0)
    recipes = {
        "seed": replace(base, loss="ce", augment=False, dropout=0.0, weight_decay=0.0, lr_schedule="constant",
                        tune_threshold=False, separation_weight=0.0, precise_bn=False),
        # On a CPU budget a half-width U-Net trained ~4x longer beats the full width trained briefly.
        "ours": replace(base, loss="dice_bce", pos_weight=2.0, augment=True, dropout=0.1, lr=3e-3,
                        base_channels=16, separation_weight=0.0),
    }
    # candidate: ours plus separation weights between close footprints (U-Net paper weight map)
    recipes["ours_sep"] = replace(recipes["ours"], separation_weight=10.0, separation_sigma_px=20.0)
    rows = []
    for name in a.recipes.split(","):
        cfg = recipes[name]
        tr_idx, va_idx = splits[name]
        train, val = [pairs[i] for i in tr_idx], [pairs[i] for i in va_idx]
        t = time.perf_counter()
        if a.score_only:
            ckpt = load_checkpoint(OUT / f"train_{name}{a.tag}.pt")
            secs = float("nan")
            if cfg.tune_threshold and "threshold" not in ckpt.metrics:  # saved before fit() chose one
                tune_threshold(ckpt, val, "cpu")
                save_checkpoint(ckpt, OUT / f"train_{name}{a.tag}.pt")
        else:
            ckpt = fit(train, val, cfg)
            secs = time.perf_counter() - t
            save_checkpoint(ckpt, OUT / f"train_{name}{a.tag}.pt")
        epochs_seen = ckpt.train["epochs_run"]
        m = score(ckpt, test_tifs, truths, tag=a.tag)
        rows.append({"recipe": name, "epochs": epochs_seen, "train_s": secs if a.score_only else round(secs),
                     "train_chips": len(train), "val_chips": len(val), "best_epoch": ckpt.metrics.get("epoch"), **m})
        print(f"{name:5s}: {len(train)} train / {len(val)} val chips, {epochs_seen:3d} epochs in {secs:5.0f} s "
              f"(best {ckpt.metrics.get('epoch')}) | pixel IoU {m['iou']:.3f} Dice {m['dice']:.3f} "
              f"precision {m['precision']:.3f} recall {m['recall']:.3f} | object F1 {m['object_f1']:.3f} "
              f"({n_test} test data centers) | threshold {m['threshold']:g}", flush=True)
    if len(rows) == 2:
        d_iou = rows[1]["iou"] - rows[0]["iou"]
        d_f1 = rows[1]["object_f1"] - rows[0]["object_f1"]
        print(f"{rows[1]['recipe']} - {rows[0]['recipe']}: {100 * d_iou:+.1f} IoU points, {d_f1:+.3f} object F1 "
              "(targets +8 points, +0.10)")
    with open(OUT / f"train_bench{a.tag}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def side_by_side(a: argparse.Namespace) -> None:
    """Draw the scenes once, then run every recipe in its own one-thread process concurrently."""
    for k in range(a.scenes):
        split_scene(synthetic_scene(a.size, seed=k + 1, difficulty=a.difficulty, site=SITES[k % 2]))
    names = a.recipes.split(",")
    procs = []
    for name in names:
        cmd = [sys.executable, __file__, "--recipes", name, "--threads", "1", "--tag", f"{a.tag}_{name}",
               "--budget-s", str(a.budget_s), "--difficulty", str(a.difficulty), "--size", str(a.size),
               "--scenes", str(a.scenes), "--per-object", str(a.per_object)]
        procs.append(subprocess.Popen(cmd))
    if any(p.wait() for p in procs):
        sys.exit("a recipe's process failed; see its output above.")
    rows = []
    for name in names:
        with open(OUT / f"train_bench{a.tag}_{name}.csv") as f:
            rows += list(csv.DictReader(f))
    if len(rows) == 2:
        d_iou = float(rows[1]["iou"]) - float(rows[0]["iou"])
        d_f1 = float(rows[1]["object_f1"]) - float(rows[0]["object_f1"])
        print(f"side by side, one core each: {rows[1]['recipe']} - {rows[0]['recipe']}: {100 * d_iou:+.1f} IoU "
              f"points, {d_f1:+.3f} object F1 (targets +8 points, +0.10)")


if __name__ == "__main__":
    main()
