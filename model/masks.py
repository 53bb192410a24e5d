"""Footprint polygons to masks on any pixel grid (the seed's ``create_masks.py``)."""

from __future__ import annotations

import os
import warnings
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
from model.scene import ground_metres_per_unit, lonlat

CLASS_ALIASES = {"datacemter": "datacenter", "data_center": "datacenter", "data center": "datacenter",
                 "data-center": "datacenter"}
_TRUE = {"true", "1", "1.0", "yes", "t", "y"}
_FALSE = {"false", "0", "0.0", "no", "f", "n"}


def footprint_classes(gdf, path: str | os.PathLike) -> tuple[list[str | None], int]:
    """One normalised class per row, by the rules ``labels import`` and ``create-masks`` share.

    ``class`` when the row has one (lower case, ``datacemter``/``data center``/``data-center`` read as
    ``datacenter``); else a boolean ``label`` (true/false, 1/0, yes/no: ``datacenter`` or ``other``);
    else None (the caller decides; both commands take such rows as data centers).

    Returns:
        The classes and the number of rows that had neither.

    Raises:
        LabelError: A ``label`` value that is not a boolean (e.g. null in a row without a class).
    """
    has_class, has_label = "class" in gdf.columns, "label" in gdf.columns
    out: list[str | None] = []
    bad: list[str] = []
    missing = 0
    for i in range(len(gdf)):
        cls = gdf["class"].iloc[i] if has_class else None
        if isinstance(cls, str) and cls.strip():
            key = cls.strip().lower()
            out.append(CLASS_ALIASES.get(key, key))
            continue
        if has_label:
            value = gdf["label"].iloc[i]
            text = str(value).strip().lower()
            if text in _TRUE:
                out.append("datacenter")
                continue
            if text in _FALSE:
                out.append("other")
                continue
            bad.append(repr(value))
            out.append(None)
            continue
        missing += 1
        out.append(None)
    if bad:
        shown = sorted(set(bad))[:5]
        raise LabelError(f"{path}: {len(bad)} polygon(s) have neither a 'class' nor a true/false 'label' "
                         f"(label values {', '.join(shown)}); give each a class (datacenter, warehouse, retail, "
                         "other) or label true/false, or drop them, and run again.")
    return out, missing


def load_footprints(path: str | os.PathLike) -> gpd.GeoDataFrame:
    """Read footprint polygons (any CRS, any OGR format) with a normalised ``class`` column.

    Classes by :func:`footprint_classes` (rows with neither a class nor a label are data centers);
    classes other than ``datacenter`` are kept as hard negatives. Invalid polygons are repaired
    with ``make_valid`` and non-polygonal parts dropped.

    Raises:
        LabelError: Unreadable file, no CRS, or no polygons.
    """
    path = Path(path)
    if not path.exists():
        raise LabelError(f"{path}: no such labels file. Expected GeoJSON/GeoPackage footprints.")
    try:
        gdf = gpd.read_file(path)
    except Exception as exc:
        raise LabelError(f"{path}: cannot read it as vector data ({exc}).") from exc
    if gdf.crs is None:
        raise LabelError(f"{path}: the labels have no CRS; save them with one (GeoJSON is EPSG:4326).")
    gdf = gdf[gdf.geometry.notna()].copy()
    classes, missing = footprint_classes(gdf, path)
    if missing and ("class" in gdf.columns or "label" in gdf.columns):
        warnings.warn(f"{path}: {missing} polygon(s) without a class or label are taken as data centers.",
                      UserWarning, stacklevel=2)
    gdf["class"] = [c or "datacenter" for c in classes]
    gdf["geometry"] = polygonal(gdf.geometry.values)
    gdf = gdf[~gdf.geometry.is_empty]
    if gdf.empty:
        raise LabelError(f"{path}: holds no polygons. Expected data-center footprint polygons.")
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
