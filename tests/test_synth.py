"""Synthetic scene generator: determinism, georeference, truth, and that brightness alone fails."""

from __future__ import annotations

import json

import geopandas as gpd
import numpy as np
import pytest
import rasterio
from rasterio import features
from shapely.geometry import box

from model.errors import LabelError
from model.synth import SynthConfig, footprints_for_site, generate_scene, render_scene
from model.synth_buildings import Knobs

SMALL = 512


@pytest.fixture(scope="module")
def ashburn_scene(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    cfg = SynthConfig(width=SMALL, height=SMALL, seed=3)
    return generate_scene(out / "a.tif", out / "a.geojson", cfg), cfg


def _best_threshold_iou(score: np.ndarray, truth: np.ndarray) -> float:
    """Best IoU of `score > t` or `score < t` against `truth` over 256 thresholds."""
    edges = np.linspace(score.min(), score.max() + 1e-6, 257)
    pos = np.histogram(score[truth], edges)[0].astype(float)
    neg = np.histogram(score[~truth], edges)[0].astype(float)
    above = np.cumsum(pos[::-1])[::-1] / (pos.sum() + np.cumsum(neg[::-1])[::-1])
    below = np.cumsum(pos) / (pos.sum() + np.cumsum(neg))
    return float(max(above.max(), below.max()))


def _dc_mask(truth: gpd.GeoDataFrame, crs, transform, shape) -> np.ndarray:
    dcs = truth[truth["label"]].to_crs(crs)
    if dcs.empty:
        return np.zeros(shape, bool)
    return features.rasterize([(g, 1) for g in dcs.geometry], out_shape=shape, transform=transform,
                              dtype="uint8").astype(bool)


def test_same_seed_same_bytes_other_seed_differs(tmp_path, ashburn_scene):
    (tif, truth), cfg = ashburn_scene
    tif2, truth2 = generate_scene(tmp_path / "b.tif", tmp_path / "b.geojson", cfg)
    with rasterio.open(tif) as a, rasterio.open(tif2) as b:
        assert np.array_equal(a.read(), b.read())
    assert truth.read_bytes() == truth2.read_bytes()
    other = render_scene(SynthConfig(width=SMALL, height=SMALL, seed=4))
    with rasterio.open(tif) as a:
        assert not np.array_equal(a.read(), other.image)


def test_georeference_bands_and_layout(ashburn_scene):
    (tif, _), cfg = ashburn_scene
    with rasterio.open(tif) as src:
        assert src.count == 4 and src.dtypes == ("uint8",) * 4
        assert src.crs.to_epsg() == 32618
        assert (src.width, src.height) == (SMALL, SMALL)
        t = src.transform
        assert t.b == 0 and t.d == 0 and t.a == pytest.approx(0.6) and t.e == pytest.approx(-0.6)
        assert src.compression is not None and src.compression.value.lower() == "deflate"
        assert src.profile.get("tiled") and src.block_shapes[0] == (256, 256)
        img = src.read()
    # the scene sits over the real Ashburn cluster (Loudoun County, VA)
    lon, lat = gpd.GeoSeries(gpd.points_from_xy([t.c], [t.f]), crs=32618).to_crs(4326).iloc[0].coords[0]
    assert -77.6 < lon < -77.3 and 38.9 < lat < 39.1
    # four bands with real content: vegetation makes NIR exceed red on a good share of pixels
    assert img.std(axis=(1, 2)).min() > 5
    assert (img[3].astype(int) > img[0].astype(int) + 20).mean() > 0.05


def test_santa_clara_uses_zone_10():
    scene = render_scene(SynthConfig(width=256, height=256, seed=1, site="santa_clara"))
    assert scene.crs.to_epsg() == 32610
    lon, _ = gpd.GeoSeries(gpd.points_from_xy([scene.transform.c], [scene.transform.f]),
                           crs=32610).to_crs(4326).iloc[0].coords[0]
    assert -122.1 < lon < -121.8


def test_truth_is_rfc7946_inside_scene_with_both_kinds(ashburn_scene):
    (tif, truth_path), _ = ashburn_scene
    doc = json.loads(truth_path.read_text())
    assert doc["type"] == "FeatureCollection" and "crs" not in doc  # RFC 7946: WGS84 implied
    truth = gpd.read_file(truth_path)
    assert truth.crs.to_epsg() == 4326
    assert set(truth["class"]) <= {"datacenter", "warehouse", "retail", "other"}
    assert (truth["label"] == (truth["class"] == "datacenter")).all()
    assert truth["label"].any() and (~truth["label"]).any()
    with rasterio.open(tif) as src:
        scene_box = box(*src.bounds).buffer(0.01)
        crs = src.crs
    assert truth.to_crs(crs).within(scene_box).all()


def test_truth_mask_covers_roof_pixels(ashburn_scene):
    (tif, truth_path), _ = ashburn_scene
    with rasterio.open(tif) as src:
        img = src.read().astype(np.float32)
        dc = _dc_mask(gpd.read_file(truth_path), src.crs, src.transform, img.shape[1:])
    assert dc.sum() > 1000
    red, nir = img[0], img[3]
    roof_like = nir < 1.15 * red + 10  # built surfaces: NIR about as bright as red
    vegetation = nir > 1.5 * red
    assert roof_like[dc].mean() > 0.8
    assert vegetation[dc].mean() < 0.05
    assert vegetation[~dc].mean() > 0.05


def test_brightness_threshold_is_poor_over_several_scenes():
    # 512 px scenes hold 2-7 buildings, too few for a pixel statistic; 1024 px hold ~5-17
    bright, truth = [], []
    for seed in range(3):
        scene = render_scene(SynthConfig(width=1024, height=1024, seed=seed))
        bright.append(scene.image[:3].astype(np.float32).mean(0))
        truth.append(_dc_mask(scene.truth(), scene.crs, scene.transform, (1024, 1024)))
    dc = np.concatenate(truth)
    assert dc.mean() > 0.02  # the data centers are there ...
    assert _best_threshold_iou(np.concatenate(bright), dc) < 0.3  # ... but brightness cannot find them


def test_difficulty_is_a_real_knob():
    easy, hard = Knobs.from_difficulty(0.0), Knobs.from_difficulty(2.0)
    assert hard.cue < easy.cue and hard.p_yard < easy.p_yard
    assert hard.p_skylights > easy.p_skylights and hard.p_neg_grid > easy.p_neg_grid
    a = render_scene(SynthConfig(width=256, height=256, seed=5, difficulty=0.0)).image.astype(np.float32)
    b = render_scene(SynthConfig(width=256, height=256, seed=5, difficulty=2.0)).image.astype(np.float32)
    # more sensor noise at high difficulty: larger pixel-to-pixel differences in the NIR band
    assert np.abs(np.diff(b[3], axis=1)).mean() > np.abs(np.diff(a[3], axis=1)).mean()


def test_positive_share_and_copies_only_layout_make_a_sparse_scene():
    def share(cfg: SynthConfig) -> tuple[float, set[str]]:
        fps = render_scene(cfg).footprints
        return sum(f.label for f in fps) / len(fps), {f.source for f in fps}

    dense, dense_sources = share(SynthConfig(width=1536, height=1536, seed=2))
    sparse, sparse_sources = share(SynthConfig(width=1536, height=1536, seed=2, real_layout=False, positive_share=0.1))
    assert "real" in dense_sources and sparse_sources == {"copy"}
    assert sparse <= 0.2 < dense
    with pytest.raises(ValueError, match="positive_share"):
        SynthConfig(positive_share=0)


def test_footprints_for_site_reprojects_real_clusters():
    ash = footprints_for_site(site="ashburn")
    sc = footprints_for_site(site="santa_clara")
    assert ash.crs.to_epsg() == 32618 and sc.crs.to_epsg() == 32610
    assert 50 <= len(ash) <= 65 and 28 <= len(sc) <= 38
    assert "datacemter" not in set(ash["class"]) | set(sc["class"])
    assert ash["label"].any() and (~ash["label"]).any()
    areas = ash.area
    assert areas.min() > 500 and areas.max() < 200_000  # square metres, real sizes
    mixed = footprints_for_site(site="mixed")
    assert len(mixed) == len(ash) + len(sc) and mixed.crs.to_epsg() == 32618


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="site"):
        SynthConfig(site="mars")
    with pytest.raises(ValueError, match="width"):
        SynthConfig(width=10)
    with pytest.raises(LabelError, match="no such file"):
        render_scene(SynthConfig(width=128, height=128, footprints=tmp_path / "missing.geojson"))
