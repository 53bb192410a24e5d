"""What a shape drawn in the footprints layer becomes in the label store: an ellipse its outline;
lines, paths, slivers and shapes off the scene nothing, with a notice."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import drag
from shapely.geometry import Polygon

pytestmark = pytest.mark.gui

PX_M2 = 0.36  # the tiny scene's 0.6 m pixels


def _rotated_box(centre, half_rows, half_cols, degrees) -> np.ndarray:
    """Corners, in order, of a box rotated about its centre (napari ``(row, col)``)."""
    t = np.deg2rad(degrees)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    box = np.array([[-half_rows, -half_cols], [-half_rows, half_cols], [half_rows, half_cols],
                    [half_rows, -half_cols]])
    return np.asarray(centre) + box @ rot.T


def _on_ellipse(points_rc, centre, half_rows, half_cols, degrees) -> np.ndarray:
    """(x/a)^2 + (y/b)^2 of points in the rotated ellipse's own frame (1 on its outline)."""
    t = np.deg2rad(degrees)
    rot = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
    local = (np.asarray(points_rc) - centre) @ rot
    return (local[:, 0] / half_rows) ** 2 + (local[:, 1] / half_cols) ** 2


def test_an_ellipse_is_stored_and_shown_as_its_outline(app, qtbot) -> None:
    from labeler.geo import crs_to_napari

    editor, store = app.session.editor, app.session.project.labels
    layer, sid, transform = editor.layer, app.session.scene.scene_id, app.session.scene.transform
    # drawn with the mouse (napari's ellipse tool): 60 x 100 px
    layer.mode = "add_ellipse"
    drag(layer, (100.0, 100.0), (160.0, 200.0))
    [geom] = store.footprints(sid).geometry
    assert geom.area == pytest.approx(np.pi * 30 * 50 * PX_M2, rel=0.01)  # not the box's 4ab
    assert len(geom.exterior.coords) - 1 >= 32
    qtbot.waitUntil(lambda: list(layer.shape_type) == ["polygon"], timeout=5_000)  # shown as stored
    assert layer.nshapes == 1 and int(layer.features["fid"].iloc[0]) == int(store.footprints(sid)["fid"].iloc[0])

    # a rotated one (an ellipse turned with napari's transform box keeps its box's corners)
    centre = np.array([350.0, 300.0])
    layer.add([_rotated_box(centre, 30.0, 50.0, 30.0)], shape_type="ellipse")
    geom = store.footprints(sid).geometry.iloc[-1]
    assert geom.area == pytest.approx(np.pi * 30 * 50 * PX_M2, rel=0.01)
    ring = crs_to_napari(np.asarray(geom.exterior.coords)[:-1], transform)
    np.testing.assert_allclose(_on_ellipse(ring, centre, 30.0, 50.0, 30.0), 1.0, atol=1e-6)
    assert list(layer.shape_type) == ["polygon", "polygon"]
    shown = next(np.asarray(d) for d, f in zip(layer.data, editor._fids(), strict=True)
                 if f == int(store.footprints(sid)["fid"].iloc[-1]))
    assert Polygon(shown).equals_exact(Polygon(ring), 1e-3)  # the layer shows the stored outline

    editor.reload()  # as after reopening: the same polygons
    assert list(layer.shape_type) == ["polygon", "polygon"]
    assert sorted(len(d) for d in layer.data) == [len(ring)] * 2


def test_an_ellipse_drawn_in_the_proposals_layer_is_accepted_as_its_outline(app, qtbot) -> None:
    qtbot.waitUntil(lambda: app.review.rank_job is None, timeout=30_000)
    review, store, sid = app.review, app.session.project.labels, app.session.scene.scene_id
    layer = app.session.viewer.layers["proposals"]
    w = review.current.window
    layer.selected_data = set(range(layer.nshapes))
    layer.remove_selected()  # the user deletes the proposal and draws an ellipse instead
    layer.add([np.array([[w.row_off + 20.0, w.col_off + 20.0], [w.row_off + 20.0, w.col_off + 80.0],
                         [w.row_off + 60.0, w.col_off + 80.0], [w.row_off + 60.0, w.col_off + 20.0]])],
              shape_type="ellipse")
    review.accept_all()
    [geom] = store.footprints(sid).geometry
    assert geom.area == pytest.approx(np.pi * 20 * 30 * PX_M2, rel=0.01)


def test_lines_paths_slivers_and_shapes_off_the_scene_are_refused_with_a_notice(app, qtbot) -> None:
    editor, store = app.session.editor, app.session.project.labels
    layer, sid = editor.layer, app.session.scene.scene_id
    notices: list[str] = []
    editor._notify = notices.append

    def refused(data, shape_type, why) -> None:
        notices.clear()
        layer.add([np.asarray(data, dtype=float)], shape_type=shape_type)
        qtbot.waitUntil(lambda: layer.nshapes == 1, timeout=5_000)  # off the layer again
        assert len(store.footprints(sid)) == 1, shape_type
        assert len(notices) == 1 and why in notices[0] and "not saved" in notices[0], notices

    layer.add([np.array([[10.0, 10.0], [10.0, 60.0], [60.0, 60.0], [60.0, 10.0]])], shape_type="polygon")
    assert len(store.footprints(sid)) == 1
    refused([[20, 20], [30, 60], [25, 100]], "path", "path is open")  # no closed triangle
    refused([[50, 50], [80, 90]], "line", "line is open")
    refused([[400, 400], [400, 400.2], [400.2, 400.2]], "polygon", "0.0072 m²")  # 0.02 px²: the area named
    refused([[-300, -300], [-300, -200], [-200, -200], [-200, -300]], "polygon", "wholly outside the scene")
    refused([[200, 600], [200, 700], [300, 700], [300, 600]], "rectangle", "wholly outside the scene")

    # a building at the edge of the scene is real: stored whole, as drawn
    notices.clear()
    layer.add([np.array([[-100.0, 450.0], [-100.0, 600.0], [50.0, 600.0], [50.0, 450.0]])], shape_type="polygon")
    fp = store.footprints(sid)
    assert len(fp) == 2 and not notices
    assert fp.geometry.iloc[-1].area == pytest.approx(150 * 150 * PX_M2, rel=1e-6)
    # so is a small but real shed (2 x 2 px, 1.44 m²)
    layer.add([np.array([[300.0, 300.0], [300.0, 302.0], [302.0, 302.0], [302.0, 300.0]])], shape_type="polygon")
    assert len(store.footprints(sid)) == 3 and not notices and layer.nshapes == 3


def test_a_path_drawn_with_the_mouse_is_refused_and_drawing_goes_on(app, qtbot) -> None:
    from test_labeler_app import _click

    editor, store = app.session.editor, app.session.project.labels
    layer, sid = editor.layer, app.session.scene.scene_id
    notices: list[str] = []
    editor._notify = notices.append
    layer.mode = "add_polyline"  # a click per vertex, a double-click ends it: a napari "path"
    for pos in [(100.0, 100.0), (120.0, 160.0), (110.0, 220.0)]:
        _click(layer, pos)
    _click(layer, (110.0, 220.0), double=True)
    qtbot.waitUntil(lambda: layer.nshapes == 0, timeout=5_000)
    assert len(store.footprints(sid)) == 0 and len(notices) == 1 and "path" in notices[0]
    layer.mode = "add_polygon"  # the layer still draws
    corners = [(300.0, 300.0), (300.0, 360.0), (340.0, 360.0), (340.0, 300.0)]
    for pos in corners:
        _click(layer, pos)
    _click(layer, corners[-1], double=True)
    qtbot.wait(50)
    assert layer.nshapes == 1 and len(store.footprints(sid)) == 1


def test_edits_that_take_a_footprint_off_the_scene_shrink_or_open_it_are_refused(app, qtbot) -> None:
    """The rules for a new shape hold for an edit: refused with a notice, the stored footprint kept
    and shown again."""
    from napari.layers.base._base_constants import ActionType

    editor, store = app.session.editor, app.session.project.labels
    layer, sid = editor.layer, app.session.scene.scene_id
    notices: list[str] = []
    editor._notify = notices.append
    square = np.array([[100.0, 100.0], [100.0, 200.0], [200.0, 200.0], [200.0, 100.0]])
    layer.add([square, square + 200.0], shape_type="polygon")
    fids = store.footprints(sid).set_index("fid").geometry
    fid, other = (int(f) for f in fids.index)
    stored = fids.loc[fid]

    def shown(f) -> np.ndarray:
        [i] = editor.indices_of([f])
        return np.asarray(layer.data[i])

    def refused(edit, why) -> None:
        notices.clear()
        edit()
        qtbot.waitUntil(lambda: shown(fid).shape == square.shape and np.allclose(shown(fid), square, atol=1e-3),
                        timeout=5_000)  # shown as stored again
        now = store.footprints(sid).set_index("fid").geometry
        assert now.loc[fid].equals_exact(stored, 0.0) and len(now) == 2  # the store kept it as it was
        np.testing.assert_allclose(shown(other), square + 200.0, atol=1e-3)
        assert len(notices) == 1 and why in notices[0] and "not saved" in notices[0], notices
        assert f"footprint {fid}" in notices[0], notices

    def through_data(vertices, shape_type="polygon"):
        def edit():
            data = [(np.asarray(d), str(t)) for d, t in zip(layer.data, layer.shape_type, strict=True)]
            data[editor.indices_of([fid])[0]] = (np.asarray(vertices, dtype=float), shape_type)
            layer.data = data
        return edit

    def with_vertex_tool():  # every vertex dragged off, the way napari's vertex tools report it
        [i] = editor.indices_of([fid])
        layer.events.data(value=layer.data, action=ActionType.CHANGING, data_indices=(i,), vertex_indices=((0,),))
        layer._data_view.edit(i, square + (-2000.0, 5000.0))
        layer.events.data(value=layer.data, action=ActionType.CHANGED, data_indices=(i,), vertex_indices=((0,),))

    refused(through_data(square - 400.0), "wholly outside the scene")
    refused(with_vertex_tool, "wholly outside the scene")
    refused(through_data([[150, 150], [150, 150.2], [150.2, 150.2], [150.2, 150]]), "m²")
    refused(through_data([[100, 100], [150, 200], [200, 100]], "path"), "path is open")

    # an edit that keeps part of it on the scene is stored, as a drawn shape at the edge would be
    notices.clear()
    through_data(square - 150.0)()
    assert not notices
    assert store.footprints(sid).set_index("fid").geometry.loc[fid].area == pytest.approx(100 * 100 * PX_M2)
    assert not store.footprints(sid).set_index("fid").geometry.loc[fid].equals(stored)
