"""Edits in the footprints layer stored in the LabelStore at once, with class, undo and redo.

:class:`FootprintEditor` adds to :class:`labeler.footprints.FootprintLayer` (the layer filled from
the store) the other direction: it listens to the layer's data events and writes each change to
the store at once:

* ``added``: shapes with ``fid == -1`` are stored (source ``manual``) and get their fid;
* ``changed``: the footprints of the changed shapes are rebuilt from all their parts and updated
  (holes of the stored polygon move with an outline moved, scaled or rotated as a whole; after a
  vertex edit those still inside the outline are kept, and each one dropped is reported); an edit
  that breaks the rules for a drawn shape (:func:`labeler.drawn_shapes.check_footprint`: wholly
  off the scene, under 1 m², open) is refused with a notice and the stored footprint is shown
  again;
* ``removing``/``removed``: the fids of removed shapes are deleted (or, for a multi-part
  footprint with parts left, updated).

Undo/redo call the store's undo/redo and reload the layer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from napari.layers.base._base_constants import ActionType
from shapely.geometry.base import BaseGeometry

from labeler.drawn_shapes import check_footprint, drawn_footprint, drawn_outline
from labeler.footprints import FootprintLayer, class_colour
from labeler.geo import join_parts, napari_to_geometry, polygon_parts, reshape_part
from model.errors import DclabelError
from model.scene import SceneInfo


class FootprintEditor(FootprintLayer):
    """Keeps the footprints layer of the scene on screen and the label store in step.

    Args:
        viewer: The napari viewer.
        store: The project's LabelStore.
        scene: The scene whose footprints are shown (another one with :meth:`set_scene`).
        notify: Called with a message when a change cannot be stored (default: napari warning).
        on_change: Called after every stored change (e.g. to refresh counts).
        show_scene: Called with a scene id to show that scene (an undo or redo made there).
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
        self._show_scene = show_scene
        self._notify = notify or _warn
        self._on_change = on_change
        self._removing: list[int] = []
        super().__init__(viewer, store, scene)
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
                or path, wholly off the scene, under :data:`labeler.drawn_shapes.MIN_FOOTPRINT_M2`; see
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


def _warn(message: str) -> None:
    from napari.utils.notifications import show_warning

    show_warning(message)
