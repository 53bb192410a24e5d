"""Ground units: where a scene's CRS coordinates lie on the Earth, and how long its units are there.

Pixel sizes, buffers and areas the user sees are metres on the ground: a projection whose scale is
not 1 (Web Mercator's "metres" are 1.29x shorter on the ground at 39 N) is measured through that
scale. Transformers and projections are cached per CRS.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from pyproj import Proj, Transformer
from rasterio.crs import CRS

from model.scene import SceneInfo

RES_TOLERANCE = 0.2  # pixel sizes within this relative difference count as the same resolution


@lru_cache(maxsize=32)
def _proj(wkt: str) -> Proj:
    return Proj(CRS.from_wkt(wkt))


@lru_cache(maxsize=32)
def _to_lonlat(wkt: str) -> Transformer:
    return Transformer.from_crs(CRS.from_wkt(wkt), "EPSG:4326", always_xy=True)


def lonlat(crs: CRS, x: float, y: float) -> tuple[float, float]:
    """Longitude and latitude of a point in ``crs`` (transformers cached per CRS)."""
    lon, lat = _to_lonlat(crs.to_wkt()).transform(x, y)
    return float(lon), float(lat)


def areal_scale(crs: CRS, lon: float, lat: float) -> float | None:
    """The projection's areal scale at (lon, lat) (1 = true areas), None when pyproj cannot tell."""
    try:
        scale = float(_proj(crs.to_wkt()).get_factors(lon, lat).areal_scale)
    except Exception:  # noqa: BLE001 - pyproj raises several types for CRSs it cannot factor
        return None
    return scale if scale > 0 and math.isfinite(scale) else None


def ground_metres_per_unit(crs: CRS, lon: float, lat: float) -> float:
    """Ground metres per CRS unit at (lon, lat): the unit's length in metres divided by the
    projection's linear scale there when that is off by more than 1 % (1.29 for Web Mercator at
    39 N, whose "metres" are that much shorter on the ground). UTM (0.9996-1.001), state plane
    and Albers count as true, so their grids keep whole-metre pixel sizes."""
    factor = crs.linear_units_factor[1] if crs.linear_units_factor else 1.0
    areal = areal_scale(crs, lon, lat)
    scale = math.sqrt(areal) if areal is not None else 1.0
    if abs(scale - 1.0) <= 0.01:
        return float(factor)
    return float(factor / scale)


def scene_centre_lonlat(scene: SceneInfo) -> tuple[float, float]:
    """Longitude and latitude of the scene's centre."""
    return lonlat(scene.crs, *(scene.transform @ (scene.width / 2, scene.height / 2)))


def pixel_size_m(scene: SceneInfo) -> float | None:
    """Mean pixel side on the ground in metres at the scene's centre, or None when the CRS is
    geographic (degrees). Projection scale counts: 0.77 "m" Web Mercator pixels at 39 N are 0.6 m."""
    if scene.crs.is_geographic:
        return None
    return float((scene.res[0] + scene.res[1]) / 2 * ground_metres_per_unit(scene.crs, *scene_centre_lonlat(scene)))


def median_pixel_size_m(scenes: Sequence[SceneInfo]) -> float | None:
    """Median metric pixel size of some scenes (training imagery), None when none is metric."""
    sizes = [m for m in map(pixel_size_m, scenes) if m is not None]
    return float(np.median(sizes)) if sizes else None


def same_resolution(a_m: float, b_m: float, tolerance: float = RES_TOLERANCE) -> bool:
    """Whether two pixel sizes differ by at most ``tolerance`` of the larger."""
    return abs(a_m - b_m) <= tolerance * max(a_m, b_m)
