"""Strip-by-strip blending of tile probabilities into a probability GeoTIFF.

The arithmetic is the one of :func:`model.predict_scene.predict_scene` (same weights, same
float32 accumulation order: tiles of a strip left to right, strips top to bottom), so a scene
blended here from the same tile probabilities gives the same bytes. Used by the fast path
(:mod:`model.fastpath`) and by rank 0 of distributed detection (:mod:`model.distributed`), whose
tiles come from other processes. Memory depends on the scene's width, not its area.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import rasterio
from rasterio.windows import Window

from model.atomic import atomic_path, check_raster
from model.scene import READ_ERRORS, SceneInfo, alpha_bands, read_window, unreadable, valid_pixels
from model.tiling import PROB_SCALE, blend_weights, tile_starts


def tile_grid(scene: SceneInfo, tile_size: int, overlap: int) -> tuple[list[int], list[int]]:
    """Row and column origins of the tiles :func:`predict_scene` uses for a scene."""
    if not 0 <= overlap < tile_size:
        raise ValueError(f"overlap must be in 0..{tile_size - 1}, got {overlap}")
    stride = tile_size - overlap
    return tile_starts(scene.height, tile_size, stride), tile_starts(scene.width, tile_size, stride)


def strip_width(scene: SceneInfo, tile_size: int) -> int:
    """Columns of a strip buffer (at least one tile, read past the edge with zero fill)."""
    return max(scene.width, tile_size)


def has_mask(src: rasterio.DatasetReader) -> bool:
    """True when the raster has nodata or an alpha/mask band (some pixels may be invalid)."""
    return any(rasterio.enums.MaskFlags.all_valid not in f for f in src.mask_flag_enums) or bool(alpha_bands(src))


def read_strip_valid(src: rasterio.DatasetReader, row: int, width: int, tile_size: int,
                     bands: Sequence[int] = (1, 2, 3, 4)) -> np.ndarray:
    """Valid-data mask (tile_size, width) of a strip, as :func:`predict_scene` reads it."""
    return valid_pixels(src, Window(0, row, width, tile_size), bands)


def keep_tile(tile: np.ndarray, valid: np.ndarray | None) -> bool:
    """The tile holds data worth predicting (not all nodata, not all zero fill)."""
    return not ((valid is not None and not valid.any()) or not tile.any())


@dataclass
class Strip:
    """One strip of tiles as read for prediction.

    Attributes:
        index: Strip number (0 at the top).
        image: uint8 (bands, tile_size, strip width) pixels, zero past the scene edge.
        valid: Valid-data mask (tile_size, strip width), or None when every pixel is valid.
        origins: Columns of the tiles in the strip that hold data (see :func:`keep_tile`).
    """

    index: int
    image: np.ndarray
    valid: np.ndarray | None
    origins: list[int]

    def tiles(self, cols: list[int], tile_size: int) -> np.ndarray:
        """Stack of the tiles at ``cols`` (N, bands, tile_size, tile_size)."""
        return np.stack([self.image[:, :, c : c + tile_size] for c in cols])


def read_strips(scene: SceneInfo, src: rasterio.DatasetReader, tile_size: int, overlap: int) -> Iterator[Strip]:
    """The scene's strips top to bottom; the next strip is read in a background thread while the
    caller works on the current one (reading overlaps the model's forward passes)."""
    rows, cols = tile_grid(scene, tile_size, overlap)
    width = strip_width(scene, tile_size)
    masked = has_mask(src)

    def read(i: int) -> Strip:
        r = rows[i]
        img = read_window(scene, Window(0, r, width, tile_size), src)
        try:
            valid = read_strip_valid(src, r, width, tile_size, scene.bands) if masked else None
        except READ_ERRORS as exc:
            raise unreadable(scene, Window(0, r, width, tile_size), exc) from exc
        origins = [c for c in cols if keep_tile(img[:, :, c : c + tile_size],
                                                valid[:, c : c + tile_size] if valid is not None else None)]
        return Strip(i, img, valid, origins)

    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(read, 0)
        for i in range(len(rows)):
            strip = future.result()
            if i + 1 < len(rows):
                future = pool.submit(read, i + 1)
            yield strip


class StripBlender:
    """Accumulates weighted tile probabilities of the open strips and writes rows that are final.

    With ``lag`` 0 one strip is open at a time: tiles are added to it, then :meth:`finish_strip`
    writes its final rows. With ``lag`` 1 (the fast path's growing) the previous strip stays open
    while the next one is processed, so tiles can still be added above it; strips are finished in
    order, each after the next one is done. Blending sums are order-free: the result is the same.

    Args:
        scene: The scene being predicted.
        dst: Open uint8 GeoTIFF on the scene grid to write into.
        tile_size: Tile side in pixels.
        overlap: Tile overlap in pixels.
        lag: Strips kept open behind the newest one (0 or 1).
    """

    def __init__(self, scene: SceneInfo, dst: rasterio.io.DatasetWriter, tile_size: int, overlap: int,
                 lag: int = 0) -> None:
        if lag not in (0, 1):
            raise ValueError(f"lag must be 0 or 1, got {lag}")
        self.scene, self.dst, self.tile_size = scene, dst, tile_size
        self.rows, self.cols = tile_grid(scene, tile_size, overlap)
        width = strip_width(scene, tile_size)
        self.weights = blend_weights(tile_size, overlap)
        height = tile_size + lag * (tile_size - overlap)  # one stride more per strip held open
        self.acc = np.zeros((height, width), np.float32)
        self.wsum = np.zeros((height, width), np.float32)
        self.first = 0  # the oldest strip not yet finished: row 0 of the buffers is its top

    def add(self, col: int, prob: np.ndarray, strip: int | None = None) -> None:
        """Add one tile's probability (tile_size, tile_size) at column ``col`` of ``strip`` (an open
        strip; default the oldest one)."""
        t = self.tile_size
        r = 0 if strip is None else self.rows[strip] - self.rows[self.first]
        if not 0 <= r <= self.acc.shape[0] - t:
            raise ValueError(f"strip {strip} is not open (open from strip {self.first})")
        self.acc[r : r + t, col : col + t] += prob * self.weights
        self.wsum[r : r + t, col : col + t] += self.weights

    def finish_strip(self, i: int, valid: np.ndarray | None) -> None:
        """Write the rows of strip ``i`` (the oldest open one) that no later strip touches, then shift."""
        if i != self.first:
            raise ValueError(f"strips are finished in order: expected strip {self.first}, got {i}")
        t, r = self.tile_size, self.rows[i]
        nxt = self.rows[i + 1] if i + 1 < len(self.rows) else r + t
        final = min(nxt, self.scene.height) - r
        acc, wsum = self.acc, self.wsum
        if final > 0:
            out = np.divide(acc[:final], wsum[:final], out=np.zeros_like(acc[:final]), where=wsum[:final] > 0)
            if valid is not None:
                out[~valid[:final]] = 0
            q = np.rint(out[:, : self.scene.width] * PROB_SCALE).astype(np.uint8)
            self.dst.write(q[None], window=Window(0, r, self.scene.width, final))
        shift = min(nxt - r, acc.shape[0])
        acc[: acc.shape[0] - shift] = acc[shift:]
        wsum[: wsum.shape[0] - shift] = wsum[shift:]
        acc[acc.shape[0] - shift :] = 0
        wsum[wsum.shape[0] - shift :] = 0
        self.first = i + 1


@contextmanager
def probability_raster(scene: SceneInfo, prob_path: str | os.PathLike) -> Iterator[rasterio.io.DatasetWriter]:
    """Open a tiled uint8 probability GeoTIFF on the scene grid under a temporary name.

    The file is renamed to ``prob_path`` when the block exits normally and removed otherwise
    (a cancelled or failed run leaves nothing at ``prob_path``).
    """
    profile = {
        "driver": "GTiff", "width": scene.width, "height": scene.height, "count": 1, "dtype": "uint8",
        "crs": scene.crs, "transform": scene.transform, "compress": "deflate", "tiled": True,
        "blockxsize": 256, "blockysize": 256, "BIGTIFF": "IF_SAFER",
    }
    # check_raster: a full disk leaves a file GDAL closed without an error (atomic_path then
    # raises OutputError, nothing is left at prob_path)
    with atomic_path(prob_path, check=check_raster) as tmp, rasterio.open(tmp, "w", **profile) as dst:
        yield dst
