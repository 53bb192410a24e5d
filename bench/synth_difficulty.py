"""How hard is a synthetic scene for per-pixel spectra? Prints figures; writes under bench/out/.

Generates a scene with :func:`model.synth.generate_scene`, then reports per-class mean brightness
and NIR inside the truth footprints, and the pixel IoU against the data-center mask of
(a) the best single brightness threshold and (b) a per-pixel logistic regression on the 4 bands
(numpy, balanced classes, best threshold on its probability). Both should be poor (IoU well
under 0.3): only spatial context should separate data centers from look-alikes. Also writes an
RGB quick-look PNG next to the scene.

Usage:
    .venv/bin/python bench/synth_difficulty.py --size 2048 --seed 0 --site ashburn --difficulty 1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import geopandas as gpd  # noqa: E402
import rasterio  # noqa: E402
from rasterio import features  # noqa: E402

from model.synth import SynthConfig, generate_scene  # noqa: E402

CLASS_IDS = {"datacenter": 1, "warehouse": 2, "retail": 3, "other": 4}


def best_threshold_iou(score: np.ndarray, truth: np.ndarray, bins: int = 256) -> tuple[float, float, str]:
    """Best IoU of ``score > t`` or ``score < t`` over ``bins`` thresholds: (iou, t, direction)."""
    lo, hi = float(score.min()), float(score.max()) + 1e-6
    edges = np.linspace(lo, hi, bins + 1)
    pos = np.histogram(score[truth], edges)[0].astype(np.float64)
    neg = np.histogram(score[~truth], edges)[0].astype(np.float64)
    n_pos = pos.sum()
    best = (0.0, lo, ">")
    # score > edges[k]: bins k..end
    tp_gt = np.cumsum(pos[::-1])[::-1]
    fp_gt = np.cumsum(neg[::-1])[::-1]
    iou_gt = tp_gt / (n_pos + fp_gt + 1e-9)
    tp_lt = np.cumsum(pos)
    fp_lt = np.cumsum(neg)
    iou_lt = tp_lt / (n_pos + fp_lt + 1e-9)
    k, j = int(np.argmax(iou_gt)), int(np.argmax(iou_lt))
    if iou_gt[k] >= best[0]:
        best = (float(iou_gt[k]), float(edges[k]), ">")
    if iou_lt[j] > best[0]:
        best = (float(iou_lt[j]), float(edges[j + 1]), "<")
    return best


def logistic_scores(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, steps: int = 400) -> np.ndarray:
    """Per-pixel logistic regression (balanced, full-batch gradient descent) on a subsample.

    Args:
        x: (N, F) features.
        y: (N,) bool labels.
        rng: Generator for the subsample.
        steps: Gradient steps.

    Returns:
        Probabilities for every row of ``x``.
    """
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = (x - mu) / sd
    idx = rng.choice(len(z), size=min(len(z), 200_000), replace=False)
    zs, ys = z[idx], y[idx].astype(np.float64)
    w_pos = 0.5 / max(ys.mean(), 1e-6)
    w_neg = 0.5 / max(1 - ys.mean(), 1e-6)
    sw = np.where(ys > 0, w_pos, w_neg)
    a = np.c_[zs, np.ones(len(zs))]
    w = np.zeros(a.shape[1])
    for _ in range(steps):
        p = 1 / (1 + np.exp(-(a @ w)))
        w -= 0.5 * (a.T @ ((p - ys) * sw)) / len(ys)
    return 1 / (1 + np.exp(-(np.c_[z, np.ones(len(z))] @ w)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--site", default="ashburn", choices=["ashburn", "santa_clara", "mixed"])
    ap.add_argument("--difficulty", type=float, default=1.0)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    args = ap.parse_args(argv)
    stem = f"synth_{args.site}_{args.size}_s{args.seed}_d{args.difficulty:g}"
    cfg = SynthConfig(width=args.size, height=args.size, seed=args.seed, site=args.site,
                      difficulty=args.difficulty)
    t0 = time.perf_counter()
    tif, truth_path = generate_scene(args.out / f"{stem}.tif", args.out / f"{stem}.geojson", cfg)
    dt = time.perf_counter() - t0
    with rasterio.open(tif) as src:
        img, crs, transform = src.read(), src.crs, src.transform
    truth = gpd.read_file(truth_path).to_crs(crs)
    cls_map = features.rasterize(
        [(g, CLASS_IDS[c]) for g, c in zip(truth.geometry, truth["class"], strict=True)],
        out_shape=img.shape[1:], transform=transform, dtype="uint8")
    dc = cls_map == 1
    print(f"scene {tif.name}: {img.shape[2]}x{img.shape[1]} px, generated in {dt:.1f} s, "
          f"{len(truth)} footprints {truth['class'].value_counts().to_dict()}")
    print(f"data-center pixels: {dc.mean():.3%} of the scene; all-building pixels: {(cls_map > 0).mean():.3%}")
    bright = img[:3].astype(np.float32).mean(0)
    nir = img[3].astype(np.float32)
    print(f"{'class':<12}{'pixels':>10}{'bright':>9}{'sd':>7}{'NIR':>8}{'sd':>7}")
    for name, k in [("background", 0), *CLASS_IDS.items()]:
        m = cls_map == k
        if m.any():
            print(f"{name:<12}{m.sum():>10}{bright[m].mean():>9.1f}{bright[m].std():>7.1f}"
                  f"{nir[m].mean():>8.1f}{nir[m].std():>7.1f}")
    iou_b, t_b, d_b = best_threshold_iou(bright, dc)
    print(f"best brightness threshold: IoU {iou_b:.3f} (brightness {d_b} {t_b:.1f})")
    rng = np.random.default_rng(0)
    x = img.reshape(4, -1).T.astype(np.float32)
    p = logistic_scores(x, dc.ravel(), rng)
    iou_l, t_l, _ = best_threshold_iou(p, dc.ravel())
    print(f"per-pixel logistic regression (R,G,B,NIR): IoU {iou_l:.3f} (p > {t_l:.2f})")
    inter = (dc & (cls_map > 0)).sum() / max((cls_map > 0).sum(), 1)
    print(f"oracle 'every building is a data center' IoU: {inter:.3f}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    step = max(1, args.size // 1400)
    png = tif.with_suffix(".png")
    plt.imsave(png, np.ascontiguousarray(np.transpose(img[:3, ::step, ::step], (1, 2, 0))))
    print(f"quick-look: {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
