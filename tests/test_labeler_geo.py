"""Exact scene-CRS <-> napari coordinate conversion (GUI-free)."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine
from rasterio.windows import Window
from shapely.geometry import MultiPolygon, Polygon, box

from labeler.geo import (
    crs_to_napari,
    geometry_to_napari,
    join_parts,
    napari_to_crs,
    napari_to_geometry,
    polygon_parts,
    window_to_napari,
)

# A UTM 18N NAIP-like grid: 0.6 m pixels, north up.
T = Affine(0.6, 0.0, 500_000.0, 0.0, -0.6, 4_300_000.0)
# A rotated grid to prove the general affine is handled.
T_ROT = Affine(0.5, 0.1, 300_000.0, 0.12, -0.55, 4_100_000.0)


@pytest.mark.parametrize("transform", [T, T_ROT])
def test_round_trip_moves_no_vertex_more_than_1e6_px(transform: Affine) -> None:
    rng = np.random.default_rng(0)
    rc = rng.uniform(0, 12_000, size=(500, 2))
    back = crs_to_napari(napari_to_crs(rc, transform), transform)
    assert np.abs(back - rc).max() < 1e-6


def test_pixel_corner_maps_to_half_pixel_offset() -> None:
    # upper-left corner of the scene is the upper-left corner of pixel (0, 0): napari (-0.5, -0.5)
    rc = crs_to_napari(np.array([[500_000.0, 4_300_000.0]]), T)
    np.testing.assert_allclose(rc, [[-0.5, -0.5]])
    # centre of pixel (10, 20) is napari (10, 20)
    x, y = T * (20.5, 10.5)
    np.testing.assert_allclose(crs_to_napari(np.array([[x, y]]), T), [[10.0, 20.0]], atol=1e-9)


def test_polygon_round_trip_and_pixel_units() -> None:
    poly = Polygon([(500_006.0, 4_299_994.0), (500_060.0, 4_299_994.0), (500_060.0, 4_299_940.0)])
    verts = geometry_to_napari(poly, T)
    assert verts.shape == (3, 2)
    back = napari_to_geometry(verts, T)
    assert back.equals_exact(poly, 1e-6)
    # moving one napari vertex by (+2 rows, +3 cols) moves it by (+1.8 m x, -1.2 m y)
    moved = verts.copy()
    moved[1] += (2.0, 3.0)
    geom = napari_to_geometry(moved, T)
    x, y = np.asarray(geom.exterior.coords)[1]
    assert x == pytest.approx(500_060.0 + 1.8, abs=1e-6)
    assert y == pytest.approx(4_299_994.0 - 1.2, abs=1e-6)


def test_holes_are_kept_only_when_inside_the_new_exterior() -> None:
    outer = box(500_000, 4_299_000, 500_100, 4_299_100)
    hole_in = box(500_010, 4_299_010, 500_020, 4_299_020)
    hole_out = box(500_200, 4_299_010, 500_210, 4_299_020)
    donut = Polygon(outer.exterior.coords, [hole_in.exterior.coords])
    verts = geometry_to_napari(donut, T)  # exterior only
    assert len(verts) == 4
    geom = napari_to_geometry(verts, T, holes=[hole_in, hole_out])
    assert len(geom.interiors) == 1
    assert geom.area == pytest.approx(donut.area)


def test_multipolygon_parts_and_join() -> None:
    a = box(500_000, 4_299_000, 500_010, 4_299_010)
    b = box(500_100, 4_299_000, 500_150, 4_299_050)
    multi = MultiPolygon([a, b])
    parts = polygon_parts(multi)
    assert len(parts) == 2
    # geometry_to_napari on a multipolygon shows its largest part
    largest = napari_to_geometry(geometry_to_napari(multi, T), T)
    assert largest.area == pytest.approx(b.area)
    joined = join_parts([napari_to_geometry(geometry_to_napari(p, T), T) for p in parts])
    assert joined.geom_type == "MultiPolygon"
    assert joined.area == pytest.approx(multi.area)


def test_degenerate_and_self_intersecting_input() -> None:
    with pytest.raises(ValueError):
        napari_to_geometry(np.array([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]]), T)
    bowtie = np.array([[0.0, 0.0], [10.0, 10.0], [0.0, 10.0], [10.0, 0.0]])
    geom = napari_to_geometry(bowtie, T)
    assert geom.is_valid and geom.area > 0


def test_window_outline_encloses_its_pixels() -> None:
    rect = window_to_napari(Window(256, 0, 256, 256))
    assert rect.min(axis=0).tolist() == [-0.5, 255.5]
    assert rect.max(axis=0).tolist() == [255.5, 511.5]


def test_restore_exact_puts_back_only_unmoved_vertices():
    from labeler.geo import restore_exact

    exact = np.array([[1000.123456789, 2000.987654321], [1000.5, 2500.25], [1500.1, 2500.3]])
    layer = exact.astype(np.float32)  # what napari keeps
    layer[1] += (2.0, 0.0)  # the user moved one
    layer = np.vstack([layer, [[1200.0, 2200.0]]]).astype(np.float32)  # and added one
    out = restore_exact(layer, exact)
    assert out.dtype == np.float64 and np.array_equal(out[[0, 2]], exact[[0, 2]])
    assert np.array_equal(out[1], layer[1].astype(np.float64)) and np.array_equal(out[3], [1200.0, 2200.0])
