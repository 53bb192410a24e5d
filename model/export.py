"""Detection outputs: GeoJSON (EPSG:4326, RFC 7946), GeoPackage (scene CRS), CSV, mask GeoTIFF.

Every file is written under a temporary name in its folder and renamed when complete.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Protocol

import geopandas as gpd
import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import MaskFlags, Resampling
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from model.atomic import all_or_none, atomic_path, check_features, check_raster
from model.errors import ConfigError
from model.ground import areal_scale, lonlat
from model.scene import SceneInfo, valid_pixels
from model.tiling import PROB_SCALE
from model.vectorize import valid_at_precision

COLUMNS = ["id", "area_m2", "centroid_lat", "centroid_lon", "mean_confidence", "model_version"]


def detection_table(gdf: gpd.GeoDataFrame, model_version: str, scene_id: str | None = None) -> gpd.GeoDataFrame:
    """Add ``id``, ``area_m2``, ``centroid_lat``, ``centroid_lon`` and ``model_version`` to detections.

    Areas are computed in the scene CRS when it is projected with areas true to within 1 % where
    the detections are (UTM, state plane, Albers), otherwise in the local UTM zone (geographic
    CRSs; Web Mercator, whose areas at 39 N are 1.66x the ground's); centroids are taken in that
    metric CRS and then converted to lon/lat.
    """
    out = gdf.copy()
    metric = out if _areas_true(out) else out.to_crs(out.estimate_utm_crs())
    centroids = metric.geometry.centroid.to_crs("EPSG:4326") if len(out) else gpd.GeoSeries([], crs="EPSG:4326")
    unit = metric.crs.axis_info[0].unit_conversion_factor if len(out) else 1.0
    out.insert(0, "id", np.arange(1, len(out) + 1))
    out["area_m2"] = (metric.geometry.area * unit * unit).round(1).to_numpy()
    out["centroid_lat"] = centroids.y.round(7).to_numpy()
    out["centroid_lon"] = centroids.x.round(7).to_numpy()
    if "mean_confidence" not in out:
        out["mean_confidence"] = np.nan
    out["mean_confidence"] = out["mean_confidence"].astype(float).round(4)
    out["model_version"] = model_version
    if scene_id is not None:
        out["scene_id"] = scene_id
    cols = COLUMNS + (["scene_id"] if scene_id is not None else [])
    return out[cols + ["geometry"]]


#: File name endings each output format is written with (the first is the usual one).
SUFFIXES = {"geojson": (".geojson", ".json"), "gpkg": (".gpkg",), "csv": (".csv", ".txt"),
            "mask": (".tif", ".tiff"), "prob": (".tif", ".tiff")}
#: What each format is, for messages.
FORMAT_NAMES = {"geojson": "GeoJSON", "gpkg": "GeoPackage", "csv": "CSV", "mask": "GeoTIFF", "prob": "GeoTIFF"}
#: Decimal places of coordinates in the GeoJSON (RFC 7946's 7: about 1 cm); polygons are made
#: valid at this precision, since the writer rounds to it.
GEOJSON_DECIMALS = 7


def check_suffixes(outputs: Mapping[str, tuple[str | os.PathLike | None, str]]) -> None:
    """Refuse, before any work, an output whose name ends in another format's extension.

    Each format is written whatever the name says, so ``--output-gpkg dets.geojson`` would leave
    a GeoPackage that every tool opens as broken GeoJSON.

    Args:
        outputs: ``{"--output-gpkg": (path or None, "gpkg"), ...}``; formats are keys of :data:`SUFFIXES`.

    Raises:
        ConfigError: A path's extension (case aside) is not one of its format's.
    """
    for flag, (path, fmt) in outputs.items():
        if path is None:
            continue
        path = Path(path)
        allowed = SUFFIXES[fmt]
        if path.suffix.lower() not in allowed:
            found = f"'{path.suffix}'" if path.suffix else "no extension"
            other = next((FORMAT_NAMES[f] for f, ends in SUFFIXES.items() if path.suffix.lower() in ends), None)
            said = f" (a {other} name)" if other else ""
            raise ConfigError(f"{flag} {path}: expected a name ending in {' or '.join(allowed)}, found {found}{said}; "
                              f"{flag} always writes {FORMAT_NAMES[fmt]}, so give it a {allowed[0]} name, e.g. "
                              f"{path.with_suffix(allowed[0]) if path.suffix else path.with_name(path.name + allowed[0])}"
                              ". Nothing was written.")


def _atomic(path: str | os.PathLike, write, check=None) -> Path:
    with atomic_path(path, check=check) as tmp:
        write(str(tmp))
    return Path(path)


def _areas_true(gdf: gpd.GeoDataFrame, tolerance: float = 0.01) -> bool:
    """Whether the frame's CRS measures areas within ``tolerance`` of the ground where it lies."""
    if not len(gdf):
        return True  # nothing to measure
    if gdf.crs is None or not gdf.crs.is_projected:
        return False
    x0, y0, x1, y1 = gdf.total_bounds
    areal = areal_scale(gdf.crs, *lonlat(gdf.crs, (x0 + x1) / 2, (y0 + y1) / 2))
    return areal is None or abs(areal - 1.0) <= tolerance


def write_detections(
    table: gpd.GeoDataFrame,
    geojson: str | os.PathLike | None = None,
    gpkg: str | os.PathLike | None = None,
    csv: str | os.PathLike | None = None,
    layer: str = "detections",
) -> list[Path]:
    """Write a :func:`detection_table` to the requested formats; returns the paths written.

    All or none: if one format fails, the others written by this call are removed. Polygons are
    valid as written: in EPSG:4326 at the GeoJSON's 7 decimals, in the table's CRS in the
    GeoPackage (:func:`model.vectorize.valid_at_precision`).

    Raises:
        OutputError: A file could not be written completely (e.g. the disk is full).
    """
    with all_or_none() as written:
        if geojson is not None:
            wgs = table.to_crs("EPSG:4326")
            wgs = wgs.set_geometry(valid_at_precision(wgs.geometry, 10.0 ** -GEOJSON_DECIMALS), crs=wgs.crs)
            name = Path(geojson).stem
            written.append(_atomic(geojson, lambda p: wgs.to_file(
                p, driver="GeoJSON", engine="pyogrio", layer=name,
                layer_options={"RFC7946": "YES", "COORDINATE_PRECISION": str(GEOJSON_DECIMALS)}),
                check=lambda p: check_features(p, len(wgs))))
        if gpkg is not None:
            valid = table.set_geometry(valid_at_precision(table.geometry), crs=table.crs)
            written.append(_atomic(gpkg, lambda p: valid.to_file(p, driver="GPKG", layer=layer, engine="pyogrio"),
                                   check=lambda p: check_features(p, len(valid), layer)))
        if csv is not None:
            frame = table.drop(columns="geometry")
            written.append(_atomic(csv, lambda p: frame.to_csv(p, index=False)))
    return written


def write_mask(prob_path: str | os.PathLike, mask_path: str | os.PathLike, threshold: float = 0.5,
               block_rows: int = 2048, grid: Grid | None = None, source: str | os.PathLike | None = None,
               valid: SceneInfo | None = None) -> Path:
    """Threshold a probability GeoTIFF into a 0/1 uint8 mask GeoTIFF, block by block.

    ``grid`` (anything with ``crs``, ``transform``, ``width``, ``height``, e.g. a SceneInfo): write
    the mask on that grid instead, the probabilities resampled bilinearly onto it before the
    threshold (detection on a resampled scene gives its mask on the scene's own pixels).
    ``source``: the probability GeoTIFF the user keeps, named in the ``source`` tag (no tag when
    the probabilities were a temporary file). ``valid``: the scene (on the output's grid); where
    its bands read (``valid.bands``, as detection read them) have no data the mask stays 0 and its
    GDAL mask band says "no data" (see :func:`_write_blocks`).
    """
    cut = max(int(np.ceil(threshold * PROB_SCALE - 1e-9)), 1)
    return _write_blocks(prob_path, mask_path, lambda p: (p >= cut).astype(np.uint8), {"nodata": None},
                         {"threshold": str(threshold)}, block_rows, grid, source, valid)


def write_probability(prob_path: str | os.PathLike, out_path: str | os.PathLike, grid: Grid | None = None,
                      block_rows: int = 2048, valid: SceneInfo | None = None) -> Path:
    """Copy a probability GeoTIFF (uint8, p * 255), resampled bilinearly onto ``grid`` when given;
    ``valid`` as in :func:`write_mask`."""
    return _write_blocks(prob_path, out_path, lambda p: p, {"nodata": None}, {}, block_rows, grid, None, valid)


def scene_has_nodata(path: str | os.PathLike) -> bool:
    """Whether a scene marks some pixels as no data (a nodata value, an alpha or a mask band)."""
    with rasterio.open(path) as src:
        return any(MaskFlags.all_valid not in f for f in src.mask_flag_enums)


class Grid(Protocol):
    crs: CRS
    transform: Affine
    width: int
    height: int


def _write_blocks(prob_path, out_path, fn, profile_extra: dict, tags: dict, block_rows: int,
                  grid: Grid | None, source: str | os.PathLike | None = None,
                  valid: SceneInfo | None = None) -> Path:
    """Write ``fn`` of the probabilities block by block (atomically).

    Where the scene ``valid`` has no data (every band detection read, ``valid.bands``, is no data
    there, as the probabilities are zeroed there; a band not read plays no part), the output gets a
    GDAL mask band (an internal per-dataset mask, 0 = no data) rather than a
    nodata value: every uint8 value is taken (probabilities use 0..255, and a 0/1 mask with a
    nodata value of, say, 255 would no longer be a 0/1 mask), so the pixel values stay 0 there
    and readers that honour GDAL masks (QGIS, ``rasterio``'s ``masked=True``) show no data.
    """
    def write(tmp: str) -> None:
        with rasterio.open(prob_path) as prob, _on_grid(prob, grid) as src, \
                (rasterio.open(valid.path) if valid is not None else nullcontext()) as scene:
            masked = scene is not None and any(MaskFlags.all_valid not in f for f in scene.mask_flag_enums)
            if masked and (scene.width, scene.height) != (src.width, src.height):
                raise ValueError(f"{valid.path} is not on the grid of {out_path}")
            profile = prob.profile | {"dtype": "uint8", "compress": "deflate", "crs": src.crs,
                                      "transform": src.transform, "width": src.width, "height": src.height,
                                      **profile_extra}
            with rasterio.open(tmp, "w", **profile) as dst:
                for r in range(0, src.height, block_rows):
                    win = Window(0, r, src.width, min(block_rows, src.height - r))
                    dst.write(fn(src.read(1, window=win))[None], window=win)
                    if masked:
                        dst.write_mask(valid_pixels(scene, win, valid.bands).astype(np.uint8) * 255, window=win)
                dst.update_tags(**tags, **({"source": str(source)} if source is not None else {}))

    return _atomic(out_path, write, check=check_raster)


def _on_grid(src: rasterio.DatasetReader, grid: Grid | None):
    """``src`` itself when it is already on ``grid``, else a bilinear WarpedVRT onto it."""
    if grid is None or (src.crs == grid.crs and src.transform == grid.transform
                        and (src.width, src.height) == (grid.width, grid.height)):
        return nullcontext(src)
    return WarpedVRT(src, crs=grid.crs, transform=grid.transform, width=grid.width, height=grid.height,
                     resampling=Resampling.bilinear)
