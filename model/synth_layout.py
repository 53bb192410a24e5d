"""Where the buildings of a synthetic scene go: real cluster layouts plus placed copies.

The footprints are the real hand-digitized polygons of ``data/datacenters.geojson``
reprojected to the site's UTM zone. A scene window is chosen over the real cluster; when the
window holds too few buildings, copies of real polygons (any site, true shape, random rotation
and position, no overlap) fill it up while pulling the class mix towards ~40 % data centers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from affine import Affine
from pyproj import Transformer
from shapely import affinity
from shapely.geometry import Polygon, box

from model.errors import LabelError

DEFAULT_FOOTPRINTS = Path(__file__).resolve().parents[1] / "data" / "datacenters.geojson"
CLASSES: tuple[str, ...] = ("datacenter", "warehouse", "retail", "other")
POSITIVE_SHARE = 0.4  # target share of data centers among the buildings of a scene
BUILDINGS_PER_2048 = (12.0, 22.0)  # buildings in a 2048 x 2048 px scene (0.6 m), uniform range


@dataclass(frozen=True)
class Site:
    """A real cluster: its centre (lon, lat), UTM EPSG code and radius in metres."""

    lon: float
    lat: float
    epsg: int
    radius_m: float


SITES: dict[str, Site] = {
    "ashburn": Site(-77.4625, 39.0130, 32618, 3000.0),
    "santa_clara": Site(-121.9755, 37.3730, 32610, 2000.0),
}


@dataclass(frozen=True)
class Footprint:
    """One building drawn in a scene (geometry in the scene CRS, metres)."""

    geometry: Polygon
    cls: str
    name: str
    source: str  # "real" or "copy"

    @property
    def label(self) -> bool:
        """True for the positive class (data center)."""
        return self.cls == "datacenter"


def _normalise_class(df: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    cls = df["class"].astype(str).str.strip().str.lower().replace({"datacemter": "datacenter"})
    if "label" in df:
        cls = cls.where(~df["label"].fillna(False).astype(bool), "datacenter")
    cls = cls.where(cls.isin(CLASSES), "other")
    out = df.copy()
    out["class"] = cls
    out["label"] = cls == "datacenter"
    out["name"] = df["name"].astype(str) if "name" in df else "unknown"
    return out[["class", "label", "name", "geometry"]]


def read_footprints(geojson_path: str | os.PathLike | None = None) -> gpd.GeoDataFrame:
    """Read the real footprints (EPSG:4326) with normalised ``class``, ``label``, ``name``.

    Args:
        geojson_path: GeoJSON of footprints; default the ``data/datacenters.geojson`` shipped
            with the package.

    Returns:
        Polygons in EPSG:4326; the typo class ``datacemter`` is read as ``datacenter``.

    Raises:
        LabelError: The file is missing, unreadable, or holds no polygons.
    """
    path = Path(geojson_path) if geojson_path is not None else DEFAULT_FOOTPRINTS
    if not path.exists():
        raise LabelError(
            f"{path}: no such file. Expected the footprint GeoJSON (data/datacenters.geojson); "
            "pass the path of a GeoJSON with a `class` property."
        )
    try:
        df = gpd.read_file(path)
    except Exception as exc:  # pyogrio raises several types for broken files
        raise LabelError(f"{path}: not a readable vector file ({exc}). Expected GeoJSON polygons.") from exc
    df = df[df.geometry.notna() & df.geom_type.isin(["Polygon", "MultiPolygon"])]
    if df.empty or "class" not in df:
        raise LabelError(
            f"{path}: expected polygons with a `class` property, found {len(df)} usable rows. "
            "Check that the file is the footprint GeoJSON."
        )
    if df.crs is None:
        df = df.set_crs(4326)
    df = df.explode(index_parts=False).to_crs(4326)
    return _normalise_class(df).reset_index(drop=True)


def _site_frame(df: gpd.GeoDataFrame, site: Site) -> gpd.GeoDataFrame:
    utm = df.to_crs(site.epsg)
    x, y = Transformer.from_crs(4326, site.epsg, always_xy=True).transform(site.lon, site.lat)
    cen = utm.geometry.centroid
    near = np.hypot(cen.x - x, cen.y - y) < site.radius_m
    return utm[near.to_numpy()].reset_index(drop=True)


def footprints_for_site(
    geojson_path: str | os.PathLike | None = None, site: str = "ashburn"
) -> gpd.GeoDataFrame:
    """The real polygons of one cluster, reprojected to the site's UTM CRS.

    Args:
        geojson_path: Footprint GeoJSON; default the one shipped in ``data/``.
        site: ``"ashburn"`` (EPSG:32618), ``"santa_clara"`` (EPSG:32610), or ``"mixed"``:
            the Ashburn cluster with the Santa Clara cluster (true shapes, measured in its own
            zone) set down 300 m east of it, both in EPSG:32618.

    Returns:
        GeoDataFrame with ``class``, ``label``, ``name``, geometry in the site CRS.

    Raises:
        ValueError: Unknown site.
        LabelError: The footprint file cannot be read.
    """
    return site_layout(read_footprints(geojson_path), site)


def site_layout(df: gpd.GeoDataFrame, site: str) -> gpd.GeoDataFrame:
    """:func:`footprints_for_site` on already read footprints (EPSG:4326)."""
    if site not in (*SITES, "mixed"):
        raise ValueError(f"site must be one of {(*SITES, 'mixed')}, got {site!r}")
    if site != "mixed":
        return _site_frame(df, SITES[site])
    ash = _site_frame(df, SITES["ashburn"])
    sc = _site_frame(df, SITES["santa_clara"])
    if not len(sc) or not len(ash):
        return ash.set_crs(SITES["ashburn"].epsg, allow_override=True)
    a, s = ash.total_bounds, sc.total_bounds
    dx, dy = a[2] + 300.0 - s[0], (a[1] + a[3]) / 2 - (s[1] + s[3]) / 2
    moved = sc.geometry.translate(dx, dy).set_crs(SITES["ashburn"].epsg, allow_override=True)
    sc = gpd.GeoDataFrame(sc.drop(columns="geometry"), geometry=moved.values, crs=SITES["ashburn"].epsg)
    return gpd.GeoDataFrame(pd.concat([ash, sc], ignore_index=True), crs=SITES["ashburn"].epsg)


def shape_pool(df4326: gpd.GeoDataFrame) -> list[tuple[Polygon, str, str]]:
    """Every real footprint in its own UTM zone, centred on (0, 0): (polygon, class, name)."""
    pool: list[tuple[Polygon, str, str]] = []
    b = df4326.geometry.bounds
    lon = ((b["minx"] + b["maxx"]) / 2).to_numpy()
    zones = (np.floor((lon + 180.0) / 6.0) + 1).astype(int)
    for zone in sorted(set(zones.tolist())):
        part = df4326[zones == zone].to_crs(32600 + zone)
        for geom, cls, name in zip(part.geometry, part["class"], part["name"], strict=True):
            c = geom.centroid
            pool.append((affinity.translate(geom, -c.x, -c.y), cls, name))
    return pool


def choose_origin(
    layout: gpd.GeoDataFrame, width_m: float, height_m: float, rng: np.random.Generator, tries: int = 32
) -> tuple[float, float]:
    """Upper-left corner (x, y) of a scene window over the real layout.

    Among ``tries`` seeded candidate windows, keeps the one holding both a data center and a
    hard negative, then most whole buildings and few cut ones, penalising windows whose
    building area is mostly data centers (the real Ashburn core is; copies rebalance the rest).
    """
    minx, miny, maxx, maxy = layout.total_bounds
    geoms = layout.geometry.to_numpy()
    labels = layout["label"].to_numpy(bool)
    areas = layout.geometry.area.to_numpy()
    best, best_score = None, -np.inf
    for _ in range(tries):
        lo_x, hi_x = sorted((minx, maxx - width_m))
        lo_y, hi_y = sorted((miny, maxy - height_m))
        x0, y0 = rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)
        win = box(x0, y0, x0 + width_m, y0 + height_m)
        inside = shapely.within(geoms, win)
        cut = shapely.intersects(geoms, win) & ~inside
        drawn = shapely.area(shapely.intersection(geoms, win))
        hit = drawn >= 0.2 * areas
        total = drawn[hit].sum()
        balance = drawn[hit & labels].sum() / total - POSITIVE_SHARE if total else 1.0
        score = (inside.sum() - 0.3 * cut.sum() + 2.0 * (inside & labels).any() + 2.0 * (inside & ~labels).any()
                 + 30.0 * (drawn >= 0.5 * areas)[labels].any() + 30.0 * (drawn >= 0.5 * areas)[~labels].any()
                 - 150.0 * max(balance - 0.1, 0.0) * min(1.0, hit.sum() / 8.0))
        if score > best_score:
            best, best_score = (x0, y0), score
    x0, y0 = best
    return float(np.floor(x0)), float(np.floor(y0 + height_m))


def place_footprints(
    layout: gpd.GeoDataFrame,
    pool: list[tuple[Polygon, str, str]],
    transform: Affine,
    width: int,
    height: int,
    rng: np.random.Generator,
    density: float = 1.0,
    positive_share: float = POSITIVE_SHARE,
) -> list[Footprint]:
    """Real buildings inside the scene window plus non-overlapping copies up to the target count.

    Real polygons cut by the window edge are clipped to it; copies lie wholly inside.

    Args:
        layout: Real footprints in the scene CRS (``class``, ``name``, geometry).
        pool: Centred real shapes to copy (:func:`shape_pool`).
        transform: Scene transform (north-up).
        width: Scene columns.
        height: Scene rows.
        rng: Seeded generator.
        density: Multiplies the target number of buildings.
        positive_share: Share of data centers (by count and by area) the copies steer towards;
            at least one data center is always drawn.

    Returns:
        The footprints drawn in the scene, real ones first.
    """
    res = transform.a
    left, top = transform.c, transform.f
    scene = box(left, top - height * res, left + width * res, top)
    out: list[Footprint] = []
    for geom, cls, name in zip(layout.geometry, layout["class"], layout["name"], strict=True):
        if not geom.intersects(scene):
            continue
        clipped = shapely.make_valid(geom.intersection(scene))
        parts = [g for g in getattr(clipped, "geoms", [clipped]) if g.geom_type == "Polygon"]
        for part in parts:
            if part.area >= 100.0 and part.area >= 0.2 * geom.area:
                out.append(Footprint(part, cls, name, "real"))
    lo, hi = BUILDINGS_PER_2048
    target = int(round(rng.uniform(lo, hi) * density * width * height / 2048**2))
    target = max(target, 2)
    scene_min = min(width, height) * res
    fits = [p for p in pool if _diameter(p[0]) < 0.7 * scene_min]
    if not fits:
        return out
    gap = 15.0  # metres kept free around every building for yards, docks and car parks
    occupied = [f.geometry.buffer(gap) for f in out]
    inner = scene.buffer(-8.0)
    attempts, cap = 0, max(target, int(len(out) * 2.0))
    areas = np.array([p[0].area for p in fits])
    while attempts < 40 * cap and (
        len(out) < target
        or not _has_both(out)
        or (_area_share(out) > positive_share + 0.03 and len(out) < cap)
    ):
        attempts += 1
        want_pos = _wants_positive(out, rng, positive_share)
        pick = np.array([(p[1] == "datacenter") == want_pos for p in fits])
        if not pick.any():
            pick[:] = True
        weight = np.where(pick, areas if (not want_pos and _area_share(out) > positive_share) else 1.0, 0.0)
        shape, cls, name = fits[int(rng.choice(len(fits), p=weight / weight.sum()))]
        geom = affinity.rotate(shape, float(rng.uniform(0, 360)), origin=(0, 0))
        gx0, gy0, gx1, gy1 = geom.bounds
        ix0, iy0, ix1, iy1 = inner.bounds
        if gx1 - gx0 >= ix1 - ix0 or gy1 - gy0 >= iy1 - iy0:
            continue
        dx = rng.uniform(ix0 - gx0, ix1 - gx1)
        dy = rng.uniform(iy0 - gy0, iy1 - gy1)
        geom = affinity.translate(geom, dx, dy)
        padded = geom.buffer(gap)
        if any(padded.intersects(o) for o in occupied):
            continue
        out.append(Footprint(geom, cls, name, "copy"))
        occupied.append(padded)
    return out


def _diameter(geom: Polygon) -> float:
    x0, y0, x1, y1 = geom.bounds
    return float(np.hypot(x1 - x0, y1 - y0))


def _has_both(current: list[Footprint]) -> bool:
    return any(f.label for f in current) and any(not f.label for f in current)


def _area_share(current: list[Footprint]) -> float:
    total = sum(f.geometry.area for f in current)
    return sum(f.geometry.area for f in current if f.label) / total if total else 0.0


def _wants_positive(current: list[Footprint], rng: np.random.Generator, share: float = POSITIVE_SHARE) -> bool:
    """Next copy's kind: keep both kinds present, then steer count and area shares to ``share``."""
    pos = sum(f.label for f in current)
    if pos == 0:
        return True
    if pos == len(current):
        return False
    count_share = pos / len(current)
    if count_share < share and _area_share(current) < share:
        return bool(rng.random() < 0.8)
    if count_share > share or _area_share(current) > share:
        return False
    return bool(rng.random() < share)
