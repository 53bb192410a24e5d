"""Chips and masks on disk: the seed's ``create_masks.py`` and a scene-to-chips writer."""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import rasterio.errors
from tqdm import tqdm

from model.errors import ConfigError, LabelError, SceneError
from model.ground import ground_metres_per_unit, lonlat
from model.masks import load_footprints, rasterize_footprints
from model.scene import SceneInfo, chip_windows, read_chip, write_geotiff


def _tifs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise SceneError(f"{folder}: no such folder. Expected a folder of chip GeoTIFFs.")
    tifs = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".tif", ".tiff"))
    if not tifs:
        raise SceneError(f"{folder}: holds no .tif files.")
    return tifs


def create_masks(
    chips_dir: str | os.PathLike,
    geojson: str | os.PathLike,
    output_dir: str | os.PathLike,
    buffer: float = 0.0,
    progress: bool = True,
    layer: str | None = None,
) -> dict[str, int]:
    """Rasterize data-center footprints onto the grid of every chip in ``chips_dir``.

    Footprints may be in any CRS (reprojected per chip); classes follow
    :func:`model.masks.load_footprints` (the rules of ``labels import``); hard-negative classes
    are background; invalid polygons are repaired. A mask of the same name is written to
    ``output_dir``.

    Args:
        chips_dir: Folder of chip GeoTIFFs.
        geojson: Footprints file (any OGR vector format, any CRS).
        output_dir: Folder of the masks.
        buffer: Grow footprints by this many metres (shrink if negative).
        progress: Draw a progress bar.
        layer: Layer of a multi-layer labels file (required when several layers have geometry).

    Returns:
        ``{"chips": n, "with_positives": k}``.

    Raises:
        LabelError: The labels cannot be read (see :func:`model.masks.load_footprints`), hold no
            data-center polygon, or none overlaps any chip.
    """
    out = Path(output_dir)
    chips_dir = Path(chips_dir)
    if out.resolve() == chips_dir.resolve():
        raise ConfigError(f"--output-dir {out} is the chips folder: the masks (same file names) would "
                          "overwrite the chips. Give another folder, e.g. masks/. Nothing was written.")
    footprints = load_footprints(geojson, layer)
    other = sorted(set(footprints["class"]) - {"datacenter", "warehouse", "retail", "other"})
    if other:
        warnings.warn(f"{geojson}: class value(s) {other} are not data centers: burned as background.",
                      UserWarning, stacklevel=2)
    positives = footprints[footprints["class"] == "datacenter"]
    if positives.empty:
        raise LabelError(f"{geojson}: holds no data-center polygons (class 'datacenter' or label true).")
    out.parent.mkdir(parents=True, exist_ok=True)
    counts = {"chips": 0, "with_positives": 0}
    by_crs: dict[str, gpd.GeoDataFrame] = {}
    # masks go to a scratch folder beside the output and move in only when all are done and some
    # hold a data center: a failed run leaves no masks behind
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent))
    try:
        for chip in tqdm(_tifs(chips_dir), desc="masks", unit="chip", disable=not progress):
            try:
                src = rasterio.open(chip)
            except rasterio.errors.RasterioIOError as exc:
                raise SceneError(f"{chip}: not a raster GDAL can read ({exc}); the chips folder should hold "
                                 "only GeoTIFF chips: move this file out. No masks were written.") from exc
            with src:
                if src.crs is None:
                    raise SceneError(f"{chip}: the chip has no CRS, so labels cannot be placed on it.")
                key = src.crs.to_string()
                if key not in by_crs:
                    by_crs[key] = positives.to_crs(src.crs)
                local = by_crs[key]
                query = _bbox(src.bounds)
                if buffer:  # footprints just outside the chip reach into it when grown by the buffer
                    centre = lonlat(src.crs, *src.xy(src.height // 2, src.width // 2))
                    query = query.buffer(2 * abs(buffer) / ground_metres_per_unit(src.crs, *centre))
                hits = local.iloc[local.sindex.query(query)] if len(local) else local
                mask = rasterize_footprints(hits.geometry.values, None, src.crs, src.transform,
                                            (src.height, src.width), buffer)
                write_geotiff(staging / chip.name, mask, src.crs, src.transform)
            counts["chips"] += 1
            counts["with_positives"] += int(mask.any())
        if counts["with_positives"] == 0:
            fix = (f"the negative --buffer {buffer:g} m may have shrunk the footprints away: try a smaller one, or "
                   if buffer < 0 else "")
            raise LabelError(
                f"{geojson}: no data-center polygon overlaps any of the {counts['chips']} chips in {chips_dir}; "
                f"{fix}check that labels and chips cover the same place (no masks were written)."
            )
        out.mkdir(parents=True, exist_ok=True)
        names = set()
        for done in staging.iterdir():
            names.add(done.name)
            os.replace(done, out / done.name)
        stale = sorted(f.name for f in _tifs(out) if f.name not in names)
        if stale:  # train ignores them, but a user reading the folder would not know
            warnings.warn(f"{out}: {len(stale)} mask(s) have no chip in {chips_dir} (from an earlier run?), e.g. "
                          f"{stale[0]}; they were left as they are.", UserWarning, stacklevel=2)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return counts


def _bbox(bounds):
    from shapely.geometry import box

    return box(*bounds)


def write_chips(
    scene: SceneInfo,
    footprints: gpd.GeoDataFrame,
    out_dir: str | os.PathLike,
    size: int = 256,
    only_labeled: bool = False,
    buffer: float = 0.0,
) -> list[Path]:
    """Cut a scene and its footprints into ``size`` chips: ``out_dir/chips`` and ``out_dir/masks``.

    Args:
        scene: The scene.
        footprints: Polygons (any CRS) with a ``class`` column; ``datacenter`` is positive.
        out_dir: Output folder.
        size: Chip side in pixels.
        only_labeled: Write only chips that touch a footprint of any class.
        buffer: Grow positives by this many metres.

    Returns:
        Paths of the chips written.
    """
    out = Path(out_dir)
    local = footprints.to_crs(scene.crs)
    pos = local[local["class"] == "datacenter"]
    written = []
    with rasterio.open(scene.path) as src:
        for win in chip_windows(scene.width, scene.height, size):
            chip = read_chip(scene, win, src)
            bounds = rasterio.windows.bounds(win, scene.transform)
            touching = local.sindex.query(_bbox(bounds))
            if only_labeled and len(touching) == 0:
                continue
            hits = pos.iloc[pos.sindex.query(_bbox(bounds))]
            mask = rasterize_footprints(hits.geometry.values, None, scene.crs, chip.transform,
                                        (size, size), buffer)
            name = f"{scene.scene_id}_r{int(win.row_off)}_c{int(win.col_off)}.tif"
            write_geotiff(out / "chips" / name, chip.image, scene.crs, chip.transform)
            write_geotiff(out / "masks" / name, mask.astype(np.uint8), scene.crs, chip.transform)
            written.append(out / "chips" / name)
    return written
