"""Detection benchmark: end-to-end ``dclabel detect`` throughput vs the bare model forward, and
peak memory on a large vs a small scene.

Prints:
- end-to-end throughput (km^2/s, Mpx/s, process start included) on a >= 5000 x 5000 scene;
- the bare U-Net forward throughput on the same tiles, at its fastest batch size;
- their ratio (target >= 0.92);
- peak RSS of ``detect`` on an 8192^2 and a 2048^2 scene, and their ratio (target <= 1.3).

Usage: python bench/detect.py [--size 5120] [--checkpoint CKPT] [--skip-rss]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import rasterio
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, run_measured, synthetic_scene, tiled_scene  # noqa: E402

from model.checkpoint import (  # noqa: E402
    Checkpoint,
    Normalization,
    load_checkpoint,
    save_checkpoint,
)
from model.inference import TileModel  # noqa: E402
from model.runtime import tune_allocator  # noqa: E402
from model.tiling import tile_starts  # noqa: E402
from model.unet import UNet, UNetConfig  # noqa: E402

DCLABEL = [sys.executable, "-m", "labeler.cli"]


def random_checkpoint(path: Path) -> Path:
    """The seed's U-Net (base 32) with random weights and a negative head bias (few detections)."""
    torch.manual_seed(0)
    net = UNet(UNetConfig())
    with torch.no_grad():
        net.head.bias.fill_(-2.0)
    return save_checkpoint(Checkpoint(net.state_dict(), net.config, Normalization((100.0,) * 4, (40.0,) * 4)), path)


def bare_forward_s_per_tile(ckpt: Checkpoint, scene: Path, tile: int, n_tiles: int = 24) -> tuple[float, int]:
    """Fastest seconds per tile of the bare forward over batch sizes 1, 2, 4, 8 on real tiles.

    The model and process settings are those ``detect`` runs with (batch norm folded,
    channels-last, fp32, the allocator tuned), so the ratio measures the pipeline around them.
    """
    tune_allocator()
    model = TileModel(ckpt, "cpu", "fp32", coarse_factor=1)
    with rasterio.open(scene) as src:
        tiles = np.stack([src.read(window=((r, r + tile), (c, c + tile)))
                          for r in range(0, 4 * tile, tile) for c in range(0, 6 * tile, tile)][:n_tiles])
    model.predict(tiles[:2])  # warm-up
    best = (float("inf"), 0)
    for bs in (1, 2, 4, 8):
        t = time.perf_counter()
        for i in range(0, n_tiles, bs):
            model.predict(tiles[i : i + bs])
        per_tile = (time.perf_counter() - t) / n_tiles
        print(f"  bare forward, batch {bs}: {per_tile * 1000:.1f} ms/tile")
        best = min(best, (per_tile, bs))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=5120)
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--batch-size", type=int, default=None,
                    help="passed to detect (default: detect's own, 2 tiles per pass on a CPU)")
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--rss-checkpoint", type=Path, default=None,
                    help="checkpoint for the memory runs (default: --checkpoint); a narrow one saves time")
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    ckpt_path = a.checkpoint or random_checkpoint(OUT / "bench_random_base32.pt")
    ckpt = load_checkpoint(ckpt_path)
    base = synthetic_scene(2048)
    scene = tiled_scene(base, a.size)
    tile, overlap = 256, 32
    n_tiles = len(tile_starts(a.size, tile, tile - overlap)) ** 2
    area_km2 = (a.size * 0.6) ** 2 / 1e6
    mpx = a.size**2 / 1e6
    print(f"scene {a.size}x{a.size} px ({area_km2:.2f} km^2), {n_tiles} tiles of {tile} px, overlap {overlap}")
    print(f"torch threads: {torch.get_num_threads()}")

    out = OUT / "detect_run"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    cmd = [*DCLABEL, "detect", "--checkpoint", str(ckpt_path), "--image", str(scene),
           "--output-geojson", str(out / "d.geojson"), "--output-mask", str(out / "m.tif"),
           *(["--batch-size", str(a.batch_size)] if a.batch_size else [])]
    wall, rss_big = run_measured(cmd)
    per_tile, bs = bare_forward_s_per_tile(ckpt, scene, tile)
    bare = n_tiles * per_tile
    print(f"end-to-end detect: {wall:.1f} s = {area_km2 / wall:.4f} km^2/s, {mpx / wall:.3f} Mpx/s "
          f"(process start, reading, blending, vectorizing and writing included)")
    print(f"bare forward (batch {bs}, fastest): {bare:.1f} s for the same {n_tiles} tiles = "
          f"{area_km2 / bare:.4f} km^2/s, {mpx / bare:.3f} Mpx/s")
    print(f"RATIO end-to-end / bare forward throughput: {bare / wall:.3f}  (target >= 0.92; seed pipeline 0.83)")

    if not a.skip_rss:
        rss = {}
        for size in (2048, 8192):
            s = tiled_scene(base, size) if size != 2048 else base
            _, rss[size] = run_measured([*DCLABEL, "detect", "--checkpoint", str(a.rss_checkpoint or ckpt_path),
                                         "--image", str(s),
                                         "--output-geojson", str(out / f"r{size}.geojson"),
                                         "--output-mask", str(out / f"r{size}.tif")])
            print(f"peak RSS, {size}x{size}: {rss[size]} MiB")
        print(f"RSS RATIO 8192^2 / 2048^2: {rss[8192] / rss[2048]:.3f}  (target <= 1.3)")


if __name__ == "__main__":
    main()
