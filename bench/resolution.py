"""Detection on scenes whose pixel size is not the checkpoint's: resampled to it vs run as they are.

NAIP comes at 0.6 m in most years and states but at 0.3 m in recent ones (the Planetary
Computer's ``gsd`` says which), and other orthoimagery at 0.15-1 m. A U-Net sees buildings at the
scale it learned them, so ``dclabel detect`` reads a scene whose pixel size differs by more than
20 % from the checkpoint's (``Checkpoint.resolution_m``) through a GDAL VRT resampled to it, and
writes the mask back on the scene's own grid (``--no-resample`` turns that off).

Scenes: the synthetic generator drawn natively at each pixel size over the same 1229 m square
(seed 7, difficulty 0.25: the same land, more detail at 0.3 m; the buildings differ between
scenes because the generator places them per pixel grid). For each: pixel IoU and object F1
(IoU >= 0.5, one to one, objects of at least 36 m^2) of the mask against the scene's ground
truth, with and without resampling, and the wall time.

Usage: python bench/resolution.py [--checkpoint bench/out/train_ours_serial_d0.25.pt] [--res 0.3,0.6,1.0]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import rasterio
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, synthetic_scene  # noqa: E402
from fastpath import truth_labels  # noqa: E402

from model.checkpoint import load_checkpoint  # noqa: E402
from model.config import DetectConfig  # noqa: E402
from model.detect import detect_scene  # noqa: E402
from model.metrics import counts_to_metrics, f1_from_counts, label_objects, match_objects  # noqa: E402
from model.scene import open_scene  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", type=Path, default=OUT / "train_ours_serial_d0.25.pt")
    ap.add_argument("--res", type=lambda t: [float(v) for v in t.split(",")], default=[0.3, 0.6, 1.0])
    ap.add_argument("--extent-px", type=int, default=2048, help="scene side in pixels at 0.6 m (default 2048)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    ckpt = load_checkpoint(a.checkpoint)
    print(f"checkpoint {a.checkpoint.name}: trained at {ckpt.resolution_m:g} m, threshold {ckpt.threshold:g}; "
          f"{a.threads} threads")
    for res in a.res:
        size = int(round(a.extent_px * 0.6 / res))
        tif = synthetic_scene(size, seed=7, difficulty=0.25, **({} if res == 0.6 else {"res": res}))
        scene = open_scene(tif)
        truth = truth_labels(tif, scene)
        min_px = max(1, int(round(DetectConfig.min_area * (0.6 / res) ** 2)))
        print(f"\n{res:g} m scene {tif.name}: {scene.width}x{scene.height} px, {truth.max()} true data centers")
        for resample in (True, False):
            if res == 0.6 and not resample:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                mask_path = Path(tmp) / "mask.tif"
                t0 = time.perf_counter()
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    table = detect_scene(ckpt, scene, DetectConfig(device="cpu", resample=resample),
                                         output_mask=mask_path)
                secs = time.perf_counter() - t0
                with rasterio.open(mask_path) as src:
                    mask = src.read(1) > 0
                    on_grid = (src.width, src.height, src.transform) == (scene.width, scene.height, scene.transform)
            t = truth > 0
            pix = counts_to_metrics(np.count_nonzero(mask & t), np.count_nonzero(mask & ~t), np.count_nonzero(~mask & t))
            pred, n = label_objects(mask, min_px)
            obj = f1_from_counts(**match_objects(pred, truth))
            note = "; ".join(str(w.message).split(": ", 1)[1][:60] for w in caught if "trained" in str(w.message))
            print(f"  {'resampled' if resample else 'as is':9s}: {secs:6.1f} s, {len(table):3d} polygons, pixel IoU "
                  f"{pix['iou']:.3f}, object F1 {obj['f1']:.3f} ({n} objects), mask on the scene grid: {on_grid}"
                  + (f" [{note}...]" if note else ""), flush=True)


if __name__ == "__main__":
    main()
