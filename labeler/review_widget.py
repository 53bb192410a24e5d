"""Review queue panel: rank chips, step through them, accept / edit / reject the model's proposals.

Ranking runs in a ``thread_worker`` (:class:`labeler.workers.ProgressJob`); so does the
uncertainty heatmap of the selected chip. Accepting writes the proposals and the chip's reviewed
mark in one store transaction (one undo step).
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from labeler.chip_layers import (
    HEATMAP_LAYER,
    PROPOSALS_LAYER,
    chip_uncertainty,
    hide_heatmap,
    show_heatmap,
    show_proposals,
)
from labeler.drawn_shapes import drawn_footprint
from labeler.export_widget import DETECTIONS_LAYER
from labeler.footprints import HOLES_LAYER, LAYER_NAME, class_colour
from labeler.geo import (
    geometry_to_napari,
    join_parts,
    napari_to_geometry,
    polygon_parts,
    reshape_part,
    restore_exact,
    window_centre,
)
from labeler.queue_table import QueueTable
from labeler.scene_layers import GRID_LAYER
from labeler.session import ProjectSession
from labeler.workers import ProcessJob, ProgressJob
from model.errors import Cancelled, DclabelError

#: Pause on a chip before its uncertainty map is computed.
HEATMAP_DELAY_MS = 250
#: dclabel's Shapes layers, on which the review keys are bound as well as on the viewer.
REVIEW_KEY_LAYERS = frozenset({LAYER_NAME, HOLES_LAYER, GRID_LAYER, PROPOSALS_LAYER, DETECTIONS_LAYER})


class ReviewWidget(QWidget):
    """The review queue panel.

    Args:
        session: The open project session.
    """

    #: A chip was reviewed (accepted, rejected or marked empty).
    chip_reviewed = Signal()

    def __init__(self, session: ProjectSession, parent: QWidget | None = None) -> None:
        from loop.ranking import STRATEGIES

        super().__init__(parent)
        self.session = session
        self.viewer = session.viewer
        self.items: list = []
        self._rows: list = []
        self._edited = None  # chip accepted with "edit, then accept", still on screen
        self._edited_row = 0  # its row, where N goes on
        self._done: list = []  # chips reviewed in this session (back in the queue if undone)
        self._undone: list = []  # chips put back by an undo (out of the queue again if redone)
        self._deciding = False
        self._rank_again = False  # asked to rank while ranking: once more when it ends
        self.current = None
        self.rank_job: ProgressJob | None = None
        self.heat_job: ProgressJob | None = None
        self.last_accept_ms: float | None = None
        self.closed = False
        self._heat_timer = QTimer(self)
        self._heat_timer.setSingleShot(True)
        self._heat_timer.setInterval(HEATMAP_DELAY_MS)
        self._heat_timer.timeout.connect(self._start_heatmap)

        self.strategy = QComboBox()
        self.strategy.addItems(list(STRATEGIES))
        self.strategy.setCurrentText("entropy" if "entropy" in STRATEGIES else self.strategy.itemText(0))
        self.rank_button = QPushButton("Rank")
        self.rank_button.setToolTip("Rank unreviewed chips with the current model (in the background)")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setMaximumHeight(14)
        self.table = QueueTable()
        self.heatmap = QCheckBox("Uncertainty heatmap")
        self.heatmap.setChecked(True)
        self.counts = QLabel()
        self.counts.setWordWrap(True)

        buttons = {
            "accept_all": ("Accept all (A)", self.accept_all),
            "accept_selected": ("Accept selected", self.accept_selected),
            "edit": ("Edit, then accept", self.edit_then_accept),
            "reject": ("Reject (R)", self.reject),
            "empty": ("Empty chip (E)", self.mark_empty),
            "skip": ("Skip", self.skip),
            "next": ("Next (N)", self.next_chip),
        }
        grid = QGridLayout()
        self.buttons: dict[str, QPushButton] = {}
        for k, (name, (text, slot)) in enumerate(buttons.items()):
            b = QPushButton(text)
            b.clicked.connect(lambda _=False, s=slot: self._review_action(s))
            self.buttons[name] = b
            grid.addWidget(b, k // 2, k % 2)

        top = QHBoxLayout()
        top.addWidget(QLabel("Strategy"))
        top.addWidget(self.strategy, 1)
        top.addWidget(self.rank_button)
        top.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.progress)
        layout.addWidget(self.table, 1)
        layout.addLayout(grid)
        layout.addWidget(self.heatmap)
        layout.addWidget(self.counts)

        self.rank_button.clicked.connect(self.rank)
        self.cancel_button.clicked.connect(self.cancel_rank)
        self.table.itemSelectionChanged.connect(self._on_row_selected)
        self.heatmap.toggled.connect(self._on_heatmap_toggled)
        session.labels_changed.connect(self.update_counts)
        session.labels_changed.connect(self._requeue_undone)
        session.scene_changed.connect(lambda _: self.populate(self.items))
        self._bind_review_keys(self.viewer)
        for layer in self.viewer.layers:
            self._on_layer_inserted(layer)
        self.viewer.layers.events.inserted.connect(lambda event: self._on_layer_inserted(event.value))
        self._load_saved_queue()
        self.update_counts()

    def _keys(self) -> tuple:
        """Review keys: A accept all, R reject, E empty chip, N next."""
        return (("a", self.accept_all), ("r", self.reject), ("e", self.mark_empty), ("n", self.next_chip))

    def _bind_review_keys(self, target) -> None:
        """Bind the review keys on the viewer or on a layer (a layer's own bindings come first)."""
        for key, slot in self._keys():
            target.bind_key(key, lambda _target, s=slot: self._review_action(s), overwrite=True)

    def _on_layer_inserted(self, layer) -> None:
        """napari binds A (select all), R (rectangle) and E (ellipse) on every Shapes layer, and the
        active layer's keys win over the viewer's: on dclabel's Shapes layers the review keys are
        bound too, so they review whichever one is active (a footprint is drawn as a rectangle or
        ellipse from the layer's toolbar; Ctrl+A still selects all)."""
        if not self.closed and layer.name in REVIEW_KEY_LAYERS:
            self._bind_review_keys(layer)

    def _review_action(self, slot) -> None:
        """Run a review action (key or button), unless a footprint is being drawn: the user ends
        that outline first, rather than it being left half-drawn while the view moves on."""
        editor = self.session.editor
        if editor is not None and getattr(editor.layer, "_is_creating", False):
            show_info("Finish the footprint you are drawing first (double-click, Enter or Escape), "
                      "then review the chip.")
            return
        slot()

    # ----- ranking -----------------------------------------------------------------------------
    def _load_saved_queue(self) -> None:
        from loop.ranking import load_queue

        try:
            self.populate(load_queue(self.session.project))
        except DclabelError as exc:
            show_warning(f"Saved review queue ignored: {exc}")

    def rank(self) -> ProgressJob | None:
        """Rank the queue in the background with the selected strategy; returns the job."""
        if self.rank_job is not None:
            # a new model or a new scene while ranking: that ranking may not see it, so rank once
            # more when it ends (requests in between are coalesced into that one)
            self._rank_again = True
            return None
        self._rank_again = False
        from loop.ranking import rank_project

        # its own process: proposals are vectorized in pure Python, which in a thread of this
        # process would hold the GIL and stall the window (gaps of 140-190 ms measured)
        job = ProcessJob(rank_project, str(self.session.project.root), self.strategy.currentText())
        job.worker.yielded.connect(self._on_rank_progress)
        job.worker.returned.connect(self.populate)
        job.worker.errored.connect(self._on_rank_error)
        job.worker.finished.connect(self._on_rank_finished)
        self.rank_job = job
        self.rank_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setValue(0)
        self.progress.setFormat("ranking %p%")
        job.start()
        return job

    def cancel_rank(self) -> None:
        """Stop a running ranking; the previous queue stays."""
        if self.rank_job is not None:
            self.rank_job.cancel()

    def close_jobs(self, wait_ms: int = 10_000) -> None:
        """Stop ranking and heatmap workers and ignore their late results (on viewer close)."""
        self.closed = True
        self._heat_timer.stop()
        for job in (self.rank_job, self.heat_job):
            if job is not None:
                job.stop(wait_ms)

    def _on_rank_progress(self, p) -> None:
        self.progress.setMaximum(max(p.total, 1))
        self.progress.setValue(p.done)

    def _on_rank_error(self, exc: Exception) -> None:
        if isinstance(exc, Cancelled):
            show_info(f"Ranking cancelled: {exc}")
        else:
            show_error(f"Ranking failed: {exc}")

    def _on_rank_finished(self) -> None:
        self.rank_job = None
        self.rank_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress.setFormat("%p%")
        if self._rank_again and not self.closed:
            self.rank()

    def populate(self, items: list | None, select_row: int = 0, keep_current: bool = True) -> None:
        """Show a ranked queue (items of every scene are kept; rows show the scene on screen).

        Args:
            items: Queue items, best first.
            select_row: Row to select (and show) afterwards, clipped to the table.
            keep_current: When the chip on screen is still queued (a background re-rank), stay on
                it without moving the view and only refresh its proposals.
        """
        if self.closed:
            return
        self.items = list(items or [])
        scene_id = self.session.scene.scene_id
        rows = [it for it in self.items if it.scene_id == scene_id]
        self.table.show_items(rows)
        self._rows = rows
        self.session.set_queued([it.window for it in rows])
        self.update_counts()
        prev = self.current
        if prev is not None and prev is self._edited:
            return  # the user is editing a chip accepted with "edit, then accept": the view stays
        keep = next((r for r, it in enumerate(rows) if keep_current and prev is not None
                     and it.scene_id == prev.scene_id and it.window == prev.window), None)
        if keep is not None:
            self.table.blockSignals(True)
            self.table.selectRow(keep)
            self.table.blockSignals(False)
            self.show_item(rows[keep], move_camera=False)
        elif rows:
            # shown here, not through the selection signal: when the row was already selected
            # (the table keeps row 0 selected across a refill) no signal fires
            row = min(max(select_row, 0), len(rows) - 1)
            self.table.blockSignals(True)
            self.table.selectRow(row)
            self.table.blockSignals(False)
            self.show_item(rows[row])
        else:  # the queue is empty: no chip is under review any more
            self.current = None
            self._clear_chip_layers()
            self.session.set_current_chip(None)
            editor = self.session.editor
            if editor is not None and editor.layer in self.viewer.layers:
                self.viewer.layers.selection.active = editor.layer

    # ----- selection ---------------------------------------------------------------------------
    def _on_row_selected(self) -> None:
        rows = self.table.selectionModel().selectedRows()
        if not rows or rows[0].row() >= len(self._rows):
            return
        self.show_item(self._rows[rows[0].row()])

    def show_item(self, item, move_camera: bool = True) -> None:
        """Centre and zoom on a chip, show its proposals and (optionally) its uncertainty."""
        self.current = item
        w = item.window
        self.session.set_current_chip(w)
        if move_camera:
            self.viewer.camera.center = window_centre(w)
            canvas = self.viewer.window._qt_viewer.canvas.size if hasattr(self.viewer, "window") else None
            side = max(int(w.width), int(w.height)) * 1.4
            if canvas is not None and min(canvas) > 0:
                self.viewer.camera.zoom = min(canvas) / side
        self._show_proposals(item)
        self._show_heatmap(item)

    def _show_proposals(self, item) -> None:
        show_proposals(self.viewer, item, self.session.scene.transform)  # review keys: _on_layer_inserted

    def _show_heatmap(self, item) -> None:
        """Hide the previous chip's heatmap; compute this chip's once the user pauses on it.

        The worker starts after :data:`HEATMAP_DELAY_MS` (restarted on every move), so stepping
        quickly through the queue starts no jobs and accepting a chip stays fast.
        """
        if HEATMAP_LAYER in self.viewer.layers:
            hide_heatmap(self.viewer.layers[HEATMAP_LAYER])
        if self.heatmap.isChecked():
            self._heat_timer.start()

    def _start_heatmap(self) -> None:
        item = self.current
        if self.closed or item is None or not self.heatmap.isChecked() or self.session.current_model() is None:
            return
        job = ProgressJob(chip_uncertainty, self.session.project, self.session.scene, item.window)
        job.worker.returned.connect(lambda heat, it=item: self._on_heatmap(it, heat))
        job.worker.errored.connect(lambda exc: show_warning(f"Uncertainty map failed: {exc}"))
        self.heat_job = job
        job.start()

    def _on_heatmap(self, item, heat: np.ndarray | None) -> None:
        if self.closed or heat is None or item is not self.current:
            return
        show_heatmap(self.viewer, item, heat)

    def _on_heatmap_toggled(self, on: bool) -> None:
        if HEATMAP_LAYER in self.viewer.layers:
            self.viewer.layers[HEATMAP_LAYER].visible = on and self.current is not None
        if on and self.current is not None:
            self._show_heatmap(self.current)

    def _clear_chip_layers(self) -> None:
        for name in (PROPOSALS_LAYER, HEATMAP_LAYER):
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)

    # ----- decisions -----------------------------------------------------------------------------
    def selected_proposals(self) -> list:
        """Proposals selected in the proposals layer."""
        if self.current is None or PROPOSALS_LAYER not in self.viewer.layers:
            return []
        layer = self.viewer.layers[PROPOSALS_LAYER]
        owners = {int(layer.features["proposal"].iloc[i]) for i in layer.selected_data}
        return [self.current.proposals[k] for k in sorted(owners)]

    def proposals_on_screen(self, selected_only: bool = False) -> list[tuple]:
        """The chip's proposals as the proposals layer shows them: ``(geometry, edited)`` per
        proposal still in the layer. A proposal deleted there is not accepted; one reshaped there
        is accepted as reshaped (untouched vertices keep their exact position)."""
        item = self.current
        if item is None:
            return []
        layer = self.viewer.layers[PROPOSALS_LAYER] if PROPOSALS_LAYER in self.viewer.layers else None
        if layer is None or layer.metadata.get("item") is not item:  # not drawn: as proposed
            return [] if selected_only else [(p.geometry, False) for p in item.proposals]
        owners = (pd.to_numeric(layer.features["proposal"], errors="coerce").to_numpy(dtype=float)
                  if "proposal" in layer.features else np.zeros(0))
        shown = sorted(layer.selected_data) if selected_only else range(layer.nshapes)
        by_owner: dict[int, list[int]] = {}
        drawn = []  # shapes the user drew into the proposals layer: stored as drawn
        for i in shown:
            owner = owners[i] if i < len(owners) else np.nan
            if np.isfinite(owner) and 0 <= int(owner) < len(item.proposals):
                by_owner.setdefault(int(owner), []).append(i)
            else:
                drawn.append(i)
        transform = self.session.scene.transform
        out = []
        shape_types = layer.shape_type if drawn else []
        for i in drawn:  # an ellipse as its outline; lines, paths, slivers, shapes off the scene refused
            try:
                geom = drawn_footprint(np.asarray(layer.data[i], dtype=np.float64), shape_types[i], self.session.scene)
            except ValueError as exc:
                show_warning(f"A shape drawn in the proposals layer is not stored: {exc}.")
                continue
            out.append((geom, True))
        for k, shapes in sorted(by_owner.items()):
            proposal = item.proposals[k]
            parts = polygon_parts(proposal.geometry)
            exact = [geometry_to_napari(part, transform) for part in parts]
            vertices = [np.asarray(layer.data[i], dtype=np.float64) for i in shapes]
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
                show_info(f"{dropped} hole(s) of the proposal no longer inside its edited outline were dropped.")
            out.append((join_parts([g for g in edited if not g.is_empty]), True))
        return out

    def _chip_on_screen(self) -> bool:
        """True when a chip is under review; otherwise says why nothing happens."""
        if self.current is None:
            show_info("End of the queue: rank again for more chips." if not self.items
                      else "Select a chip in the queue first.")
        elif self.current is self._edited:
            show_info("This chip is already accepted: edit its footprints, then press N for the next chip "
                      "(Ctrl+Z undoes the acceptance).")
            return False
        return self.current is not None

    def accept_all(self) -> None:
        """Store every proposal of the chip as the proposals layer shows it (reshaped ones as
        reshaped, deleted ones not) and mark it reviewed, then show the next chip."""
        if self._chip_on_screen():
            chosen = self.proposals_on_screen()
            if not chosen:  # every proposal deleted in the layer: a rejection
                self.reject()
                return
            self._accept(chosen)

    def accept_selected(self) -> None:
        """Store the proposals selected in the proposals layer and mark the chip reviewed."""
        if self._chip_on_screen():
            chosen = self.proposals_on_screen(selected_only=True)
            if not chosen:
                show_info("Select proposals in the 'proposals' layer first (or use Accept all).")
                return
            self._accept(chosen)

    def edit_then_accept(self) -> None:
        """Store the selected (or all) proposals as editable footprints; stay on the chip to edit."""
        if not self._chip_on_screen():
            return
        item = self.current
        chosen = self.proposals_on_screen(selected_only=True) or self.proposals_on_screen()
        fids = self._accept([(g, True) for g, _ in chosen], advance=False)
        if not self._done or self._done[-1] is not item:
            return  # not saved (the error is shown)
        # reviewed now: out of the queue at once (a row click, a scene switch or a re-rank never
        # offers it again), while the view stays on it for editing until N
        self._edited_row = next((r for r, it in enumerate(self._rows) if it is item), 0)
        self._edited = item
        self.populate([it for it in self.items if it is not item])
        editor = self.session.editor
        if fids and editor is not None:
            self.viewer.layers.selection.active = editor.layer
            editor.layer.selected_data = set(editor.indices_of(fids))
            editor.layer.mode = "direct"
            show_info("Edit the vertices in the 'footprints' layer; press N for the next chip.")

    def reject(self) -> None:
        """Discard the proposals; the chip is reviewed (empty unless footprints were drawn in it)."""
        if self._chip_on_screen():
            self._decide([], empty=not self.session.editor.touches(self.current.window))

    def mark_empty(self) -> None:
        """Mark the chip reviewed with no data center in it."""
        if self._chip_on_screen():
            self._decide([], empty=True)

    def skip(self) -> None:
        """Move the chip to the end of the queue without deciding."""
        if not self._chip_on_screen():
            return
        item = self.current
        self.items = [it for it in self.items if it is not item] + [item]
        self._advance_from(item)

    def next_chip(self) -> None:
        """Show the next chip of the queue (dropping a chip accepted for editing)."""
        item = self.current
        if item is not None and self._edited is item:
            self._edited = None
            self.populate(self.items, select_row=self._edited_row, keep_current=False)
            return
        rows = self.table.selectionModel().selectedRows()
        row = rows[0].row() + 1 if rows else 0
        if row < self.table.rowCount():
            self.table.selectRow(row)
        else:
            show_info("End of the queue: rank again for more chips.")

    def _accept(self, chosen: list[tuple], advance: bool = True) -> list[int]:
        return self._decide(chosen, empty=False, advance=advance)

    def _decide(self, chosen: list[tuple], empty: bool, advance: bool = True) -> list[int]:
        """Store ``(geometry, edited)`` pairs as footprints (source ``proposal-edited`` or
        ``proposal-accepted``) and mark the chip reviewed, in one undo step."""
        t0 = time.perf_counter()
        item = self.current
        store = self.session.project.labels
        model = self.session.current_model()
        version = model.version if model is not None else None
        editor = self.session.editor
        self._deciding = True  # the label events of this decision must not resync the queue
        try:
            with store.transaction():
                fids = []
                for edited in (False, True):
                    geoms = [g for g, e in chosen if e is edited]
                    if geoms:
                        fids += editor.add_geometries(geoms, cls="datacenter", model_version=version,
                                                      source="proposal-edited" if edited else "proposal-accepted")
                store.mark_reviewed(item.scene_id, item.window, empty=empty and not chosen)
        except DclabelError as exc:
            show_error(f"Chip not saved: {exc}")
            editor.reload()
            return []
        finally:
            self._deciding = False
        self._undone = [it for it in self._undone if it is not item]
        self.chip_reviewed.emit()
        self.session.reviewed_changed.emit()
        self._done.append(item)
        if advance:
            self.items = [it for it in self.items if it is not item]
            self._advance_from(item)
        else:
            self.session.refresh_grid()
            self.update_counts()
        self.last_accept_ms = (time.perf_counter() - t0) * 1000
        return fids

    def _advance_from(self, item) -> None:
        row = next((r for r, it in enumerate(self._rows) if it is item), 0)
        self.populate(self.items, select_row=row, keep_current=False)

    def _requeue_undone(self) -> None:
        """Keep the queue in step with undo and redo: a chip whose review was undone (Ctrl+Z) goes
        back to the front of the queue, and leaves it again when the review is redone."""
        if self._deciding or not (self._done or self._undone):
            return
        reviewed = {(r.scene_id, r.window) for r in self.session.project.labels.reviewed_chips()}
        undone = [it for it in self._done if (it.scene_id, it.window) not in reviewed]
        redone = [it for it in self._undone if (it.scene_id, it.window) in reviewed]
        if not undone and not redone:
            return
        if self._edited is not None and self._edited in undone:
            self._edited = None  # its acceptance undone: an ordinary queued chip again
        self._done = [it for it in self._done if it not in undone] + redone
        self._undone = [it for it in self._undone if it not in redone] + undone
        queued = {(it.scene_id, it.window) for it in self.items}
        back = [it for it in reversed(undone) if (it.scene_id, it.window) not in queued]
        gone = {(it.scene_id, it.window) for it in redone}
        self.populate(back + [it for it in self.items if (it.scene_id, it.window) not in gone])

    # ----- counts ------------------------------------------------------------------------------
    def update_counts(self) -> None:
        """Reviewed / remaining chips and labels per class."""
        project = self.session.project
        sid = self.session.scene.scene_id
        total = len(project.chip_windows(sid))
        reviewed = len(project.labels.reviewed_chips(sid))
        per_class = self.session.editor.class_counts() if self.session.editor else {}
        classes = " · ".join(
            f"<span style='color:{class_colour(c)}'>■</span> {c} {per_class.get(c, 0)}"
            for c in project.settings.classes
        )
        elsewhere = len(self.items) - len(self._rows)
        other = f" (+{elsewhere} in other scenes: pick one under Labels ▸ Scene)" if elsewhere > 0 else ""
        self.counts.setText(
            f"<b>{reviewed}</b> of {total} chips reviewed, <b>{total - reviewed}</b> remaining, "
            f"{len(self._rows)} queued{other}<br>{classes}"
        )
