"""Scenes at another pixel size than the checkpoint's: resampled through a VRT, outputs on the scene grid."""

from __future__ import annotations

import warnings

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from geodata import make_scene
from rasterio.crs import CRS
from rasterio.windows import Window
from test_model_detect import _train_tiny

from model.checkpoint import load_checkpoint, save_checkpoint
from model.detect import DetectConfig, detect_scene
from model.ground import pixel_size_m
from model.scene import open_scene, read_window, write_geotiff
from model.scene_vrt import resampled_scene

torch.set_num_threads(1)


def _upsampled_copy(path, out, factor: int = 2):
    """The scene with every pixel repeated ``factor`` x ``factor`` times (pixel size / factor)."""
    with rasterio.open(path) as src:
        img, t, crs = src.read(), src.transform, src.crs
    big = img.repeat(factor, axis=1).repeat(factor, axis=2)
    return write_geotiff(out, big, crs, t * t.scale(1 / factor))


def test_pixel_size_in_metres_and_resampled_view(tmp_path):
    path, _ = make_scene(tmp_path / "s.tif", (64, 96), [(8, 8, 40, 60)], res=0.3)
    scene = open_scene(path, bands=(3, 2, 1, 4))
    assert pixel_size_m(scene) == pytest.approx(0.3)
    view = resampled_scene(scene, 0.6, tmp_path)
    assert (view.width, view.height) == (48, 32) and view.res == pytest.approx((0.6, 0.6))
    assert view.bands == (3, 2, 1, 4) and view.crs == scene.crs
    assert (view.transform.c, view.transform.f) == (scene.transform.c, scene.transform.f)
    fine = read_window(scene, Window(0, 0, 96, 64)).astype(float)
    coarse = read_window(view, Window(0, 0, 48, 32)).astype(float)
    means = fine.reshape(4, 32, 2, 48, 2).mean(axis=(2, 4))  # each coarse pixel averages its 2x2 block
    assert np.abs(coarse - means).max() <= 1.0
    feet = tmp_path / "ft.tif"  # a state plane CRS in US survey feet: 2 ft pixels are 0.61 m
    write_geotiff(feet, np.zeros((4, 8, 8), np.uint8), CRS.from_epsg(2283), rasterio.Affine(2, 0, 1e6, 0, -2, 7e6))
    assert pixel_size_m(open_scene(feet)) == pytest.approx(0.6096, abs=1e-4)


def test_detect_resamples_a_finer_scene_to_the_checkpoint_and_writes_on_its_grid(tmp_path):
    path, _, ck, _ = _train_tiny(tmp_path)
    assert ck.resolution_m == 0.6  # recorded as unknown by fit on bare arrays: NAIP's 0.6 m assumed
    ck.train["resolution_m"] = 0.6
    ckpt = load_checkpoint(save_checkpoint(ck, tmp_path / "m.pt"))
    fine = _upsampled_copy(path, tmp_path / "fine.tif")
    cfg = DetectConfig(threshold=0.3, tile_size=128, overlap=32, device="cpu")
    base = detect_scene(ckpt, path, cfg, output_mask=tmp_path / "base_mask.tif")
    assert len(base) > 0
    with pytest.warns(UserWarning, match=r"pixels are 0\.30 m.*resampled to 0\.6 m"):
        seen = detect_scene(ckpt, fine, cfg, output_mask=tmp_path / "fine_mask.tif",
                            output_prob=tmp_path / "fine_prob.tif")
    # averaging 2x2 copies of a pixel gives the pixel back: the model saw the original scene
    assert len(seen) == len(base)
    a, b = base.geometry.union_all(), seen.geometry.union_all()
    assert a.symmetric_difference(b).area <= 1e-6 * a.area
    assert seen["area_m2"].sum() == pytest.approx(base["area_m2"].sum())
    with rasterio.open(tmp_path / "fine_mask.tif") as m, rasterio.open(tmp_path / "base_mask.tif") as m0, \
            rasterio.open(tmp_path / "fine_prob.tif") as p:
        s = open_scene(fine)
        assert (m.width, m.height, m.transform, m.crs) == (s.width, s.height, s.transform, s.crs)
        assert (p.width, p.height, p.transform) == (s.width, s.height, s.transform)
        up = m0.read(1).repeat(2, axis=0).repeat(2, axis=1)
        assert np.mean(m.read(1) == up) > 0.98  # the same mask, bilinear at the edges
    with pytest.warns(UserWarning, match="--no-resample"):
        as_is = detect_scene(ckpt, fine, DetectConfig(threshold=0.3, tile_size=128, overlap=32, device="cpu",
                                                      resample=False))
    assert isinstance(as_is, gpd.GeoDataFrame)


def test_scene_at_the_checkpoint_resolution_is_read_directly(tmp_path, recwarn):
    path, _, ck, _ = _train_tiny(tmp_path)
    ck.train["resolution_m"] = 0.55  # within 20 %: no resampling, no warning
    detect_scene(ck, path, DetectConfig(threshold=0.3, tile_size=128, overlap=32, device="cpu"))
    assert not [w for w in recwarn if "trained on" in str(w.message)]


def _warped(src_path, out_path, crs: str):
    from rasterio.warp import Resampling, calculate_default_transform, reproject

    with rasterio.open(src_path) as src:
        t, w, h = calculate_default_transform(src.crs, crs, src.width, src.height, *src.bounds)
        profile = src.profile | {"crs": crs, "transform": t, "width": w, "height": h}
        with rasterio.open(out_path, "w", **profile) as dst:
            for b in range(1, src.count + 1):
                reproject(rasterio.band(src, b), rasterio.band(dst, b), resampling=Resampling.nearest)
    return out_path


def test_web_mercator_scene_measures_on_the_ground(tmp_path):
    """A scene warped to Web Mercator (EPSG:3857), whose "metres" are 1.29x shorter than the ground's
    at 39 N: its pixel size, merge distance and footprint areas are counted on the ground."""
    from test_scale import ROOFS, bright_roof_checkpoint

    utm, _ = make_scene(tmp_path / "utm.tif", (300, 350), ROOFS, seed=3)
    merc = open_scene(_warped(utm, tmp_path / "merc.tif", "EPSG:3857"))
    assert merc.res[0] == pytest.approx(0.6 * 1.29, rel=0.02)  # CRS units
    assert pixel_size_m(merc) == pytest.approx(0.6, rel=0.01)  # ground
    cfg = DetectConfig(tile_size=64, overlap=16, batch_size=2, device="cpu", min_area=50)
    ckpt = bright_roof_checkpoint()
    a = detect_scene(ckpt, utm, cfg).sort_values("centroid_lat")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # 0.6 m on the ground: no resampling
        b = detect_scene(ckpt, merc, cfg).sort_values("centroid_lat")
    assert len(a) == len(b) > 0
    np.testing.assert_allclose(b["area_m2"].to_numpy(), a["area_m2"].to_numpy(), rtol=0.05)  # not 1.66x


def test_scene_in_degrees_is_warped_to_utm_and_answered_in_its_own_crs(tmp_path):
    from test_scale import ROOFS, bright_roof_checkpoint

    from model.errors import SceneError

    utm, _ = make_scene(tmp_path / "utm.tif", (300, 350), ROOFS, seed=3)
    geo = _warped(utm, tmp_path / "geo.tif", "EPSG:4326")
    cfg = DetectConfig(tile_size=64, overlap=16, batch_size=2, device="cpu", min_area=50)
    ckpt = bright_roof_checkpoint()
    a = detect_scene(ckpt, utm, cfg).sort_values("centroid_lat")
    with pytest.warns(UserWarning, match="geographic coordinates.*warped to the local UTM zone at 0.6 m"):
        b = detect_scene(ckpt, geo, cfg, output_mask=tmp_path / "mask.tif").sort_values("centroid_lat")
    assert b.crs == "EPSG:4326" and len(a) == len(b) > 0
    np.testing.assert_allclose(b["area_m2"].to_numpy(), a["area_m2"].to_numpy(), rtol=0.05)
    np.testing.assert_allclose(b["centroid_lat"].to_numpy(), a["centroid_lat"].to_numpy(), atol=2e-5)  # ~2 m
    with rasterio.open(tmp_path / "mask.tif") as m, rasterio.open(geo) as g:
        assert (m.crs, m.transform, m.width) == (g.crs, g.transform, g.width) and m.read(1).any()
    with pytest.raises(SceneError, match="geographic coordinates"):
        detect_scene(ckpt, geo, DetectConfig(tile_size=64, overlap=16, device="cpu", resample=False))
