"""What a decision on the chip under review stores: its proposals as the user left them in the
proposals layer, written with the chip's reviewed mark in one store transaction (one undo step).

No napari or Qt import: the layer is read through its attributes and the shapes are arrays. A
proposal deleted in the layer is not accepted; one reshaped there is accepted as reshaped
(untouched vertices keep their exact position, holes follow a part moved as a whole or are dropped
when no longer inside it); a shape drawn into the layer is stored as drawn, by the rules of
:func:`labeler.drawn_shapes.drawn_footprint`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
from shapely.geometry.base import BaseGeometry

from labeler.chip_layers import PROPOSALS_LAYER
from labeler.drawn_shapes import drawn_footprint
from labeler.geo import (
    geometry_to_napari,
    join_parts,
    napari_to_geometry,
    polygon_parts,
    reshape_part,
    restore_exact,
)
from model.scene import SceneInfo


def selected_proposals(viewer, item) -> list:
    """Proposals of ``item`` (the chip under review, or None) selected in the proposals layer."""
    if item is None or PROPOSALS_LAYER not in viewer.layers:
        return []
    layer = viewer.layers[PROPOSALS_LAYER]
    owners = {int(layer.features["proposal"].iloc[i]) for i in layer.selected_data}
    return [item.proposals[k] for k in sorted(owners)]


def proposals_on_screen(
    viewer, item, scene: SceneInfo, selected_only: bool, warn: Callable[[str], None],
    info: Callable[[str], None],
) -> list[tuple[BaseGeometry, bool]]:
    """The chip's proposals as the proposals layer shows them: ``(geometry, edited)`` per
    proposal still in the layer (see :func:`proposals_as_edited`).

    Args:
        viewer: The napari viewer.
        item: The chip under review (a queue item), or None.
        scene: The scene on screen.
        selected_only: Only the shapes selected in the layer.
        warn: Called with the reason a drawn shape is not stored.
        info: Called when holes of a reshaped proposal are dropped.

    Returns:
        ``(geometry, edited)`` pairs; the proposals as proposed when the layer does not show
        ``item`` (none with ``selected_only``).
    """
    if item is None:
        return []
    layer = viewer.layers[PROPOSALS_LAYER] if PROPOSALS_LAYER in viewer.layers else None
    if layer is None or layer.metadata.get("item") is not item:  # not drawn: as proposed
        return [] if selected_only else [(p.geometry, False) for p in item.proposals]
    owners = (pd.to_numeric(layer.features["proposal"], errors="coerce").to_numpy(dtype=float)
              if "proposal" in layer.features else np.zeros(0))
    shown = sorted(layer.selected_data) if selected_only else range(layer.nshapes)
    return proposals_as_edited(item.proposals, layer.data, layer.shape_type, owners, shown, scene,
                               warn=warn, info=info)


def proposals_as_edited(
    proposals: Sequence,
    shapes: Sequence[np.ndarray],
    shape_types: Sequence[str],
    owners: np.ndarray,
    shown: Iterable[int],
    scene: SceneInfo,
    warn: Callable[[str], None],
    info: Callable[[str], None],
) -> list[tuple[BaseGeometry, bool]]:
    """The geometries to store for the shapes ``shown`` of a chip's proposals layer.

    Args:
        proposals: The chip's proposals (each with a ``geometry`` in the scene CRS).
        shapes: The layer's shapes as napari vertices.
        shape_types: napari's type of each shape.
        owners: Index of the proposal each shape outlines (a part of), NaN or out of range for
            a shape the user drew; may be shorter than ``shapes``.
        shown: Indices of the shapes to take (all, or the selected ones).
        scene: The scene of the chip.
        warn: Called with the reason a drawn shape is not stored.
        info: Called when holes of a reshaped proposal are dropped.

    Returns:
        ``(geometry, edited)`` per shape drawn (first, each ``edited``) and per proposal with a
        shape shown, ``edited`` False for a proposal as proposed.
    """
    by_owner: dict[int, list[int]] = {}
    drawn = []  # shapes the user drew into the proposals layer: stored as drawn
    for i in shown:
        owner = owners[i] if i < len(owners) else np.nan
        if np.isfinite(owner) and 0 <= int(owner) < len(proposals):
            by_owner.setdefault(int(owner), []).append(i)
        else:
            drawn.append(i)
    transform = scene.transform
    out = []
    for i in drawn:  # an ellipse as its outline; lines, paths, slivers, shapes off the scene refused
        try:
            geom = drawn_footprint(np.asarray(shapes[i], dtype=np.float64), shape_types[i], scene)
        except ValueError as exc:
            warn(f"A shape drawn in the proposals layer is not stored: {exc}.")
            continue
        out.append((geom, True))
    for k, indices in sorted(by_owner.items()):
        proposal = proposals[k]
        parts = polygon_parts(proposal.geometry)
        exact = [geometry_to_napari(part, transform) for part in parts]
        vertices = [np.asarray(shapes[i], dtype=np.float64) for i in indices]
        if len(vertices) == len(exact) and all(
                v.shape == e.shape and np.allclose(v, e, atol=1e-3) for v, e in zip(vertices, exact, strict=True)):
            out.append((proposal.geometry, False))
            continue
        ring = np.concatenate(exact)
        edited, dropped = [], 0
        for j, v in enumerate(vertices):
            if len(vertices) == len(parts):  # part j reshaped: its holes follow or are dropped
                geom, lost = reshape_part(v, parts[j], transform)
                dropped += lost
            else:  # parts added or deleted: outlines only
                geom = napari_to_geometry(restore_exact(v, ring), transform)
            edited.append(geom)
        if dropped:
            info(f"{dropped} hole(s) of the proposal no longer inside its edited outline were dropped.")
        out.append((join_parts([g for g in edited if not g.is_empty]), True))
    return out


def store_decision(store, editor, item, chosen: Sequence[tuple[BaseGeometry, bool]], empty: bool,
                   model_version: str | None) -> list[int]:
    """Store ``(geometry, edited)`` pairs as footprints (source ``proposal-edited`` or
    ``proposal-accepted``) and mark the chip reviewed, in one undo step.

    Args:
        store: The project's LabelStore.
        editor: The footprints layer's :class:`labeler.footprint_editor.FootprintEditor`
            (the footprints are shown as they are stored).
        item: The chip decided on (a queue item).
        chosen: The geometries to store (scene CRS), each with whether the user edited it.
        empty: Mark the chip as holding no data center (only when nothing is stored).
        model_version: The model that proposed them.

    Returns:
        The fids of the stored footprints.

    Raises:
        DclabelError: The store refused the change; nothing of it was stored.
    """
    with store.transaction():
        fids = []
        for edited in (False, True):
            geoms = [g for g, e in chosen if e is edited]
            if geoms:
                fids += editor.add_geometries(geoms, cls="datacenter", model_version=model_version,
                                              source="proposal-edited" if edited else "proposal-accepted")
        store.mark_reviewed(item.scene_id, item.window, empty=empty and not chosen)
    return fids
