"""Seeded synthetic NAIP-like scenes built on the real footprint layouts.

No NAIP imagery ships with dclabel, so demos, tests and calibration use scenes drawn here: the
real hand-digitized footprints (``data/datacenters.geojson``) of the Ashburn or Santa Clara
cluster, reprojected to the site's UTM zone, topped up with copies of real shapes, and painted
with the cues a detector must learn (rooftop HVAC grids and generator yards for data centers;
docks, trailers, car parks and skylights for the look-alike hard negatives) over fields,
forest, roads and houses. Roof tones share one distribution across classes, so brightness
alone cannot separate them. Same config (seed included) -> same bytes.

Example:
    >>> from model.synth import SynthConfig, generate_scene
    >>> tif, truth = generate_scene("scene.tif", "truth.geojson", SynthConfig(seed=3))
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import geopandas as gpd
import numpy as np
import shapely
from affine import Affine
from pyproj import Transformer
from rasterio.crs import CRS

from model.atomic import atomic_path
from model.errors import ConfigError
from model.scene import write_geotiff
from model.synth_background import houses, land_cover, road_network, sensor
from model.synth_buildings import Knobs, draw_buildings
from model.synth_layout import (
    DEFAULT_FOOTPRINTS,
    POSITIVE_SHARE,
    SITES,
    Footprint,
    choose_origin,
    footprints_for_site,
    place_footprints,
    read_footprints,
    shape_pool,
    site_layout,
)
from model.synth_paint import Canvas, Frame

__all__ = ["SynthConfig", "generate_scene", "footprints_for_site", "render_scene", "DEFAULT_FOOTPRINTS"]


@dataclass(frozen=True)
class SynthConfig:
    """What scene to draw.

    Attributes:
        width: Columns (pixels).
        height: Rows (pixels).
        res: Pixel size in metres (NAIP: 0.6).
        seed: Seed of every random choice; same config -> same bytes.
        site: Real cluster layout and UTM zone: ``ashburn`` (EPSG:32618), ``santa_clara``
            (EPSG:32610), or ``mixed`` (both clusters side by side, EPSG:32618).
        difficulty: 0 = crisp cues, few confusers; 1 = default; 2 = hard (weaker rooftop
            grids, more skylight grids, gridded units and generator-like rows on hard
            negatives, fewer generator yards, more haze, blur and noise).
        density: Multiplies the number of buildings (about 12-22 per 2048 x 2048 px).
        positive_share: Share of data centers among the placed copies, by count and by area
            (0.4: a dense cluster, where the demo and training scenes sit; real NAIP quarter
            quads hold data centers in 0.1-6.5 % of their tiles, see bench/fastpath.py).
        real_layout: Place the window over the site's real cluster (real buildings in their real
            positions, then copies); False: copies only, at random positions near the site.
        footprints: Footprint GeoJSON; default the ``data/datacenters.geojson`` of the package.
    """

    width: int = 2048
    height: int = 2048
    res: float = 0.6
    seed: int = 0
    site: Literal["ashburn", "santa_clara", "mixed"] = "ashburn"
    difficulty: float = 1.0
    density: float = 1.0
    positive_share: float = POSITIVE_SHARE
    real_layout: bool = True
    footprints: Path | None = None

    def __post_init__(self) -> None:
        if self.width < 64 or self.height < 64:
            raise ConfigError(f"SynthConfig: width and height must be >= 64 px, got {self.width}x{self.height}")
        if not 0.1 <= self.res <= 10:
            raise ConfigError(f"SynthConfig: res must be in 0.1..10 m, got {self.res}")
        if self.site not in (*SITES, "mixed"):
            raise ConfigError(f"SynthConfig: site must be one of {(*SITES, 'mixed')}, got {self.site!r}")
        if not 0 <= self.difficulty <= 5:
            raise ConfigError(f"SynthConfig: difficulty must be in 0..5, got {self.difficulty}")
        if not 0 < self.positive_share <= 1:
            raise ConfigError(f"SynthConfig: positive_share must be in (0, 1], got {self.positive_share}")
        if self.density <= 0:
            raise ConfigError(f"SynthConfig: density must be > 0, got {self.density}")


@dataclass(frozen=True)
class SynthScene:
    """A rendered scene in memory: uint8 (4, H, W) image, georeference and drawn footprints."""

    image: np.ndarray
    crs: CRS
    transform: Affine
    footprints: tuple[Footprint, ...]

    def truth(self) -> gpd.GeoDataFrame:
        """The drawn footprints as a GeoDataFrame in the scene CRS."""
        rows = [{"class": f.cls, "label": f.label, "name": f.name, "source": f.source} for f in self.footprints]
        geoms = [f.geometry for f in self.footprints]
        return gpd.GeoDataFrame(rows, geometry=geoms, crs=self.crs) if rows else gpd.GeoDataFrame(
            {"class": [], "label": [], "name": [], "source": []}, geometry=[], crs=self.crs)


def render_scene(config: SynthConfig) -> SynthScene:
    """Draw a scene in memory (no files written).

    Args:
        config: What to draw.

    Returns:
        The :class:`SynthScene`.

    Raises:
        LabelError: The footprint GeoJSON cannot be read.
    """
    rng = np.random.default_rng(config.seed)
    real = read_footprints(config.footprints)
    layout = site_layout(real, config.site)
    home = SITES["santa_clara" if config.site == "santa_clara" else "ashburn"]
    w_m, h_m = config.width * config.res, config.height * config.res
    if config.real_layout:
        left, top = choose_origin(layout, w_m, h_m, rng)
    else:  # copies only, somewhere near the site (its UTM zone and land cover)
        layout = layout.iloc[0:0]
        x, y = Transformer.from_crs(4326, home.epsg, always_xy=True).transform(home.lon, home.lat)
        left, top = float(np.floor(x + rng.uniform(-1, 1) * home.radius_m)), float(np.floor(y + rng.uniform(-1, 1) * home.radius_m))
    epsg = home.epsg
    transform = Affine(config.res, 0.0, left, 0.0, -config.res, top)
    placed = place_footprints(layout, shape_pool(real), transform, config.width, config.height, rng,
                              density=config.density, positive_share=config.positive_share)
    cv = Canvas(config.width, config.height, transform)
    land_cover(cv, config.site, rng)
    angles = [Frame.of(f.geometry).angle for f in placed]
    lots = [f.geometry.buffer(30.0) for f in placed]
    roads = road_network(cv, lots, angles, rng)
    keep_out = shapely.union_all(lots + [r.buffer(6.0) for r in roads]) if lots or roads else shapely.Polygon()
    houses(cv, keep_out, angles, config.site, rng)
    azimuth = rng.uniform(-np.pi / 3, np.pi / 3)  # shadows fall north-west .. north-east
    length = rng.uniform(0.35, 0.6) / config.res  # pixels of shadow per metre of height
    sun = (-np.cos(azimuth) * length, np.sin(azimuth) * length)
    draw_buildings(cv, [(f.geometry, f.cls) for f in placed], Knobs.from_difficulty(config.difficulty), sun, rng)
    image = sensor(cv.img, config.difficulty, rng)
    del cv
    return SynthScene(image, CRS.from_epsg(epsg), transform, tuple(placed))


def generate_scene(
    out_tif: str | os.PathLike, out_truth_geojson: str | os.PathLike, config: SynthConfig = SynthConfig()
) -> tuple[Path, Path]:
    """Draw a synthetic scene and write it with its ground truth (both atomically).

    Args:
        out_tif: GeoTIFF to write: 4-band uint8 (R, G, B, NIR), tiled, deflate, UTM CRS.
        out_truth_geojson: GeoJSON (EPSG:4326, RFC 7946) of every footprint drawn, with
            ``class`` (datacenter/warehouse/retail/other), ``label`` (bool), ``name`` and
            ``source`` (``real`` for the real layout, ``copy`` for placed copies).
        config: What to draw.

    Returns:
        (GeoTIFF path, GeoJSON path).

    Raises:
        LabelError: The footprint GeoJSON cannot be read.
    """
    scene = render_scene(config)
    tags = {f"synth_{k}": str(v) for k, v in asdict(config).items()}
    tif = write_geotiff(out_tif, scene.image, scene.crs, scene.transform, tags=tags,
                        photometric="minisblack", interleave="pixel")
    truth = write_truth(scene.truth(), out_truth_geojson)
    return tif, truth


def write_truth(gdf: gpd.GeoDataFrame, path: str | os.PathLike) -> Path:
    """Write footprints as RFC 7946 GeoJSON (EPSG:4326) via a temporary file and ``os.replace``."""
    path = Path(path)
    out = gdf.to_crs(4326)
    with atomic_path(path) as tmp:
        out.to_file(tmp, driver="GeoJSON", engine="pyogrio", layer="footprints",
                    layer_options={"RFC7946": "YES"})
    return path
