"""Footprint polygons to masks on any pixel grid (the seed's ``create_masks.py``)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.features import rasterize
from shapely.geometry.base import BaseGeometry

from model.errors import LabelError
from model.footprints import (
    CLASS_ALIASES,
    footprint_classes,
    read_vector_layer,
    resolve_classes,
    with_lonlat_default,
)
from model.ground import ground_metres_per_unit, lonlat

__all__ = ["CLASS_ALIASES", "buffer_ground", "footprint_classes", "load_footprints", "polygonal", "rasterize_footprints"]


def load_footprints(path: str | os.PathLike, layer: str | None = None) -> gpd.GeoDataFrame:
    """Read footprint polygons (any CRS, any OGR format) with a normalised ``class`` column.

    Classes by :func:`model.footprints.resolve_classes` (the rules ``labels import`` uses too; rows
    with neither a class nor a label are data centers, with a warning); classes other than
    ``datacenter`` are kept as hard negatives. Invalid polygons are repaired with ``make_valid`` and
    non-polygonal parts dropped. A file without a CRS is read as lon/lat.

    Args:
        path: Vector file.
        layer: Layer of a multi-layer file (required when several layers have geometry).

    Raises:
        LabelError: Missing or unreadable file, several layers and none chosen, coordinates that
            are not lon/lat in a file without a CRS, numeric class codes, or no polygons.
    """
    path = Path(path)
    gdf = read_vector_layer(path, layer)
    if not isinstance(gdf, gpd.GeoDataFrame) or gdf.geometry.name not in gdf.columns:
        raise LabelError(f"{path}: a table without geometry (columns {', '.join(map(str, gdf.columns))}). "
                         "Expected footprint polygons, e.g. a GeoJSON or GeoPackage.")
    gdf = gdf[gdf.geometry.notna() & ~gdf.geometry.is_empty].copy()
    gdf = with_lonlat_default(gdf, path)
    gdf["geometry"] = polygonal(gdf.geometry.values)
    gdf = gdf[~gdf.geometry.is_empty].copy()
    if gdf.empty:
        raise LabelError(f"{path}: holds no polygons. Expected data-center footprint polygons.")
    gdf["class"] = resolve_classes(gdf, path)
    return gdf


def polygonal(geoms: Iterable[BaseGeometry]) -> np.ndarray:
    """Repair geometries with ``make_valid`` and keep only their polygonal parts."""
    out = []
    for g in shapely.make_valid(np.asarray(list(geoms), dtype=object)):
        if g is None or g.is_empty:
            out.append(shapely.Polygon())
        elif g.geom_type in ("Polygon", "MultiPolygon"):
            out.append(g)
        else:
            parts = [p for p in getattr(g, "geoms", [g]) if p.geom_type in ("Polygon", "MultiPolygon")]
            out.append(shapely.union_all(parts) if parts else shapely.Polygon())
    return np.asarray(out, dtype=object)


def rasterize_footprints(
    geoms: Iterable[BaseGeometry],
    crs_of_geoms: CRS | str | None,
    out_crs: CRS | str,
    transform: Affine,
    shape: tuple[int, int],
    buffer_m: float = 0.0,
) -> np.ndarray:
    """Burn polygons onto a pixel grid as a uint8 mask (1 inside, 0 outside).

    Args:
        geoms: Polygons (invalid ones are repaired).
        crs_of_geoms: CRS of ``geoms``; None means already in ``out_crs``.
        out_crs: CRS of the grid.
        transform: Affine transform of the grid.
        shape: (height, width) of the grid.
        buffer_m: Grow (or shrink, if negative) polygons by this many metres first.

    Returns:
        uint8 mask of ``shape``.
    """
    geoms = polygonal(geoms)
    if crs_of_geoms is not None and CRS.from_user_input(crs_of_geoms) != CRS.from_user_input(out_crs):
        geoms = gpd.GeoSeries(geoms, crs=crs_of_geoms).to_crs(out_crs).values
    if buffer_m:
        geoms = buffer_ground(geoms, out_crs, buffer_m)
    geoms = [g for g in geoms if g is not None and not g.is_empty]
    if not geoms:
        return np.zeros(shape, np.uint8)
    return rasterize(((g, 1) for g in geoms), out_shape=shape, transform=transform, fill=0, dtype="uint8")


def buffer_ground(geoms, crs: CRS | str, buffer_m: float) -> np.ndarray:
    """Grow (shrink if negative) polygons in ``crs`` by ``buffer_m`` metres on the ground.

    A projected CRS whose lengths are true where the polygons lie (UTM, state plane) buffers in
    its own units (feet converted); degrees and distorting projections (Web Mercator's "metres"
    are 0.78 of the ground's at 39 N) buffer in the local UTM zone and come back.
    """
    crs = CRS.from_user_input(crs)
    arr = np.asarray(list(geoms), dtype=object)
    present = [g for g in arr if g is not None and not g.is_empty]
    if not present:
        return arr
    if crs.is_projected:
        x0, y0, x1, y1 = shapely.total_bounds(np.asarray(present, dtype=object))
        factor = crs.linear_units_factor[1] if crs.linear_units_factor else 1.0
        if ground_metres_per_unit(crs, *lonlat(crs, (x0 + x1) / 2, (y0 + y1) / 2)) == factor:  # true lengths
            return shapely.buffer(arr, buffer_m / factor)
    series = gpd.GeoSeries(arr, crs=crs)
    local = series[~(series.isna() | series.is_empty)].estimate_utm_crs()
    return series.to_crs(local).buffer(buffer_m).to_crs(crs).values
