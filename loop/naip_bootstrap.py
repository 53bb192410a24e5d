"""Bootstrap a project from a labels file: NAIP chips around every footprint, labels imported.

Every polygon of the GeoJSON (data centers, and the warehouses/retail/other hard negatives) gets
a NAIP chip around it: polygons close together share one chip. Each chip is downloaded with
:func:`loop.naip.download_naip` into ``<project>/scenes/``, added to the project as a scene,
and the file's polygons are imported into it as reviewed labels. Running it again reuses the
finished downloads and imports nothing twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pyproj import Transformer
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from loop.errors import NaipError, StacUnreachableError
from loop.labelstore_io import label_classes
from loop.naip import download_naip, utm_crs
from loop.naip_assets import DEFAULT_RETRY, RetryPolicy
from model.errors import Cancelled, LabelError
from model.scene import NAIP_RES_M


@dataclass(frozen=True)
class ChipArea:
    """One square NAIP chip to fetch.

    Attributes:
        lat: Latitude of the centre.
        lon: Longitude of the centre.
        size_m: Side in metres.
        footprints: Indexes (rows of the labels file) of the polygons it was made for.
    """

    lat: float
    lon: float
    size_m: float
    footprints: tuple[int, ...]

    @property
    def file_name(self) -> str:
        """A stable file name for the chip's GeoTIFF."""
        return f"naip_{self.lat:.5f}_{self.lon:.5f}_{self.size_m:.0f}m.tif"


@dataclass(frozen=True)
class BootstrapResult:
    """What a bootstrap did.

    Attributes:
        scenes: Scene ids of the chips added (or already there).
        footprints_added: Polygons newly imported into the label store.
        skipped: ``(lat, lon, reason)`` of chips that could not be fetched.
    """

    scenes: tuple[str, ...]
    footprints_added: int
    skipped: tuple[tuple[float, float, str], ...]


def plan_chips(geometries: list[BaseGeometry], size_m: float = 512.0,
               margin_m: float = 64.0) -> list[ChipArea]:
    """Group lon/lat polygons into square chips of at least ``size_m`` around them.

    Each chip is centred on the first uncovered polygon, grows to hold it plus ``margin_m`` on
    every side, and takes every other polygon that lies wholly inside it with that margin.

    Args:
        geometries: Polygons in degrees (EPSG:4326, lon/lat).
        size_m: Smallest chip side in metres.
        margin_m: Context kept around each polygon.

    Returns:
        The chips, each naming the polygons it covers.
    """
    remaining = list(range(len(geometries)))
    chips: list[ChipArea] = []
    while remaining:
        first = geometries[remaining[0]]
        lon, lat = first.centroid.x, first.centroid.y
        to_utm = Transformer.from_crs("EPSG:4326", utm_crs(lon, lat), always_xy=True)
        projected = {i: to_utm.transform_bounds(*geometries[i].bounds) for i in remaining}
        x, y = to_utm.transform(lon, lat)
        left, bottom, right, top = projected[remaining[0]]
        half = max(size_m / 2.0, right - x + margin_m, x - left + margin_m,
                   top - y + margin_m, y - bottom + margin_m)
        inner = box(x - half + margin_m, y - half + margin_m, x + half - margin_m,
                    y + half - margin_m)
        members = [i for i in remaining if inner.covers(box(*projected[i]))] or [remaining[0]]
        chips.append(ChipArea(round(lat, 6), round(lon, 6), float(np.ceil(2 * half)),
                              tuple(members)))
        remaining = [i for i in remaining if i not in members]
    return chips


def bootstrap(geojson: str | Path, project_root: str | Path, size_m: float = 512.0,
              margin_m: float = 64.0, year: int | None = None, stac_url: str | None = None,
              progress: Callable[[int, int, dict], None] | None = None,
              cancel: Callable[[], bool] | None = None, *,
              retry: RetryPolicy = DEFAULT_RETRY, resolution_m: float | None = NAIP_RES_M) -> BootstrapResult:
    """Fetch NAIP chips around every polygon of ``geojson`` and import them into a project.

    Args:
        geojson: Labels file (any CRS; ``class`` or ``label`` properties, see LabelStore).
        project_root: Project folder; created if missing.
        size_m: Smallest chip side in metres.
        margin_m: Context kept around each polygon.
        year: NAIP year; default the newest covering each chip.
        stac_url: STAC API root (see :func:`loop.naip.download_naip`).
        progress: Called as ``progress(done, total, info)`` after each chip.
        cancel: Returns True to stop between chips (and between reads within one).
        retry: Retry policy for transient HTTP failures.
        resolution_m: Pixel size a new project reads every chip at (NAIP years at 0.3 m are read
            through a VRT resampled to 0.6 m, the seed study's scale); None: each at its own.

    Returns:
        What was added and what was skipped.

    Raises:
        LabelError: The labels file cannot be read or holds no polygons.
        NaipError: No chip at all could be fetched.
        Cancelled: ``cancel()`` returned True.
    """
    import geopandas

    from loop.project import Project

    path = Path(geojson)
    try:
        frame = geopandas.read_file(path)
    except Exception as exc:  # pyogrio raises several types for unreadable files
        raise LabelError(f"{path}: cannot read it as a vector file ({exc}); expected a GeoJSON "
                         "of footprint polygons: check the path") from exc
    frame = frame[frame.geometry.notna() & ~frame.geometry.is_empty]
    frame = frame[frame.geom_type.isin(["Polygon", "MultiPolygon"])]
    if frame.empty:
        raise LabelError(f"{path}: holds no polygons; expected footprint Polygons to fetch "
                         "NAIP chips around")
    if frame.crs is None:
        frame = frame.set_crs("EPSG:4326")
    label_classes(frame, path)  # an unknown class is refused before anything is downloaded
    chips = plan_chips(list(frame.to_crs("EPSG:4326").geometry), size_m, margin_m)
    project = Project.create(project_root, resolution_m=resolution_m)
    scenes_dir = Path(project.root) / "scenes"
    scene_ids: list[str] = []
    skipped: list[tuple[float, float, str]] = []
    added = 0
    for done, chip in enumerate(chips, start=1):
        if cancel is not None and cancel():
            raise Cancelled(f"bootstrap of {project.root} cancelled after {done - 1} chip(s); "
                            "finished chips were kept and a rerun resumes")
        try:
            tif = download_naip(chip.lat, chip.lon, chip.size_m, scenes_dir / chip.file_name,
                                year=year, stac_url=stac_url, cancel=cancel, retry=retry)
        except StacUnreachableError as exc:  # every other chip would wait out the same timeouts
            raise StacUnreachableError(f"bootstrap of {project.root} stopped at chip {done} of {len(chips)}: "
                                       f"{exc}; finished chips were kept and a rerun resumes") from exc
        except NaipError as exc:
            skipped.append((chip.lat, chip.lon, str(exc)))
            if progress:
                progress(done, len(chips), {"skipped": str(exc)})
            continue
        scene = project.add_scene(tif)
        added += project.labels.import_geojson(path, scene, reviewed=True,
                                               chip_size=project.settings.chip_size)
        scene_ids.append(scene.scene_id)
        if progress:
            progress(done, len(chips), {"scene_id": scene.scene_id, "path": str(tif)})
    if not scene_ids:
        reasons = "; ".join(reason for _, _, reason in skipped[:3])
        raise NaipError(f"bootstrap fetched no NAIP chip for the {len(chips)} area(s) of {path}: "
                        f"{reasons}")
    return BootstrapResult(tuple(scene_ids), added, tuple(skipped))
