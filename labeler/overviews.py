"""Overview cache for scenes that have no overviews (GUI-free; runs in a worker thread).

Zooming out on a 12,000 x 12,000 GeoTIFF without overviews makes GDAL decode every block of
the file for each view. QGIS asks to "build pyramids"; dclabel builds them once, in the
background, into the project's ``cache/`` folder (the user's scene file is never modified):
one GeoTIFF per decimation factor (4, 8, 16, ...) holding the 4 bands block-averaged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.windows import Window

from model.errors import Cancelled
from model.scene import SceneInfo, to_uint8, write_geotiff

#: The cache starts at this decimation factor; finer levels read the scene itself (cheap enough).
FIRST_FACTOR = 4
#: Rows of the scene read per step (a multiple of every factor).
STRIP_ROWS = 1024


def has_overviews(scene: SceneInfo) -> bool:
    """True when GDAL already has overviews for the scene (internal or ``.ovr``)."""
    with rasterio.open(scene.path) as src:
        return bool(src.overviews(scene.bands[0]))


def cache_factors(factors: list[int]) -> list[int]:
    """The pyramid factors the cache holds (those >= :data:`FIRST_FACTOR`)."""
    return [f for f in factors if f >= FIRST_FACTOR]


def cache_paths(cache_dir: Path, scene: SceneInfo, factors: list[int]) -> dict[int, Path]:
    """Files of the cached levels of a scene."""
    return {f: Path(cache_dir) / f"{scene.scene_id}-x{f}.tif" for f in cache_factors(factors)}


def cached_levels(cache_dir: Path, scene: SceneInfo, factors: list[int]) -> dict[int, Path] | None:
    """The cached levels when all exist with the expected size, else None."""
    paths = cache_paths(cache_dir, scene, factors)
    if not paths:
        return None
    for f, p in paths.items():
        if not p.exists():
            return None
        with rasterio.open(p) as src:
            if (src.height, src.width, src.count) != (math.ceil(scene.height / f), math.ceil(scene.width / f), 4):
                return None
    return paths


def _block_mean(arr: np.ndarray, f: int) -> np.ndarray:
    """(C, H, W) -> (C, ceil(H/f), ceil(W/f)) mean over f x f blocks (edges padded by repetition)."""
    c, h, w = arr.shape
    ph, pw = (-h) % f, (-w) % f
    if ph or pw:
        arr = np.pad(arr, ((0, 0), (0, ph), (0, pw)), mode="edge")
    blocks = arr.reshape(c, arr.shape[1] // f, f, arr.shape[2] // f, f)
    return blocks.mean(axis=(2, 4), dtype=np.float32).round().astype(np.uint8)


def build_overview_cache(
    scene: SceneInfo,
    cache_dir: Path,
    factors: list[int],
    progress: Callable[[int, int, dict], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> dict[int, Path]:
    """Read the scene once in strips and write its decimated levels to ``cache_dir``.

    Args:
        scene: The scene.
        cache_dir: Folder for the level files (created).
        factors: The display pyramid's factors; those >= 4 are cached.
        progress: ``progress(rows_done, rows_total, {"step": ...})``.
        cancel: Returns True to stop; raises :class:`Cancelled`, nothing is written.

    Returns:
        Factor -> file of each cached level.
    """
    paths = cache_paths(cache_dir, scene, factors)
    if not paths:
        return {}
    first = min(paths)
    level = np.zeros((4, math.ceil(scene.height / first), math.ceil(scene.width / first)), np.uint8)
    strip = max(first, STRIP_ROWS - STRIP_ROWS % first)
    with rasterio.open(scene.path) as src:
        for r0 in range(0, scene.height, strip):
            if cancel is not None and cancel():
                raise Cancelled(f"overview cache of {scene.path} cancelled; nothing written.")
            rows = min(strip, scene.height - r0)
            arr = src.read(list(scene.bands), window=Window(0, r0, scene.width, rows))
            arr = to_uint8(arr, scene)
            level[:, r0 // first : r0 // first + math.ceil(rows / first)] = _block_mean(arr, first)
            if progress is not None:
                progress(r0 + rows, scene.height, {"step": "building overviews"})
    out: dict[int, Path] = {}
    for f in sorted(paths):
        if f != first:
            level = _block_mean(level, 2)
        transform = scene.transform @ Affine.scale(f, f)
        out[f] = write_geotiff(paths[f], level, scene.crs, transform)
    return out
