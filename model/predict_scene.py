"""Streaming tiled prediction of a whole scene into a probability GeoTIFF.

The scene is read one strip of tiles at a time (the next strip is read in a background thread
while the model runs), tiles are batched, overlaps are blended with a smooth window, and finished
rows are written straight to a tiled GeoTIFF: memory depends on the scene's width, not its area.
"""

from __future__ import annotations

import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

from model.checkpoint import Checkpoint, build_model
from model.errors import Cancelled
from model.inference import predict_tiles
from model.scene import SceneInfo, read_window
from model.tiling import blend_weights, tile_starts

PROB_SCALE = 255.0  # probability rasters store round(p * 255) as uint8


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
    stride = tile_size - overlap
    rows = tile_starts(scene.height, tile_size, stride)
    cols = tile_starts(scene.width, tile_size, stride)
    width = max(scene.width, tile_size)
    weights = blend_weights(tile_size, overlap)
    total = len(rows) * len(cols)
    prob_path = Path(prob_path)
    prob_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".tif.part", dir=prob_path.parent)
    os.close(fd)
    profile = {
        "driver": "GTiff", "width": scene.width, "height": scene.height, "count": 1, "dtype": "uint8",
        "crs": scene.crs, "transform": scene.transform, "compress": "deflate", "tiled": True,
        "blockxsize": 256, "blockysize": 256, "BIGTIFF": "IF_SAFER",
    }
    acc = np.zeros((tile_size, width), np.float32)
    wsum = np.zeros((tile_size, width), np.float32)
    done, t0 = 0, time.perf_counter()
    try:
        with rasterio.open(scene.path) as src, rasterio.open(tmp, "w", **profile) as dst, \
                ThreadPoolExecutor(1) as pool:
            has_mask = any(rasterio.enums.MaskFlags.all_valid not in f for f in src.mask_flag_enums)

            def read_strip(r: int):
                win = Window(0, r, width, tile_size)
                img = read_window(scene, win, src)
                valid = None
                if has_mask:
                    valid = src.read_masks(1, window=win, boundless=True) > 0
                return img, valid

            future = pool.submit(read_strip, rows[0])
            for i, r in enumerate(rows):
                strip, valid = future.result()
                if i + 1 < len(rows):
                    future = pool.submit(read_strip, rows[i + 1])
                tiles, origins = [], []
                for c in cols:
                    tile = strip[:, :, c : c + tile_size]
                    ok = valid[:, c : c + tile_size] if valid is not None else None
                    if (ok is not None and not ok.any()) or not tile.any():
                        continue  # nodata or empty fill: nothing to detect
                    tiles.append(tile)
                    origins.append(c)
                for b in range(0, len(tiles), batch_size):
                    if cancel is not None and cancel():
                        raise Cancelled("detection was cancelled; no output was written.")
                    probs = predict_tiles(model, ckpt.normalization, np.stack(tiles[b : b + batch_size]), dev)
                    for p, c in zip(probs, origins[b : b + batch_size], strict=True):
                        acc[:, c : c + tile_size] += p * weights
                        wsum[:, c : c + tile_size] += weights
                done += len(cols)
                if progress is not None:
                    progress(done, total, {"tiles_per_s": done / max(time.perf_counter() - t0, 1e-9)})
                # Rows above the next strip's origin will not be touched again: write them.
                nxt = rows[i + 1] if i + 1 < len(rows) else r + tile_size
                final = min(nxt, scene.height) - r
                if final > 0:
                    out = np.divide(acc[:final], wsum[:final], out=np.zeros_like(acc[:final]),
                                    where=wsum[:final] > 0)
                    if valid is not None:
                        out[~valid[:final]] = 0
                    q = np.rint(out[:, : scene.width] * PROB_SCALE).astype(np.uint8)
                    dst.write(q[None], window=Window(0, r, scene.width, final))
                shift = nxt - r
                acc[: tile_size - shift] = acc[shift:]
                wsum[: tile_size - shift] = wsum[shift:]
                acc[tile_size - shift :] = 0
                wsum[tile_size - shift :] = 0
        os.replace(tmp, prob_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return prob_path
