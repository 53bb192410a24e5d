"""The labeler driven like a user: open, rank, accept, draw, edit a vertex, undo, mark empty."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import drag
from napari.layers.base._base_constants import ActionType

from labeler.chip_layers import heatmap_shown

pytestmark = pytest.mark.gui


def wait_ranked(qtbot, opened) -> None:
    qtbot.waitUntil(lambda: opened.review.rank_job is None, timeout=30_000)


def test_open_shows_scene_grid_footprints_and_ranks_queue(app, qtbot) -> None:
    wait_ranked(qtbot, app)
    viewer = app.session.viewer
    for name in ("scene", "chip grid", "footprints", "proposals"):
        assert name in viewer.layers
    assert viewer.layers["scene"].rgb
    assert len(viewer.layers["chip grid"].data) == 4  # 512 x 512 scene, 256 px chips
    review = app.review
    assert len(review.items) == 4 and review.table.rowCount() == 4
    assert [it.rank for it in review.items] == [1, 2, 3, 4]
    assert review.current is review.items[0]
    # the confident tiny model proposes one polygon per chip
    assert len(viewer.layers["proposals"].data) == len(review.current.proposals) == 1
    # the chip under review is white in the grid, the other queued chips orange
    grid = viewer.layers["chip grid"]
    index = {(int(w.row_off), int(w.col_off)): i for i, w in enumerate(grid.metadata["windows"])}
    current = index[(int(review.current.window.row_off), int(review.current.window.col_off))]
    # recolouring is coalesced to the next turn of the event loop
    qtbot.waitUntil(lambda: np.allclose(grid.edge_color[current][:3], 1.0, atol=0.01), timeout=5_000)
    other = index[(int(review.items[1].window.row_off), int(review.items[1].window.col_off))]
    np.testing.assert_allclose(grid.edge_color[other][:3], [1.0, 2 / 3, 0.0], atol=0.01)


def test_accept_all_stores_proposals_and_shows_next_chip(app, qtbot) -> None:
    wait_ranked(qtbot, app)
    review, store = app.review, app.session.project.labels
    first = review.current
    review.accept_all()
    fp = store.footprints(app.session.scene.scene_id)
    assert len(fp) == 1
    assert fp["source"].iloc[0] == "proposal-accepted"
    assert fp["model_version"].iloc[0] == "v1"
    assert fp.geometry.iloc[0].equals_exact(first.proposals[0].geometry, 1e-6)
    reviewed = store.reviewed_chips()
    assert len(reviewed) == 1 and reviewed[0].window == first.window and not reviewed[0].empty
    assert review.table.rowCount() == 3 and review.current is not first
    assert len(app.session.editor.layer.data) == 1
    # the reviewed chip turned green in the grid
    assert (int(first.window.row_off), int(first.window.col_off)) in app.session.reviewed_keys()
    # Ctrl+Z undoes the whole decision (footprints and chip mark) and the chip is queued again
    assert app.session.editor.undo()
    assert len(store.footprints()) == 0 and store.reviewed_chips() == []
    assert review.table.rowCount() == 4 and review.items[0].window == first.window


def test_deciding_the_last_row_shows_the_chip_left(app, qtbot) -> None:
    # next, then accept the chip in the last row: the one chip left must be shown (row 0 was
    # already selected in the table, so no selection signal fired and the view stayed put)
    wait_ranked(qtbot, app)
    review, store = app.review, app.session.project.labels
    review.accept_all()
    review.accept_all()
    assert len(review.items) == 2
    review.next_chip()
    second = review.current
    assert second is review.items[1]
    review.reject()
    assert review.current is review.items[0] and len(review.items) == 1
    left = review.current
    review.accept_all()
    assert {(r.window.col_off, r.window.row_off) for r in store.reviewed_chips()} >= {
        (second.window.col_off, second.window.row_off), (left.window.col_off, left.window.row_off)}
    assert len(store.reviewed_chips()) == 4 and review.current is None


def test_accept_takes_the_proposals_as_the_layer_shows_them(app, qtbot) -> None:
    wait_ranked(qtbot, app)
    review, store, sid = app.review, app.session.project.labels, app.session.scene.scene_id
    viewer = app.session.viewer
    layer = viewer.layers["proposals"]
    first = review.current
    proposed = first.proposals[0].geometry
    verts = np.asarray(layer.data[0])
    centre = verts.mean(axis=0)
    layer.data = [centre + (verts - centre) * 0.5]  # the user shrinks the proposal to half its size
    review.accept_all()
    fp = store.footprints(sid)
    assert len(fp) == 1 and fp["source"].iloc[0] == "proposal-edited"
    assert fp.geometry.iloc[0].area == pytest.approx(proposed.area / 4, rel=0.05)
    # every proposal deleted in the layer: accepting stores nothing, like a rejection
    second = review.current
    viewer.layers["proposals"].data = []
    review.accept_all()
    assert len(store.footprints(sid)) == 1
    mark = next(r for r in store.reviewed_chips() if r.window == second.window)
    assert mark.empty
    # an untouched proposal is stored exactly as proposed; a shape drawn into the layer, as drawn
    third = review.current
    layer = viewer.layers["proposals"]
    w = third.window
    layer.add([np.array([[w.row_off + 10.0, w.col_off + 10.0], [w.row_off + 10.0, w.col_off + 40.0],
                         [w.row_off + 30.0, w.col_off + 40.0]])], shape_type="polygon")
    review.accept_all()
    fp = store.footprints(sid)
    assert len(fp) == 3 and sorted(fp["source"].iloc[-2:]) == ["proposal-accepted", "proposal-edited"]
    accepted = fp[fp["source"] == "proposal-accepted"]
    assert accepted.geometry.iloc[-1].equals_exact(third.proposals[0].geometry, 1e-9)


def test_redo_of_a_decision_takes_the_chip_out_of_the_queue_again(app, qtbot) -> None:
    wait_ranked(qtbot, app)
    review, store = app.review, app.session.project.labels
    editor = app.session.editor
    first = review.current
    review.accept_all()
    assert len(review.items) == 3
    assert editor.undo() and len(review.items) == 4 and review.items[0].window == first.window
    assert editor.redo() and len(store.reviewed_chips()) == 1
    assert len(review.items) == 3 and all(it.window != first.window for it in review.items)
    assert editor.undo() and len(review.items) == 4  # and back once more


def test_review_keys_on_canvas(app, qtbot) -> None:
    wait_ranked(qtbot, app)
    viewer = app.session.viewer
    assert viewer.layers.selection.active.name == "proposals"
    first = app.review.current
    qtbot.keyClick(viewer.window._qt_viewer.canvas.native, "e")
    reviewed = app.session.project.labels.reviewed_chips()
    assert [r.window for r in reviewed] == [first.window] and reviewed[0].empty


def test_draw_edit_vertex_undo_redo_delete_and_class(app, qtbot) -> None:
    editor = app.session.editor
    layer, store = editor.layer, app.session.project.labels
    sid = app.session.scene.scene_id
    square = np.array([[100.0, 100.0], [100.0, 200.0], [200.0, 200.0], [200.0, 100.0]])
    layer.add(square, shape_type="polygon")  # as when a polygon is drawn
    fp = store.footprints(sid)
    assert len(fp) == 1 and fp["source"].iloc[0] == "manual" and fp["class"].iloc[0] == "datacenter"
    before = np.asarray(fp.geometry.iloc[0].exterior.coords)
    assert int(layer.features["fid"].iloc[0]) == int(fp["fid"].iloc[0])

    # move vertex 1 by (+10 rows, +5 cols) the way napari's vertex tools do
    moved = layer.data[0].copy()
    moved[1] += (10.0, 5.0)
    layer.events.data(value=layer.data, action=ActionType.CHANGING, data_indices=(0,), vertex_indices=((1,),))
    layer._data_view.edit(0, moved)
    layer.events.data(value=layer.data, action=ActionType.CHANGED, data_indices=(0,), vertex_indices=((1,),))
    after = np.asarray(store.footprints(sid).geometry.iloc[0].exterior.coords)
    delta = after - before
    # 0.6 m pixels, north up: +5 cols = +3.0 m x, +10 rows = -6.0 m y; other vertices unchanged
    np.testing.assert_allclose(delta[1], [3.0, -6.0], atol=1e-6)
    assert np.abs(np.delete(delta, [1], axis=0)).max() < 1e-6

    assert editor.undo()
    restored = np.asarray(store.footprints(sid).geometry.iloc[0].exterior.coords)
    np.testing.assert_allclose(restored, before, atol=1e-6)
    np.testing.assert_allclose(layer.data[0], square, atol=1e-6)
    assert editor.redo()
    np.testing.assert_allclose(layer.data[0][1], square[1] + (10.0, 5.0), atol=1e-6)

    layer.selected_data = {0}
    editor.set_class("warehouse")
    assert store.footprints(sid)["class"].iloc[0] == "warehouse"
    layer.selected_data = {0}
    layer.remove_selected()
    assert len(store.footprints(sid)) == 0
    assert editor.undo() and len(store.footprints(sid)) == 1 and len(layer.data) == 1

    layer.add(square + 300.0, shape_type="polygon")
    layer.selected_data = {0, 1}
    editor.set_class("retail")  # two shapes re-classed at once ...
    assert set(store.footprints(sid)["class"]) == {"retail"}
    assert editor.undo() and list(store.footprints(sid)["class"]) == ["warehouse"] * 2  # ... one undo
    layer.selected_data = {0, 1}
    layer.remove_selected()  # two shapes deleted at once ...
    assert len(store.footprints(sid)) == 0
    assert editor.undo() and len(store.footprints(sid)) == 2  # ... come back with one undo


def test_editing_one_vertex_leaves_the_others_exact(app, qtbot) -> None:
    """napari keeps vertices as float32 (~3e-5 px off at 400 px): an edit must not write that
    rounding into the vertices the user did not touch."""
    from shapely.geometry import Polygon

    editor, store = app.session.editor, app.session.project.labels
    sid, t = app.session.scene.scene_id, app.session.scene.transform
    ring = [t * (c, r) for r, c in ((401.123456789, 402.987654321), (401.2, 455.7), (460.33, 455.71),
                                    (459.91, 403.3))]
    fid = store.add_footprint(sid, Polygon(ring), "datacenter")
    editor.reload()
    layer = editor.layer
    [i] = editor.indices_of([fid])
    assert np.abs(layer.data[i] - [(401.123456789, 402.987654321)]).min() > 1e-7  # float32 in the layer
    moved = layer.data[i].copy()
    moved[2] += (3.0, 4.0)
    layer.events.data(value=layer.data, action=ActionType.CHANGING, data_indices=(i,), vertex_indices=((2,),))
    layer._data_view.edit(i, moved)
    layer.events.data(value=layer.data, action=ActionType.CHANGED, data_indices=(i,), vertex_indices=((2,),))
    stored = store.footprints(sid).set_index("fid").geometry.loc[fid]
    before, after = np.asarray(Polygon(ring).exterior.coords), np.asarray(stored.exterior.coords)
    assert after.shape == before.shape
    untouched = [0, 1, 3, 4]  # 4: the closing vertex
    assert np.array_equal(after[untouched], before[untouched])  # bit for bit
    np.testing.assert_allclose(after[2] - before[2], [4.0 * 0.6, -3.0 * 0.6], atol=1e-3)


def test_a_self_intersecting_outline_is_stored_and_shown_as_its_parts(app, qtbot) -> None:
    editor, store = app.session.editor, app.session.project.labels
    sid = app.session.scene.scene_id
    bowtie = np.array([[300.0, 300.0], [300.0, 400.0], [400.0, 300.0], [400.0, 400.0]])
    editor.layer.add(bowtie, shape_type="polygon")
    [geom] = store.footprints(sid).geometry
    assert geom.is_valid and geom.geom_type == "MultiPolygon" and len(geom.geoms) == 2
    [fid] = store.footprints(sid)["fid"]
    assert len(editor.indices_of([int(fid)])) == 2  # the layer shows the two stored parts


def test_mark_empty_and_reject(app, qtbot) -> None:
    wait_ranked(qtbot, app)
    review, store = app.review, app.session.project.labels
    first = review.current
    review.mark_empty()
    second = review.current
    review.reject()
    chips = {(r.window.row_off, r.window.col_off): r.empty for r in store.reviewed_chips()}
    assert chips == {(first.window.row_off, first.window.col_off): True,
                     (second.window.row_off, second.window.col_off): True}
    assert len(store.footprints()) == 0 and review.table.rowCount() == 2
    review.mark_empty()
    review.mark_empty()  # the queue is now empty
    assert review.current is None and app.session.current_chip is None  # no stale "current" outline
    assert app.session.viewer.layers.selection.active is app.session.editor.layer
    n = len(store.reviewed_chips())
    review.accept_all()  # nothing to act on: says so, stores nothing
    review.skip()
    assert len(store.reviewed_chips()) == n


def test_bad_scene_is_reported_in_the_window(tiny_project, qtbot) -> None:
    from conftest import TINY_CRS, TINY_TRANSFORM

    from labeler.app import launch
    from model.scene import write_geotiff

    scene = next(tiny_project.parent.glob("scene.tif"))
    write_geotiff(scene, np.zeros((3, 64, 64), np.uint8), TINY_CRS, TINY_TRANSFORM)  # 3 bands now
    viewer, opened = launch(tiny_project, show=False)
    try:
        assert opened is None
        docks = viewer.window.dock_widgets
        assert "dclabel: error" in docks
        text = docks["dclabel: error"].text()
        assert "bands" in text
    finally:
        viewer.close()


def test_a_moved_scene_does_not_keep_the_others_from_opening(tiny_project, make_napari_viewer, qtbot) -> None:
    from conftest import write_tiny_scene

    from labeler.app import open_project
    from loop.project import Project

    project = Project.open(tiny_project)
    first = project.scene_ids[0]
    other = write_tiny_scene(tiny_project.parent / "other.tif", seed=5)
    moved = project.add_scene(other).scene_id
    project.labels.close()
    other.rename(tiny_project.parent / "elsewhere.tif")
    opened = open_project(make_napari_viewer(), tiny_project)
    try:
        assert opened.session.scene.scene_id == first
        names = [opened.labels.scene.itemText(i) for i in range(opened.labels.scene.count())]
        assert any(moved in n and "file missing" in n for n in names)
        wait_ranked(qtbot, opened)
        assert opened.review.items and {it.scene_id for it in opened.review.items} == {first}
    finally:
        opened.close()


def test_a_scene_whose_file_is_there_but_unusable_is_not_called_missing(tiny_project, make_napari_viewer,
                                                                        qtbot) -> None:
    from conftest import write_tiny_scene

    from labeler.app import open_project
    from loop.project import Project

    project = Project.open(tiny_project)
    other = write_tiny_scene(tiny_project.parent / "other.tif", seed=5)
    replaced = project.add_scene(other).scene_id
    project.labels.close()
    from conftest import TINY_CRS, TINY_TRANSFORM

    from model.scene import write_geotiff

    pixels = np.random.default_rng(6).integers(0, 255, (4, 300, 300), dtype=np.uint8)
    write_geotiff(other, pixels, TINY_CRS, TINY_TRANSFORM)  # another raster under the same name: its grid changed
    opened = open_project(make_napari_viewer(), tiny_project)
    try:
        names = [opened.labels.scene.itemText(i) for i in range(opened.labels.scene.count())]
        entry = next(n for n in names if replaced in n)
        assert "cannot be read" in entry and "missing" not in entry
        wait_ranked(qtbot, opened)
    finally:
        opened.close()


def test_a_scene_that_fails_to_open_leaves_everything_on_the_shown_scene(tiny_project, make_napari_viewer,
                                                                         qtbot) -> None:
    from conftest import write_tiny_scene

    from labeler.app import open_project
    from loop.project import Project

    project = Project.open(tiny_project)
    first = project.scene_ids[0]
    other = write_tiny_scene(tiny_project.parent / "other.tif", seed=5)
    second = project.add_scene(other).scene_id
    project.labels.close()
    opened = open_project(make_napari_viewer(), tiny_project)
    try:
        wait_ranked(qtbot, opened)
        other.unlink()  # gone while the app runs
        combo = opened.labels.scene
        combo.setCurrentIndex(combo.findData(second))
        session = opened.session
        assert session.scene.scene_id == first and session.editor.scene.scene_id == first
        assert session.viewer.layers["scene"].metadata["scene_id"] == first
        assert combo.currentData() == first  # the selector says what is shown
    finally:
        opened.close()


def test_undo_of_an_edit_in_another_scene_shows_that_scene(tiny_project, make_napari_viewer, qtbot) -> None:
    from conftest import write_tiny_scene

    from labeler.app import open_project
    from loop.project import Project

    project = Project.open(tiny_project)
    first = project.scene_ids[0]
    second = project.add_scene(write_tiny_scene(tiny_project.parent / "other.tif", seed=5)).scene_id
    project.labels.close()
    opened = open_project(make_napari_viewer(), tiny_project)
    try:
        wait_ranked(qtbot, opened)
        session, combo = opened.session, opened.labels.scene
        store = session.project.labels
        combo.setCurrentIndex(combo.findData(second))
        assert session.scene.scene_id == second
        session.editor.layer.add([np.array([[10.0, 10.0], [10.0, 60.0], [50.0, 60.0], [50.0, 10.0]])],
                                 shape_type="polygon")
        assert len(store.footprints(second)) == 1
        combo.setCurrentIndex(combo.findData(first))
        assert session.scene.scene_id == first
        assert session.editor.undo()  # the last edit was in the other scene: undone there, and shown
        assert len(store.footprints(second)) == 0
        assert session.scene.scene_id == second and combo.currentData() == second
        assert session.editor.layer.nshapes == 0
        assert session.editor.redo()  # redo stays on the scene it changes
        assert len(store.footprints(second)) == 1 and session.editor.layer.nshapes == 1
    finally:
        opened.close()


def test_accept_selected_edit_then_accept_and_skip(app, qtbot) -> None:
    wait_ranked(qtbot, app)
    review, store = app.review, app.session.project.labels
    viewer, editor = app.session.viewer, app.session.editor
    sid = app.session.scene.scene_id

    review.accept_selected()  # nothing selected: nothing stored, chip stays
    assert len(store.reviewed_chips()) == 0
    viewer.layers["proposals"].selected_data = {0}
    first = review.current
    review.accept_selected()
    assert len(store.footprints(sid)) == 1 and review.current is not first

    skipped = review.current
    review.skip()
    assert review.items[-1] is skipped and review.current is not skipped

    chip = review.current
    rows = review.table.rowCount()
    after = review.queue.rows[review.queue.rows.index(chip) + 1]
    review.edit_then_accept()
    fp = store.footprints(sid)
    assert len(fp) == 2 and fp["source"].iloc[-1] == "proposal-edited"
    assert review.current is chip  # stays on the chip to edit
    assert review.table.rowCount() == rows - 1 and chip not in review.items  # out of the queue at once
    review.accept_all()  # an accepted chip is not decided twice (its proposals stay on screen)
    assert len(store.footprints(sid)) == 2
    assert viewer.layers.selection.active is editor.layer and editor.layer.mode == "direct"
    (i,) = editor.layer.selected_data
    moved = editor.layer.data[i].copy()
    moved[0] -= (4.0, 0.0)
    editor.layer._data_view.edit(i, moved)
    editor.layer.events.data(value=editor.layer.data, action=ActionType.CHANGED, data_indices=(i,),
                             vertex_indices=((0,),))
    row = store.footprints(sid).iloc[-1]
    assert row["source"] == "proposal-edited"
    y0 = np.asarray(fp.geometry.iloc[-1].exterior.coords)[0, 1]
    assert np.asarray(row.geometry.exterior.coords)[0, 1] == pytest.approx(y0 + 2.4, abs=1e-6)  # 4 rows up
    assert any(r.window == chip.window for r in store.reviewed_chips())
    review.next_chip()
    assert review.current is after and review.table.rowCount() == rows - 1
    assert all(it.window != chip.window for it in review.items)


def test_a_chip_accepted_for_editing_is_never_offered_again(app, qtbot) -> None:
    wait_ranked(qtbot, app)
    review, store = app.review, app.session.project.labels
    sid = app.session.scene.scene_id
    chip = review.current
    review.edit_then_accept()
    assert chip not in review.items
    review.table.selectRow(1)  # the user clicks another row instead of pressing N
    assert review.current is not chip and review.current.window != chip.window
    review.populate(review.items)  # a re-rank or a scene switch refills the table
    assert all(it.window != chip.window for it in review.items)
    while review.current is not None:
        review.accept_all()
    reviewed = [r.window for r in store.reviewed_chips(sid)]
    assert len(reviewed) == len(set(reviewed))
    assert len(store.footprints(sid)) == store.footprints(sid).geometry.normalize().to_wkb().nunique()


def test_undoing_an_edit_accept_puts_the_chip_back_in_the_queue(app, qtbot) -> None:
    wait_ranked(qtbot, app)
    review, editor = app.review, app.session.editor
    chip = review.current
    review.edit_then_accept()
    assert chip not in review.items
    assert editor.undo()
    assert review.items[0].window == chip.window and review.current is chip
    review.next_chip()  # an ordinary queued chip again: N moves on and leaves it queued
    assert review.current is not chip and any(it.window == chip.window for it in review.items)


def test_ctrl_z_on_the_canvas_undoes_the_last_edit(app, qtbot) -> None:
    from qtpy.QtCore import Qt

    editor, store = app.session.editor, app.session.project.labels
    viewer = app.session.viewer
    viewer.layers.selection.active = editor.layer
    editor.layer.add(np.array([[10.0, 10.0], [10.0, 60.0], [60.0, 60.0]]), shape_type="polygon")
    assert len(store.footprints()) == 1
    canvas = viewer.window._qt_viewer.canvas.native
    qtbot.keyClick(canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)
    assert len(store.footprints()) == 0 and editor.layer.nshapes == 0
    qtbot.keyClick(canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier | Qt.KeyboardModifier.ShiftModifier)
    assert len(store.footprints()) == 1 and editor.layer.nshapes == 1


def test_uncertainty_heatmap_follows_the_chip_and_toggles(app, qtbot) -> None:
    wait_ranked(qtbot, app)
    review, viewer = app.review, app.session.viewer
    qtbot.waitUntil(lambda: "uncertainty" in viewer.layers and heatmap_shown(viewer.layers["uncertainty"]),
                    timeout=15_000)
    heat = viewer.layers["uncertainty"]
    heat.opacity = 0.8  # the user's choice survives the hiding between chips
    w = review.current.window
    assert heat.data.shape == (256, 256) and 0.0 <= float(heat.data.min()) <= float(heat.data.max()) <= 1.0
    assert tuple(heat.translate) == (float(w.row_off), float(w.col_off))
    assert viewer.layers.index(heat) == 1  # under the outlines, over the scene
    review.next_chip()
    assert not heatmap_shown(heat)  # the old chip's map is hidden at once
    w2 = review.current.window
    qtbot.waitUntil(lambda: heatmap_shown(heat) and tuple(heat.translate) == (float(w2.row_off), float(w2.col_off)),
                    timeout=15_000)
    assert heat.opacity == 0.8
    review.heatmap.setChecked(False)
    assert not heat.visible


def test_rectangle_drawn_and_vertex_dragged_with_the_mouse(app, qtbot) -> None:
    editor, store = app.session.editor, app.session.project.labels
    layer, sid = editor.layer, app.session.scene.scene_id
    editor.set_class("warehouse")
    layer.mode = "add_rectangle"
    drag(layer, (100.0, 100.0), (150.0, 180.0))
    fp = store.footprints(sid)
    assert len(fp) == 1 and fp["class"].iloc[0] == "warehouse" and fp["source"].iloc[0] == "manual"
    # 50 x 80 px of 0.6 m pixels
    assert fp.geometry.iloc[0].area == pytest.approx(50 * 80 * 0.36, rel=1e-6)
    before = np.asarray(fp.geometry.iloc[0].exterior.coords)
    layer.mode = "direct"
    layer.selected_data = {0}
    corner = tuple(layer.data[0][0])
    drag(layer, corner, (corner[0] - 10.0, corner[1] - 20.0))
    after = np.asarray(store.footprints(sid).geometry.iloc[0].exterior.coords)
    moved = np.abs(after - before).max(axis=1) > 1e-9
    assert moved.sum() in (1, 2)  # the dragged corner (and the ring's closing copy of it)
    np.testing.assert_allclose((after - before)[moved][0], [-12.0, 6.0], atol=1e-6)  # 20 cols W, 10 rows N


def _click(layer, pos, double=False) -> None:
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import (
        mouse_double_click_callbacks,
        mouse_move_callbacks,
        mouse_press_callbacks,
        mouse_release_callbacks,
    )

    def event(kind):  # ``pos`` is the canvas position napari compares to tell clicks apart
        return read_only_mouse_event(type=kind, position=pos, pos=np.asarray(pos, dtype=float))

    mouse_move_callbacks(layer, event("mouse_move"))
    mouse_press_callbacks(layer, event("mouse_press"))
    mouse_release_callbacks(layer, event("mouse_release"))
    if double:
        mouse_double_click_callbacks(layer, event("mouse_double_click"))


def test_a_click_then_double_click_does_not_break_drawing(app, qtbot) -> None:
    # too few vertices: napari drops the shape (not its feature row); drawing must go on
    editor, store = app.session.editor, app.session.project.labels
    layer, sid = editor.layer, app.session.scene.scene_id
    layer.mode = "add_polygon"
    _click(layer, (200.0, 200.0))
    _click(layer, (200.0, 200.0), double=True)
    assert layer.nshapes == 0 and len(layer.features) == 0 and len(store.footprints(sid)) == 0
    corners = [(300.0, 300.0), (300.0, 360.0), (340.0, 360.0), (340.0, 300.0)]
    for pos in corners:
        _click(layer, pos)
    _click(layer, corners[-1], double=True)
    qtbot.wait(50)
    fp = store.footprints(sid)
    assert layer.nshapes == 1 and len(fp) == 1
    assert fp.geometry.iloc[0].area == pytest.approx(40 * 60 * 0.36, rel=1e-6)


def test_queue_scored_by_another_model_is_re_ranked_on_open(tiny_project, make_napari_viewer, qtbot) -> None:
    from labeler.app import open_project
    from loop.project import Project
    from loop.ranking import queue_is_stale, queue_model_version, save_queue

    project = Project.open(tiny_project)
    assert queue_is_stale(project)  # no queue yet
    save_queue(project, [], "entropy", model_version="v1")  # v1 is current: up to date
    assert queue_model_version(project) == (True, "v1") and not queue_is_stale(project)
    save_queue(project, [], "entropy", model_version="v0")
    assert queue_is_stale(project)
    viewer = make_napari_viewer()
    opened = open_project(viewer, tiny_project)
    assert opened.review.rank_job is not None  # re-ranking with the current model
    qtbot.waitUntil(lambda: opened.review.rank_job is None, timeout=60_000)
    assert queue_model_version(project) == (True, "v1") and opened.review.items
    opened.close()


def test_a_rank_request_during_ranking_ranks_once_more_after(app, qtbot) -> None:
    # e.g. a model published or a scene downloaded while the queue is being ranked: that ranking
    # may not see it, so it is not dropped but run again (requests in between coalesce)
    review = app.review
    wait_ranked(qtbot, app)
    first = review.rank()
    assert first is not None
    assert review.rank() is None and review.rank() is None  # coalesced while running
    started = []
    first.worker.finished.connect(lambda: started.append(review.rank_job))
    qtbot.waitUntil(lambda: bool(started), timeout=30_000)
    assert started[0] is not None and started[0] is not first  # one more ranking ...
    wait_ranked(qtbot, app)
    assert review.rank_job is None  # ... and only one
