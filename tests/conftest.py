"""GUI test fixtures: a tiny georeferenced project (512 x 512 scene, UTM CRS, tiny checkpoint)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS


def pytest_collection_modifyitems(config, items) -> None:
    """Skip napari window tests when there is no display (run them under ``xvfb-run``)."""
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or os.environ.get("QT_QPA_PLATFORM"):
        return
    skip = pytest.mark.skip(reason="needs a display: run under xvfb-run (see `make test`)")
    for item in items:
        if "gui" in item.keywords:
            item.add_marker(skip)


TINY_TRANSFORM = Affine(0.6, 0.0, 500_000.0, 0.0, -0.6, 4_300_000.0)
TINY_CRS = CRS.from_epsg(32618)  # UTM 18N, as NAIP in Virginia


def write_tiny_scene(path: Path, size: int = 512, seed: int = 0) -> Path:
    """A seeded NAIP-like 4-band uint8 GeoTIFF: vegetation, two bright flat roofs."""
    from model.scene import write_geotiff

    rng = np.random.default_rng(seed)
    img = np.empty((4, size, size), np.uint8)
    for band, (mean, sd) in enumerate([(70, 12), (95, 12), (60, 10), (170, 20)]):
        img[band] = np.clip(rng.normal(mean, sd, (size, size)), 0, 255)
    for r0, c0, h, w in [(60, 70, 90, 140), (300, 320, 120, 110)]:
        img[:3, r0 : r0 + h, c0 : c0 + w] = rng.integers(190, 215, (3, h, w))
        img[3, r0 : r0 + h, c0 : c0 + w] = rng.integers(80, 100, (h, w))
    return write_geotiff(path, img, TINY_CRS, TINY_TRANSFORM)


def tiny_checkpoint(confident: bool = True):
    """A tiny U-Net checkpoint; ``confident`` makes it predict p=0.95 everywhere (one proposal per chip)."""
    import torch

    from model.checkpoint import Checkpoint, Normalization
    from model.unet import UNet, UNetConfig

    torch.manual_seed(0)
    config = UNetConfig(base_channels=4, depth=2)
    net = UNet(config)
    if confident:
        with torch.no_grad():
            net.head.weight.zero_()
            net.head.bias.fill_(3.0)
    return Checkpoint(
        state_dict=net.state_dict(), unet=config,
        normalization=Normalization((80.0, 100.0, 70.0, 160.0), (40.0, 40.0, 40.0, 40.0)),
        metrics={"iou": 0.0},
    )


@pytest.fixture
def tiny_project(tmp_path: Path) -> Path:
    """A project folder with the tiny scene and a published tiny checkpoint (v1)."""
    import torch

    from loop.project import Project

    torch.set_num_threads(1)
    tif = write_tiny_scene(tmp_path / "scene.tif")
    project = Project.create(tmp_path / "project", images=[tif])
    project.registry.publish(tiny_checkpoint())
    assert project.labels.scene_ids()  # creates labels.gpkg with the scene registered
    return project.root


@pytest.fixture
def app(make_napari_viewer, tiny_project: Path):
    """The app opened on the tiny project, with ranking finished."""
    from labeler.app import open_project

    viewer = make_napari_viewer()
    opened = open_project(viewer, tiny_project, retrain_options={"epochs": 1, "threads": 1, "min_passes": 0})
    yield opened
    opened.close()


def drag(layer, start, end) -> None:
    """Drag with the mouse in a napari layer from ``start`` to ``end`` (data coordinates), through
    napari's own press/move/release callbacks, as a user's drag would."""
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import (
        mouse_move_callbacks,
        mouse_press_callbacks,
        mouse_release_callbacks,
    )

    mouse_press_callbacks(layer, read_only_mouse_event(type="mouse_press", position=start))
    mouse_move_callbacks(layer, read_only_mouse_event(type="mouse_move", is_dragging=True, position=end))
    mouse_release_callbacks(layer, read_only_mouse_event(type="mouse_release", is_dragging=True, position=end))
