"""Fast vs exact CPU detection on synthetic scenes, in the same run.

Two 4096 px scenes: ``dense`` (the demo's window over the real Ashburn core, data centers in
about 40 % of its tiles) and ``typical`` (the same kind of land, buildings and hard negatives,
with data centers in a share of tiles like the real NAIP quarter quads that hold the labelled
data centers; the script prints that reference from ``data/datacenters.geojson``).

Prints, for the exact path (model/predict_scene.py) and the fast path (model/fastpath.py) with the
trained tile gate (model/gate.py) and with the coarse U-Net gate: wall time, throughput (Mpx/s and
km^2/h at 0.6 m), the share of tiles the full U-Net ran on, and pixel IoU / object F1 (IoU >= 0.5,
one to one) against the scene's ground truth; then the speed-up (target >= 4x) and the F1 gap
(target <= 0.01). A checkpoint without a tile gate gets one distilled on the training parts of
bench/train.py's scenes (imagery only; the test scenes are never seen). ``--ablation`` adds the fast
path with the gate off (fp32 and bf16); ``--sweep`` prints how many tiles each coarse threshold
keeps and how many tiles holding exact detections it would miss.

Usage: python bench/fastpath.py [--checkpoint bench/out/train_ours_serial_d0.25.pt] [--scenes dense,typical]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import torch
from rasterio.features import rasterize
from rasterio.windows import Window

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, synthetic_scene  # noqa: E402

from model.blend import tile_grid  # noqa: E402
from model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint  # noqa: E402
from model.config import DetectConfig, TrainConfig  # noqa: E402
from model.detect import with_threshold  # noqa: E402
from model.fastpath import FastModel, predict_scene_fast  # noqa: E402
from model.masks import rasterize_footprints  # noqa: E402
from model.metrics import counts_to_metrics, f1_from_counts, label_objects, match_objects  # noqa: E402
from model.predict_scene import PROB_SCALE, predict_scene  # noqa: E402
from model.scene import SceneInfo, chip_windows, open_scene, read_window  # noqa: E402
from model.train import fit  # noqa: E402


def quick_checkpoint(budget_s: float, difficulty: float) -> Path:
    """Train a small U-Net (base 16) on another synthetic scene within ``budget_s`` seconds."""
    path = OUT / f"fastpath_quick_b16_{int(budget_s)}s_d{difficulty:g}.pt"
    if path.exists():
        return path
    tif = synthetic_scene(2048, seed=1, difficulty=difficulty)
    s = open_scene(tif)
    truth = gpd.read_file(tif.with_suffix(".geojson")).to_crs(s.crs)
    mask = rasterize_footprints(truth[truth["class"] == "datacenter"].geometry.values, None, s.crs, s.transform,
                                (s.height, s.width))
    pairs = []
    with rasterio.open(tif) as src:
        for w in chip_windows(s.width, s.height, 256, 192):
            r, c = int(w.row_off), int(w.col_off)
            pairs.append((read_window(s, w, src), mask[r : r + 256, c : c + 256]))
    cfg = TrainConfig(epochs=200, batch_size=8, lr=2e-3, base_channels=16, depth=4, pos_weight=2.0,
                      accelerator="cpu", max_time_s=budget_s, dropout=0.0)
    ckpt = fit(pairs, pairs[::7], replace(cfg, epochs=max(2, int(budget_s // 60))))
    return save_checkpoint(ckpt, path)


def real_tile_shares(tile_m: float = 256 * 0.6, stride_m: float = 224 * 0.6) -> list[tuple[str, float]]:
    """Share of detection tiles touching a labelled data center, per real NAIP quarter quad
    (3.75' x 3.75') holding one, from data/datacenters.geojson (densest first)."""
    from shapely.geometry import box

    from model.synth_layout import read_footprints

    fp = read_footprints()
    dc = fp[fp["class"] == "datacenter"]
    q = 3.75 / 60
    cells = {(int(np.floor(c.x / q)), int(np.floor(c.y / q))) for c in dc.geometry.representative_point()}
    out = []
    for qx, qy in cells:
        quad = gpd.GeoDataFrame(geometry=[box(qx * q, qy * q, (qx + 1) * q, (qy + 1) * q)], crs=4326)
        utm = quad.estimate_utm_crs()
        x0, y0, x1, y1 = quad.to_crs(utm).total_bounds
        tiles = [box(x, y, x + tile_m, y + tile_m) for x in np.arange(x0, x1 - tile_m, stride_m)
                 for y in np.arange(y0, y1 - tile_m, stride_m)]
        hit = gpd.GeoDataFrame(geometry=tiles, crs=utm).intersects(dc.to_crs(utm).union_all())
        out.append((f"{qy * q:.4f}N {-qx * q:.4f}W", float(hit.mean())))
    return sorted(out, key=lambda t: -t[1])


def scene_tile_share(truth: np.ndarray, scene: SceneInfo, config: DetectConfig) -> float:
    """Share of the scene's detection tiles that hold a true data-center pixel."""
    rows, cols = tile_grid(scene, config.tile_size, config.overlap)
    t = config.tile_size
    return float(np.mean([truth[r : r + t, c : c + t].any() for r in rows for c in cols]))


def gated_checkpoint(path: Path, ckpt: Checkpoint, difficulty: float) -> Checkpoint:
    """``ckpt`` with a tile gate: its own, or one distilled on 810 chips at random offsets: 510 in
    the training parts of bench/train.py's six scenes, 300 in two typical-density scenes of other
    seeds than the test scenes (cached in bench/out)."""
    from model.gate import fit_gate

    if ckpt.gate is not None:
        return ckpt
    out = OUT / f"{path.stem}_gated.pt"
    if out.exists():
        return load_checkpoint(out)
    rng, chips = np.random.default_rng(0), []
    for k in range(6):  # 85 chips at random offsets in each training part (as `dclabel train-gate` samples)
        tif = synthetic_scene(2048, seed=k + 1, difficulty=difficulty, site=("ashburn", "santa_clara")[k % 2])
        s = open_scene(tif)
        cut = int(round(s.width * 0.75 / 256)) * 256  # bench/train.py's training part (left 75 %)
        with rasterio.open(tif) as src:
            chips += [read_window(s, Window(int(rng.integers(0, cut - 255)), int(rng.integers(0, s.height - 255)),
                                            256, 256), src) for _ in range(85)]
    for seed in (11, 12):  # and imagery like the typical scene's (other seeds; no labels are read)
        tif = synthetic_scene(2048, seed=seed, difficulty=difficulty, real_layout=False, positive_share=0.05)
        s = open_scene(tif)
        with rasterio.open(tif) as src:
            chips += [read_window(s, Window(int(rng.integers(0, s.width - 255)), int(rng.integers(0, s.height - 255)),
                                            256, 256), src) for _ in range(150)]
    fit = fit_gate(ckpt, chips, min_area=int(DetectConfig.min_area), max_seconds=120, device="cpu")
    if fit is None:
        raise SystemExit(f"{path}: the U-Net detects nothing on the training chips; no gate to distil")
    print(f"tile gate distilled on {fit.chips} training chips ({fit.positive_chips} with U-Net detections) in "
          f"{fit.seconds:.0f} s: threshold {fit.threshold:.3f}, held-out recall {fit.recall:.0%}, "
          f"keeps {fit.keep_share:.0%} of held-out chips without detections")
    ckpt.gate = fit.payload
    save_checkpoint(ckpt, out)
    return ckpt


def truth_labels(tif: Path, scene: SceneInfo) -> np.ndarray:
    """Integer labels (H, W) of the ground-truth data centers of a synthetic scene."""
    truth = gpd.read_file(tif.with_suffix(".geojson")).to_crs(scene.crs)
    pos = truth[truth["class"] == "datacenter"]
    return rasterize(((g, i + 1) for i, g in enumerate(pos.geometry)), out_shape=(scene.height, scene.width),
                     transform=scene.transform, fill=0, dtype="int32")


def score(prob: Path, truth: np.ndarray, config: DetectConfig) -> dict:
    """Pixel IoU and object F1 of a probability map against the truth labels.

    Objects are 8-connected components of at least ``config.min_area`` px (the training task's
    ``val_object_f1``), matched one to one at IoU >= 0.5. Vectorizing is left out: with a weakly
    trained checkpoint the map holds ~10^5 noise specks and polygon merging would dominate the run.
    """
    with rasterio.open(prob) as src:
        p = src.read(1) >= max(int(np.ceil(config.threshold * PROB_SCALE)), 1)
    t = truth > 0
    pix = counts_to_metrics(np.count_nonzero(p & t), np.count_nonzero(p & ~t), np.count_nonzero(~p & t))
    pred, n = label_objects(p, int(config.min_area))
    obj = f1_from_counts(**match_objects(pred, truth))
    return {"iou": pix["iou"], "object_f1": obj["f1"], "detections": n, "pred": pred}


def gate_sweep(ckpt: Checkpoint, scene: SceneInfo, exact_objects: np.ndarray, config: DetectConfig,
               factor: int) -> None:
    """Coarse peak of every tile once; for several thresholds: tiles kept, tiles with detections missed."""
    rows, cols = tile_grid(scene, config.tile_size, config.overlap)
    model = FastModel(ckpt, "cpu", "auto", factor, 0.0)
    t, peaks, hits = config.tile_size, [], []
    t0 = time.perf_counter()
    with rasterio.open(scene.path) as src:
        for r in rows:
            tiles = np.stack([read_window(scene, Window(c, r, t, t), src) for c in cols])
            x = torch.nn.functional.avg_pool2d(model._normalise(tiles), factor, ceil_mode=True)
            with torch.inference_mode():
                peaks += model._probs(x).amax(dim=(1, 2)).tolist()
            hits += [bool(exact_objects[r : r + t, c : c + t].any()) for c in cols]
    dt = time.perf_counter() - t0
    peaks, hits = np.asarray(peaks), np.asarray(hits)
    print(f"gate sweep (coarse {factor}x, {dt:.1f} s for {len(peaks)} tiles; {hits.sum()} tiles hold exact objects):")
    for th in (0.02, 0.05, 0.1, 0.2, 0.3, 0.5):
        keep = peaks >= th
        print(f"  threshold {th:4.2f}: keeps {keep.mean():6.1%} of tiles, misses {np.count_nonzero(hits & ~keep)} "
              f"tiles with exact objects")


def run_scene(name: str, tif: Path, ckpt: Checkpoint, a: argparse.Namespace) -> dict:
    """Exact path, fast path with the trained gate and with the coarse gate on one scene; prints and returns."""
    scene = open_scene(tif)
    truth = truth_labels(tif, scene)
    cfg = with_threshold(DetectConfig(device="cpu"), ckpt)
    km2 = scene.width * scene.height * scene.res[0] * scene.res[1] / 1e6
    print(f"\n{name} scene {tif.name}: {scene.width}x{scene.height} px ({km2:.2f} km^2), {truth.max()} true data "
          f"centers, in {scene_tile_share(truth, scene, cfg):.1%} of its tiles; tile {cfg.tile_size}, overlap "
          f"{cfg.overlap}, batch {cfg.batch_size}, threshold {cfg.threshold:g}")
    runs = [("exact", None), ("fast, trained gate", (a.coarse_factor, a.coarse_threshold, "auto", "trained")),
            ("fast, trained gate, no growing", (a.coarse_factor, a.coarse_threshold, "auto", "trained", None, False)),
            *[(f"fast, trained gate {t:g}", (a.coarse_factor, a.coarse_threshold, "auto", "trained", t))
              for t in a.gate_thresholds],
            ("fast, coarse gate", (a.coarse_factor, a.coarse_threshold, "auto", "coarse"))]
    if a.ablation:
        runs += [("fast, gate off, fp32", (1, 0.0, "fp32", "coarse")), ("fast, gate off, auto", (1, 0.0, "auto", "coarse"))]
    results = {}
    for run, fast in runs:
        prob = OUT / f"fastpath_{name}_{run.replace(', ', '_').replace(' ', '-')}_prob.tif"
        t0 = time.perf_counter()
        if fast is None:
            predict_scene(ckpt, scene, prob, cfg.tile_size, cfg.overlap, cfg.batch_size, "cpu")
            info = ""
        else:
            factor, threshold, precision, gate = fast[:4]
            gate_threshold = fast[4] if len(fast) > 4 else None
            grow = fast[5] if len(fast) > 5 else True
            st = predict_scene_fast(ckpt, scene, prob, cfg.tile_size, cfg.overlap, cfg.batch_size, "cpu", factor,
                                    threshold, precision, gate=gate, gate_threshold=gate_threshold,
                                    grow_threshold=cfg.threshold if grow else None)
            info = (f", full U-Net on {st.full_res}/{st.tiles} tiles ({st.full_res / st.tiles:.0%}, {st.grown} grown), "
                    f"bf16 {st.bf16}")
        secs = time.perf_counter() - t0
        m = score(prob, truth, cfg)
        results[run] = {"s": secs, **m}
        print(f"{run:30s}: {secs:7.1f} s, {scene.width * scene.height / secs / 1e6:6.3f} Mpx/s, "
              f"{km2 / secs * 3600:7.1f} km^2/h | pixel IoU {m['iou']:.3f}, object F1 {m['object_f1']:.3f} "
              f"({m['detections']} objects){info}", flush=True)
    ex = results["exact"]
    for run in [r for r, _ in runs[1:] if not r.startswith("fast, gate off")]:
        fa = results[run]
        print(f"{name}, {run} vs exact: {ex['s'] / fa['s']:.2f}x faster (target >= 4x); object F1 "
              f"{fa['object_f1'] - ex['object_f1']:+.3f}, pixel IoU {fa['iou'] - ex['iou']:+.3f} (target: F1 within 0.01)")
    if a.sweep:
        gate_sweep(ckpt, scene, ex["pred"], cfg, a.coarse_factor)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=7,
                    help="synthetic scene seed (bench/train.py trains on seeds 1-6, the quick checkpoint on 1)")
    ap.add_argument("--difficulty", type=float, default=0.25, help="as calibrated in bench/train.py")
    ap.add_argument("--scenes", default="dense,typical", help="which scenes: dense, typical or both")
    ap.add_argument("--typical-share", type=float, default=0.05,
                    help="share of data centers among the typical scene's buildings (SynthConfig.positive_share)")
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--train-budget-s", type=float, default=300.0, help="quick training when no checkpoint")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--coarse-factor", type=int, default=DetectConfig.coarse_factor)
    ap.add_argument("--coarse-threshold", type=float, default=DetectConfig.coarse_threshold)
    ap.add_argument("--gate-thresholds", type=lambda t: [float(v) for v in t.split(",")], default=[],
                    help="also run the trained gate at these thresholds (comma-separated), e.g. 0.2,0.15")
    ap.add_argument("--ablation", action="store_true", help="also run the fast path with the gate off")
    ap.add_argument("--sweep", action="store_true", help="print kept/missed tiles per coarse threshold")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    OUT.mkdir(parents=True, exist_ok=True)
    ckpt_path = a.checkpoint if a.checkpoint and a.checkpoint.exists() else quick_checkpoint(a.train_budget_s,
                                                                                              a.difficulty)
    ckpt = gated_checkpoint(ckpt_path, load_checkpoint(ckpt_path), a.difficulty)
    print(f"checkpoint {ckpt_path.name} (U-Net base {ckpt.unet.base_channels}, depth {ckpt.unet.depth}), tile gate "
          f"threshold {ckpt.gate['threshold']:.3f}; {a.threads} threads")
    shares = real_tile_shares()
    print("real NAIP quarter quads holding labelled data centers, share of tiles touching one: "
          + ", ".join(f"{where} {share:.1%}" for where, share in shares[:4])
          + f", ... median {np.median([s for _, s in shares]):.1%} of {len(shares)}")
    for name in a.scenes.split(","):
        extra = {} if name == "dense" else {"real_layout": False, "positive_share": a.typical_share}
        run_scene(name, synthetic_scene(a.size, seed=a.seed, difficulty=a.difficulty, **extra), ckpt, a)


if __name__ == "__main__":
    main()
