"""Retrain in the background from the GUI, re-rank on a new model, export detections, screenshot."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio
from conftest import write_tiny_scene

from labeler.geo import polygon_parts
from loop.retrain_worker import FINETUNE_LR_FACTOR

pytestmark = pytest.mark.gui


def test_retrain_publishes_version_and_reranks_queue(app, qtbot) -> None:
    review, retrain = app.review, app.retrain
    qtbot.waitUntil(lambda: review.rank_job is None, timeout=30_000)
    review.accept_all()  # a chip with a data center: something to learn from
    review.accept_all()
    on_screen = review.current.window
    # the app re-ranks on model_changed; this slot, connected after the app's, sees the job it
    # started (the tiny demo ranks so fast that the job may be gone by the time retraining ends)
    rank_jobs_on_publish = []
    app.session.model_changed.connect(lambda _v: rank_jobs_on_publish.append(review.rank_job))
    assert retrain.start()
    assert retrain.timer.isActive() and retrain.cancel_button.isEnabled()
    qtbot.waitUntil(lambda: not retrain.timer.isActive(), timeout=80_000)
    kinds = [e["type"] for e in retrain.events]
    assert kinds[0] == "started" and kinds[-1] == "done", kinds
    started = retrain.events[0]
    assert started["parent"] == "v1" and started["lr"] == pytest.approx(retrain.lr.value() * FINETUNE_LR_FACTOR)
    assert "epoch" in kinds and retrain.history  # the plot got its points
    assert len(retrain.loss_line.get_xdata()) == len(retrain.history) >= 1
    assert len(retrain.iou_line.get_ydata()) == len(retrain.history)
    left, right = retrain.ax_loss.get_xlim()  # the points are inside the plot, not off its edge
    assert left <= min(retrain.loss_line.get_xdata()) and max(retrain.loss_line.get_xdata()) <= right
    assert retrain.ax_iou.get_xlim() == (left, right)
    retrain._handle(started)  # as a queued follow-up round starts: its own curves, not joined on
    assert f"fine-tuning v1 at lr {started['lr']:.2g}" in retrain.status.text()
    retrain._handle({**started, "lr": retrain.lr.value(), "restart": "the current model v1 finds 0 of 900 ..."})
    assert "new model from scratch (v1 found nothing on the new chips)" in retrain.status.text()
    retrain._handle(started)
    assert retrain.history == [] and len(retrain.loss_line.get_xdata()) == 0
    registry = app.session.project.registry
    assert [v.version for v in registry.versions()] == ["v1", "v2"]
    assert retrain.versions.count() == 2
    final = next(e for e in retrain.events if e["type"] in ("published", "rejected"))
    if final["type"] == "published":
        assert registry.current().version == "v2"
        # the review queue is re-ranked in the background without user action
        assert len(rank_jobs_on_publish) == 1 and rank_jobs_on_publish[0] is not None
        qtbot.waitUntil(lambda: review.rank_job is None, timeout=30_000)
        assert len(review.items) == 2  # two chips left unreviewed
        assert review.current.window == on_screen  # the re-rank did not pull the view away
    else:
        assert registry.current().version == "v1"
        assert "candidate" in retrain.status.text()


def test_retrain_without_reviews_says_why(app, qtbot) -> None:
    assert not app.retrain.start()
    assert app.retrain.job is None or not app.retrain.job.is_running


def test_export_writes_valid_files_and_adds_layer(app, qtbot, tmp_path) -> None:
    export = app.export
    # by default the threshold the model was validated at (the tiny test model has none: 0.5)
    assert export.threshold.text() == "model's (0.50)"
    export.output.setText(str(tmp_path / "out" / "detections"))
    qtbot.waitUntil(lambda: app.review.rank_job is None, timeout=30_000)
    active = app.session.viewer.layers.selection.active
    job = export.run()
    assert job is not None
    with qtbot.waitSignal(job.worker.finished, timeout=60_000):
        pass
    assert export.result is not None and len(export.result) >= 1
    paths = export.paths
    gj = gpd.read_file(paths["geojson"])
    assert gj.crs.to_epsg() == 4326 and len(gj) == len(export.result)
    assert {"area_m2", "centroid_lat", "centroid_lon", "mean_confidence", "model_version"} <= set(gj.columns)
    gp = gpd.read_file(paths["gpkg"])
    assert gp.crs.to_epsg() == 32618
    csv = pd.read_csv(paths["csv"])
    assert len(csv) == len(gj) and (csv["model_version"] == "v1").all()
    with rasterio.open(paths["mask"]) as src:
        assert (src.width, src.height) == (512, 512) and src.crs.to_epsg() == 32618
        assert np.isin(np.unique(src.read(1)), [0, 1]).all()
    layer = app.session.viewer.layers["detections"]
    assert len(layer.data) == sum(len(polygon_parts(g)) for g in export.result.geometry)
    assert np.allclose(layer.features["mean_confidence"], export.result["mean_confidence"])
    assert app.session.viewer.layers.selection.active is active  # what the user was editing stays active


def test_detections_stay_with_their_scene(app, qtbot, tmp_path) -> None:
    session, export = app.session, app.export
    first = session.scene.scene_id
    second = session.project.add_scene(write_tiny_scene(tmp_path / "second.tif", seed=3)).scene_id
    layer = session.viewer.layers["detections"]
    export.output.setText(str(tmp_path / "a" / "detections"))
    with qtbot.waitSignal(export.run().worker.finished, timeout=60_000):
        pass
    assert len(layer.data) >= 1
    session.show_scene(second)  # another scene on screen: its pixels are not the detections' grid
    assert len(layer.data) == 0 and session.viewer.layers["detections"] is layer
    session.show_scene(first)
    export.output.setText(str(tmp_path / "b" / "detections"))
    assert export.run() is not None
    session.show_scene(second)  # before the detection of the first scene can report back
    qtbot.waitUntil(lambda: export.job is None, timeout=60_000)  # finished (maybe during show_scene)
    assert export.result_scene == first and len(export.result) >= 1
    assert len(layer.data) == 0 and "not drawn" in export.status.text()
    assert export.paths["geojson"].exists()  # written all the same


def test_many_detections_are_drawn_in_batches(app, qtbot, tmp_path) -> None:
    from shapely.geometry import Point

    from labeler.export_widget import DRAW_CHUNK

    session, export = app.session, app.export
    layer = session.viewer.layers["detections"]
    transform = session.scene.transform
    n = 2 * DRAW_CHUNK + 5
    rng = np.random.default_rng(0)
    points = [transform * tuple(rng.uniform(20, 490, 2)) for _ in range(n)]
    table = gpd.GeoDataFrame({"mean_confidence": np.linspace(0.5, 1.0, n)},
                             geometry=[Point(p).buffer(3.0, quad_segs=4) for p in points], crs=session.scene.crs)
    export.show_detections(table)
    assert len(layer.data) == DRAW_CHUNK and export.drawing  # the first batch at once, the rest in later turns
    qtbot.waitUntil(lambda: not export.drawing, timeout=10_000)
    assert len(layer.data) == n
    assert np.allclose(layer.features["mean_confidence"], table["mean_confidence"])
    centre = np.asarray(layer.data[-1]).mean(axis=0)  # (row, col) of the last detection on screen
    col, row = ~transform * points[-1]
    assert np.allclose(centre, [row, col], atol=0.5)

    export.show_detections(table)  # drawn again, then the scene changes half-way
    second = session.project.add_scene(write_tiny_scene(tmp_path / "second.tif", seed=3)).scene_id
    session.show_scene(second)
    assert not export.drawing
    qtbot.wait(200)
    assert len(layer.data) == 0  # no batch of the first scene lands on the second one's grid


def test_export_cancel_writes_nothing(app, qtbot, tmp_path) -> None:
    export = app.export
    export.output.setText(str(tmp_path / "cancelled" / "detections"))
    job = export.run()
    export.cancel()
    with qtbot.waitSignal(job.worker.finished, timeout=60_000):
        pass
    if export.result is None:  # cancelled before the end (it may finish first on a 512 px scene)
        assert not any(p.exists() for p in export.paths.values())
        assert "cancelled" in export.status.text()


def test_full_window_screenshot(app, qtbot, tmp_path) -> None:
    qtbot.waitUntil(lambda: app.review.rank_job is None, timeout=30_000)
    viewer = app.session.viewer
    viewer.window._qt_window.resize(1500, 950)
    path = tmp_path / "window.png"
    viewer.screenshot(str(path), canvas_only=False)
    from PIL import Image

    with Image.open(path) as img:
        assert img.width >= 1000 and img.height >= 600
        assert np.asarray(img.convert("L")).std() > 10  # not a blank window


def test_cancelled_retrain_keeps_the_current_model(app, qtbot) -> None:
    review, retrain = app.review, app.retrain
    qtbot.waitUntil(lambda: review.rank_job is None, timeout=30_000)
    review.accept_all()
    assert retrain.start()
    retrain.cancel()
    qtbot.waitUntil(lambda: not retrain.timer.isActive(), timeout=60_000)
    kinds = [e["type"] for e in retrain.events]
    assert "cancelled" in kinds and "published" not in kinds, kinds
    registry = app.session.project.registry
    assert [v.version for v in registry.versions()] == ["v1"] and registry.current().version == "v1"
    assert retrain.start_button.isEnabled() and not retrain.cancel_button.isEnabled()


def test_regressed_candidate_is_reported_not_swapped_in(app, qtbot) -> None:
    from conftest import tiny_checkpoint

    registry = app.session.project.registry
    candidate = tiny_checkpoint(confident=False)
    candidate.metrics = {"iou": -1.0}  # far below v1: the registry keeps it as a candidate
    result = registry.publish(candidate)
    assert not result.promoted
    switched = []
    app.session.model_changed.connect(switched.append)
    app.retrain._handle({"type": "rejected", "version": result.version, "reason": result.reason})
    assert "candidate" in app.retrain.status.text() and switched == []
    assert registry.current().version == "v1"
    assert app.retrain.versions.count() == 2 and "candidate" in app.retrain.versions.item(0).text()


def test_export_refuses_to_overwrite_the_project_and_writes_into_a_folder(app, qtbot, tmp_path) -> None:
    export, root = app.export, app.session.project.root
    store = (root / "labels.gpkg").read_bytes()
    export.output.setText(str(root / "labels"))  # labels.gpkg would be the project's label store
    assert export.run() is None
    assert "label store" in export.status.text() and (root / "labels.gpkg").read_bytes() == store
    (tmp_path / "outdir").mkdir()
    export.output.setText(str(tmp_path / "outdir"))  # an existing folder: the files go inside it
    job = export.run()
    with qtbot.waitSignal(job.worker.finished, timeout=60_000):
        pass
    assert (tmp_path / "outdir" / "detections.geojson").exists()
    assert not (tmp_path / "outdir.geojson").exists()


def test_export_with_an_empty_output_field_starts_nothing(app, tmp_path, monkeypatch) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # it used to write detections.* into the working directory
    export = app.export
    export.output.setText("   ")
    assert export.run() is None and export.job is None
    assert "output name" in export.status.text()
    assert list(cwd.iterdir()) == []


def test_export_with_no_format_ticked_starts_nothing(app, tmp_path) -> None:
    export = app.export
    export.output.setText(str(tmp_path / "out" / "detections"))
    for box in export.formats.values():
        box.setChecked(False)
    assert export.run() is None and export.job is None  # it used to detect, then fail with an empty error
    assert "format" in export.status.text()
    assert not (tmp_path / "out").exists()
