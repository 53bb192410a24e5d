"""The footprints layer: a napari Shapes layer showing the scene's footprints from the LabelStore.

Every shape carries a ``fid`` feature (the store's feature id; ``-1`` until saved), a ``class``
and a ``part`` index (a MultiPolygon footprint is shown as one shape per part). Holes, which a
napari shape cannot have, are drawn in a read-only layer of their own (:data:`HOLES_LAYER`).

:class:`FootprintLayer` is the store -> layer half: it fills the layer from the store (in full or
only the footprints that differ) and finds the shapes of a footprint. The layer -> store half,
storing each edit made in the layer, is :class:`labeler.footprint_editor.FootprintEditor`, the
class the app uses.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
from napari.layers import Shapes
from shapely.geometry.base import BaseGeometry

from labeler.geo import (
    crs_to_napari,
    geometry_to_napari,
    napari_to_crs,
    polygon_parts,
    window_to_napari,
)
from model.scene import SceneInfo

LAYER_NAME = "footprints"
#: Read-only outlines of the footprints' holes (a napari shape has no holes; the footprints layer
#: shows each polygon's exterior, the one the user edits). Made when the first hole is shown.
HOLES_LAYER = "footprint holes"
CLASS_COLOURS: dict[str, str] = {
    "datacenter": "#ff3df5",  # magenta: the positive class stands out on vegetation and roofs
    "warehouse": "#00e5ff",
    "retail": "#ffd600",
    "other": "#b0bec5",
}
UNKNOWN_COLOUR = "#ffffff"


def class_colour(cls: str) -> str:
    """Edge colour of a footprint class."""
    return CLASS_COLOURS.get(cls, UNKNOWN_COLOUR)


class FootprintLayer:
    """The footprints layer of the scene on screen, filled from the label store.

    Makes the layer (replacing one of the same name) but stores nothing: edits made in the layer
    are stored by the subclass :class:`labeler.footprint_editor.FootprintEditor`.

    Args:
        viewer: The napari viewer.
        store: The project's LabelStore.
        scene: The scene whose footprints are shown.
    """

    def __init__(self, viewer, store, scene: SceneInfo) -> None:
        self.viewer = viewer
        self.store = store
        self.scene = scene
        self.current_class = "datacenter"
        self._syncing = False  # the layer is being changed from the store: its events are not edits
        self._geoms: dict[int, BaseGeometry] = {}
        self._holes_key: tuple = ()
        for name in (LAYER_NAME, HOLES_LAYER):
            if name in viewer.layers:
                viewer.layers.remove(name)
        self.layer: Shapes = viewer.add_shapes(
            name=LAYER_NAME,
            ndim=2,
            edge_width=3,
            face_color="transparent",
            features={"fid": np.array([], dtype=int), "class": np.array([], dtype=object),
                      "part": np.array([], dtype=int)},
        )
        self._set_defaults()
        self.layer.current_edge_color = class_colour(self.current_class)
        self.layer.current_face_color = "transparent"
        self.layer.metadata["editor"] = self

    def _set_defaults(self) -> None:
        """Feature values napari gives a newly drawn shape: unsaved, current class."""
        self.layer.feature_defaults = {"fid": -1, "class": self.current_class, "part": 0}


    # ----- store -> layer ------------------------------------------------------------------------
    def reload(self) -> None:
        """Rebuild the layer from the store (after undo/redo or an outside change).

        Not while napari is still finishing a drawn shape (its "added" event comes before it
        leaves drawing mode, and replacing the data then re-enters the finish with no shape,
        leaving the layer stuck): the reload waits for the next turn of the event loop.
        """
        if getattr(self.layer, "_is_creating", False):
            from qtpy.QtCore import QTimer

            QTimer.singleShot(0, self.reload)
            return
        gdf = self.store.footprints(self.scene.scene_id)
        data, fids, classes, parts, colours = [], [], [], [], []
        self._geoms = {}
        for fid, cls, geom in zip(gdf["fid"], gdf["class"], gdf.geometry, strict=True):
            self._geoms[int(fid)] = geom
            for k, part in enumerate(polygon_parts(geom)):
                data.append(geometry_to_napari(part, self.scene.transform))
                fids.append(int(fid))
                classes.append(str(cls))
                parts.append(k)
                colours.append(class_colour(str(cls)))
        self._syncing = True
        try:
            self.layer.selected_data = set()
            self.layer.data = []
            if data:
                self.layer.add(
                    data, shape_type="polygon", edge_color=colours, face_color="transparent",
                    edge_width=3,
                )
            self.layer.features = {
                "fid": np.asarray(fids, dtype=int),
                "class": np.asarray(classes, dtype=object),
                "part": np.asarray(parts, dtype=int),
            }
            self._set_defaults()  # assigning features resets the defaults napari gives new shapes
        finally:
            self._syncing = False
        self.show_holes()

    def sync_from_store(self, max_changes: int = 200) -> int:
        """Bring the layer in line with the store by replacing only the footprints that differ.

        Used after undo/redo: re-adding 2,000 shapes costs about a second in napari, while an
        undo usually touches one footprint. Falls back to :meth:`reload` for large changes.

        Returns:
            Number of footprints added, changed or removed in the layer.
        """
        gdf = self.store.footprints(self.scene.scene_id)
        stored = {int(f): (g, str(c)) for f, c, g in zip(gdf["fid"], gdf["class"], gdf.geometry, strict=True)}
        feats = self.layer.features
        shown_class = dict(zip(self._fids().tolist(), feats["class"].tolist(), strict=True))
        changed = [
            fid for fid, (geom, cls) in stored.items()
            if fid not in self._geoms or shown_class.get(fid) != cls
            or not geom.equals_exact(self._geoms[fid], 1e-9)
        ]
        gone = [fid for fid in self._geoms if fid not in stored]
        if len(changed) + len(gone) > max_changes or feats.shape[0] != self.layer.nshapes:
            self.reload()
            return len(changed) + len(gone)
        self._syncing = True
        try:
            indices = self.indices_of(changed + gone)
            if indices:
                self.layer.selected_data = set()
                self.layer.remove(indices)
        finally:
            self._syncing = False
        for fid in gone:
            self._geoms.pop(fid, None)
        for fid in changed:
            geom, cls = stored[fid]
            self._geoms[fid] = geom
            self._append_shapes(fid, geom, cls)
        self.show_holes()
        return len(changed) + len(gone)

    def show_holes(self) -> None:
        """Draw the holes of the footprints on screen in the read-only holes layer.

        Redrawn only when a footprint with holes (or its class) changed; the layer is made when the
        first hole is shown, so a scene without holes costs nothing.
        """
        cls_of = dict(zip(self._fids().tolist(), self.layer.features["class"].tolist(), strict=False))
        holed = [(fid, str(cls_of.get(fid, "")), geom) for fid, geom in sorted(self._geoms.items())
                 if any(p.interiors for p in polygon_parts(geom))]
        key = tuple((fid, cls, geom.wkb) for fid, cls, geom in holed)
        if key == self._holes_key:
            return
        self._holes_key = key
        rings, colours = [], []
        for _fid, cls, geom in holed:
            for part in polygon_parts(geom):
                for hole in part.interiors:
                    rings.append(crs_to_napari(np.asarray(hole.coords)[:-1, :2], self.scene.transform))
                    colours.append(class_colour(cls))
        layer = self._holes_layer(create=bool(rings))
        if layer is None:
            return
        layer.selected_data = set()
        layer.data = []
        if rings:
            layer.add(rings, shape_type="polygon", edge_color=colours, face_color="transparent", edge_width=2)

    def _holes_layer(self, create: bool) -> Shapes | None:
        """The holes layer (made when ``create``; the active layer stays the one drawn in)."""
        if HOLES_LAYER in self.viewer.layers:
            return self.viewer.layers[HOLES_LAYER]
        if not create:
            return None
        active = self.viewer.layers.selection.active
        layer = Shapes(name=HOLES_LAYER, ndim=2, face_color="transparent", opacity=0.9)
        # right above the footprints, under the review's proposals whenever it is made
        layers = self.viewer.layers
        layers.insert(layers.index(self.layer) + 1 if self.layer in layers else len(layers), layer)
        # shown, not edited (a hole moves with its footprint's outline); napari makes a layer
        # editable again whenever it reslices, so it is set back each time
        layer.editable = False
        layer.events.editable.connect(lambda _event: setattr(layer, "editable", False))
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active
        return layer

    def _append_shapes(self, fid: int, geom: BaseGeometry, cls: str) -> None:
        parts = polygon_parts(geom)
        self._syncing = True
        try:
            n0 = self.layer.nshapes
            self.layer.add(
                [geometry_to_napari(p, self.scene.transform) for p in parts],
                shape_type="polygon", edge_color=class_colour(cls), face_color="transparent",
                edge_width=3,
            )
            idx = np.arange(n0, n0 + len(parts))
            self.layer.features.loc[idx, "fid"] = fid
            self.layer.features.loc[idx, "class"] = cls
            self.layer.features.loc[idx, "part"] = np.arange(len(parts))
        finally:
            self._syncing = False

    def _show_as_stored(self, fids: list[int]) -> None:
        """Show footprints drawn as another napari shape type (an ellipse) as the polygons stored.

        Not while napari is still finishing the drawn shape (see :meth:`reload`): then on the
        next turn of the event loop.
        """
        if getattr(self.layer, "_is_creating", False):
            from qtpy.QtCore import QTimer

            QTimer.singleShot(0, lambda: self._show_as_stored(fids))
            return
        shown = [fid for fid in fids if fid in self._geoms]
        cls_of = dict(zip(self._fids().tolist(), self.layer.features["class"].tolist(), strict=True))
        self._syncing = True
        try:
            indices = self.indices_of(shown)
            if indices:
                self.layer.selected_data = set()
                self.layer.remove(indices)
        finally:
            self._syncing = False
        for fid in shown:
            self._append_shapes(fid, self._geoms[fid], str(cls_of.get(fid, self.current_class)))

    def indices_of(self, fids: Iterable[int]) -> list[int]:
        """Layer shape indices showing the given footprints."""
        wanted = np.fromiter((int(f) for f in fids), dtype=np.int64)
        return np.flatnonzero(np.isin(self._fids(), wanted)).tolist()

    def touches(self, window) -> bool:
        """True when a footprint on screen intersects a chip window."""
        from shapely.geometry import box

        xy = napari_to_crs(window_to_napari(window), self.scene.transform)
        chip = box(*xy.min(axis=0), *xy.max(axis=0))
        return any(g.intersects(chip) for g in self._geoms.values())

    def class_counts(self) -> dict[str, int]:
        """Number of footprints per class on screen (from the layer, without reading the store)."""
        feats = self.layer.features
        if not len(feats):
            return {}
        table = pd.DataFrame({"fid": self._fids(), "class": feats["class"].to_numpy()})
        return table.drop_duplicates("fid")["class"].value_counts().to_dict()

    def _vertices(self, i: int) -> np.ndarray:
        """Vertices of shape ``i`` as (N, 2); avoids ``layer.data``, which copies every shape."""
        try:
            return np.asarray(self.layer._data_view.shapes[i].data)[:, -2:]
        except (AttributeError, IndexError):  # napari internals moved: the public, slower path
            return np.asarray(self.layer.data[i])[:, -2:]

    def _fids(self) -> np.ndarray:
        """The ``fid`` feature column as int64 (-1 for unsaved or missing)."""
        col = pd.to_numeric(self.layer.features["fid"], errors="coerce")
        return col.fillna(-1).to_numpy(dtype=np.int64)

    def _shape_type(self, i: int) -> str:
        """napari's type of shape ``i`` ("polygon", "rectangle", "ellipse", "path" or "line")."""
        try:
            return str(self.layer._data_view.shapes[i].name)
        except (AttributeError, IndexError):  # napari internals moved: the public, slower path
            return str(self.layer.shape_type[i])
