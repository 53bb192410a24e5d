"""Layers of the chip under review: the model's proposals and its uncertainty heatmap.

Also the background computation behind the heatmap (the entropy map of one chip, in a worker
thread, with ``progress``/``cancel`` keywords); ranking the queue is :func:`loop.ranking.rank_project`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from labeler.geo import geometry_to_napari, polygon_parts

PROPOSALS_LAYER = "proposals"
HEATMAP_LAYER = "uncertainty"


def quiet_data(layer):
    """Context in which ``layer``'s ``data`` events are held back, for refilling a layer that lies
    inside the scene (proposals, heatmap, detections).

    napari answers every ``data`` event (two per change: "changing" and "changed") by recomputing
    the viewer's dimensions and re-slicing every layer, ~35 ms a time on a 2-core CPU; a layer
    inside the scene's extent cannot change those dimensions. The canvas still redraws (napari's
    ``set_data`` event), and none of these layers has other ``data`` listeners (the footprints
    layer, which saves edits on them, is never refilled this way).
    """
    return layer.events.data.blocker()


def chip_uncertainty(project, scene, window, progress=None, cancel=None) -> np.ndarray | None:
    """Per-pixel entropy of the current model on one chip, or None without a model."""
    from loop.proposals import entropy_map
    from loop.ranking_predict import predict_probabilities
    from model.checkpoint import build_model, load_checkpoint
    from model.scene import read_chip

    current = project.registry.current()
    if current is None:
        return None
    ckpt = load_checkpoint(current.path, expected_bands=4)
    chip = read_chip(scene, window)
    probs = predict_probabilities(build_model(ckpt, "cpu"), ckpt.normalization, chip.image[None], "single")
    return entropy_map(probs[0])


def confidence_colour(score: float) -> np.ndarray:
    """RGBA edge colour for a proposal: red (unsure, 0.5) to green (confident, 1.0)."""
    t = float(np.clip((score - 0.5) * 2.0, 0.0, 1.0))
    return np.array([1.0 - t, 0.35 + 0.65 * t, 0.1, 1.0])


def uncertainty_colormap():
    """Transparent where the model is sure, a blue haze where it hesitates.

    Blue stays apart from the proposals' red-to-green confidence and the class colours.
    """
    from napari.utils.colormaps import Colormap

    return Colormap(
        [[0.0, 0.0, 0.0, 0.0], [0.16, 0.38, 1.0, 0.0], [0.16, 0.38, 1.0, 0.35], [0.75, 0.88, 1.0, 0.6]],
        controls=[0.0, 0.2, 0.6, 1.0], name="dclabel uncertainty",
    )


def show_proposals(viewer, item, transform, keys: Iterable[tuple[str, Callable[[], None]]] = ()):
    """Show a queue item's proposals as a Shapes layer coloured by confidence (made active).

    Args:
        viewer: The napari viewer.
        item: A :class:`loop.ranking.QueueItem`.
        transform: The scene's affine transform.
        keys: Key bindings of the review, bound on the layer when it is created.

    Returns:
        The proposals layer; feature ``proposal`` is the index into ``item.proposals``.
    """
    data, colours, owner = [], [], []
    for k, p in enumerate(item.proposals):
        for part in polygon_parts(p.geometry):
            data.append(geometry_to_napari(part, transform))
            colours.append(confidence_colour(p.score))
            owner.append(k)
    if PROPOSALS_LAYER in viewer.layers:
        layer = viewer.layers[PROPOSALS_LAYER]
    else:
        layer = viewer.add_shapes(name=PROPOSALS_LAYER, ndim=2, face_color="transparent")
        for key, slot in keys:
            layer.bind_key(key, lambda _layer, s=slot: s(), overwrite=True)
    with quiet_data(layer):
        layer.selected_data = set()
        layer.data = []
        if data:
            layer.add(data, shape_type="polygon", edge_color=colours, face_color=[0, 0, 0, 0], edge_width=3)
            layer.features = {"proposal": np.asarray(owner, dtype=int),
                              "score": np.asarray([item.proposals[o].score for o in owner])}
        if "proposal" in layer.features.columns:  # a shape drawn here is no proposal
            layer.feature_defaults = {"proposal": -1, "score": np.nan}
    layer.metadata["item"] = item
    layer.mode = "select"
    viewer.layers.selection.active = layer
    return layer


def hide_heatmap(layer) -> None:
    """Hide the heatmap while the next chip's is computed, by opacity: setting ``visible`` re-slices
    the layer (18 ms per chip on the review's accept-and-next path, bench/gui.py), opacity is a
    shader uniform. The user's opacity comes back with the next map."""
    if layer.opacity > 0:
        layer.metadata["opacity"] = layer.opacity
        layer.opacity = 0.0


def heatmap_shown(layer) -> bool:
    """Whether the heatmap layer is on screen (visible and not hidden by :func:`hide_heatmap`)."""
    return bool(layer.visible and layer.opacity > 0)


def show_heatmap(viewer, item, heat: np.ndarray):
    """Show (or move) the uncertainty heatmap over a chip; returns the Image layer."""
    translate = (float(item.window.row_off), float(item.window.col_off))
    if HEATMAP_LAYER in viewer.layers:
        layer = viewer.layers[HEATMAP_LAYER]
        with quiet_data(layer):
            layer.data = heat
        if tuple(layer.translate) != translate:  # each setter refreshes the layer: skip no-ops
            layer.translate = translate
        if not layer.visible:
            layer.visible = True
        if layer.opacity == 0:
            layer.opacity = layer.metadata.get("opacity", 1.0)
        return layer
    layer = viewer.add_image(heat, name=HEATMAP_LAYER, colormap=uncertainty_colormap(), opacity=1.0,
                             blending="translucent", contrast_limits=(0, 1), translate=translate)
    # right above the scene image: outlines (grid, footprints, proposals) stay crisp on top of it
    viewer.layers.move(viewer.layers.index(layer), 1 if len(viewer.layers) > 1 else 0)
    if PROPOSALS_LAYER in viewer.layers:  # keep the review keys A/R/E/N live
        viewer.layers.selection.active = viewer.layers[PROPOSALS_LAYER]
    return layer
