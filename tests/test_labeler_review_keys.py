"""The review keys A, R, E, N do what the buttons say whichever dclabel layer is active; none of
them selects, draws or deletes footprints (napari binds A, R, E on every Shapes layer)."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.gui

SQUARE = np.array([[20.0, 20.0], [20.0, 60.0], [60.0, 60.0], [60.0, 20.0]])


def _press(viewer, key: str) -> None:
    from qtpy.QtTest import QTest

    QTest.keyClick(viewer.window._qt_viewer.canvas.native, key)


@pytest.mark.parametrize("active", ["footprints", "chip grid", "proposals", "scene"])
def test_review_keys_review_whichever_layer_is_active(app, qtbot, active) -> None:
    qtbot.waitUntil(lambda: app.review.rank_job is None, timeout=30_000)
    review, store, viewer = app.review, app.session.project.labels, app.session.viewer
    editor = app.session.editor
    editor.layer.add([SQUARE], shape_type="polygon")  # a footprint the labeller drew
    assert len(store.footprints()) == 1

    def reviewed() -> dict:
        return {(r.window.row_off, r.window.col_off): r.empty for r in store.reviewed_chips()}

    def key(k: str) -> None:
        viewer.layers.selection.active = viewer.layers[active]
        editor.layer.mode = "pan_zoom"
        _press(viewer, k)

    first = review.current
    key("a")  # accept all: the chip's proposal is stored, the chip reviewed
    assert reviewed() == {(first.window.row_off, first.window.col_off): False}
    assert len(store.footprints()) == 1 + len(first.proposals)
    assert editor.layer.selected_data == set() and editor.layer.mode == "pan_zoom"
    second = review.current
    key("r")  # reject: reviewed, no proposal stored; not napari's rectangle tool
    assert len(reviewed()) == 2 and len(store.footprints()) == 1 + len(first.proposals)
    assert editor.layer.mode == "pan_zoom"
    third = review.current
    assert third is not second
    key("n")  # next chip, nothing decided
    assert review.current is not third and len(reviewed()) == 2
    key("e")  # empty chip; not napari's ellipse tool
    assert len(reviewed()) == 3 and sum(reviewed().values()) == 1 + (not editor.touches(second.window))
    assert editor.layer.mode == "pan_zoom"
    # A then Delete on the footprints layer: the chip accepted, no footprint selected nor deleted
    from qtpy.QtCore import Qt

    viewer.layers.selection.active = editor.layer
    fourth = review.current
    _press(viewer, "a")
    stored = len(store.footprints())
    assert stored == 1 + len(first.proposals) + len(fourth.proposals) and len(reviewed()) == 4
    assert editor.layer.selected_data == set()
    _press(viewer, Qt.Key.Key_Delete)
    assert len(store.footprints()) == stored == editor.layer.nshapes


def test_review_keys_wait_for_a_footprint_being_drawn(app, qtbot) -> None:
    from test_labeler_app import _click

    qtbot.waitUntil(lambda: app.review.rank_job is None, timeout=30_000)
    review, store, viewer = app.review, app.session.project.labels, app.session.viewer
    editor = app.session.editor
    viewer.layers.selection.active = editor.layer
    editor.layer.mode = "add_polygon"
    for pos in [(300.0, 300.0), (300.0, 360.0), (340.0, 360.0)]:
        _click(editor.layer, pos)
    first = review.current
    for k in "aren":
        _press(viewer, k)
    assert review.current is first and store.reviewed_chips() == [] and editor.layer._is_creating
    _click(editor.layer, (340.0, 300.0))
    _click(editor.layer, (340.0, 300.0), double=True)  # the outline finished, the keys work again
    qtbot.wait(50)
    assert len(store.footprints()) == 1
    _press(viewer, "r")
    assert len(store.reviewed_chips()) == 1 and review.current is not first


def test_the_hint_advertises_no_key_taken_by_the_review(app) -> None:
    hint = app.labels.info.text()
    assert "P polygon" in hint and "R rectangle" not in hint and "E ellipse" not in hint
