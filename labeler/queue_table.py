"""The review queue as a read-only table (used by the review panel)."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QAbstractItemView, QHeaderView, QTableWidget, QTableWidgetItem


class QueueTable(QTableWidget):
    """The queue as a read-only table: rank, score, chip, number of proposals."""

    COLUMNS = ("Rank", "Score", "Chip", "Proposals")
    TIPS = (
        "Review order: most informative first, spread over the scene (a chip next to one ranked above "
        "it moves down), so scores are not strictly decreasing.",
        "The strategy's uncertainty score of the chip (higher = the model is less sure).",
        "Chip position: first row and column in scene pixels.",
        "Number of polygons the current model proposes on the chip.",
    )

    def __init__(self) -> None:
        super().__init__(0, len(self.COLUMNS))
        self.setHorizontalHeaderLabels(list(self.COLUMNS))
        for c, tip in enumerate(self.TIPS):
            self.horizontalHeaderItem(c).setToolTip(tip)
        self.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.verticalHeader().setVisible(False)
        self.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.setMinimumHeight(160)

    def show_items(self, rows: list) -> None:
        """Replace the rows (no selection signals are emitted)."""
        self.blockSignals(True)
        self.clearSelection()
        self.setRowCount(len(rows))
        for r, it in enumerate(rows):
            w = it.window
            cells = (str(it.rank), f"{it.score:.3f}", f"r{int(w.row_off)} c{int(w.col_off)}", str(len(it.proposals)))
            for c, text in enumerate(cells):
                cell = QTableWidgetItem(text)
                cell.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
                self.setItem(r, c, cell)
        self.blockSignals(False)
