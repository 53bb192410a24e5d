"""Download NAIP imagery for an area from the Planetary Computer STAC API.

:func:`download_naip` searches the ``naip`` collection with pystac-client, picks the newest year
whose items fully cover the area (or the year asked for), reads only the needed windows of the
item COGs over HTTP (see :mod:`loop.naip_assets`: signing, retries, blob endpoint), mosaics them
on one grid in the UTM zone of the area's centre, and writes a tiled deflate Cloud Optimized
GeoTIFF atomically.

Settings (environment):
    ``DCLABEL_STAC_URL``: STAC API root (default :data:`DEFAULT_STAC_URL`).
    ``PC_SDK_SUBSCRIPTION_KEY``: a Planetary Computer API key (optional; raises rate limits).
    ``PC_SDK_SAS_URL``: the SAS token endpoint (planetary-computer's own setting).
    ``DCLABEL_BLOB_ENDPOINT``: read blob assets from this path-style endpoint instead of Azure.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pystac
import rasterio
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.windows import Window
from shapely.geometry import box, shape
from shapely.geometry.base import BaseGeometry
from shapely.ops import transform as transform_shape
from tqdm import tqdm

from loop.errors import NaipError
from loop.naip_assets import DEFAULT_RETRY, OutputGrid, RetryPolicy, read_asset_window
from loop.naip_search import (
    ASSET_KEY,
    DEFAULT_STAC_URL,
    STAC_URL_ENV,
    choose_year,
    resolve_stac_url,
    search_naip,
)
from loop.naip_write import existing_download, write_cog
from model.errors import Cancelled

__all__ = ["DEFAULT_STAC_URL", "MAX_SIDE_M", "STAC_URL_ENV", "RetryPolicy", "area_grid", "download_naip",
           "search_naip", "utm_crs"]

STRIP_ROWS = 512
# The mosaic is assembled in memory: 4 bytes + 1 mask byte per pixel (~25 km side at 0.6 m).
MAX_PIXELS = 40_000 * 40_000 // 2
#: Largest square side (m) whose 0.6 m mosaic stays under MAX_PIXELS (16,970 m), rounded down with
#: room for the grid's snapping: the download panel's limit.
MAX_SIDE_M = float(int((MAX_PIXELS**0.5 - 8) * 0.6 // 100) * 100)
Progress = Callable[[int, int, dict], None]

T = TypeVar("T")


def utm_crs(lon: float, lat: float) -> CRS:
    """The NAD83 UTM CRS (like NAIP) of the zone holding ``lon, lat``; WGS84 UTM outside 1..23."""
    zone = int(np.floor((lon + 180.0) / 6.0)) % 60 + 1
    if lat >= 0 and zone <= 23:
        return CRS.from_epsg(26900 + zone)
    return CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


def _centre_and_bounds(lat: float, lon: float, size_m: float,
                       bbox: tuple[float, float, float, float] | None
                       ) -> tuple[CRS, tuple[float, float, float, float]]:
    """Output CRS (centre's zone) and the area's bounds in it."""
    if bbox is not None:
        west, south, east, north = bbox
        if not (west < east and south < north):
            raise NaipError(f"bbox {bbox} is not (west, south, east, north) in degrees with "
                            "west < east and south < north; pass it in that order")
        lon, lat = (west + east) / 2.0, (south + north) / 2.0
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise NaipError(f"lat, lon {lat}, {lon} are not degrees on the globe; expected "
                        "-90 <= lat <= 90 and -180 <= lon <= 180")
    crs = utm_crs(lon, lat)
    to_utm = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    if bbox is not None:
        return crs, to_utm.transform_bounds(*bbox, densify_pts=21)
    if not size_m > 0:
        raise NaipError(f"size {size_m} m is not a positive side length; pass e.g. 1000")
    x, y = to_utm.transform(lon, lat)
    half = size_m / 2.0
    return crs, (x - half, y - half, x + half, y + half)


def area_grid(lat: float, lon: float, size_m: float,
              bbox: tuple[float, float, float, float] | None = None, res: float = 0.6,
              anchor: tuple[float, float] | None = None) -> OutputGrid:
    """The output grid of an area: UTM zone of its centre, ``res`` metres, snapped to ``anchor``.

    Args:
        lat: Latitude of the centre (ignored when ``bbox`` is given).
        lon: Longitude of the centre (ignored when ``bbox`` is given).
        size_m: Side of the square area in metres (ignored when ``bbox`` is given).
        bbox: (west, south, east, north) in degrees.
        res: Pixel size in metres.
        anchor: A pixel corner (x, y) of an item grid in the same CRS, so pixels line up with it.

    Returns:
        The grid covering the area.
    """
    crs, (left, bottom, right, top) = _centre_and_bounds(lat, lon, size_m, bbox)
    ax, ay = anchor if anchor is not None else (0.0, 0.0)
    left = ax + np.floor((left - ax) / res + 1e-9) * res
    top = ay + np.ceil((top - ay) / res - 1e-9) * res
    width = max(1, int(np.ceil((right - left) / res - 1e-9)))
    height = max(1, int(np.ceil((top - bottom) / res - 1e-9)))
    return OutputGrid(crs, rasterio.transform.from_origin(left, top, res, res), width, height)


def grid_footprint(grid: OutputGrid, dst_crs: CRS | str = "EPSG:4326") -> BaseGeometry:
    """Outline of the grid in ``dst_crs`` (densified, so reprojected edges stay faithful)."""
    left, top = grid.transform @ (0, 0)
    right, bottom = grid.transform @ (grid.width, grid.height)
    outline = box(left, bottom, right, top).segmentize(max(right - left, top - bottom) / 32)
    to_dst = Transformer.from_crs(grid.crs, dst_crs, always_xy=True)
    return transform_shape(to_dst.transform, outline)


def _cancellable(fn: Callable[[], T], cancel: Callable[[], bool] | None, message: str, poll_s: float = 0.1) -> T:
    """``fn()`` in a daemon thread, given up as soon as ``cancel()`` is true (an HTTP request that
    waits for a slow server cannot be interrupted; it is left to time out on its own)."""
    if cancel is None:
        return fn()
    done = threading.Event()
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            box["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, daemon=True, name="naip-search").start()
    while not done.wait(poll_s):
        if cancel():
            raise Cancelled(message)
    if "error" in box:
        raise box["error"]
    return box["value"]


def _check_size(grid, where: str, res: float) -> None:
    if grid.width * grid.height > MAX_PIXELS:
        raise NaipError(f"area {where} is {grid.width} x {grid.height} px at {res:g} m; expected "
                        f"at most {MAX_PIXELS:,} px: download it in smaller pieces")


def _item_grid_anchor(item: pystac.Item, crs: CRS) -> tuple[tuple[float, float] | None, float]:
    """A pixel corner of the item's grid if it is in ``crs``, and its pixel size."""
    props = item.properties
    res = float(props.get("gsd") or 0.6)
    epsg = props.get("proj:epsg") or (props.get("proj:code") or "").removeprefix("EPSG:")
    if props.get("proj:transform"):
        res = abs(float(props["proj:transform"][0]))
    if not epsg or CRS.from_epsg(int(epsg)) != crs:
        return None, res
    if props.get("proj:transform"):
        a, _, c, _, _, f = props["proj:transform"][:6]
        return (float(c), float(f)), res
    if props.get("proj:bbox"):
        return (float(props["proj:bbox"][0]), float(props["proj:bbox"][3])), res
    return None, res


def _request_tag(lat, lon, size_m, bbox, year, stac_url) -> str:
    return json.dumps({"lat": lat, "lon": lon, "size_m": size_m,
                       "bbox": list(bbox) if bbox else None, "year": year, "source": stac_url},
                      sort_keys=True)


def _item_rows(item: pystac.Item, grid: OutputGrid) -> tuple[int, int]:
    """Rows of the grid the item's footprint may touch (a margin of one pixel)."""
    to_grid = Transformer.from_crs("EPSG:4326", grid.crs, always_xy=True)
    geom = transform_shape(to_grid.transform, shape(item.geometry).segmentize(0.001))
    _, bottom, _, top = geom.bounds
    inverse = ~grid.transform
    first = int(np.floor((inverse @ (0, top))[1])) - 1
    last = int(np.ceil((inverse @ (0, bottom))[1])) + 1
    return max(0, first), min(grid.height, last)


def download_naip(lat: float, lon: float, size_m: float, output: str | Path,
                  year: int | None = None, bbox: tuple[float, float, float, float] | None = None,
                  stac_url: str | None = None, progress: Progress | None = None,
                  cancel: Callable[[], bool] | None = None, *,
                  retry: RetryPolicy = DEFAULT_RETRY) -> Path:
    """Download a NAIP mosaic of an area to a Cloud Optimized GeoTIFF.

    A finished ``output`` written by an identical request (same area, year, endpoint) is reused
    without touching the network. Nothing is left at ``output`` if the download fails.

    Args:
        lat: Latitude of the area's centre (degrees, WGS84).
        lon: Longitude of the area's centre.
        size_m: Side of the square area in metres.
        output: GeoTIFF path to write.
        year: NAIP year to use; default the newest year that fully covers the area.
        bbox: (west, south, east, north) in degrees, instead of lat/lon/size.
        stac_url: STAC API root; default ``DCLABEL_STAC_URL`` or :data:`DEFAULT_STAC_URL`.
        progress: Called as ``progress(done, total, info)`` after each window read.
        cancel: Returns True to stop; raises :class:`model.errors.Cancelled` between reads.
        retry: Retry policy for transient HTTP failures.

    Returns:
        The output path. Tags: ``stac_items`` (comma-separated ids), ``naip_year``, ``source``.

    Raises:
        NaipError: No imagery covers the area, the endpoint is unreachable, or an asset fails.
        Cancelled: ``cancel()`` returned True.
    """
    output = Path(output)
    stac_url = resolve_stac_url(stac_url)
    request = _request_tag(lat, lon, size_m, bbox, year, stac_url)
    if existing_download(output, request):
        if progress:
            progress(1, 1, {"stage": "reused", "path": str(output)})
        return output
    grid = area_grid(lat, lon, size_m, bbox)
    area = grid_footprint(grid)
    where = (f"lat, lon {lat:.5f}, {lon:.5f} (size {size_m:g} m)" if bbox is None
             else f"lat, lon {(bbox[1] + bbox[3]) / 2:.5f}, {(bbox[0] + bbox[2]) / 2:.5f} "
                  f"(bbox {tuple(bbox)})")
    _check_size(grid, where, 0.6)  # before any request, at NAIP's usual pixel size
    items = _cancellable(lambda: search_naip(area.bounds, stac_url, year=year, policy=retry), cancel,
                         f"NAIP download to {output} cancelled during the STAC search; nothing was written")
    chosen_year, chosen = choose_year(items, area, where, year)
    anchor, res = _item_grid_anchor(chosen[0], grid.crs)
    for item in chosen[1:]:
        if anchor is None:
            anchor, res = _item_grid_anchor(item, grid.crs)
    grid = area_grid(lat, lon, size_m, bbox, res=res, anchor=anchor)
    _check_size(grid, where, res)  # again at the chosen year's own (0.3 m years: 4x the pixels)
    image = np.zeros((4, grid.height, grid.width), dtype=np.uint8)
    filled = np.zeros((grid.height, grid.width), dtype=bool)
    plan = []
    for item in chosen:
        first, last = _item_rows(item, grid)
        for row in range(first - first % STRIP_ROWS, last, STRIP_ROWS):
            plan.append((item, Window(0, row, grid.width, min(STRIP_ROWS, grid.height - row))))
    with tqdm(total=len(plan), desc=f"NAIP {chosen_year}", unit="window", disable=None) as bar:
        for done, (item, window) in enumerate(plan, start=1):
            if cancel is not None and cancel():
                raise Cancelled(f"NAIP download to {output} cancelled; nothing was written")
            rows = slice(int(window.row_off), int(window.row_off + window.height))
            if not filled[rows].all():
                href = item.assets[ASSET_KEY].href
                pixels, valid = read_asset_window(href, grid, window, retry)
                take = valid & ~filled[rows]
                image[:, rows][:, take] = pixels[:, take]
                filled[rows] |= valid
            bar.update(1)
            if progress:
                progress(done, len(plan), {"stage": "reading", "item": item.id,
                                           "year": chosen_year})
    tags = {"stac_items": ",".join(i.id for i in chosen), "naip_year": str(chosen_year),
            "source": stac_url, "dclabel_request": request,
            "coverage": f"{filled.mean():.6f}"}
    return write_cog(output, image, grid.crs, grid.transform, tags)

