"""Labels panel: which scene is on screen, its display, the footprint class and undo/redo."""

from __future__ import annotations

from napari.utils.notifications import show_error
from qtpy.QtWidgets import (
    QButtonGroup,
    QComboBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QRadioButton,
    QWidget,
)

from labeler.footprints import class_colour
from labeler.session import ProjectSession
from model.errors import DclabelError, SceneNotFoundError


class LabelsWidget(QWidget):
    """Scene selector, true/NIR false colour toggle, class selector, undo and redo.

    Args:
        session: The open project session.
    """

    def __init__(self, session: ProjectSession, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.scene = QComboBox()
        readable = {sc.scene_id: sc for sc in session.project.readable_scenes()}
        for sid in session.project.scene_ids:
            sc = readable.get(sid)
            self.scene.addItem(f"{sid}  ({sc.width}×{sc.height})" if sc else f"{sid}  ({self._why_unreadable(sid)})", sid)
        self.scene.setCurrentIndex(max(self.scene.findData(session.scene.scene_id), 0))
        self.true_colour = QRadioButton("True colour")
        self.nir = QRadioButton("NIR false colour")
        self.true_colour.setChecked(True)
        group = QButtonGroup(self)
        group.addButton(self.true_colour)
        group.addButton(self.nir)
        self.cls = QComboBox()
        for c in session.project.settings.classes:
            self.cls.addItem(f"■ {c}", c)
            self.cls.setItemData(self.cls.count() - 1, _qcolor(class_colour(c)), _foreground_role())
        self.undo_button = QPushButton("Undo (Ctrl+Z)")
        self.redo_button = QPushButton("Redo (Ctrl+Shift+Z)")
        self.info = QLabel("Draw: P polygon; rectangle, ellipse: layer toolbar\nD edit vertices · Del delete")
        self.info.setToolTip(
            "Select the 'footprints' layer to draw. Every change is saved to labels.gpkg at once; "
            "Ctrl+Z / Ctrl+Shift+Z undo and redo. Picking a class re-classes the selected footprints. "
            "A, R, E and N review the chip whichever layer is active (they are not napari's select "
            "all, rectangle and ellipse keys here; Ctrl+A selects all). An ellipse is stored as its "
            "outline; lines, paths, shapes under 1 m² and shapes wholly outside the scene are not stored."
        )

        display = QHBoxLayout()
        display.addWidget(self.true_colour)
        display.addWidget(self.nir)
        history = QHBoxLayout()
        history.addWidget(self.undo_button)
        history.addWidget(self.redo_button)
        form = QFormLayout(self)
        form.addRow("Scene", self.scene)
        form.addRow("Display", display)
        form.addRow("Class", self.cls)
        form.addRow(history)
        form.addRow(self.info)

        self.scene.currentIndexChanged.connect(self._on_scene)
        self.nir.toggled.connect(lambda on: self.session.set_composite("nir" if on else "true"))
        self.cls.currentIndexChanged.connect(self._on_class)
        self.undo_button.clicked.connect(lambda: self.session.editor.undo())
        self.redo_button.clicked.connect(lambda: self.session.editor.redo())
        session.scene_changed.connect(lambda _: self._on_class())
        session.scene_changed.connect(self.add_scene_item)  # e.g. undo showed the scene it changed

    def _why_unreadable(self, scene_id: str) -> str:
        """Short reason shown in the scene selector for a scene that cannot be opened."""
        try:
            self.session.project.scene(scene_id)
        except SceneNotFoundError:
            return "file missing"
        except DclabelError:
            return "cannot be read; pick it to see why"
        return "cannot be read"

    def add_scene_item(self, scene_id: str) -> None:
        """List a scene added while the app runs (e.g. downloaded) and select it."""
        sc = self.session.project.scene(scene_id)
        if self.scene.findData(scene_id) < 0:
            self.scene.addItem(f"{sc.scene_id}  ({sc.width}×{sc.height})", sc.scene_id)
        self.scene.blockSignals(True)
        self.scene.setCurrentIndex(self.scene.findData(scene_id))
        self.scene.blockSignals(False)

    def _on_scene(self) -> None:
        scene_id = self.scene.currentData()
        if scene_id and scene_id != self.session.scene.scene_id:
            try:
                self.session.show_scene(scene_id)
            except (DclabelError, OSError) as exc:
                show_error(f"Cannot open scene {scene_id}: {exc}")
                self.add_scene_item(self.session.scene.scene_id)  # the selector says what is shown

    def _on_class(self) -> None:
        editor = self.session.editor
        if editor is not None:
            editor.set_class(self.cls.currentData())


def _qcolor(hex_colour: str):
    from qtpy.QtGui import QColor

    return QColor(hex_colour)


def _foreground_role():
    from qtpy.QtCore import Qt

    return Qt.ItemDataRole.ForegroundRole
