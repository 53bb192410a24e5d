"""Proposals and per-pixel uncertainty maps on hand-made probability maps."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.windows import Window

from loop.proposals import (
    Proposal,
    bald_map,
    entropy_map,
    margin_map,
    pixel_area_m2,
    proposals_from_probability,
    tta_disagreement,
)

UTM = CRS.from_epsg(32618)
RES = 0.6


def _chip_transform(window: Window) -> Affine:
    scene = Affine(RES, 0.0, 500_000.0, 0.0, -RES, 4_300_000.0)
    return scene @ Affine.translation(window.col_off, window.row_off)


def test_entropy_and_margin_peak_at_one_half():
    p = np.array([[0.0, 0.01, 0.25, 0.5, 0.75, 0.99, 1.0]], dtype=np.float32)
    for fn in (entropy_map, margin_map):
        u = fn(p)
        assert u.shape == p.shape and u.dtype == np.float32
        assert np.argmax(u) == 3 and u[0, 3] == pytest.approx(1.0)
        assert u[0, 0] == pytest.approx(0.0, abs=1e-5) and u[0, -1] == pytest.approx(0.0, abs=1e-5)
        assert u[0, 2] == pytest.approx(u[0, 4], abs=1e-6)  # symmetric around 0.5
        assert u[0, 1] < u[0, 2] < u[0, 3]
    assert margin_map(p)[0, 2] == pytest.approx(0.5)


def test_tta_disagreement_high_only_where_transforms_disagree():
    rng = np.random.default_rng(0)
    probs = np.full((8, 16, 16), 0.5, dtype=np.float32)  # every transform agrees on 0.5
    probs[:, :8, :] = 0.02 + 0.01 * rng.random((8, 8, 16))  # agree on background
    probs[:4, 12:, 12:] = 0.98  # half the transforms see a building, half do not
    probs[4:, 12:, 12:] = 0.02
    u = tta_disagreement(probs)
    assert u.shape == (16, 16)
    assert u[12:, 12:].min() > 0.8
    assert u[:8].max() < 0.01
    assert u[8:12, :12].max() == pytest.approx(0.0, abs=1e-6)  # agreeing 0.5 is not disagreement
    with pytest.raises(ValueError):
        tta_disagreement(probs[0])


def test_bald_high_where_samples_disagree_low_where_all_say_one_half():
    s = np.zeros((6, 4, 8), dtype=np.float32)
    s[:, :, :4] = 0.5  # every sample says 0.5: ambiguous, but the model is sure it is ambiguous
    s[::2, :, 4:] = 0.95  # samples split between building and background
    s[1::2, :, 4:] = 0.05
    bald = bald_map(s)
    ent = entropy_map(s.mean(axis=0))
    assert bald[:, :4].max() < 1e-4 and ent[:, :4].min() > 0.99
    assert bald[:, 4:].min() > 0.5
    assert (bald >= 0).all() and (bald <= 1).all()


def test_proposal_geometry_lands_on_the_blob_in_scene_crs():
    window = Window(512, 256, 64, 64)
    transform = _chip_transform(window)
    prob = np.full((64, 64), 0.05, dtype=np.float32)
    prob[10:30, 40:60] = 0.9  # 20 x 20 px blob: rows 10..29, cols 40..59
    prob[50:53, 5:8] = 0.9  # 9 px speck, below min_area_px
    unc = np.zeros_like(prob)
    unc[10:30, 40:60] = 0.3
    found = proposals_from_probability(
        prob, transform, "s1", window, min_area_px=20, uncertainty=unc, crs=UTM
    )
    assert len(found) == 1
    p = found[0]
    assert isinstance(p, Proposal) and p.scene_id == "s1" and p.window == window
    minx, miny, maxx, maxy = p.geometry.bounds
    # Scene column 512 + 40 .. 512 + 60, row 256 + 10 .. 256 + 30.
    assert minx == pytest.approx(500_000.0 + (512 + 40) * RES)
    assert maxx == pytest.approx(500_000.0 + (512 + 60) * RES)
    assert maxy == pytest.approx(4_300_000.0 - (256 + 10) * RES)
    assert miny == pytest.approx(4_300_000.0 - (256 + 30) * RES)
    assert p.area_m2 == pytest.approx(400 * RES * RES) == pytest.approx(p.geometry.area)
    assert p.score == pytest.approx(0.9) and p.uncertainty == pytest.approx(0.3)
    assert len(proposals_from_probability(prob, transform, "s1", window, min_area_px=5)) == 2


def test_proposals_separate_regions_with_their_own_scores():
    window = Window(0, 0, 32, 32)
    prob = np.zeros((32, 32), dtype=np.float32)
    prob[2:12, 2:12] = 0.6
    prob[20:30, 15:31] = 0.95
    found = proposals_from_probability(prob, _chip_transform(window), "s", window, min_area_px=10)
    assert [round(p.score, 3) for p in found] == [0.95, 0.6]  # largest first
    assert found[0].area_m2 > found[1].area_m2
    assert found[0].uncertainty < found[1].uncertainty  # default uncertainty is entropy
    assert all(p.geometry.is_valid for p in found)
    assert proposals_from_probability(np.zeros((8, 8)), _chip_transform(window), "s", window) == []


def test_pixel_area_is_ground_area_in_any_crs():
    t = Affine(2.0, 0, 0, 0, -2.0, 0)
    assert pixel_area_m2(t) == 4.0
    # 0.6 m ground pixels near Ashburn, VA (39.0 N, 77.5 W) on four grids
    lat, lon = 39.0, -77.5
    utm = Transformer.from_crs(4326, 32618, always_xy=True).transform(lon, lat)
    merc = Transformer.from_crs(4326, 3857, always_xy=True).transform(lon, lat)
    stateplane = Transformer.from_crs(4326, 2283, always_xy=True).transform(lon, lat)  # VA north, US ft
    k = 1 / np.cos(np.radians(lat))  # Web Mercator's scale there
    deg_lat, deg_lon = 0.6 / 110_996.0, 0.6 / (111_412.8 * np.cos(np.radians(lat)))  # metres per degree at 39 N
    ft = 0.6 / 0.3048006096
    grids = {
        32618: Affine(0.6, 0, utm[0], 0, -0.6, utm[1]),
        3857: Affine(0.6 * k, 0, merc[0], 0, -0.6 * k, merc[1]),
        2283: Affine(ft, 0, stateplane[0], 0, -ft, stateplane[1]),
        4326: Affine(deg_lon, 0, lon, 0, -deg_lat, lat),
    }
    for epsg, grid in grids.items():
        assert pixel_area_m2(grid, CRS.from_epsg(epsg), (256, 256)) == pytest.approx(0.36, rel=0.01), epsg
    # a bottom-up grid measures the same
    up = Affine(deg_lon, 0, lon, 0, deg_lat, lat)
    assert pixel_area_m2(up, CRS.from_epsg(4326), (256, 256)) == pytest.approx(0.36, rel=0.01)
    # and proposals carry that area: 100 pixels of a Web Mercator chip are 36 m2, not 60
    prob = np.zeros((64, 64), np.float32)
    prob[10:20, 10:20] = 0.9
    [p] = proposals_from_probability(prob, grids[3857], "s", Window(0, 0, 64, 64), min_area_px=10,
                                     crs=CRS.from_epsg(3857))
    assert p.area_m2 == pytest.approx(36.0, rel=0.01)


def test_proposal_outlines_are_simplified_not_pixel_staircases():
    rr, cc = np.mgrid[0:128, 0:128]
    diamond = (np.abs(rr - 64) + np.abs(cc - 64)) <= 40  # edges at 45 degrees: staircases in pixels
    prob = np.where(diamond, 0.9, 0.05).astype(np.float32)
    t = Affine(0.6, 0, 500_000.0, 0, -0.6, 4_300_000.0)
    [p] = proposals_from_probability(prob, t, "s", Window(0, 0, 128, 128))
    n_vertices = len(p.geometry.exterior.coords)
    assert n_vertices < 20  # a staircase outline of this diamond has about 320
    assert p.geometry.is_valid
    assert abs(p.geometry.area - diamond.sum() * 0.36) / (diamond.sum() * 0.36) < 0.05
