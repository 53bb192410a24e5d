"""Ranking the review queue in the background: the strategy, Rank and Cancel, and the progress bar
(the top strip of the review panel).

Ranking runs in its own process (:class:`labeler.workers.ProcessJob` over
:func:`loop.ranking.rank_project`): proposals are vectorized in pure Python, which in a thread of
this process would hold the GIL and stall the window (gaps of 140-190 ms measured). A request to
rank while ranking runs once more when that ranking ends, however many came in between.
"""

from __future__ import annotations

from collections.abc import Callable

from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (
    QComboBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from labeler.workers import ProcessJob
from model.errors import Cancelled


class RankControls(QWidget):
    """Strategy choice, Rank and Cancel buttons and the ranking's progress.

    Args:
        session: The open project session.
        on_ranked: Called with the ranked queue (a list of queue items, best first).
        parent: The review panel.
    """

    def __init__(self, session, on_ranked: Callable[[list], None], parent: QWidget | None = None) -> None:
        from loop.ranking import STRATEGIES

        super().__init__(parent)
        self.session = session
        self._on_ranked = on_ranked
        self._rank_again = False  # asked to rank while ranking: once more when it ends
        self.job: ProcessJob | None = None
        self.closed = False

        self.strategy = QComboBox()
        self.strategy.addItems(list(STRATEGIES))
        self.strategy.setCurrentText("entropy" if "entropy" in STRATEGIES else self.strategy.itemText(0))
        self.rank_button = QPushButton("Rank")
        self.rank_button.setToolTip("Rank unreviewed chips with the current model (in the background)")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setMaximumHeight(14)

        top = QHBoxLayout()
        top.addWidget(QLabel("Strategy"))
        top.addWidget(self.strategy, 1)
        top.addWidget(self.rank_button)
        top.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)  # laid out as part of the panel's own column
        layout.addLayout(top)
        layout.addWidget(self.progress)

        self.rank_button.clicked.connect(self.rank)
        self.cancel_button.clicked.connect(self.cancel)

    def rank(self) -> ProcessJob | None:
        """Rank the queue in the background with the selected strategy; returns the job (None
        while a ranking runs: it runs once more when that one ends)."""
        if self.job is not None:
            # a new model or a new scene while ranking: that ranking may not see it, so rank once
            # more when it ends (requests in between are coalesced into that one)
            self._rank_again = True
            return None
        self._rank_again = False
        from loop.ranking import rank_project

        job = ProcessJob(rank_project, str(self.session.project.root), self.strategy.currentText())
        job.worker.yielded.connect(self._on_progress)
        job.worker.returned.connect(self._on_ranked)
        job.worker.errored.connect(self._on_error)
        job.worker.finished.connect(self._on_finished)
        self.job = job
        self.rank_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setValue(0)
        self.progress.setFormat("ranking %p%")
        job.start()
        return job

    def cancel(self) -> None:
        """Stop a running ranking; the previous queue stays."""
        if self.job is not None:
            self.job.cancel()

    def _on_progress(self, p) -> None:
        self.progress.setMaximum(max(p.total, 1))
        self.progress.setValue(p.done)

    def _on_error(self, exc: Exception) -> None:
        if isinstance(exc, Cancelled):
            show_info(f"Ranking cancelled: {exc}")
        else:
            show_error(f"Ranking failed: {exc}")

    def _on_finished(self) -> None:
        self.job = None
        self.rank_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress.setFormat("%p%")
        if self._rank_again and not self.closed:
            self.rank()
