"""Faster CPU detection: a cheap coarse pass decides which tiles the full U-Net runs on.

The exact path (:func:`model.predict_scene.predict_scene`) runs the U-Net on every tile. The fast
path, chosen with ``DetectConfig(mode="fast")`` or ``dclabel detect --fast``:

1. asks a gate which tiles to run: the checkpoint's trained tile gate (:mod:`model.gate`, about 4 %
   of the U-Net's time per tile, distilled from it) when it has one; otherwise the same U-Net on each
   tile downsampled ``coarse_factor`` times (1/16 of the work at 4x), keeping the tile if the
   coarse probability reaches ``coarse_threshold`` somewhere in it;
2. runs the full-resolution U-Net on the kept tiles only, with batch norm folded into the
   convolutions, channels-last memory and bfloat16 autocast where the CPU supports it natively
   (AVX512-BF16/AMX; otherwise float32);
3. grows the kept set: a skipped tile runs after all when a detection in a tile that ran reaches
   their shared edge (left, right, below, or above: the strip above stays open until the next one
   is done), so skipping does not cut objects in two; an object taller than two strips whose
   only kept tile is at its bottom can still lose its top;
4. blends kept tiles exactly as the exact path does; pixels that no kept tile covers get
   probability 0 (skipped tiles contribute nothing, so they do not dilute their neighbours).

Memory streams strip by strip as in the exact path.
"""

from __future__ import annotations

import os
import time
from contextlib import closing
from dataclasses import dataclass

import numpy as np
import rasterio
import torch
from scipy import ndimage

from model.blend import StripBlender, probability_raster, read_strips
from model.checkpoint import Checkpoint
from model.errors import Cancelled
from model.inference import (
    GateKind,
    Precision,
    TileModel,
    bf16_native,
    fuse_batch_norm,
    tile_batch_size,
)
from model.scene import SceneInfo

FastModel = TileModel  # the fast path's name for it
# a detection in a tile grows into its neighbours when it has this many pixels in the tile (3.6 m2 at 0.6 m)
GROW_MIN_PX = 10
__all__ = ["FastModel", "FastStats", "bf16_native", "fuse_batch_norm", "predict_scene_fast"]


@dataclass(frozen=True)
class FastStats:
    """What the fast path did over a scene.

    Attributes:
        tiles: Tiles in the grid.
        with_data: Tiles holding data (not nodata or zero fill).
        full_res: Tiles the full-resolution U-Net ran on.
        seconds: Wall time.
        bf16: Whether bfloat16 autocast was used.
        gate: Which gate decided: ``trained``, ``coarse`` or ``off``.
        grown: Tiles the gate skipped that ran because a detection next to them reached their edge.
    """

    tiles: int
    with_data: int
    full_res: int
    seconds: float
    bf16: bool
    gate: str = "coarse"
    grown: int = 0


def predict_scene_fast(
    ckpt: Checkpoint,
    scene: SceneInfo,
    prob_path: str | os.PathLike,
    tile_size: int = 256,
    overlap: int = 32,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    coarse_factor: int = 4,
    coarse_threshold: float = 0.1,
    precision: Precision = "auto",
    progress=None,
    cancel=None,
    gate: GateKind = "auto",
    gate_threshold: float | None = None,
    grow_threshold: float | None = None,
) -> FastStats:
    """Predict a scene's probability GeoTIFF (uint8, p * 255), the U-Net run only where a gate says.

    Args:
        ckpt: Loaded checkpoint.
        scene: Scene to predict.
        prob_path: Output GeoTIFF (written under a temporary name, renamed when complete).
        tile_size: Tile side in pixels.
        overlap: Overlap between neighbouring tiles in pixels.
        batch_size: Tiles per full-resolution forward pass (None: the device's default).
        device: Torch device (default: CUDA/MPS when present, else CPU).
        coarse_factor: Downsampling of the coarse pass (1 runs every tile at full resolution).
        coarse_threshold: Coarse probability a tile must reach somewhere to run at full resolution.
        precision: ``auto``, ``fp32`` or ``bf16`` (see :class:`FastModel`).
        progress: ``progress(tiles_done, tiles_total, {"tiles_per_s", "full_res"})``.
        cancel: Returns True to stop (raises :class:`Cancelled`, nothing is left at ``prob_path``).
        gate: ``auto``, ``trained`` or ``coarse`` (see :class:`~model.inference.TileModel`).
        gate_threshold: The trained gate's threshold (None: the one stored with it).
        grow_threshold: The detection threshold: a skipped tile runs after all when pixels at or
            above it in a neighbour reach within ``overlap`` px of their shared edge (left, right,
            below, or above into the previous strip, which stays open one strip longer), so a skip
            does not cut a detection in two. None: no growing.

    Returns:
        Counts and timing of the run.
    """
    fast = TileModel(ckpt, device, precision, coarse_factor, coarse_threshold, gate, gate_threshold)
    batch_size = tile_batch_size(batch_size, fast.device)
    done, with_data, full_res, grown = 0, 0, 0, 0
    band = max(overlap, 1)
    t0 = time.perf_counter()

    def check_cancel() -> None:
        if cancel is not None and cancel():
            raise Cancelled("detection was cancelled; no output was written.")

    # closing(): on cancel or error the read-ahead thread is joined before the scene is closed
    with rasterio.open(scene.path) as src, probability_raster(scene, prob_path) as dst, \
            closing(read_strips(scene, src, tile_size, overlap)) as strips:
        grow = grow_threshold is not None
        # growing keeps the strip above open, so a detection reaching a tile's top edge can run it
        blender = StripBlender(scene, dst, tile_size, overlap, lag=1 if grow else 0)
        total = len(blender.rows) * len(blender.cols)
        forced: set[int] = set()  # tiles of the next strip that a detection in this one runs into
        prev: _Open | None = None
        for strip in strips:
            check_cancel()
            cur = _Open(strip, strip.tiles(strip.origins, tile_size) if strip.origins else None)
            with_data += len(strip.origins)
            keep = fast.gate(cur.tiles) if strip.origins else np.zeros(0, bool)
            queue = {(cur, c) for c, k in zip(strip.origins, keep, strict=True) if k or c in forced}
            grown += sum(1 for c, k in zip(strip.origins, keep, strict=True) if c in forced and not k)
            forced = set()
            while queue:
                more: set[tuple[_Open, int]] = set()
                for s in (prev, cur):
                    cols = sorted(c for x, c in queue if x is s)
                    for b in range(0, len(cols), batch_size):
                        check_cancel()
                        batch = cols[b : b + batch_size]
                        for c, p in zip(batch, fast.predict(s.tiles[[s.at[c] for c in batch]]), strict=True):
                            blender.add(c, p, s.strip.index)
                            s.ran.add(c)
                            full_res += 1
                            if grow:
                                more |= _grow(s, c, p, prev, cur, band, grow_threshold, tile_size, forced,
                                              blender.cols)
                queue = {(x, c) for x, c in more if c not in x.ran}
                grown += len(queue)
            if grow:
                if prev is not None:
                    blender.finish_strip(prev.strip.index, prev.strip.valid)
                prev = cur
            else:
                blender.finish_strip(cur.strip.index, cur.strip.valid)
            done += len(blender.cols)
            if progress is not None:
                rate = done / max(time.perf_counter() - t0, 1e-9)
                progress(done, total, {"tiles_per_s": rate, "full_res": full_res})
        if prev is not None:
            blender.finish_strip(prev.strip.index, prev.strip.valid)
    return FastStats(total, with_data, full_res, time.perf_counter() - t0, fast.bf16, fast.gate_kind, grown)


class _Open:
    """A strip being predicted: its tiles, where each column sits in them, and which have run."""

    def __init__(self, strip, tiles: np.ndarray | None) -> None:
        self.strip, self.tiles = strip, tiles
        self.at = {c: i for i, c in enumerate(strip.origins)}
        self.ran: set[int] = set()

    def overlapping(self, lo: int, hi: int, tile_size: int) -> list[int]:
        """Columns of this strip's tiles (with data) that cover any of the columns lo..hi."""
        return [c for c in self.strip.origins if c <= hi and c + tile_size > lo]


def _grow(s: _Open, c: int, prob: np.ndarray, prev: _Open | None, cur: _Open, band: int, threshold: float,
          tile_size: int, forced: set[int], next_cols: list[int]) -> set[tuple[_Open, int]]:
    """The tiles a detection in tile ``c`` of strip ``s`` runs into: its left and right neighbours,
    the tiles above it (when the strip above is still open) and below it (in ``cur`` when ``s`` is
    the strip above, else recorded in ``forced`` for the next strip)."""
    hot = prob >= threshold
    out: set[tuple[_Open, int]] = set()
    edges = np.zeros(hot.shape, bool)
    edges[:band], edges[-band:], edges[:, :band], edges[:, -band:] = True, True, True, True
    if not (hot & edges).any():
        return out
    # specks are not detections: a U-Net's padding can light a pixel or two at a tile's corners,
    # and growing from them would run every tile of the scene one after the other
    regions, n = ndimage.label(hot)
    hot = (np.bincount(regions.ravel(), minlength=n + 1) >= GROW_MIN_PX)[regions] & (regions > 0)
    i = s.at[c]
    if hot[:, :band].any() and i > 0:
        out.add((s, s.strip.origins[i - 1]))
    if hot[:, -band:].any() and i + 1 < len(s.strip.origins):
        out.add((s, s.strip.origins[i + 1]))
    for edge, rows in (("top", hot[:band]), ("bottom", hot[-band:])):
        reach = np.flatnonzero(rows.any(axis=0))
        if not reach.size:
            continue
        lo, hi = c + int(reach.min()), c + int(reach.max())
        if edge == "top" and s is cur and prev is not None:
            out.update((prev, c2) for c2 in prev.overlapping(lo, hi, tile_size))
        elif edge == "bottom" and s is prev:
            out.update((cur, c2) for c2 in cur.overlapping(lo, hi, tile_size))
        elif edge == "bottom":
            forced.update(c2 for c2 in next_cols if c2 <= hi and c2 + tile_size > lo)
    return out
