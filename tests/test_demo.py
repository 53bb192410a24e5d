"""The demo project: scene, seed labels that make reviewed chips honest, a first model; resumable."""

from __future__ import annotations

import warnings

import geopandas as gpd
import pytest
import torch
from shapely.geometry import box

from loop.demo import DemoConfig, ensure_demo_project
from loop.project import Project
from model.masks import rasterize_footprints

torch.set_num_threads(1)


def test_demo_project_is_complete_and_resumable(tmp_path):
    cfg = DemoConfig(size=512, seed=3, seed_fraction=0.5, initial_epochs=1, base_channels=4)
    steps = []
    root = ensure_demo_project(tmp_path / "demo", cfg, progress=lambda d, t, i: steps.append(i["step"]))
    project = Project.open(root)
    scene = project.scenes[0]
    reviewed = project.labels.reviewed_chips(scene.scene_id)
    assert len(reviewed) == 2  # half of the 4 chips of a 512 px scene
    assert project.registry.current() is not None and project.registry.current().version == "v1"
    from model.checkpoint import load_checkpoint

    assert project.settings.resolution_m == load_checkpoint(project.registry.current().path).resolution_m == 0.6
    assert load_checkpoint(project.registry.current().path).train["resolution_m"] == 0.6  # recorded, not assumed

    # Every data center of the ground truth inside a reviewed chip is in the store (no false negatives).
    truth = gpd.read_file(root / "truth.geojson").to_crs(scene.crs)
    stored = project.labels.footprints(scene.scene_id)
    for rc in reviewed:
        import rasterio

        t = rasterio.windows.transform(rc.window, scene.transform)
        shape = (int(rc.window.height), int(rc.window.width))
        want = rasterize_footprints(truth[truth["class"] == "datacenter"].geometry, None, scene.crs, t, shape)
        got = rasterize_footprints(stored[stored["class"] == "datacenter"].geometry, None, scene.crs, t, shape)
        assert (want <= got).all()
        assert rc.empty == (not want.any())
    assert len(stored) <= len(truth)
    assert all(g.intersects(box(*scene.bounds)) for g in stored.geometry)

    # A second call finds everything done: no new version, no new labels.
    version = project.labels.version
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and quietly: `make run` opens the demo every time
        ensure_demo_project(root, cfg)
    again = Project.open(root)
    assert [v.version for v in again.registry.versions()] == ["v1"] and again.labels.version == version
    assert "training the first model" in steps


def test_demo_options_out_of_range_are_refused():
    from loop.demo_config import DemoConfig
    from model.errors import ConfigError

    with pytest.raises(ConfigError, match="--seed-fraction"):
        DemoConfig(seed_fraction=2.0)
    with pytest.raises(ConfigError, match="--epochs"):
        DemoConfig(initial_epochs=-1)
