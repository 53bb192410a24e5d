"""Lazy multiscale scene layers: windowed reads only, contrast stretch, NIR toggle, CLI wiring."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from conftest import TINY_CRS, TINY_TRANSFORM
from rasterio.enums import Resampling

from labeler.scene_layers import (
    LazySceneLevel,
    build_display,
    pyramid_factors,
    scene_pyramid,
)


@pytest.fixture
def wide_scene(tmp_path):
    from model.scene import open_scene, write_geotiff

    rng = np.random.default_rng(3)
    img = rng.integers(0, 200, (4, 1500, 2600), dtype=np.uint8)
    img[3, :, :100] = 250  # a NIR-bright strip
    return open_scene(write_geotiff(tmp_path / "wide.tif", img, TINY_CRS, TINY_TRANSFORM)), img


def test_pyramid_levels_halve_until_overview_side() -> None:
    assert pyramid_factors(12_000, 12_000) == [1, 2, 4, 8, 16]
    assert pyramid_factors(512, 512) == [1]


def test_scene_without_overviews_gets_a_background_cache(wide_scene, tmp_path) -> None:
    from labeler.overviews import build_overview_cache

    scene, img = wide_scene
    display, coarsest = build_display(scene, cache_dir=tmp_path / "cache")
    assert coarsest == 4 and display.needs_cache and display.overview is None
    assert not scene_pyramid(display)[-1].any()  # dark placeholder until the cache exists
    done = []
    paths = build_overview_cache(scene, tmp_path / "cache", pyramid_factors(scene.width, scene.height),
                                 progress=lambda d, t, i: done.append((d, t)))
    assert list(paths) == [4] and done[-1] == (1500, 1500)
    with rasterio.open(paths[4]) as src:
        level = src.read()
        assert level.shape == (4, 375, 650) and src.crs == scene.crs
        assert src.transform.a == pytest.approx(scene.transform.a * 4)
    np.testing.assert_array_equal(level[2, 10, 20], np.round(img[2, 40:44, 80:84].mean()).astype(np.uint8))
    display.use_cache(paths)
    lazy = LazySceneLevel(display, 4)
    np.testing.assert_array_equal(lazy[10:12, 20:25][..., 0], display.luts[0][level[0, 10:12, 20:25]])
    again, _ = build_display(scene, cache_dir=tmp_path / "cache")  # next open: from the cache
    assert not again.needs_cache and again.overview.shape == (4, 375, 650)


def test_levels_read_only_the_requested_window(wide_scene) -> None:
    scene, img = wide_scene
    display, coarsest = build_display(scene)
    levels = scene_pyramid(display)
    assert [lv.shape for lv in levels] == [(1500, 2600, 3), (750, 1300, 3), (375, 650, 3)]
    assert coarsest == 4 and isinstance(levels[-1], np.ndarray)  # small level kept in memory
    full = levels[0]
    assert isinstance(full, LazySceneLevel) and full.dtype == np.uint8 and full.ndim == 3
    tile = full[100:164, 2000:2100]
    assert tile.shape == (64, 100, 3) and full.reads == 1
    # exact source pixels through the per-band stretch
    for k in range(3):
        np.testing.assert_array_equal(tile[..., k], display.luts[k][img[k, 100:164, 2000:2100]])
    # a decimated level reads a decimated window
    half = levels[1][10:20, 30:50]
    with rasterio.open(scene.path) as src:
        ref = src.read(1, window=((20, 40), (60, 100)), out_shape=(10, 20), resampling=Resampling.nearest)
    np.testing.assert_array_equal(half[..., 0], display.luts[0][ref])
    # integer indexing, negative steps of napari-style keys, and the channel axis
    assert full[5, 10:12].shape == (2, 3)
    assert full[0:4, 0:4, 1].shape == (4, 4)


def test_a_12_bit_scene_displays_like_its_8_bit_values(wide_scene, tmp_path) -> None:
    """uint16 scenes go through the scene's one value scale (model.scene.to_uint8), not a clip to 255."""
    from model.scene import open_scene, write_geotiff

    scene8, img = wide_scene
    deep = open_scene(write_geotiff(tmp_path / "deep.tif", img.astype(np.uint16) * 16 + 8, TINY_CRS, TINY_TRANSFORM))
    assert deep.dtype == "uint16" and deep.value_scale == pytest.approx(255 / 4095)
    d8, _ = build_display(scene8)
    d16, _ = build_display(deep)
    a, b = LazySceneLevel(d8, 1)[100:164, 2000:2100], LazySceneLevel(d16, 1)[100:164, 2000:2100]
    assert b.std() > 20 and np.abs(a.astype(int) - b.astype(int)).max() <= 8  # not a saturated white


@pytest.mark.parametrize("layout", ["stripped", "tiled", "smaller than a window"])
def test_stretch_sample_is_the_same_windows_however_the_file_is_laid_out(tmp_path, layout) -> None:
    from labeler.scene_layers import _sample_windows
    from model.scene import open_scene

    side = 100 if layout == "smaller than a window" else 700
    pixels = np.random.default_rng(3).integers(0, 256, (4, side, side + 37), dtype=np.uint8)
    layout_kw = {"tiled": True, "blockxsize": 256, "blockysize": 256} if layout == "tiled" else {}
    path = tmp_path / "scene.tif"
    with rasterio.open(path, "w", driver="GTiff", width=side + 37, height=side, count=4, dtype="uint8",
                       crs=TINY_CRS, transform=TINY_TRANSFORM, **layout_kw) as dst:
        dst.write(pixels)
    scene = open_scene(path)
    mosaic = _sample_windows(scene, n=4, side=128)
    padded = np.zeros((4, side + 128, side + 37 + 128), np.uint8)  # the pixels, zero beyond the edges
    padded[:, :side, :side + 37] = pixels
    for i, r in enumerate(np.linspace(0, max(side - 128, 0), 4).astype(int)):
        for j, c in enumerate(np.linspace(0, max(side + 37 - 128, 0), 4).astype(int)):
            np.testing.assert_array_equal(mosaic[:, i * 128:(i + 1) * 128, j * 128:(j + 1) * 128],
                                          padded[:, r:r + 128, c:c + 128])


def test_stretch_maps_2_and_98_percentiles_to_0_and_255(wide_scene) -> None:
    scene, img = wide_scene
    display, _ = build_display(scene)
    lo, hi = np.percentile(img[0, ::4, ::4], [2, 98])
    lut = display.luts[0]
    assert lut[int(np.floor(lo))] <= 3 and lut[int(np.ceil(hi))] >= 252


def test_nir_composite_shows_nir_as_red(wide_scene) -> None:
    scene, img = wide_scene
    display, _ = build_display(scene)
    display.composite = "nir"
    tile = LazySceneLevel(display, 1)[0:10, 0:10]
    np.testing.assert_array_equal(tile[..., 0], display.luts[3][img[3, :10, :10]])
    np.testing.assert_array_equal(tile[..., 1], display.luts[0][img[0, :10, :10]])


def test_app_command_is_registered_without_importing_napari() -> None:
    import sys

    from loop.cli import build_parser

    napari_loaded = "napari" in sys.modules
    args = build_parser(("labeler.cli_app",)).parse_args(["app", "some/project"])
    assert args.project == "some/project" and callable(args.func)
    assert ("napari" in sys.modules) == napari_loaded


def test_manifest_declares_widgets_and_project_reader(tmp_path) -> None:
    from pathlib import Path

    from npe2 import PluginManifest

    import labeler
    from labeler.app import get_reader

    manifest = PluginManifest.from_file(Path(labeler.__file__).parent / "napari.yaml")
    assert {w.display_name for w in manifest.contributions.widgets} == {
        "Labels", "Review queue", "Retrain", "Export detections", "Download NAIP"}
    [reader] = manifest.contributions.readers  # a project's own file only (see test_labeler_export_reader)
    assert reader.filename_patterns == ["project.json"] and not reader.accepts_directories
    import importlib

    for command in manifest.contributions.commands:
        module, name = command.python_name.split(":")
        assert callable(getattr(importlib.import_module(module), name))
    assert get_reader(str(tmp_path)) is None  # not a project folder
    (tmp_path / "project.json").write_text('{"format": "dclabel-project/1", "scenes": []}')
    assert callable(get_reader(str(tmp_path))) and callable(get_reader(str(tmp_path / "project.json")))


@pytest.mark.gui
def test_two_scene_project_switches_scene_and_queue_rows(make_napari_viewer, qtbot, tmp_path) -> None:
    from conftest import tiny_checkpoint, write_tiny_scene

    from labeler.app import open_project
    from loop.project import Project

    a = write_tiny_scene(tmp_path / "a.tif", seed=1)
    b = write_tiny_scene(tmp_path / "b.tif", seed=2)
    project = Project.create(tmp_path / "project", images=[a, b])
    project.registry.publish(tiny_checkpoint())
    opened = open_project(make_napari_viewer(), project.root)
    try:
        review, session = opened.review, opened.session
        qtbot.waitUntil(lambda: review.rank_job is None, timeout=30_000)
        first, second = (s.scene_id for s in project.scenes)
        assert len(review.items) == 8 and review.table.rowCount() == 4
        assert {it.scene_id for it in review.queue.rows} == {first}
        assert "+4 in other scenes" in review.counts.text()
        opened.labels.scene.setCurrentIndex(1)
        assert session.scene.scene_id == second and session.editor.scene.scene_id == second
        assert {it.scene_id for it in review.queue.rows} == {second} and review.current.scene_id == second
        review.accept_all()
        assert set(project.labels.footprints()["scene_id"]) == {second}
    finally:
        opened.close()


@pytest.mark.gui
def test_project_folder_opens_through_the_npe2_reader(make_napari_viewer, tiny_project, qtbot) -> None:
    from pathlib import Path

    from npe2 import PluginManager, PluginManifest

    import labeler
    from labeler.session import find_session

    manifest = PluginManifest.from_file(Path(labeler.__file__).parent / "napari.yaml")
    pm = PluginManager.instance()
    if manifest.name not in pm._manifests:  # installed packages register it via the entry point
        pm.register(manifest)
    viewer = make_napari_viewer()
    viewer.open(str(tiny_project / "project.json"), plugin="dclabel")
    session = find_session(viewer)
    assert session is not None and session.scene.width == 512
    assert {"scene", "chip grid", "footprints"} <= {layer.name for layer in viewer.layers}
    assert "Review queue" in viewer.window.dock_widgets
    review = viewer.window.dock_widgets["Review queue"]
    qtbot.waitUntil(lambda: review.rank_job is None, timeout=30_000)
    review.close_jobs()
