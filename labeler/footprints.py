"""The editable footprints layer: a napari Shapes layer kept in step with the LabelStore.

Every shape carries a ``fid`` feature (the store's feature id; ``-1`` until saved), a ``class``
and a ``part`` index (a MultiPolygon footprint is shown as one shape per part). The editor listens
to the layer's data events and writes each change to the store at once:

* ``added``: shapes with ``fid == -1`` are stored (source ``manual``) and get their fid;
* ``changed``: the footprints of the changed shapes are rebuilt from all their parts and updated
  (holes of the stored polygon move with an outline moved, scaled or rotated as a whole; after a
  vertex edit those still inside the outline are kept, and each one dropped is reported); an edit
  that breaks the rules for a drawn shape (:func:`check_footprint`: wholly off the scene, under
  1 m², open) is refused with a notice and the stored footprint is shown again;
* ``removing``/``removed``: the fids of removed shapes are deleted (or, for a multi-part
  footprint with parts left, updated).

Undo/redo call the store's undo/redo and reload the layer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd
from napari.layers import Shapes
from napari.layers.base._base_constants import ActionType
from rasterio.windows import Window
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from labeler.geo import (
    crs_to_napari,
    ellipse_outline,
    geometry_to_napari,
    join_parts,
    napari_to_crs,
    napari_to_geometry,
    polygon_parts,
    reshape_part,
    window_to_napari,
)
from model.errors import DclabelError
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


class FootprintEditor:
    """Keeps the footprints layer of the scene on screen and the label store in step.

    Args:
        viewer: The napari viewer.
        store: The project's LabelStore.
        scene: The scene whose footprints are shown (another one with :meth:`set_scene`).
        notify: Called with a message when a change cannot be stored (default: napari warning).
        on_change: Called after every stored change (e.g. to refresh counts).
    """

    def __init__(
        self,
        viewer,
        store,
        scene: SceneInfo,
        notify: Callable[[str], None] | None = None,
        on_change: Callable[[], None] | None = None,
        show_scene: Callable[[str], None] | None = None,
    ) -> None:
        self.viewer = viewer
        self._show_scene = show_scene
        self.store = store
        self.scene = scene
        self.current_class = "datacenter"
        self._notify = notify or _warn
        self._on_change = on_change
        self._syncing = False
        self._removing: list[int] = []
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
        self.layer.events.data.connect(self._on_data)
        for target in (self.layer, viewer):
            target.bind_key("Control-Z", lambda *_: self.undo(), overwrite=True)
            target.bind_key("Control-Shift-Z", lambda *_: self.redo(), overwrite=True)
        self.reload()

    def set_scene(self, scene: SceneInfo) -> None:
        """Show another scene's footprints in the same layer; edits are stored under that scene.

        The layer, its key bindings and its event connections stay (replacing a napari layer
        costs a ``gc.collect()``, about 0.25 s, and moves it above the review layers). A shape
        being drawn or a vertex being dragged on the scene left is dropped, not stored, and the
        layer goes back to pan/zoom, as a new layer would start.

        Args:
            scene: The scene now on screen.
        """
        self._syncing = True  # ending a drawing in progress makes napari report it as added
        try:
            self.layer.mode = "pan_zoom"
            self.layer.selected_data = set()
        finally:
            self._syncing = False
        self.scene = scene
        self._removing = []
        self.reload()

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

    def add_geometries(
        self, geoms: Iterable[BaseGeometry], cls: str = "datacenter", source: str = "manual",
        model_version: str | None = None,
    ) -> list[int]:
        """Store geometries (scene CRS) as new footprints and show them; returns their fids."""
        fids = []
        for geom in geoms:
            fid = int(self.store.add_footprint(
                self.scene.scene_id, geom, cls=cls, source=source, model_version=model_version,
            ))
            fids.append(fid)
            self._geoms[fid] = geom
            self._append_shapes(fid, geom, cls)
        self._changed()
        return fids

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

    def indices_of(self, fids: Iterable[int]) -> list[int]:
        """Layer shape indices showing the given footprints."""
        wanted = np.fromiter((int(f) for f in fids), dtype=np.int64)
        return np.flatnonzero(np.isin(self._fids(), wanted)).tolist()

    def touches(self, window) -> bool:
        """True when a footprint on screen intersects a chip window."""
        from shapely.geometry import box

        from labeler.geo import window_to_napari

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

    # ----- layer -> store ------------------------------------------------------------------------
    def _on_data(self, event) -> None:
        if self._syncing:
            return
        action = getattr(event, "action", None)
        try:
            if action == ActionType.REMOVING:
                col = self._fids()
                self._removing = [int(col[i]) for i in event.data_indices if 0 <= i < len(col)]
            elif action == ActionType.REMOVED:
                fids, self._removing = self._removing, []
                self._store_removed(fids)
            elif action == ActionType.ADDED:
                self._store_new_shapes()
            elif action == ActionType.CHANGED:
                self._store_changed(event.data_indices)
        except (DclabelError, ValueError) as exc:
            self._notify(f"Footprint not saved: {exc}")
            self.reload()

    def _store_new_shapes(self) -> None:
        feats = self.layer.features
        if len(feats) != self.layer.nshapes:
            self.reconcile()
            return
        fid_col = self._fids()
        new = [i for i in range(len(fid_col)) if fid_col[i] < 0]
        split, refused, reshaped = 0, [], []
        for i in new:
            shape_type = self._shape_type(i)
            try:
                geom = drawn_footprint(self._vertices(i), shape_type, self.scene)
            except ValueError as exc:  # left unsaved, and taken off the layer below
                refused.append(str(exc))
                continue
            split += len(polygon_parts(geom)) > 1
            cls = str(feats["class"].iloc[i]) if isinstance(feats["class"].iloc[i], str) else self.current_class
            fid = int(self.store.add_footprint(self.scene.scene_id, geom, cls=cls, source="manual"))
            feats.loc[i, "fid"] = fid
            feats.loc[i, "class"] = cls
            feats.loc[i, "part"] = 0
            self._geoms[fid] = geom
            if shape_type == "ellipse":
                reshaped.append(fid)
        if len(refused) < len(new):
            self._changed()
        for reason in refused:
            self._notify(f"Footprint not saved: {reason}.")
        if refused or split:
            if split:
                self._show_repaired(split)
            else:
                self.reload()  # the refused shapes leave the layer (an ellipse is shown as stored)
        elif reshaped:
            self._show_as_stored(reshaped)

    def _shape_type(self, i: int) -> str:
        """napari's type of shape ``i`` ("polygon", "rectangle", "ellipse", "path" or "line")."""
        try:
            return str(self.layer._data_view.shapes[i].name)
        except (AttributeError, IndexError):  # napari internals moved: the public, slower path
            return str(self.layer.shape_type[i])

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

    def _show_repaired(self, n: int) -> None:
        """A drawn or edited outline crossed itself and was stored split into valid parts: show those."""
        self._notify(f"{n} self-intersecting outline(s) stored as separate parts, as now shown "
                     "(a footprint must not cross itself).")
        self.reload()

    def _footprint_from_layer(self, fid: int) -> BaseGeometry | None:
        """Rebuild a footprint from all its shapes (None when it has none left).

        A part's holes follow its outline when the outline was moved, scaled or rotated as a
        whole; after a vertex edit the holes still inside the outline are kept and the user is
        told about each one dropped.

        Raises:
            ValueError: The footprint as edited breaks a rule for drawn shapes (a part made a line
                or path, wholly off the scene, under :data:`MIN_FOOTPRINT_M2`; see
                :func:`check_footprint`): it is not to be stored.
        """
        idx = self.indices_of([fid])
        if not idx:
            return None
        old_parts = polygon_parts(self._geoms.get(fid))
        feats = self.layer.features
        transform = self.scene.transform
        parts, dropped = [], 0
        for i in idx:
            k = int(feats["part"].iloc[i])
            vertices = drawn_outline(self._vertices(i), self._shape_type(i))
            if k >= len(old_parts):
                parts.append(napari_to_geometry(vertices, transform))
                continue
            part, lost = reshape_part(vertices, old_parts[k], transform)
            dropped += lost
            parts.append(part)
        geom = join_parts(parts)
        stored = self._geoms.get(fid)
        if stored is None or not geom.equals_exact(stored, 1e-9):  # an unchanged footprint is not judged
            check_footprint(geom, self.scene)
        if dropped:
            self._notify(f"{dropped} hole(s) of footprint {fid} no longer inside its edited outline "
                         "were dropped (Ctrl+Z brings them back).")
        return geom

    def _store_changed(self, indices: Iterable[int]) -> None:
        feats = self.layer.features
        if len(feats) != self.layer.nshapes:
            self.reconcile()
            return
        col = self._fids()
        fids = {int(col[i]) for i in indices if 0 <= i < len(col)}
        split, refused = 0, []
        for fid in sorted(fids):
            if fid < 0:
                continue
            try:
                geom = self._footprint_from_layer(fid)
            except ValueError as exc:  # the store keeps the footprint as it was
                refused.append(fid)
                self._refuse_edit(fid, exc)
                continue
            if geom is not None:
                split += len(polygon_parts(geom)) > len(self.indices_of([fid]))
                self.store.update_footprint(fid, geometry=geom)
                self._geoms[fid] = geom
        if fids:
            self._changed()
        if split:
            self._show_repaired(split)
        elif refused:
            self._show_as_stored(refused)

    def _store_removed(self, fids: Iterable[int]) -> None:
        with self.store.transaction():  # deleting several shapes at once is one undo step
            for fid in set(fids):
                if fid < 0:
                    continue
                geom = self._footprint_from_layer(fid)
                if geom is None:
                    self.store.delete_footprint(fid)
                    self._geoms.pop(fid, None)
                else:
                    self.store.update_footprint(fid, geometry=geom)
                    self._geoms[fid] = geom
        self._changed()

    def reconcile(self) -> None:
        """Full diff of layer against the last stored state (fallback when events are ambiguous)."""
        feats = self.layer.features
        n = self.layer.nshapes
        if len(feats) > n and (self._fids()[n:] < 0).all():
            # napari dropped a drawn polygon of under three vertices (a click then a double-click)
            # but not its feature row, the last one: drop the row too
            self.layer.features = feats.iloc[:n].reset_index(drop=True)
            self._set_defaults()
            feats = self.layer.features
        if len(feats) != n:  # a napari path removed a shape without its feature row: rebuild
            self.reload()
            return
        present = {int(f) for f in self._fids() if f >= 0}
        for fid in set(self._geoms) - present:
            self.store.delete_footprint(fid)
            self._geoms.pop(fid)
        refused = []
        for fid in present:
            try:
                geom = self._footprint_from_layer(fid)
            except ValueError as exc:
                refused.append(fid)
                self._refuse_edit(fid, exc)
                continue
            if geom is not None and not geom.equals_exact(self._geoms.get(fid), 1e-9):
                self.store.update_footprint(fid, geometry=geom)
                self._geoms[fid] = geom
        self._store_new_shapes()
        self._changed()
        if refused:
            self._show_as_stored(refused)

    def _refuse_edit(self, fid: int, reason: Exception) -> None:
        """Tell the user an edit of footprint ``fid`` was not stored, and why."""
        self._notify(f"Edit of footprint {fid} not saved: {reason}. The footprint is kept as it was "
                     "and shown again; to remove it, select it and press Delete.")

    # ----- class, undo/redo ----------------------------------------------------------------------
    def set_class(self, cls: str) -> None:
        """Class for new shapes; also reclassifies the selected footprints."""
        self.current_class = cls
        self._set_defaults()
        selected = sorted(self.layer.selected_data)
        self.layer.current_edge_color = class_colour(cls)  # recolours the selected shapes
        feats = self.layer.features
        col = self._fids()
        fids = {int(col[i]) for i in selected if 0 <= i < len(col)}
        try:
            with self.store.transaction():  # several shapes re-classed at once are one undo step
                for fid in fids:
                    if fid >= 0:
                        self.store.update_footprint(fid, cls=cls)
        except DclabelError as exc:
            self._notify(f"Class not saved: {exc}")
            self.reload()
            return
        for i in self.indices_of(fids):
            feats.loc[i, "class"] = cls
        if fids:
            self._changed()

    def undo(self) -> bool:
        """Undo the last stored edit and reload; False when there was nothing to undo."""
        return self._history(self.store.undo, "undo")

    def redo(self) -> bool:
        """Redo the last undone edit and reload; False when there was nothing to redo."""
        return self._history(self.store.redo, "redo")

    def _history(self, step: Callable[[], bool], name: str) -> bool:
        """Undo or redo in the project-wide history. When that step changes another scene only
        (the last edit was made there), the change is made and that scene is shown, so nothing
        changes out of sight."""
        scenes = self.store.history_scenes(undo=name == "undo")
        elsewhere = sorted(scenes) if scenes and self.scene.scene_id not in scenes else []
        try:
            done = bool(step())
        except DclabelError as exc:
            self._notify(f"Cannot {name}: {exc}")
            return False
        if not done:
            self._notify(f"Nothing to {name}.")
            return False
        if elsewhere and self._show_scene is not None:
            self._changed()
            try:
                self._show_scene(elsewhere[0])
            except (DclabelError, OSError) as exc:
                self._notify(f"The {name} changed scene {elsewhere[0]}, which cannot be shown ({exc}).")
                return True
            self._notify(f"The {name} changed scene {elsewhere[0]}, now shown.")
            return True
        self.sync_from_store()
        self._changed()
        return True

    def _changed(self) -> None:
        self.show_holes()
        if self._on_change is not None:
            self._on_change()


#: Smallest footprint stored, in square metres on the ground: anything smaller is a slip of the
#: mouse (a click and a twitch), not a building.
MIN_FOOTPRINT_M2 = 1.0
#: Vertices of the polygon an ellipse is stored as (its area 0.3 % under the ellipse's).
ELLIPSE_VERTICES = 48


def drawn_outline(vertices: np.ndarray, shape_type: str) -> np.ndarray:
    """The outline of a shape drawn in a napari Shapes layer, as polygon vertices.

    Args:
        vertices: The shape's napari vertices (for an ellipse, the corners of its box).
        shape_type: napari's shape type.

    Returns:
        ``(N, 2)`` napari vertices of the polygon: an ellipse's outline
        (:data:`ELLIPSE_VERTICES` points), other shapes' own vertices.

    Raises:
        ValueError: A line or path: open, it outlines no footprint.
    """
    if shape_type == "ellipse":
        return ellipse_outline(vertices, ELLIPSE_VERTICES)
    if shape_type in ("line", "path"):
        raise ValueError(f"a {shape_type} is open and outlines no footprint; "
                         "draw a polygon (P) or, from the layer's toolbar, a rectangle or an ellipse")
    return np.asarray(vertices)


def footprint_area_m2(geom: BaseGeometry, scene: SceneInfo) -> float:
    """Ground area of a footprint (scene CRS) in square metres, measured as ``area_m2`` of
    detections is (:func:`loop.proposals.pixel_area_m2`: projection scale and degrees count)."""
    from loop.proposals import pixel_area_m2

    t = scene.transform
    pixels = geom.area / abs(t.a * t.e - t.b * t.d)
    return float(pixels * pixel_area_m2(t, scene.crs, (scene.height, scene.width)))


def drawn_footprint(vertices: np.ndarray, shape_type: str, scene: SceneInfo) -> BaseGeometry:
    """A shape drawn in napari as the footprint to store, or why it is none.

    A footprint partly outside the scene is kept whole (a building at the scene's edge is real).

    Args:
        vertices: The shape's napari vertices.
        shape_type: napari's shape type (an ellipse is stored as its outline).
        scene: The scene drawn on.

    Returns:
        A valid Polygon or MultiPolygon in the scene CRS.

    Raises:
        ValueError: A line or path, fewer than 3 distinct vertices, no area, a shape wholly
            outside the scene, or one under :data:`MIN_FOOTPRINT_M2`; the message says which.
    """
    geom = napari_to_geometry(drawn_outline(vertices, shape_type), scene.transform)
    check_footprint(geom, scene)
    return geom


def check_footprint(geom: BaseGeometry, scene: SceneInfo) -> None:
    """Refuse a footprint drawn or edited wholly off the scene or under :data:`MIN_FOOTPRINT_M2`.

    Args:
        geom: The footprint in the scene CRS.
        scene: The scene it is drawn on.

    Raises:
        ValueError: It lies wholly outside the scene, or its area is under
            :data:`MIN_FOOTPRINT_M2`; the message says which.
    """
    extent = Polygon(napari_to_crs(window_to_napari(Window(0, 0, scene.width, scene.height)), scene.transform))
    if geom.intersection(extent).area <= 0:
        raise ValueError(f"it lies wholly outside the scene ({scene.width}×{scene.height} px)")
    area = footprint_area_m2(geom, scene)
    if area < MIN_FOOTPRINT_M2:
        raise ValueError(f"its area is {area:.2g} m², under the {MIN_FOOTPRINT_M2:g} m² of the smallest "
                         "footprint stored (a slip of the mouse?)")


def _warn(message: str) -> None:
    from napari.utils.notifications import show_warning

    show_warning(message)
