"""Scenes seen through GDAL VRTs: resampled to another pixel size, warped to UTM, or turned north-up.

Nothing is copied: each VRT is a small file that refers to the scene's own file, and GDAL resamples
or warps while reading. The result is opened like any scene (:func:`model.scene.open_scene`), with
the scene's band selection.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import rasterio
import rasterio.enums
import rasterio.errors
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS

from model.atomic import atomic_path
from model.errors import SceneError
from model.ground import ground_metres_per_unit, pixel_size_m, scene_centre_lonlat
from model.scene import SceneInfo, alpha_bands, open_scene


def resampled_scene(scene: SceneInfo, res_m: float, folder: str | os.PathLike) -> SceneInfo:
    """The scene seen at ``res_m`` metres per pixel, through a GDAL VRT written into ``folder``.

    Nothing is copied: the VRT refers to the source and GDAL resamples while reading (``average``
    when the pixels grow, ``bilinear`` when they shrink). The grid keeps the scene's origin and
    CRS; its extent is rounded to whole pixels. A scene in geographic coordinates (degrees) is
    warped instead, to the UTM zone of its centre (:func:`warped_scene`). Band selection
    (``scene.bands``) carries over.

    Raises:
        SceneError: GDAL cannot build the VRT.
    """
    here = pixel_size_m(scene)
    if here is None:
        return warped_scene(scene, res_m, folder)
    units = res_m / ground_metres_per_unit(scene.crs, *scene_centre_lonlat(scene))
    method = "average" if res_m > here else "bilinear"
    out = Path(folder) / f"{scene.path.stem}_{res_m:g}m.vrt"
    source = f"vrt://{_as_data(scene, folder)}?tr={units!r},{units!r}&r={method}"
    _write_vrt(source, out, f"{scene.path}: could not resample to {res_m} m through a VRT")
    return _open_derived(out, scene.bands)


def warped_scene(scene: SceneInfo, res_m: float, folder: str | os.PathLike) -> SceneInfo:
    """The scene warped to the UTM zone of its centre at ``res_m`` metres per pixel, through a
    GDAL warped VRT in ``folder`` (bilinear; pixels outside the source are masked by an alpha
    band, so they count as nodata)."""
    from rasterio.vrt import WarpedVRT
    from rasterio.warp import calculate_default_transform

    lon, lat = scene_centre_lonlat(scene)
    utm = CRS.from_epsg((32600 if lat >= 0 else 32700) + min(60, int((lon + 180) // 6) + 1))
    out = Path(folder) / f"{scene.path.stem}_{utm.to_epsg()}_{res_m:g}m.vrt"
    with rasterio.open(_as_data(scene, folder)) as src:
        transform, width, height = calculate_default_transform(src.crs, utm, src.width, src.height, *src.bounds,
                                                               resolution=res_m)
        # outside the source: nodata if it has one; else an alpha band, unless the source has one
        # beyond the bands read (then it is the warper's source alpha, and is warped into an alpha)
        has_alpha = rasterio.enums.ColorInterp.alpha in src.colorinterp
        with WarpedVRT(src, crs=utm, transform=transform, width=width, height=height,
                       resampling=rasterio.enums.Resampling.bilinear,
                       add_alpha=src.nodata is None and not has_alpha) as vrt:
            _write_vrt(vrt, out, f"{scene.path}: could not warp to {utm.to_string()} at {res_m} m through a VRT")
    return _open_derived(out, scene.bands)


def is_north_up(transform: Affine) -> bool:
    """Whether a grid's rows run north to south with no rotation (how scenes are shown)."""
    return transform.b == 0 and transform.d == 0 and transform.e < 0 < transform.a


def north_up_scene(scene: SceneInfo, folder: str | os.PathLike) -> SceneInfo:
    """The scene on a north-up grid, through a GDAL warped VRT in ``folder``: a grid stored
    south-up (positive y pixel size) is flipped pixel for pixel (nearest: every output pixel
    centre is a source pixel centre), a rotated one resampled bilinearly onto a north-up grid of
    the same pixel size. Same CRS; band selection carries over."""
    from rasterio.vrt import WarpedVRT
    from rasterio.warp import calculate_default_transform

    t = scene.transform
    out = Path(folder) / f"{scene.path.stem}_north_up.vrt"
    with rasterio.open(_as_data(scene, folder)) as src:
        if t.b == 0 and t.d == 0:  # a flip (and/or a mirror): exact
            left, right = sorted((t.c, t.c + t.a * scene.width))
            top = max(t.f, t.f + t.e * scene.height)
            transform, width, height = Affine(abs(t.a), 0, left, 0, -abs(t.e), top), scene.width, scene.height
            method = rasterio.enums.Resampling.nearest
        else:
            res = math.sqrt(abs(t.a * t.e - t.b * t.d))
            transform, width, height = calculate_default_transform(src.crs, src.crs, src.width, src.height,
                                                                   *src.bounds, resolution=res)
            method = rasterio.enums.Resampling.bilinear
        with WarpedVRT(src, crs=src.crs, transform=transform, width=width, height=height, resampling=method,
                       tolerance=1e-6,  # near-exact transformer: the default approximation misses rows
                       add_alpha=(t.b != 0 or t.d != 0) and src.nodata is None
                       and rasterio.enums.ColorInterp.alpha not in src.colorinterp) as vrt:
            _write_vrt(vrt, out, f"{scene.path}: could not turn the grid north-up through a VRT")
    return _open_derived(out, scene.bands)


def _as_data(scene: SceneInfo, folder: str | os.PathLike) -> Path:
    """The scene's file for GDAL to resample or warp: the file itself, or, when a band read as data
    is tagged alpha (NIR of a 4-band file GDAL tagged RGBA), a VRT of it in ``folder`` with that
    band tagged undefined, since GDAL's warper and resampling take a band tagged alpha as the
    opacity of the others (zeroing R, G, B where NIR is 0) rather than as data."""
    with rasterio.open(scene.path) as src:
        tagged = [b for b in alpha_bands(src) if b in scene.bands]
    if not tagged:
        return scene.path.resolve()
    out = Path(folder) / f"{scene.path.stem}_bands.vrt"
    with atomic_path(out) as tmp:
        try:
            rasterio.shutil.copy(str(scene.path.resolve()), tmp, driver="VRT")
            with rasterio.open(tmp, "r+") as vrt:
                vrt.colorinterp = [rasterio.enums.ColorInterp.undefined if b in tagged else c
                                   for b, c in enumerate(vrt.colorinterp, 1)]
        except rasterio.errors.RasterioError as exc:
            raise SceneError(f"{scene.path}: could not retag band(s) {tagged} as data through a VRT ({exc}).") from exc
    return out


def _open_derived(out: Path, bands: Sequence[int]) -> SceneInfo:
    """Open a VRT made from a scene: what :func:`open_scene` would warn about was said of the scene."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return open_scene(out, bands)


def _write_vrt(source, out: Path, what: str) -> None:
    try:
        with atomic_path(out) as tmp:  # atomic: ranks of a distributed run may write the same file
            rasterio.shutil.copy(source, tmp, driver="VRT")
    except rasterio.errors.RasterioError as exc:
        raise SceneError(f"{what} ({exc}).") from exc
