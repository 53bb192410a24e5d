"""The uncertainty heatmap of the chip under review, computed once the user pauses on it.

The entropy map (:func:`labeler.chip_layers.chip_uncertainty`) runs in a ``thread_worker``
(:class:`labeler.workers.ProgressJob`) started :data:`HEATMAP_DELAY_MS` after the last move
through the queue, so stepping quickly through it starts no jobs and accepting a chip stays fast;
a result that comes back after the review moved on is dropped.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from napari.utils.notifications import show_warning
from qtpy.QtCore import QTimer

from labeler.chip_layers import HEATMAP_LAYER, chip_uncertainty, hide_heatmap, show_heatmap
from labeler.workers import ProgressJob

#: Pause on a chip before its uncertainty map is computed.
HEATMAP_DELAY_MS = 250


class ChipHeatmap:
    """Shows the uncertainty heatmap of whichever chip is under review.

    Args:
        session: The open project session.
        current: Returns the chip under review (a queue item), or None.
        enabled: Returns whether the heatmap is wanted (the panel's check box).
        parent: Qt parent of the delay timer (the panel).
    """

    def __init__(self, session, current: Callable[[], object], enabled: Callable[[], bool],
                 parent=None) -> None:
        self.session = session
        self.viewer = session.viewer
        self._current = current
        self._enabled = enabled
        self.job: ProgressJob | None = None
        self.closed = False
        self._timer = QTimer(parent)
        self._timer.setSingleShot(True)
        self._timer.setInterval(HEATMAP_DELAY_MS)
        self._timer.timeout.connect(self._start)

    def schedule(self) -> None:
        """Hide the previous chip's heatmap; compute this chip's once the user pauses on it.

        The worker starts after :data:`HEATMAP_DELAY_MS` (restarted on every move).
        """
        if HEATMAP_LAYER in self.viewer.layers:
            hide_heatmap(self.viewer.layers[HEATMAP_LAYER])
        if self._enabled():
            self._timer.start()

    def _start(self) -> None:
        item = self._current()
        if self.closed or item is None or not self._enabled() or self.session.current_model() is None:
            return
        job = ProgressJob(chip_uncertainty, self.session.project, self.session.scene, item.window)
        job.worker.returned.connect(lambda heat, it=item: self._on_heatmap(it, heat))
        job.worker.errored.connect(lambda exc: show_warning(f"Uncertainty map failed: {exc}"))
        self.job = job
        job.start()

    def _on_heatmap(self, item, heat: np.ndarray | None) -> None:
        if self.closed or heat is None or item is not self._current():
            return
        show_heatmap(self.viewer, item, heat)

    def toggled(self, on: bool) -> None:
        """The heatmap was switched on or off: show or hide it for the chip under review."""
        current = self._current()
        if HEATMAP_LAYER in self.viewer.layers:
            self.viewer.layers[HEATMAP_LAYER].visible = on and current is not None
        if on and current is not None:
            self.schedule()

    def close(self) -> None:
        """No more heatmaps: the timer stops and late results are dropped (stop :attr:`job` too)."""
        self.closed = True
        self._timer.stop()
