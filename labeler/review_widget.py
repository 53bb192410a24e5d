"""Review queue panel: rank chips, step through them, accept / edit / reject the model's proposals.

Ranking runs in its own process (:class:`labeler.rank_controls.RankControls`, the panel's top
strip); the uncertainty heatmap of the selected chip in a ``thread_worker``
(:class:`labeler.chip_heatmap.ChipHeatmap`). Accepting writes the proposals as the proposals layer
shows them and the chip's reviewed mark in one store transaction, one undo step
(:mod:`labeler.chip_decision`). The queue's order and the session's decisions, kept in step with
undo and redo, are :class:`loop.review_queue.ReviewQueue`.
"""

from __future__ import annotations

import time

from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QGridLayout,
    QLabel,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from labeler import chip_decision
from labeler.chip_heatmap import ChipHeatmap
from labeler.chip_layers import HEATMAP_LAYER, PROPOSALS_LAYER, show_proposals
from labeler.export_widget import DETECTIONS_LAYER
from labeler.footprints import HOLES_LAYER, LAYER_NAME, class_colour
from labeler.geo import window_centre
from labeler.queue_table import QueueTable
from labeler.rank_controls import RankControls
from labeler.scene_layers import GRID_LAYER
from labeler.session import ProjectSession
from labeler.workers import ProcessJob
from loop.review_queue import ReviewQueue
from model.errors import DclabelError

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
        super().__init__(parent)
        self.session = session
        self.viewer = session.viewer
        self.queue = ReviewQueue()
        self._deciding = False
        self.current = None
        self.last_accept_ms: float | None = None
        self.closed = False

        self.ranking = RankControls(session, on_ranked=self.populate)
        self.table = QueueTable()
        self.heatmap = QCheckBox("Uncertainty heatmap")
        self.heatmap.setChecked(True)
        self.heat = ChipHeatmap(session, lambda: self.current, self.heatmap.isChecked, parent=self)
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

        layout = QVBoxLayout(self)
        layout.addWidget(self.ranking)
        layout.addWidget(self.table, 1)
        layout.addLayout(grid)
        layout.addWidget(self.heatmap)
        layout.addWidget(self.counts)

        self.table.itemSelectionChanged.connect(self._on_row_selected)
        self.heatmap.toggled.connect(self.heat.toggled)
        session.labels_changed.connect(self.update_counts)
        session.labels_changed.connect(self._requeue_undone)
        session.scene_changed.connect(lambda _: self.populate(self.queue.items))
        self._bind_review_keys(self.viewer)
        for layer in self.viewer.layers:
            self._on_layer_inserted(layer)
        self.viewer.layers.events.inserted.connect(lambda event: self._on_layer_inserted(event.value))
        self._load_saved_queue()
        self.update_counts()

    @property
    def items(self) -> list:
        """Queued chips of every scene, best first."""
        return self.queue.items

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

    @property
    def rank_job(self) -> ProcessJob | None:
        """The ranking running in the background, or None."""
        return self.ranking.job

    def rank(self) -> ProcessJob | None:
        """Rank the queue in the background with the selected strategy; returns the job (None while
        a ranking runs: it runs once more when that one ends)."""
        return self.ranking.rank()

    def cancel_rank(self) -> None:
        """Stop a running ranking; the previous queue stays."""
        self.ranking.cancel()

    def close_jobs(self, wait_ms: int = 10_000) -> None:
        """Stop ranking and heatmap workers and ignore their late results (on viewer close)."""
        self.closed = True
        self.heat.close()
        self.ranking.closed = True
        for job in (self.ranking.job, self.heat.job):
            if job is not None:
                job.stop(wait_ms)

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
        rows = self.queue.fill(items, self.session.scene.scene_id)
        self.table.show_items(rows)
        self.session.set_queued([it.window for it in rows])
        self.update_counts()
        prev = self.current
        if prev is not None and prev is self.queue.edited:
            return  # the user is editing a chip accepted with "edit, then accept": the view stays
        keep = self.queue.row_showing(prev) if keep_current and prev is not None else None
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
        if not rows or rows[0].row() >= len(self.queue.rows):
            return
        self.show_item(self.queue.rows[rows[0].row()])

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
        show_proposals(self.viewer, item, self.session.scene.transform)  # review keys: _on_layer_inserted
        self.heat.schedule()

    def _clear_chip_layers(self) -> None:
        for name in (PROPOSALS_LAYER, HEATMAP_LAYER):
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)

    # ----- decisions -----------------------------------------------------------------------------
    def selected_proposals(self) -> list:
        """Proposals selected in the proposals layer."""
        return chip_decision.selected_proposals(self.viewer, self.current)

    def proposals_on_screen(self, selected_only: bool = False) -> list[tuple]:
        """The chip's proposals as the proposals layer shows them: ``(geometry, edited)`` per
        proposal still in the layer. A proposal deleted there is not accepted; one reshaped there
        is accepted as reshaped (untouched vertices keep their exact position)."""
        return chip_decision.proposals_on_screen(self.viewer, self.current, self.session.scene, selected_only,
                                                 warn=show_warning, info=show_info)

    def _chip_on_screen(self) -> bool:
        """True when a chip is under review; otherwise says why nothing happens."""
        if self.current is None:
            show_info("End of the queue: rank again for more chips." if not self.items
                      else "Select a chip in the queue first.")
        elif self.current is self.queue.edited:
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
        if not self.queue.done or self.queue.done[-1] is not item:
            return  # not saved (the error is shown)
        # reviewed now: out of the queue at once (a row click, a scene switch or a re-rank never
        # offers it again), while the view stays on it for editing until N
        self.populate(self.queue.hold_for_editing(item))
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
        self.queue.skip(item)
        self._advance_from(item)

    def next_chip(self) -> None:
        """Show the next chip of the queue (dropping a chip accepted for editing)."""
        item = self.current
        if item is not None and self.queue.edited is item:
            self.queue.edited = None
            self.populate(self.queue.items, select_row=self.queue.edited_row, keep_current=False)
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
        """Store the chip's decision (:func:`labeler.chip_decision.store_decision`: one undo step),
        then go on to the next chip unless ``advance`` is False."""
        t0 = time.perf_counter()
        item = self.current
        model = self.session.current_model()
        version = model.version if model is not None else None
        editor = self.session.editor
        self._deciding = True  # the label events of this decision must not resync the queue
        try:
            fids = chip_decision.store_decision(self.session.project.labels, editor, item, chosen, empty, version)
        except DclabelError as exc:
            show_error(f"Chip not saved: {exc}")
            editor.reload()
            return []
        finally:
            self._deciding = False
        self.queue.reviewed(item, advance)
        self.chip_reviewed.emit()
        self.session.reviewed_changed.emit()
        if advance:
            self._advance_from(item)
        else:
            self.session.refresh_grid()
            self.update_counts()
        self.last_accept_ms = (time.perf_counter() - t0) * 1000
        return fids

    def _advance_from(self, item) -> None:
        self.populate(self.queue.items, select_row=self.queue.row_of(item), keep_current=False)

    def _requeue_undone(self) -> None:
        """Keep the queue in step with undo and redo: a chip whose review was undone (Ctrl+Z) goes
        back to the front of the queue, and leaves it again when the review is redone."""
        if self._deciding or not (self.queue.done or self.queue.undone):
            return
        reviewed = {(r.scene_id, r.window) for r in self.session.project.labels.reviewed_chips()}
        items = self.queue.after_history(reviewed)
        if items is not None:
            self.populate(items)

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
        elsewhere = self.queue.elsewhere()
        other = f" (+{elsewhere} in other scenes: pick one under Labels ▸ Scene)" if elsewhere > 0 else ""
        self.counts.setText(
            f"<b>{reviewed}</b> of {total} chips reviewed, <b>{total - reviewed}</b> remaining, "
            f"{len(self.queue.rows)} queued{other}<br>{classes}"
        )
