"""Scene IO: opening and checking scenes, reading their pixels, and the atomic GeoTIFF writer.

A scene is a multi-band GeoTIFF (NAIP: red, green, blue, NIR at ~0.6 m). Pixels never leave this
module without their georeference: a :class:`Chip` carries scene id, window, CRS and transform.
Ground units of a scene's CRS (metres on the ground, pixel sizes) are in :mod:`model.ground`;
scenes seen through GDAL VRTs (resampled, warped, north-up) in :mod:`model.scene_vrt`.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import rasterio.enums
from affine import Affine
from rasterio._err import CPLE_BaseError  # GDAL's errors as raised through a boundless read's VRT
from rasterio.crs import CRS
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from model.atomic import atomic_path
from model.errors import SceneError, SceneNotFoundError

BANDS: tuple[str, ...] = ("red", "green", "blue", "nir")
NAIP_RES_M = 0.6  # the pixel size of the seed study's NAIP imagery, and the default a model assumes


@dataclass(frozen=True)
class SceneInfo:
    """What is known about a scene without reading its pixels.

    Attributes:
        path: File path of the GeoTIFF.
        scene_id: Stable id (file stem plus a short hash of the absolute path).
        width: Columns.
        height: Rows.
        crs: Coordinate reference system (always set; scenes without one are rejected).
        transform: Pixel to CRS affine transform.
        bands: 1-based source band indexes read as (red, green, blue, nir).
        nodata: Nodata value of the source, or None.
        res: Pixel size in CRS units (x, y).
        dtype: Source data type.
        value_scale: Multiplier that brings source values to 0-255: 1 for uint8; for other types
            chosen once per scene from the bit depth its values use (:func:`value_scale_for`), so
            every window of a 12- or 16-bit scene is scaled alike.
    """

    path: Path
    scene_id: str
    width: int
    height: int
    crs: CRS
    transform: Affine
    bands: tuple[int, ...]
    nodata: float | None
    res: tuple[float, float]
    dtype: str = "uint8"
    value_scale: float = 1.0

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(left, bottom, right, top) in the scene CRS."""
        return rasterio.transform.array_bounds(self.height, self.width, self.transform)[:4]

    @property
    def window(self) -> Window:
        """The full-scene window."""
        return Window(0, 0, self.width, self.height)


@dataclass(frozen=True)
class Chip:
    """Pixels of one window of a scene, with their georeference.

    Attributes:
        scene_id: Id of the scene the chip was cut from.
        window: Window in scene pixels.
        crs: Scene CRS.
        transform: Affine transform of the chip's own pixel grid.
        image: uint8 array (C, H, W) in band order :data:`BANDS`.
        mask: Optional uint8 (H, W) label mask (1 = data center).
    """

    scene_id: str
    window: Window
    crs: CRS
    transform: Affine
    image: np.ndarray
    mask: np.ndarray | None = None


def scene_id_for(path: str | os.PathLike) -> str:
    """A stable, readable id for a scene file: ``stem-<6 hex of its absolute path>``."""
    p = Path(path).resolve()
    return f"{p.stem}-{hashlib.sha1(str(p).encode()).hexdigest()[:6]}"


def open_scene(path: str | os.PathLike, bands: Sequence[int] | None = None) -> SceneInfo:
    """Open a scene and check that it can be used.

    Args:
        path: GeoTIFF (or any raster GDAL reads) with at least 4 bands and a CRS.
        bands: 1-based band indexes to read as (red, green, blue, nir); default ``(1, 2, 3, 4)``.

    Returns:
        The scene's :class:`SceneInfo`.

    Raises:
        SceneNotFoundError: The file does not exist.
        SceneError: Not a raster, no CRS, too few bands, or bad ``bands``.
    """
    p = Path(path)
    if not p.exists():
        raise SceneNotFoundError(f"{p}: no such file. Expected a 4-band (R,G,B,NIR) GeoTIFF; check the path.")
    try:
        src = rasterio.open(p)
    except RasterioIOError as exc:
        with open(p, "rb") as fh:
            tiff = fh.read(4) in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # TIFF / BigTIFF magic
        damaged = (" It starts like a TIFF, so it is truncated or damaged: download or copy it again."
                   if tiff else "")
        raise SceneError(
            f"{p}: not a raster GDAL can read ({exc}). Expected a 4-band (R,G,B,NIR) GeoTIFF.{damaged}"
        ) from exc
    with src:
        want = tuple(bands) if bands is not None else tuple(range(1, len(BANDS) + 1))
        if len(want) != len(BANDS):
            raise SceneError(
                f"{p}: --bands needs {len(BANDS)} band indexes for {','.join(BANDS)}, got {list(want)}."
            )
        if src.count < len(BANDS):
            raise SceneError(
                f"{p}: expected {len(BANDS)} bands ({', '.join(BANDS)}), found {src.count}. dclabel needs "
                "near-infrared as well as red, green and blue (NAIP has all four); an RGB-only file "
                "cannot be used."
            )
        missing = [b for b in want if b < 1 or b > src.count]
        if missing:
            raise SceneError(
                f"{p}: --bands {','.join(map(str, want))} asks for band(s) {', '.join(map(str, missing))}, but the "
                f"file has {src.count} band(s) (1..{src.count})."
            )
        if len(set(want)) != len(want):
            raise SceneError(f"{p}: --bands {','.join(map(str, want))} reads one band as two of "
                             f"{', '.join(BANDS)}; give {len(BANDS)} different bands (e.g. --bands 1,2,3,4).")
        _check_alpha_read_as_data(p, src, want, explicit=bands is not None)
        if src.crs is None:
            raise SceneError(
                f"{p}: the raster has no CRS, so detections could not be placed on the map. "
                "Assign one first, e.g. `gdal_edit.py -a_srs EPSG:26918 FILE`."
            )
        if src.transform == Affine.identity():
            raise SceneError(f"{p}: the raster has no geotransform (pixel grid is not georeferenced).")
        if bands is None and src.count > len(BANDS):
            warnings.warn(f"{p}: the file has {src.count} bands; reading bands 1-{len(BANDS)} as "
                          f"{', '.join(BANDS)}. If they are in another order or other bands hold them, give "
                          "--bands (e.g. --bands 1,2,3,4 to say these are right, which also silences this).",
                          UserWarning, stacklevel=2)
        return SceneInfo(
            path=p,
            scene_id=scene_id_for(p),
            width=src.width,
            height=src.height,
            crs=src.crs,
            transform=src.transform,
            bands=want,
            nodata=src.nodata,
            res=(abs(src.transform.a), abs(src.transform.e)),
            dtype=src.dtypes[0],
            value_scale=1.0 if src.dtypes[0] == "uint8" else value_scale_for(src, want),
        )


def alpha_bands(src: rasterio.DatasetReader) -> tuple[int, ...]:
    """1-based indexes of the bands tagged alpha (transparency)."""
    return tuple(i for i, c in enumerate(src.colorinterp, 1) if c == rasterio.enums.ColorInterp.alpha)


def _check_alpha_read_as_data(path: Path, src: rasterio.DatasetReader, bands: Sequence[int], explicit: bool) -> None:
    """Refuse reading a real alpha band as data; warn when a 4-band file's NIR is tagged alpha.

    GDAL tags band 4 of a 4-band 8-bit file written without ``PHOTOMETRIC=MINISBLACK`` as alpha,
    so NAIP saved by many tools carries NIR under that tag: read as NIR, it is data, not a no-data
    mask (:func:`invalid_pixels`). In a file with more bands than dclabel reads, a band tagged alpha
    was made one on purpose, and reading it as a colour is refused.
    """
    tagged = [b for b in alpha_bands(src) if b in bands]
    if not tagged:
        return
    names = ", ".join(f"band {b} (read as {BANDS[list(bands).index(b)]})" for b in tagged)
    if src.count > len(BANDS):
        others = [b for b in range(1, src.count + 1) if b not in alpha_bands(src)]
        hint = f" e.g. --bands {','.join(map(str, others[: len(BANDS)]))}" if len(others) >= len(BANDS) else ""
        raise SceneError(f"{path}: {names} is tagged alpha (a transparency mask, not imagery) and the file has "
                         f"{src.count} bands; {'choose' if explicit else 'give'} --bands with the R,G,B,NIR bands"
                         f"{hint}.")
    warnings.warn(f"{path}: {names} is tagged alpha (GDAL's default for 4-band 8-bit files written without "
                  "PHOTOMETRIC=MINISBLACK); reading it as image data, not as a no-data mask, so its zeros stay "
                  "pixels. To silence this, retag it: `gdal_edit.py -colorinterp_4 undefined FILE`.",
                  UserWarning, stacklevel=3)


def value_scale_for(src: rasterio.DatasetReader, bands: Sequence[int], side: int = 512) -> float:
    """The factor to 0-255 of a scene that is not uint8, from a sample of its bands: its
    overviews when it has them, else 8 x 8 windows of 64 px spread over it (a decimated read
    of a scene without overviews would decode every block).

    Integers: the smallest bit depth of 8, 10, 12, 14 or 16 that holds the largest value seen
    (16-bit NAIP-like products often carry 12-bit data). Floats: 255 for reflectance in 0-1,
    1 for values already in 0-255, else as integers.
    """
    if src.overviews(bands[0]) or max(src.width, src.height) <= side:
        f = max(1, int(np.ceil(max(src.width, src.height) / side)))
        arr = src.read(list(bands), out_shape=(len(bands), max(1, src.height // f), max(1, src.width // f)),
                       masked=True)
        peak = float(arr.max()) if arr.count() else 0.0
    else:
        peak = 0.0
        for r in np.linspace(0, max(src.height - 64, 0), 8).astype(int):
            for c in np.linspace(0, max(src.width - 64, 0), 8).astype(int):
                arr = src.read(list(bands), window=Window(int(c), int(r), 64, 64), masked=True)
                peak = max(peak, float(arr.max()) if arr.count() else 0.0)
    dtype = np.dtype(src.dtypes[0])
    if np.issubdtype(dtype, np.floating):
        if peak <= 1.0 + 1e-6:
            return 255.0
        if peak <= 255.0:
            return 1.0
    for bits in (8, 10, 12, 14, 16):
        if peak <= 2**bits - 1:
            return 255.0 / (2**bits - 1)
    return 255.0 / peak


def to_uint8(arr: np.ndarray, scene: SceneInfo) -> np.ndarray:
    """Source values of ``scene`` as uint8 (scaled by ``scene.value_scale``, clipped to 0-255)."""
    if arr.dtype == np.uint8:
        return arr
    scaled = arr * np.float32(scene.value_scale) if scene.value_scale != 1.0 else arr
    return np.clip(scaled, 0, 255).astype(np.uint8)


def read_window(scene: SceneInfo, window: Window, src: rasterio.DatasetReader | None = None) -> np.ndarray:
    """Read a window as uint8 (C, H, W); parts outside the scene, and pixels the scene's mask calls
    no data (its nodata value, alpha or mask band), are filled with zeros, so detections do not
    depend on the nodata value.

    Args:
        scene: The scene.
        window: Window in scene pixels; may extend past the edges.
        src: An already open dataset for the scene (saves re-opening in loops).

    Returns:
        uint8 array (4, window.height, window.width).
    """
    if src is None:
        with rasterio.open(scene.path) as opened:
            return read_window(scene, window, opened)
    try:
        arr = src.read(list(scene.bands), window=window, boundless=True, fill_value=0)
        invalid = invalid_pixels(src, scene.bands, window, arr)
    except READ_ERRORS as exc:
        raise unreadable(scene, window, exc) from exc
    if invalid is not None:
        arr[:, invalid] = 0  # no data reads like the zero fill past the edge, whatever the nodata value
    return to_uint8(arr, scene)


def invalid_pixels(src: rasterio.DatasetReader, bands: Sequence[int], window: Window,
                   values: np.ndarray | None = None) -> np.ndarray | None:
    """Boolean (H, W): the pixels of ``window`` that hold no data in the bands read, or None when
    the scene has no mask.

    A pixel is no data only where every band read is no data (as GDAL's dataset mask: a valid red
    of 255 with nodata 255 is a saturated roof, not a hole), or where a band tagged alpha that is
    not read as data is 0. A band tagged alpha that *is* read (NIR of a 4-band file GDAL tagged
    RGBA) is data, never a mask. Nodata values are compared on ``values`` (the bands read, as
    ``src.read(bands, window, boundless=True)`` gives them) when given; masks are read boundless.

    Args:
        src: The open scene.
        bands: 1-based bands read as data.
        window: Window in scene pixels; may extend past the edges.
        values: The bands' values in ``window``, if already read.
    """
    alpha = alpha_bands(src)
    invalid = None
    for i, b in enumerate(bands):
        flags = src.mask_flag_enums[b - 1]
        if rasterio.enums.MaskFlags.all_valid in flags or (rasterio.enums.MaskFlags.alpha in flags
                                                          and any(a in bands for a in alpha)):
            invalid = None  # this band holds data everywhere, so every pixel does
            break
        nodata = src.nodatavals[b - 1]
        if flags == [rasterio.enums.MaskFlags.nodata] and nodata is not None:
            v = values[i] if values is not None else src.read(b, window=window, boundless=True, fill_value=0)
            band = np.isnan(v) if np.isnan(nodata) else v == nodata
        else:  # an internal or .msk mask, or an alpha band not read
            band = src.read_masks(b, window=window, boundless=True) == 0
        invalid = band if invalid is None else invalid & band
    extra = [a for a in alpha if a not in bands]
    if extra:  # an alpha band beyond the bands read (GDAL itself honours alpha only in 2- and 4-band files)
        transparent = src.read(extra[0], window=window, boundless=True, fill_value=0) == 0
        invalid = transparent if invalid is None else invalid | transparent
    return invalid


def valid_pixels(src: rasterio.DatasetReader, window: Window, bands: Sequence[int] = (1, 2, 3, 4)) -> np.ndarray:
    """Valid-data mask (height, width) of a window: False past the scene's edges and where every
    band read is no data (:func:`invalid_pixels`)."""
    invalid = invalid_pixels(src, bands, window)
    valid = ~invalid if invalid is not None else np.ones((int(window.height), int(window.width)), dtype=bool)
    row, col = int(window.row_off), int(window.col_off)
    valid[: max(-row, 0)] = False
    valid[max(src.height - row, 0):] = False
    valid[:, : max(-col, 0)] = False
    valid[:, max(src.width - col, 0):] = False
    return valid


READ_ERRORS = (RasterioIOError, CPLE_BaseError)  # pixels GDAL could not decode


def unreadable(scene: SceneInfo, window: Window, exc: Exception) -> SceneError:
    """The error for pixels GDAL could not decode (a truncated download, a damaged block)."""
    detail = str(exc.__cause__ or exc).strip() or type(exc).__name__  # GDAL's own words are the cause
    return SceneError(
        f"{scene.path}: pixels at column {int(window.col_off)}, row {int(window.row_off)} could not be read "
        f"({detail}); the file is truncated or damaged: download or copy it again "
        "(`gdalinfo -checksum FILE` reads every block and shows where it breaks)."
    )


def read_valid(scene: SceneInfo, window: Window, src: rasterio.DatasetReader) -> np.ndarray:
    """Boolean (H, W): True where the window holds real data (inside the scene and not nodata)."""
    valid = np.zeros((int(window.height), int(window.width)), dtype=bool)
    inter = window.intersection(scene.window) if _overlaps(window, scene.window) else None
    if inter is None:
        return valid
    r0, c0 = int(inter.row_off - window.row_off), int(inter.col_off - window.col_off)
    try:
        invalid = invalid_pixels(src, scene.bands, inter)
        m = ~invalid if invalid is not None else np.ones((int(inter.height), int(inter.width)), dtype=bool)
    except READ_ERRORS as exc:
        raise unreadable(scene, inter, exc) from exc
    valid[r0 : r0 + m.shape[0], c0 : c0 + m.shape[1]] = m
    return valid


def _overlaps(a: Window, b: Window) -> bool:
    return (
        a.col_off < b.col_off + b.width
        and b.col_off < a.col_off + a.width
        and a.row_off < b.row_off + b.height
        and b.row_off < a.row_off + a.height
    )


def read_chip(scene: SceneInfo, window: Window, src: rasterio.DatasetReader | None = None) -> Chip:
    """Read one window as a :class:`Chip` carrying its georeference."""
    return Chip(
        scene_id=scene.scene_id,
        window=window,
        crs=scene.crs,
        transform=rasterio.windows.transform(window, scene.transform),
        image=read_window(scene, window, src),
    )


def chip_windows(width: int, height: int, size: int = 256, stride: int | None = None) -> list[Window]:
    """Windows of ``size`` covering a ``width`` x ``height`` grid, edges included.

    The last row and column of windows are snapped inside the grid (so they overlap their
    neighbour) rather than dropped; a grid smaller than ``size`` gets one window of ``size``
    that reads past the edge (zero fill).

    Args:
        width: Grid columns.
        height: Grid rows.
        size: Window side in pixels.
        stride: Step between windows; default ``size`` (no overlap).

    Returns:
        Windows in row-major order.
    """
    stride = stride or size

    def starts(n: int) -> list[int]:
        if n <= size:
            return [0]
        s = list(range(0, n - size + 1, stride))
        if s[-1] + size < n:
            s.append(n - size)
        return s

    return [Window(c, r, size, size) for r in starts(height) for c in starts(width)]


def write_geotiff(
    path: str | os.PathLike,
    array: np.ndarray,
    crs: CRS,
    transform: Affine,
    nodata: float | None = None,
    tags: dict[str, str] | None = None,
    **profile,
) -> Path:
    """Write a (C, H, W) or (H, W) array as a tiled, compressed GeoTIFF, atomically.

    The file is written under a temporary name in the same folder and renamed when complete,
    so a crash never leaves a half-written file at ``path``.
    """
    path = Path(path)
    arr = array[None] if array.ndim == 2 else array
    prof = {
        "driver": "GTiff",
        "width": arr.shape[2],
        "height": arr.shape[1],
        "count": arr.shape[0],
        "dtype": arr.dtype.name,
        "crs": crs,
        "transform": transform,
        "compress": "deflate",
    }
    if arr.shape[1] >= 256 and arr.shape[2] >= 256:
        prof.update(tiled=True, blockxsize=256, blockysize=256)
    if nodata is not None:
        prof["nodata"] = nodata
    # GDAL writes 4 uint8 bands as RGB + alpha, so NIR would mask its own zeros (and show as
    # transparency in QGIS): store them as plain bands labelled R, G, B and undefined, as NAIP is
    rgbn = arr.shape[0] == 4 and arr.dtype == np.uint8 and "photometric" not in profile
    if rgbn:
        prof["photometric"] = "minisblack"
    prof.update(profile)
    with atomic_path(path) as tmp, rasterio.open(tmp, "w", **prof) as dst:
        # metadata before the pixels: set afterwards, GDAL rewrites the directory at the file's end
        if rgbn:
            ci = rasterio.enums.ColorInterp
            dst.colorinterp = [ci.red, ci.green, ci.blue, ci.undefined]
        if tags:
            dst.update_tags(**tags)
        dst.write(arr)
    return path
