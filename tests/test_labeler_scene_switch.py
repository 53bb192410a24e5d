"""Switching scenes refills the layers in place: same layer objects, same order, no layer removed
(napari runs ``gc.collect()``, about 0.25 s, for each removed layer), and edits land in the new scene."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY_CRS, TINY_TRANSFORM, write_tiny_scene
from shapely.geometry import Polygon

from labeler.footprints import HOLES_LAYER

pytestmark = pytest.mark.gui

SWITCHED = ("scene", "chip grid", "footprints", HOLES_LAYER)


def _small_scene(path):
    """A 256 px 4-band scene (``write_tiny_scene`` paints roofs past 256 px)."""
    from model.scene import write_geotiff

    img = np.random.default_rng(5).integers(40, 200, (4, 256, 256), dtype=np.uint8)
    return write_geotiff(path, img, TINY_CRS, TINY_TRANSFORM)


def _pbox(scene, r0, r1, c0, c1) -> Polygon:
    """A box in scene CRS from pixel rows and columns."""
    t = scene.transform
    return Polygon([t * (c, r) for r, c in ((r0, c0), (r0, c1), (r1, c1), (r1, c0))])


@pytest.fixture
def two_scenes(tiny_project, make_napari_viewer, qtbot):
    """The app on the tiny project plus a 256 px second scene; the first scene holds a footprint
    with a hole (so the holes layer exists), and ranking has finished (proposals are shown)."""
    from labeler.app import open_project
    from loop.project import Project

    project = Project.open(tiny_project)
    first = project.scene_ids[0]
    second = project.add_scene(_small_scene(tiny_project.parent / "small.tif")).scene_id
    scene = project.scene(first)
    holed = Polygon(_pbox(scene, 50, 150, 50, 250).exterior.coords,
                    [_pbox(scene, 80, 120, 100, 200).exterior.coords])
    project.labels.add_footprint(first, holed, "datacenter")
    project.labels.close()
    opened = open_project(make_napari_viewer(), tiny_project, scene_id=first)
    qtbot.waitUntil(lambda: opened.review.rank_job is None, timeout=30_000)
    yield opened, first, second
    opened.close()


def _switch(opened, scene_id) -> None:
    combo = opened.labels.scene
    combo.setCurrentIndex(combo.findData(scene_id))
    assert opened.session.scene.scene_id == scene_id


def test_a_switch_refills_the_layers_in_place_and_keeps_their_order(two_scenes) -> None:
    opened, first, second = two_scenes
    viewer, session = opened.session.viewer, opened.session
    assert "proposals" in viewer.layers and HOLES_LAYER in viewer.layers
    layers = {name: viewer.layers[name] for name in SWITCHED}
    order = [layer.name for layer in viewer.layers]
    # the holes layer sits right above the footprints, both under the review's proposals
    assert order.index(HOLES_LAYER) == order.index("footprints") + 1 < order.index("proposals")
    removed = []
    viewer.layers.events.removed.connect(lambda event: removed.append(event.value.name))

    _switch(opened, second)
    assert removed == []
    assert [layer.name for layer in viewer.layers] == order
    assert all(viewer.layers[name] is layer for name, layer in layers.items())
    assert viewer.layers["scene"].metadata["scene_id"] == second
    assert viewer.layers["scene"].data.shape == (256, 256, 3)
    assert len(viewer.layers["chip grid"].data) == 1  # 256 px scene: one chip
    assert session.editor.layer.nshapes == 0 and len(viewer.layers[HOLES_LAYER].data) == 0

    _switch(opened, first)
    assert removed == [] and [layer.name for layer in viewer.layers] == order
    assert viewer.layers["scene"].data.shape == (512, 512, 3)
    assert len(viewer.layers["chip grid"].data) == 4
    assert session.editor.layer.nshapes == 1 and len(viewer.layers[HOLES_LAYER].data) == 1


def test_edits_after_a_switch_are_stored_in_the_new_scene(two_scenes) -> None:
    opened, first, second = two_scenes
    session = opened.session
    store, layer = session.project.labels, session.editor.layer
    _switch(opened, second)
    assert session.editor.layer is layer
    layer.add([np.array([[10.0, 10.0], [10.0, 60.0], [50.0, 60.0], [50.0, 10.0]])], shape_type="polygon")
    assert len(store.footprints(second)) == 1 and len(store.footprints(first)) == 1
    [fid] = store.footprints(second)["fid"]
    layer.selected_data = {0}
    layer.remove_selected()
    assert len(store.footprints(second)) == 0 and len(store.footprints(first)) == 1
    assert session.editor.undo() and list(store.footprints(second)["fid"]) == [fid]
    assert layer.nshapes == 1

    _switch(opened, first)  # and back: the first scene's footprint is edited in its own scene
    [(first_fid, before)] = zip(store.footprints(first)["fid"], store.footprints(first).geometry, strict=True)
    verts = np.asarray(layer.data[0]).copy()
    verts[0] -= 5.0
    layer.data = [verts]
    after = store.footprints(first).set_index("fid").geometry.loc[first_fid]
    assert not after.equals(before) and len(after.interiors) == 1
    assert list(store.footprints(second)["fid"]) == [fid]


def test_a_shape_half_drawn_when_switching_is_dropped(two_scenes) -> None:
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import (
        mouse_move_callbacks,
        mouse_press_callbacks,
        mouse_release_callbacks,
    )

    opened, first, second = two_scenes
    session = opened.session
    store, layer = session.project.labels, session.editor.layer
    layer.mode = "add_polygon"
    for point in ([300.0, 300.0], [300.0, 360.0], [350.0, 360.0]):  # three clicks, not finished
        mouse_press_callbacks(layer, read_only_mouse_event(type="mouse_press", position=point))
        mouse_release_callbacks(layer, read_only_mouse_event(type="mouse_release", position=point))
        mouse_move_callbacks(layer, read_only_mouse_event(type="mouse_move", position=[point[0] + 1, point[1] + 1]))
    assert layer.nshapes == 2
    _switch(opened, second)
    assert len(store.footprints(first)) == 1 and len(store.footprints(second)) == 0
    assert layer.nshapes == 0 and layer.mode == "pan_zoom" and not layer._is_creating
    layer.add([np.array([[10.0, 10.0], [10.0, 60.0], [50.0, 60.0], [50.0, 10.0]])], shape_type="polygon")
    assert len(store.footprints(second)) == 1 and layer.nshapes == 1


def test_the_scene_layer_is_replaced_in_place_only_between_one_level_and_a_pyramid(
    tmp_path, make_napari_viewer
) -> None:
    from labeler.scene_layers import add_scene_layer
    from model.scene import open_scene

    viewer = make_napari_viewer()
    small = open_scene(write_tiny_scene(tmp_path / "small.tif", size=512))
    large = open_scene(write_tiny_scene(tmp_path / "large.tif", size=1100, seed=1))  # two levels
    layer = add_scene_layer(viewer, small)
    viewer.add_shapes(name="above")
    layer.metadata["kept"] = True
    layer.opacity = 0.5
    assert add_scene_layer(viewer, small) is layer  # same kind: refilled
    pyramid = add_scene_layer(viewer, large)  # napari cannot make a layer multiscale: replaced ...
    assert pyramid.multiscale and pyramid is not layer and layer not in viewer.layers
    assert viewer.layers.index(pyramid) == 0 and pyramid.metadata["kept"] and pyramid.opacity == 0.5  # ... in place
    assert pyramid.metadata["scene_id"] == large.scene_id
    assert add_scene_layer(viewer, large, composite="nir") is pyramid
    assert pyramid.metadata["display"].composite == "nir"
    back = add_scene_layer(viewer, small)
    assert not back.multiscale and viewer.layers.index(back) == 0 and back.metadata["scene_id"] == small.scene_id
