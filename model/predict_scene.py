"""Streaming tiled prediction of a whole scene into a probability GeoTIFF (the exact path).

The scene is read one strip of tiles at a time (the next strip is read in a background thread
while the model runs), tiles are batched, overlaps are blended with a smooth window
(:class:`model.blend.StripBlender`), and finished rows are written straight to a tiled GeoTIFF:
memory depends on the scene's width, not its area.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

from model.blend import (
    StripBlender,
    has_mask,
    keep_tile,
    probability_raster,
    read_strip_valid,
    strip_width,
)
from model.checkpoint import Checkpoint, build_model
from model.errors import Cancelled
from model.inference import predict_tiles
from model.scene import SceneInfo, read_window
from model.tiling import PROB_SCALE

__all__ = ["PROB_SCALE", "predict_scene"]


def predict_scene(
    ckpt: Checkpoint,
    scene: SceneInfo,
    prob_path: str | os.PathLike,
    tile_size: int = 256,
    overlap: int = 32,
    batch_size: int = 2,
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
        batch_size: Tiles per forward pass.
        device: Torch device (default: CUDA/MPS when present, else CPU).
        progress: ``progress(tiles_done, tiles_total, {"tiles_per_s": ...})``.
        cancel: Returns True to stop (raises :class:`Cancelled`, nothing is left at ``prob_path``).

    Returns:
        ``prob_path``.
    """
    if not 0 <= overlap < tile_size:
        raise ValueError(f"overlap must be in 0..{tile_size - 1}, got {overlap}")
    model = build_model(ckpt, device)
    dev = next(model.parameters()).device
    width = strip_width(scene, tile_size)
    done, t0 = 0, time.perf_counter()
    with rasterio.open(scene.path) as src, probability_raster(scene, prob_path) as dst, \
            ThreadPoolExecutor(1) as pool:
        blender = StripBlender(scene, dst, tile_size, overlap)
        rows, cols = blender.rows, blender.cols
        total = len(rows) * len(cols)
        masked = has_mask(src)

        def read_strip(r: int):
            img = read_window(scene, Window(0, r, width, tile_size), src)
            return img, read_strip_valid(src, r, width, tile_size) if masked else None

        future = pool.submit(read_strip, rows[0])
        for i in range(len(rows)):
            strip, valid = future.result()
            if i + 1 < len(rows):
                future = pool.submit(read_strip, rows[i + 1])
            origins = [c for c in cols if keep_tile(strip[:, :, c : c + tile_size],
                                                    valid[:, c : c + tile_size] if valid is not None else None)]
            for b in range(0, len(origins), batch_size):
                if cancel is not None and cancel():
                    raise Cancelled("detection was cancelled; no output was written.")
                batch = origins[b : b + batch_size]
                tiles = np.stack([strip[:, :, c : c + tile_size] for c in batch])
                for p, c in zip(predict_tiles(model, ckpt.normalization, tiles, dev), batch, strict=True):
                    blender.add(c, p)
            blender.finish_strip(i, valid)
            done += len(cols)
            if progress is not None:
                progress(done, total, {"tiles_per_s": done / max(time.perf_counter() - t0, 1e-9)})
    return Path(prob_path)
