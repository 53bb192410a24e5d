"""Throughput of the ranking strategies: chips/s of ``rank_chips`` on a synthetic scene.

Writes a seeded 4-band uint8 GeoTIFF (EPSG:32618, 0.6 m) of ``--size`` x ``--size`` pixels, saves
a randomly initialised U-Net checkpoint (``--base-channels``, depth 4: the seed architecture) and
times :func:`loop.ranking.rank_chips` for each strategy on one CPU thread. Prints a table.

Usage: ``.venv/bin/python bench/rank.py [--size 1024] [--strategies entropy,tta] [--threads 1]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from affine import Affine
from rasterio.crs import CRS

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loop.ranking import rank_chips  # noqa: E402
from model.checkpoint import Checkpoint, Normalization, save_checkpoint  # noqa: E402
from model.scene import chip_windows, open_scene, write_geotiff  # noqa: E402
from model.unet import UNet, UNetConfig  # noqa: E402


@dataclass
class _Labels:
    def reviewed_chips(self, scene_id=None):
        return []


@dataclass
class _Version:
    path: Path


@dataclass
class _Registry:
    path: Path | None

    def current(self):
        return _Version(self.path) if self.path else None


@dataclass
class _BenchProject:
    """The attributes rank_chips reads, without a label store on disk."""

    root: Path
    scenes: list
    registry: _Registry
    chip_size: int = 256
    labels: _Labels = field(default_factory=_Labels)

    def chip_windows(self, scene_id):
        scene = next(s for s in self.scenes if s.scene_id == scene_id)
        return chip_windows(scene.width, scene.height, self.chip_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--size", type=int, default=1024, help="scene side in pixels (default 1024)"
    )
    parser.add_argument("--strategies", default="random,entropy,margin,tta,bald,cold_start")
    parser.add_argument("--base-channels", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--mc-samples", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        image = rng.integers(20, 200, size=(4, args.size, args.size), dtype=np.uint8)
        tif = write_geotiff(
            tmp / "scene.tif",
            image,
            CRS.from_epsg(32618),
            Affine(0.6, 0, 500_000.0, 0, -0.6, 4_300_000.0),
        )
        config = UNetConfig(base_channels=args.base_channels, depth=4, dropout=0.1)
        norm = Normalization((110.0,) * 4, (50.0,) * 4)
        ckpt = save_checkpoint(Checkpoint(UNet(config).state_dict(), config, norm), tmp / "ckpt.pt")
        project = _BenchProject(tmp, [open_scene(tif)], _Registry(ckpt))
        n = len(project.chip_windows(project.scenes[0].scene_id))
        print(
            f"scene {args.size}x{args.size}, {n} chips of 256 px, U-Net base {args.base_channels} depth 4, "
            f"batch {args.batch_size}, {args.threads} thread(s), MC samples {args.mc_samples}"
        )
        print("passes: full U-Net passes per chip; 'h' = dropout + 1x1 head only")
        print(f"{'strategy':<11} {'passes':>6} {'seconds':>8} {'chips/s':>8} {'proposals':>9}")
        for name in args.strategies.split(","):
            passes = {"tta": "8", "bald": f"1+{args.mc_samples}h", "cold_start": "0"}.get(name, "1")
            start = time.perf_counter()
            queue = rank_chips(
                project,
                name,
                batch_size=args.batch_size,
                mc_samples=args.mc_samples,
                diversity=True,
            )
            seconds = time.perf_counter() - start
            n_props = sum(len(q.proposals) for q in queue)
            print(
                f"{name:<11} {passes:>6} {seconds:>8.2f} {len(queue) / seconds:>8.2f} {n_props:>9}"
            )


if __name__ == "__main__":
    main()
