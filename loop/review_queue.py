"""The review queue of a labelling session: the chips left to review, in order, and the session's
decisions on them, kept in step with undo and redo of the label store (GUI-free).

The panel (:class:`labeler.review_widget.ReviewWidget`) shows the queue's rows of the scene on
screen; this holds what those rows are and where the queue goes after each decision: a chip
reviewed leaves the queue, a skipped one goes to its end, a chip whose review was undone (Ctrl+Z)
comes back to the front and leaves again when the review is redone.
"""

from __future__ import annotations

from collections.abc import Iterable

from loop.ranking_queue import QueueItem


class ReviewQueue:
    """Queued chips of every scene, best first, and the chips reviewed in this session.

    Attributes:
        items: Queued chips of every scene, best first.
        rows: The queued chips of the scene on screen (the panel's table rows), in queue order.
        edited: The chip accepted with "edit, then accept" and still on screen for editing
            (already out of the queue), or None.
        edited_row: The row that chip had, where the next chip is taken from.
        done: Chips reviewed in this session (back in the queue if their review is undone).
        undone: Chips put back by an undo (out of the queue again if the review is redone).
    """

    def __init__(self) -> None:
        self.items: list[QueueItem] = []
        self.rows: list[QueueItem] = []
        self.edited: QueueItem | None = None
        self.edited_row = 0
        self.done: list[QueueItem] = []
        self.undone: list[QueueItem] = []

    def fill(self, items: Iterable[QueueItem] | None, scene_id: str) -> list[QueueItem]:
        """Take a new queue (items of every scene are kept); returns the rows of ``scene_id``."""
        self.items = list(items or [])
        self.rows = [it for it in self.items if it.scene_id == scene_id]
        return self.rows

    def row_of(self, item: QueueItem) -> int:
        """Row of ``item`` in :attr:`rows` (0 when it is not there)."""
        return next((r for r, it in enumerate(self.rows) if it is item), 0)

    def row_showing(self, chip: QueueItem) -> int | None:
        """Row queuing the same chip (scene and window) as ``chip``, or None."""
        return next((r for r, it in enumerate(self.rows)
                     if it.scene_id == chip.scene_id and it.window == chip.window), None)

    def elsewhere(self) -> int:
        """Number of queued chips of other scenes than the one on screen."""
        return len(self.items) - len(self.rows)

    def skip(self, item: QueueItem) -> None:
        """Move ``item`` to the end of the queue without deciding."""
        self.items = [it for it in self.items if it is not item] + [item]

    def reviewed(self, item: QueueItem, advance: bool = True) -> None:
        """Record a decision on ``item``; with ``advance`` it leaves the queue."""
        self.undone = [it for it in self.undone if it is not item]
        self.done.append(item)
        if advance:
            self.items = [it for it in self.items if it is not item]

    def hold_for_editing(self, item: QueueItem) -> list[QueueItem]:
        """``item`` was accepted with "edit, then accept": it stays on screen (:attr:`edited`) while
        the rest of the queue, returned, goes on without it."""
        self.edited_row = self.row_of(item)
        self.edited = item
        return [it for it in self.items if it is not item]

    def after_history(self, reviewed: set[tuple]) -> list[QueueItem] | None:
        """The queue after an undo or redo changed which chips are reviewed.

        A chip of this session whose review was undone goes back to the front of the queue, and
        leaves it again when the review is redone.

        Args:
            reviewed: ``(scene_id, window)`` of every chip reviewed in the store.

        Returns:
            The new queue order, or None when no review of this session was undone or redone.
        """
        undone = [it for it in self.done if (it.scene_id, it.window) not in reviewed]
        redone = [it for it in self.undone if (it.scene_id, it.window) in reviewed]
        if not undone and not redone:
            return None
        if self.edited is not None and self.edited in undone:
            self.edited = None  # its acceptance undone: an ordinary queued chip again
        self.done = [it for it in self.done if it not in undone] + redone
        self.undone = [it for it in self.undone if it not in redone] + undone
        queued = {(it.scene_id, it.window) for it in self.items}
        back = [it for it in reversed(undone) if (it.scene_id, it.window) not in queued]
        gone = {(it.scene_id, it.window) for it in redone}
        return back + [it for it in self.items if (it.scene_id, it.window) not in gone]
