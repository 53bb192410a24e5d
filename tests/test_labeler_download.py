"""The Download NAIP panel against the loopback STAC server: the scene lands in the project and opens."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from affine import Affine
from planetary_computer.settings import Settings
from pyproj import Transformer
from stac_server import NaipStacServer

from labeler.download_widget import output_name, view_area

pytestmark = pytest.mark.gui

LAT, LON = 38.0, -77.0


@pytest.fixture
def naip_server(monkeypatch):
    srv = NaipStacServer().start()
    monkeypatch.setenv("DCLABEL_STAC_URL", srv.stac_url)
    monkeypatch.setenv("DCLABEL_BLOB_ENDPOINT", srv.root)
    monkeypatch.setenv("PC_SDK_SAS_URL", srv.sas_url)
    monkeypatch.delenv("PC_SDK_SUBSCRIPTION_KEY", raising=False)
    Settings.get.cache_clear()
    x, y = Transformer.from_crs("EPSG:4326", 26918, always_xy=True).transform(LON, LAT)
    tf = Affine(0.6, 0, np.floor(x / 0.6) * 0.6 - 150, 0, -0.6, np.floor(y / 0.6) * 0.6 + 150)
    srv.add_item("m_3807701_ne_2022", 2022, 26918, tf,
                 np.random.default_rng(5).integers(1, 256, (4, 512, 512), dtype=np.uint8))
    try:
        yield srv
    finally:
        srv.stop()
        Settings.get.cache_clear()


def test_download_adds_the_scene_and_shows_it(app, qtbot, naip_server):
    panel = app.download
    panel.lat.setValue(LAT)
    panel.lon.setValue(LON)
    panel.size.setValue(120)
    before = len(app.session.project.scenes)
    panel.download()
    assert not panel.start.isEnabled()
    qtbot.waitUntil(panel.start.isEnabled, timeout=60_000)  # re-enabled when the worker finishes
    qtbot.waitUntil(lambda: len(app.session.project.scenes) == before + 1, timeout=10_000)
    scene = app.session.project.scenes[-1]
    assert scene.path.name == output_name(LAT, LON, 120, None)
    assert app.session.scene.scene_id == scene.scene_id  # the new scene is on screen
    with rasterio.open(scene.path) as src:
        assert src.tags()["naip_year"] == "2022" and src.crs.to_epsg() == 26918
    assert app.labels.scene.findData(scene.scene_id) >= 0
    # its chips join the review queue (it is ranked with the others)
    qtbot.waitUntil(lambda: app.review.rank_job is None and any(it.scene_id == scene.scene_id
                                                                 for it in app.review.items), timeout=60_000)
    assert app.review.current is not None and app.review.current.scene_id == scene.scene_id
    # "use current view" points back at (about) the same place
    lat, lon, size = view_area(app.session.viewer, scene)
    assert abs(lat - LAT) < 0.002 and abs(lon - LON) < 0.002 and size >= 60

    panel.download()  # the same area again: the file is already that scene
    qtbot.waitUntil(panel.start.isEnabled, timeout=60_000)
    assert len(app.session.project.scenes) == before + 1
    assert f"already scene {scene.scene_id}" in panel.status.text() and "Added" not in panel.status.text()


def test_download_outside_coverage_reports_and_adds_nothing(app, qtbot, naip_server):
    panel = app.download
    panel.lat.setValue(48.85)  # Paris: no NAIP
    panel.lon.setValue(2.35)
    before = len(app.session.project.scenes)
    panel.download()
    assert not panel.start.isEnabled()
    qtbot.waitUntil(panel.start.isEnabled, timeout=60_000)  # re-enabled when the worker finishes
    assert "no NAIP imagery covers" in panel.status.text()
    assert len(app.session.project.scenes) == before and panel.start.isEnabled()
