"""Holes that follow their footprint, the export panel's output paths, the npe2 reader's claims."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import drag
from napari.layers.base._base_constants import ActionType
from shapely.geometry import Polygon

from labeler.export_widget import export_paths
from labeler.geo import crs_to_napari, move_rings, outline_motion, split_holes

ALL = {"geojson", "gpkg", "csv", "mask"}


# ----- geometry of holes (no window) ---------------------------------------------------------------
def test_outline_motion_finds_a_whole_shape_move_and_not_a_vertex_edit() -> None:
    square = np.array([[10.0, 10.0], [10.0, 50.0], [50.0, 50.0], [50.0, 10.0]])
    moved = (square + (5.0, -3.0)).astype(np.float32)  # napari keeps float32
    matrix = outline_motion(square, moved)
    assert matrix is not None
    np.testing.assert_allclose(move_rings([np.array([[20.0, 20.0]])], matrix)[0], [[25.0, 17.0]], atol=1e-4)
    centre = square.mean(axis=0)
    turned = centre + (square - centre) @ np.array([[0.0, 1.0], [-1.0, 0.0]]) * 1.5  # rotated, scaled
    matrix = outline_motion(square, turned)
    np.testing.assert_allclose(move_rings([square], matrix)[0], turned, atol=1e-9)
    edited = square.copy()
    edited[2] += (7.0, 4.0)
    assert outline_motion(square, edited) is None  # one vertex moved
    assert outline_motion(square, square.astype(np.float32)) is None  # not moved at all
    assert outline_motion(square, square[:3]) is None  # a vertex removed


def test_split_holes_tells_which_holes_still_fit() -> None:
    from conftest import TINY_TRANSFORM as T

    def ring(r0, r1, c0, c1):
        return np.array([T * (c, r) for r, c in ((r0, c0), (r0, c1), (r1, c1), (r1, c0), (r0, c0))])

    outline = crs_to_napari(ring(0, 100, 0, 100)[:-1], T)
    inside, outside = split_holes(outline, T, [ring(10, 20, 10, 20), ring(90, 120, 10, 20)])
    assert len(inside) == 1 and len(outside) == 1
    np.testing.assert_allclose(inside[0], ring(10, 20, 10, 20))


# ----- holes in the app --------------------------------------------------------------------------
def _pbox(r0: float, r1: float, c0: float, c1: float) -> Polygon:
    from conftest import TINY_TRANSFORM as T

    return Polygon([T * (c0, r0), T * (c1, r0), T * (c1, r1), T * (c0, r1)])


def _holed_footprint(app):
    editor, store = app.session.editor, app.session.project.labels
    holed = Polygon(_pbox(50, 150, 50, 250).exterior.coords, [_pbox(80, 120, 100, 200).exterior.coords])
    fid = store.add_footprint(app.session.scene.scene_id, holed, "datacenter")
    editor.reload()
    return fid, holed


def _stored(app, fid):
    return app.session.project.labels.footprints(app.session.scene.scene_id).set_index("fid").geometry.loc[fid]


def _hole_pixels(app, geom) -> list[np.ndarray]:
    """Holes as pixel-corner (row, col) rings, closing vertex dropped."""
    inv = ~app.session.scene.transform
    return [np.array([(inv * p)[::-1] for p in hole.coords])[:-1] for hole in geom.interiors]


def _edit(layer, i: int, vertices: np.ndarray) -> None:
    """Replace shape ``i``'s vertices the way napari's mouse handlers do, with the same events."""
    indices = tuple(range(len(vertices)))
    layer.events.data(value=layer.data, action=ActionType.CHANGING, data_indices=(i,), vertex_indices=(indices,))
    layer._data_view.edit(i, vertices)
    layer.events.data(value=layer.data, action=ActionType.CHANGED, data_indices=(i,), vertex_indices=(indices,))


@pytest.mark.gui
def test_a_footprint_dragged_with_the_mouse_takes_its_hole_along(app, qtbot) -> None:
    fid, holed = _holed_footprint(app)
    editor = app.session.editor
    before = _hole_pixels(app, holed)[0]
    layer = editor.layer
    layer.mode = "select"
    layer.selected_data = set(editor.indices_of([fid]))
    drag(layer, (60.0, 60.0), (65.0, 70.0))  # 5 rows down, 10 columns right
    moved = _stored(app, fid)
    assert len(moved.interiors) == 1
    np.testing.assert_allclose(_hole_pixels(app, moved)[0], before + (5.0, 10.0), atol=1e-3)
    assert moved.area == pytest.approx(holed.area, rel=1e-6)
    assert editor.undo()
    np.testing.assert_allclose(_hole_pixels(app, _stored(app, fid))[0], before, atol=1e-9)


@pytest.mark.gui
def test_holes_are_drawn_read_only_and_follow_their_footprint(app, qtbot) -> None:
    from labeler.footprints import HOLES_LAYER

    editor, viewer = app.session.editor, app.session.viewer
    assert HOLES_LAYER not in viewer.layers  # no hole, no layer
    fid, holed = _holed_footprint(app)
    before = _hole_pixels(app, holed)[0]
    holes_layer = viewer.layers[HOLES_LAYER]
    assert len(holes_layer.data) == 1 and not holes_layer.editable
    np.testing.assert_allclose(holes_layer.data[0], before - 0.5, atol=1e-3)  # napari: pixel centres
    assert viewer.layers.selection.active is editor.layer  # drawing goes on in the footprints layer
    viewer.dims.ndisplay = 3  # napari makes layers editable again when it reslices
    viewer.dims.ndisplay = 2
    assert not holes_layer.editable and editor.layer.editable
    layer = editor.layer
    layer.mode = "select"
    layer.selected_data = set(editor.indices_of([fid]))
    drag(layer, (60.0, 60.0), (65.0, 70.0))
    np.testing.assert_allclose(holes_layer.data[0], before + (5.0, 10.0) - 0.5, atol=1e-3)
    assert editor.undo()
    np.testing.assert_allclose(holes_layer.data[0], before - 0.5, atol=1e-3)
    layer.selected_data = set(editor.indices_of([fid]))
    layer.remove_selected()
    assert len(holes_layer.data) == 0


@pytest.mark.gui
def test_a_scaled_footprint_scales_its_hole_and_an_edit_that_cuts_it_says_so(app, qtbot) -> None:
    fid, holed = _holed_footprint(app)
    editor = app.session.editor
    messages: list[str] = []
    editor._notify = messages.append
    layer = editor.layer
    [i] = editor.indices_of([fid])
    vertices = np.asarray(layer.data[i], dtype=np.float64)
    centre = vertices.mean(axis=0)
    _edit(layer, i, centre + (vertices - centre) * 1.5)  # the selection box's corner handle
    scaled = _stored(app, fid)
    assert len(scaled.interiors) == 1 and scaled.area == pytest.approx(holed.area * 2.25, rel=1e-4)
    hole = _hole_pixels(app, scaled)[0]
    np.testing.assert_allclose(hole.min(axis=0), [100.0 - 20.0 * 1.5, 150.0 - 50.0 * 1.5], atol=1e-3)
    assert messages == []
    # one corner dragged across the hole: the outline no longer holds it; dropped, and said so
    vertices = np.asarray(layer.data[i], dtype=np.float64)
    corner = int(np.argmax(vertices.sum(axis=1)))  # the bottom-right corner
    vertices[corner] = (100.0, 150.0)
    _edit(layer, i, vertices)
    cut = _stored(app, fid)
    assert len(cut.interiors) == 0
    assert len(messages) == 1 and "hole" in messages[0] and str(fid) in messages[0]
    # a vertex edit that leaves the hole inside keeps it where it was
    assert editor.undo()
    vertices = np.asarray(layer.data[i], dtype=np.float64)
    vertices[corner] += (3.0, 4.0)
    _edit(layer, i, vertices)
    np.testing.assert_allclose(_hole_pixels(app, _stored(app, fid))[0], hole, atol=1e-9)
    assert len(messages) == 1


# ----- export paths ------------------------------------------------------------------------------
def test_export_paths_expand_home_and_resolve_relative_names_in_the_project(tmp_path, monkeypatch) -> None:
    home, project = tmp_path / "home", tmp_path / "project"
    home.mkdir()
    project.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    assert export_paths("~/dets", ALL, project)["geojson"] == home / "dets.geojson"
    assert export_paths("relative_dets", {"csv"}, project) == {"csv": project / "relative_dets.csv"}
    assert export_paths("sub/dets", {"mask"}, project) == {"mask": project / "sub" / "dets_mask.tif"}


def test_export_paths_strip_a_known_suffix_and_take_a_trailing_slash_as_a_folder(tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    expected = {"geojson": out / "dets.geojson", "gpkg": out / "dets.gpkg", "csv": out / "dets.csv",
                "mask": out / "dets_mask.tif"}
    for name in ("dets_mask.tif", "dets.geojson", "dets.GPKG", "dets.csv", "dets.tif", "dets"):
        assert export_paths(str(out / name), ALL) == expected, name
    folder = export_paths(str(out / "newfolder") + "/", ALL)  # not there yet: made on writing
    assert folder["geojson"] == out / "newfolder" / "detections.geojson"
    assert export_paths(str(out), {"mask"}) == {"mask": out / "detections_mask.tif"}  # an existing folder


@pytest.mark.gui
def test_export_asks_before_replacing_a_typed_existing_file(app, qtbot, tmp_path) -> None:
    export = app.export
    out = tmp_path / "out"
    out.mkdir()
    report = out / "report.geojson"
    report.write_text('{"precious": true}')
    asked: list[list[Path]] = []

    def refuse(existing):
        asked.append(existing)
        return False

    export.confirm_replace = refuse
    export.output.setText(str(report))
    assert export.run() is None and export.job is None
    assert asked == [[report]] and "report.geojson" in export.status.text()
    assert json.loads(report.read_text()) == {"precious": True}
    export.confirm_replace = lambda existing: asked.append(existing) or True
    qtbot.waitUntil(lambda: app.review.rank_job is None, timeout=30_000)
    job = export.run()
    assert job is not None and len(asked) == 2
    with qtbot.waitSignal(job.worker.finished, timeout=60_000):
        pass
    assert "precious" not in report.read_text() and "replaced: report.geojson" in export.status.text()


@pytest.mark.gui
def test_export_of_a_relative_name_writes_into_the_project_folder(app, qtbot, tmp_path, monkeypatch) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    export, root = app.export, Path(app.session.project.root)
    export.output.setText("relative_dets")
    export.confirm_replace = lambda existing: pytest.fail(f"asked about {existing}")
    qtbot.waitUntil(lambda: app.review.rank_job is None, timeout=30_000)
    job = export.run()
    assert job is not None
    with qtbot.waitSignal(job.worker.finished, timeout=60_000):
        pass
    assert (root / "relative_dets.geojson").exists() and (root / "relative_dets_mask.tif").exists()
    assert list(cwd.iterdir()) == []


# ----- the npe2 reader -----------------------------------------------------------------------------
def _plugin_manager():
    from npe2 import PluginManager, PluginManifest

    import labeler

    manifest = PluginManifest.from_file(Path(labeler.__file__).parent / "napari.yaml")
    pm = PluginManager.instance()
    if manifest.name not in pm._manifests:  # installed packages register it via the entry point
        pm.register(manifest)
    return pm


def _readers(path: Path) -> set[str]:
    return {r.plugin_name for r in _plugin_manager().iter_compatible_readers([str(path)])}


def test_the_reader_claims_only_a_project_file(tmp_path) -> None:
    from conftest import write_tiny_scene

    from labeler.app import get_reader

    scene = write_tiny_scene(tmp_path / "scene.tif", size=512)
    (tmp_path / "notes.txt").write_text("x")
    folder = tmp_path / "folder"
    folder.mkdir()
    (tmp_path / "project.json").write_text(json.dumps({"format": "dclabel-project/1", "scenes": []}))
    assert "dclabel" not in _readers(scene)  # napari's own reader, and no choose-a-reader dialog
    assert "dclabel" not in _readers(folder)
    assert "dclabel" not in _readers(tmp_path / "notes.txt")
    assert "dclabel" in _readers(tmp_path / "project.json")
    for path in (scene, folder, tmp_path / "notes.txt", [str(tmp_path / "project.json")]):
        assert get_reader(path if isinstance(path, list) else str(path)) is None, path
    assert callable(get_reader(str(tmp_path / "project.json")))
    assert callable(get_reader(str(tmp_path)))  # the folder itself, when asked directly
    other = tmp_path / "other"
    other.mkdir()
    (other / "project.json").write_text('{"name": "some other program"}')
    assert get_reader(str(other / "project.json")) is None


@pytest.mark.gui
def test_a_project_opens_from_its_project_json_and_a_tif_without_asking(make_napari_viewer, tiny_project,
                                                                      qtbot, tmp_path) -> None:
    from conftest import write_tiny_scene

    from labeler.session import find_session

    _plugin_manager()
    viewer = make_napari_viewer()
    tif = write_tiny_scene(tmp_path / "plain.tif")
    # plugin=None: chosen as napari's File > Open does (dclabel used to make this ambiguous)
    assert len(viewer.open(str(tif), plugin=None)) >= 1
    viewer.open(str(Path(tiny_project) / "project.json"), plugin=None)
    session = find_session(viewer)
    assert session is not None and Path(session.project.root) == Path(tiny_project)
    review = viewer.window.dock_widgets["Review queue"]
    qtbot.waitUntil(lambda: review.rank_job is None, timeout=30_000)
    review.close_jobs()


@pytest.mark.gui
def test_a_proposal_moved_before_it_is_accepted_takes_its_hole_along(app, qtbot) -> None:
    import dataclasses

    from labeler.chip_layers import PROPOSALS_LAYER
    from loop.proposals import Proposal

    qtbot.waitUntil(lambda: app.review.rank_job is None, timeout=30_000)
    review, store = app.review, app.session.project.labels
    w = review.current.window
    r0, c0 = int(w.row_off), int(w.col_off)
    holed = Polygon(_pbox(r0 + 50, r0 + 150, c0 + 40, c0 + 200).exterior.coords,
                    [_pbox(r0 + 80, r0 + 120, c0 + 80, c0 + 160).exterior.coords])
    proposal = Proposal(review.current.scene_id, w, holed, score=0.9, uncertainty=0.2, area_m2=holed.area)
    item = dataclasses.replace(review.current, proposals=[proposal])  # a courtyard building proposed
    review.show_item(item)
    layer = app.session.viewer.layers[PROPOSALS_LAYER]
    assert layer.nshapes == 1
    _edit(layer, 0, np.asarray(layer.data[0]) + (5.0, 10.0))  # the whole outline dragged
    review.accept_all()
    fp = store.footprints(item.scene_id)
    (stored,) = [g for g in fp.geometry if g.intersects(holed)]
    assert fp["source"].iloc[-1] == "proposal-edited" and len(stored.interiors) == 1
    np.testing.assert_allclose(_hole_pixels(app, stored)[0], _hole_pixels(app, holed)[0] + (5.0, 10.0), atol=1e-3)
