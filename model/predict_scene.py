"""Streaming tiled prediction of a whole scene into a probability GeoTIFF (the exact path).

The scene is read one strip of tiles at a time (the next strip is read in a background thread
while the model runs), tiles are batched through the U-Net with batch norm folded and channels-last
memory (:class:`model.inference.TileModel`, fp32), overlaps are blended with a smooth window
(:class:`model.blend.StripBlender`), and finished rows are written straight to a tiled GeoTIFF:
memory depends on the scene's width, not its area.
"""

from __future__ import annotations

import os
import time
from contextlib import closing
from pathlib import Path

import rasterio
import torch

from model.blend import StripBlender, probability_raster, read_strips
from model.checkpoint import Checkpoint
from model.errors import Cancelled
from model.inference import TileModel, tile_batch_size
from model.scene import SceneInfo
from model.tiling import PROB_SCALE

__all__ = ["PROB_SCALE", "predict_scene"]


def predict_scene(
    ckpt: Checkpoint,
    scene: SceneInfo,
    prob_path: str | os.PathLike,
    tile_size: int = 256,
    overlap: int = 32,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    progress=None,
    cancel=None,
) -> Path:
    """Predict data-center probability over a scene and write it as a uint8 GeoTIFF (p * 255).

    Args:
        ckpt: Loaded checkpoint.
        scene: Scene to predict.
        prob_path: Output GeoTIFF (written under a temporary name, renamed when complete).
        tile_size: Tile side in pixels.
        overlap: Overlap between neighbouring tiles in pixels.
        batch_size: Tiles per forward pass (None: the device's default, see ``tile_batch_size``).
        device: Torch device (default: CUDA/MPS when present, else CPU).
        progress: ``progress(tiles_done, tiles_total, {"tiles_per_s": ...})``.
        cancel: Returns True to stop (raises :class:`Cancelled`, nothing is left at ``prob_path``).

    Returns:
        ``prob_path``.
    """
    if not 0 <= overlap < tile_size:
        raise ValueError(f"overlap must be in 0..{tile_size - 1}, got {overlap}")
    model = TileModel(ckpt, device, "fp32", coarse_factor=1)
    batch_size = tile_batch_size(batch_size, model.device)
    done, t0 = 0, time.perf_counter()
    # closing(): on cancel or error the read-ahead thread is joined before the scene is closed
    with rasterio.open(scene.path) as src, probability_raster(scene, prob_path) as dst, \
            closing(read_strips(scene, src, tile_size, overlap)) as strips:
        blender = StripBlender(scene, dst, tile_size, overlap)
        total = len(blender.rows) * len(blender.cols)
        for strip in strips:
            for b in range(0, len(strip.origins), batch_size):
                if cancel is not None and cancel():
                    raise Cancelled("detection was cancelled; no output was written.")
                batch = strip.origins[b : b + batch_size]
                probs = model.predict(strip.tiles(batch, tile_size))
                for p, c in zip(probs, batch, strict=True):
                    blender.add(c, p)
            blender.finish_strip(strip.index, strip.valid)
            done += len(blender.cols)
            if progress is not None:
                progress(done, total, {"tiles_per_s": done / max(time.perf_counter() - t0, 1e-9)})
    return Path(prob_path)
