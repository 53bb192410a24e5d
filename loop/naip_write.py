"""Writing a downloaded NAIP mosaic: an atomic, tagged Cloud Optimized GeoTIFF."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.errors import RasterioIOError
from rasterio.io import MemoryFile
from rasterio.shutil import copy as copy_raster

from loop.errors import NaipError

BAND_NAMES = ("red", "green", "blue", "nir")
REQUEST_TAG = "dclabel_request"


def existing_download(path: Path, request: str) -> bool:
    """True if ``path`` is a finished download of exactly ``request`` (a reusable result)."""
    if not path.is_file():
        return False
    try:
        with rasterio.open(path) as src:
            tags = src.tags()
    except RasterioIOError:
        return False
    return tags.get(REQUEST_TAG) == request and bool(tags.get("naip_year"))


def write_cog(path: Path, image: np.ndarray, crs: CRS, transform: Affine,
              tags: dict[str, str]) -> Path:
    """Write a (4, H, W) uint8 image as a tiled deflate COG via a temp file and os.replace.

    Args:
        path: Destination GeoTIFF.
        image: Pixels in band order red, green, blue, NIR.
        crs: CRS of the grid.
        transform: Affine transform of the grid.
        tags: Dataset tags to store.

    Returns:
        ``path``.

    Raises:
        NaipError: The file cannot be written.
    """
    count, height, width = image.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part.tif", dir=path.parent)
    os.close(fd)
    try:
        # plain bands (GDAL's default for 4 uint8 bands is RGB + alpha: NIR would mask its own zeros)
        profile = dict(driver="GTiff", count=count, height=height, width=width, dtype="uint8",
                       crs=crs, transform=transform, photometric="minisblack")
        with MemoryFile() as memory:
            with memory.open(**profile) as dst:
                dst.write(image)
                dst.update_tags(**tags)
                dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue,
                                   ColorInterp.undefined][:count]
                for band, name in enumerate(BAND_NAMES[:count], start=1):
                    dst.set_band_description(band, name)
            with memory.open() as src:
                copy_raster(src, tmp, driver="COG", compress="DEFLATE", blocksize=512,
                            overview_resampling="average", bigtiff="IF_SAFER")
        os.replace(tmp, path)
    except (OSError, RasterioIOError) as exc:
        raise NaipError(f"could not write NAIP GeoTIFF {path} ({exc}); expected a writable "
                        "folder with free space: check the output path") from exc
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
