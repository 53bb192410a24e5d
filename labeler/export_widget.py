"""Export panel: detect data centers over the scene on screen and write the results.

:func:`model.detect.detect_scene` runs in its own process (:class:`labeler.workers.ProcessJob`; progress
per tile batch, cancellable). The detections appear as a Shapes layer and are written as GeoJSON (EPSG:4326),
GeoPackage (scene CRS), CSV (centroids, area, confidence) and a GeoTIFF mask, all named after
the chosen output stem.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from labeler.chip_layers import quiet_data
from labeler.geo import geometry_to_napari, polygon_parts
from labeler.session import ProjectSession
from labeler.workers import ProcessJob
from model.errors import Cancelled, DclabelError
from model.scene import SceneInfo

DETECTIONS_LAYER = "detections"
#: Detections added to the layer per event-loop turn (see :meth:`ExportWidget.show_detections`).
DRAW_CHUNK = 64
#: Orange: apart from the class colours, the proposals' red-green and the blue uncertainty.
DETECTION_EDGE = "#ff6d00"
DETECTION_FACE = [1.0, 0.43, 0.0, 0.18]
FORMATS = {"geojson": ".geojson", "gpkg": ".gpkg", "csv": ".csv", "mask": "_mask.tif"}


#: Default file stem inside a folder given as the output.
DEFAULT_STEM = "detections"


def export_paths(stem: str | Path, formats: set[str], base: str | Path | None = None) -> dict[str, Path]:
    """Output files for an output stem (``out/detections`` -> ``out/detections.geojson``, ...).

    ``~`` is the home folder; a relative stem is relative to ``base`` (the project folder). A folder
    means "in there", with the stem ``detections``: an existing folder, or any path ending in a
    slash (``out/new/`` -> ``out/new/detections.geojson``, created on writing). A name ending in one
    of the outputs' suffixes loses it (``dets_mask.tif``, ``dets.geojson`` -> ``dets``).

    Args:
        stem: The Output field's text.
        formats: Formats to write (keys of :data:`FORMATS`).
        base: Folder a relative stem is relative to (default: the working directory).

    Returns:
        ``{format: path}`` for the chosen formats, absolute when ``base`` is.
    """
    text = str(stem).strip()
    folder = text.endswith(("/", os.sep, os.altsep or "/"))
    path = Path(text).expanduser()
    if not path.is_absolute() and base is not None:
        path = Path(base).expanduser() / path
    if folder or path.is_dir():
        path = path / DEFAULT_STEM
    else:
        name = path.name
        for suffix in sorted({*FORMATS.values(), ".tif", ".tiff", "_mask.tiff"}, key=len, reverse=True):
            if name.lower().endswith(suffix) and len(name) > len(suffix):
                path = path.with_name(name[: -len(suffix)])
                break
    return {f: path.parent / f"{path.name}{FORMATS[f]}" for f in FORMATS if f in formats}


def confirm_replace(parent: QWidget | None, existing: list[Path]) -> bool:
    """Ask whether to replace existing output files (the export's one overwrite question)."""
    names = "\n".join(str(p) for p in existing)
    answer = QMessageBox.question(
        parent, "Replace files?",
        f"{len(existing)} output file(s) already exist and will be replaced:\n{names}",
        QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No,
    )
    return answer == QMessageBox.StandardButton.Yes


class ExportWidget(QWidget):
    """The export panel.

    Args:
        session: The open project session.
    """

    def __init__(self, session: ProjectSession, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.viewer = session.viewer
        self.job: ProcessJob | None = None
        self.result = None
        self.result_scene: str | None = None  # scene id of ``result``
        self._job_scene: SceneInfo | None = None  # the scene the running detection reads
        self.paths: dict[str, Path] = {}
        #: Asked with the existing files before they are replaced; True goes ahead (tests swap it).
        self.confirm_replace = lambda existing: confirm_replace(self, existing)
        self._replacing: list[Path] = []
        self._draw_generation = 0  # bumped when the layer is cleared: batches of an older drawing stop
        self._drawing = False

        self.output = QLineEdit(str(Path(session.project.root) / "exports" / "detections"))
        browse = QPushButton("…")
        browse.setMaximumWidth(30)
        browse.clicked.connect(self._browse)
        self.formats = {f: QCheckBox(f) for f in FORMATS}
        for box in self.formats.values():
            box.setChecked(True)
        self.threshold = QDoubleSpinBox()
        self.threshold.setRange(0.0, 0.95)  # the minimum shows as "model's": the checkpoint's own
        self.threshold.setSingleStep(0.05)
        self.threshold.setSpecialValueText("model's")
        self.threshold.setToolTip("Probability threshold of a data-center pixel. \"model's\": the one the "
                                  "current model was validated at (chosen by object F1 after training).")
        self.threshold.setValue(0.0)
        self.min_area = QDoubleSpinBox()
        self.min_area.setRange(0, 1e6)
        self.min_area.setDecimals(0)
        self.min_area.setValue(100)
        self.min_area.setSuffix(" px")
        self.run_button = QPushButton("Detect and export")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setMaximumHeight(14)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        out_row = QHBoxLayout()
        out_row.addWidget(self.output, 1)
        out_row.addWidget(browse)
        fmt_row = QHBoxLayout()
        for box in self.formats.values():
            fmt_row.addWidget(box)
        form = QFormLayout()
        form.addRow("Output", out_row)
        form.addRow("Formats", fmt_row)
        form.addRow("Threshold", self.threshold)
        form.addRow("Min. area", self.min_area)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.status)
        layout.addStretch(1)

        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        session.model_changed.connect(lambda _version: self.show_model_threshold())
        session.scene_changed.connect(lambda _scene_id: self._clear_detections())
        self.show_model_threshold()
        self.detections_layer()

    def show_model_threshold(self) -> None:
        """Show the current model's own threshold in the spin box's "model's" setting."""
        try:
            current = self.session.current_model()
        except DclabelError:
            current = None
        t = current.metrics.get("threshold") if current is not None else None
        self.threshold.setSpecialValueText(f"model's ({float(t):.2f})" if t is not None else "model's (0.50)")

    def _browse(self) -> None:
        start = export_paths(self.output.text(), {"geojson"}, self.session.project.root)["geojson"]
        # the files of every format are checked (and asked about) once, when the export starts
        path, _ = QFileDialog.getSaveFileName(self, "Export detections as", str(start.with_suffix("")),
                                              "Output stem (*)",
                                              options=QFileDialog.Option.DontConfirmOverwrite)
        if path:
            self.output.setText(path)

    def run(self) -> ProcessJob | None:
        """Start detection in the background; returns the job (None if it could not start)."""
        from model.atomic import check_outputs
        from model.detect import DetectConfig

        if self.job is not None:
            show_info("Detection is already running.")
            return None
        current = self.session.current_model()
        if current is None:
            show_warning("No model yet: retrain first, then export.")
            return None
        formats = {f for f, box in self.formats.items() if box.isChecked()}
        if not formats:
            self.status.setText("not started: tick at least one output format.")
            show_error("Cannot export: no output format is ticked; tick GeoJSON, GeoPackage, CSV or the mask.")
            return None
        if not self.output.text().strip():
            self.status.setText("not started: give an output name (a folder or a file stem).")
            show_error("Cannot export: the Output field is empty; give a folder or a file stem.")
            return None
        self.paths = export_paths(self.output.text().strip(), formats, self.session.project.root)
        try:  # before any work: never write over the scene, the model or the project's own files
            check_outputs({f"{fmt} output": p for fmt, p in self.paths.items()},
                          self._protected_files(current))
        except DclabelError as exc:
            self.status.setText(f"not started: {exc}")
            show_error(f"Cannot export: {exc}")
            return None
        existing = [p for p in self.paths.values() if p.exists()]
        if existing and not self.confirm_replace(existing):
            self.status.setText("not started: " + ", ".join(p.name for p in existing)
                                + " already exist(s); choose another output name.")
            return None
        self._replacing = existing
        try:
            threshold = self.threshold.value() if self.threshold.value() > self.threshold.minimum() else None
            config = DetectConfig(threshold=threshold, min_area=self.min_area.value(),
                                  bands=self.session.scene.bands, device="cpu")
        except ValueError as exc:
            show_error(f"Bad detection settings: {exc}")
            return None
        from model.detect import detect_scene

        # its own process: vectorizing and writing would hold the GIL and stall the window
        job = ProcessJob(detect_scene, current.path, self.session.scene, config,
                         output_geojson=self.paths.get("geojson"), output_gpkg=self.paths.get("gpkg"),
                         output_csv=self.paths.get("csv"), output_mask=self.paths.get("mask"))
        job.worker.yielded.connect(self._on_progress)
        job.worker.returned.connect(self._on_result)
        job.worker.errored.connect(self._on_error)
        job.worker.finished.connect(self._on_finished)
        self.job = job
        self._job_scene = self.session.scene
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setValue(0)
        self.status.setText(f"detecting with {current.version}…")
        job.start()
        return job

    def _protected_files(self, current) -> dict[str, Path]:
        """Files an export must not overwrite: its inputs and the project's own state."""
        root = Path(self.session.project.root)
        return {"input scene": self.session.scene.path, "current model's checkpoint": current.path,
                "project's label store": root / "labels.gpkg", "project file": root / "project.json",
                "model registry": root / "checkpoints" / "registry.json", "review queue": root / "queue.json"}

    def cancel(self) -> None:
        """Stop detection; no output file is written."""
        if self.job is not None:
            self.job.cancel()

    def close_jobs(self, wait_ms: int = 10_000) -> None:
        """Stop a running detection (on viewer close)."""
        if self.job is not None:
            self.job.stop(wait_ms)

    def _on_progress(self, p) -> None:
        self.progress.setMaximum(max(p.total, 1))
        self.progress.setValue(p.done)

    def _on_result(self, table) -> None:
        scene = self._job_scene or self.session.scene
        self.result, self.result_scene = table, scene.scene_id
        files = ", ".join(p.name for p in self.paths.values())
        area = float(table["area_m2"].sum()) if len(table) else 0.0
        folder = next(iter(self.paths.values())).parent
        text = f"{len(table)} detections ({area / 1e4:.1f} ha) written in {folder}: {files}"
        if self._replacing:
            text += f" (replaced: {', '.join(p.name for p in self._replacing)})"
        if scene.scene_id == self.session.scene.scene_id:
            self.show_detections(table)
        else:  # the user moved on to another scene meanwhile: never draw on the wrong grid
            text += f" (scene {scene.scene_id}; not drawn over the scene on screen)"
        self.status.setText(text)
        show_info(f"Exported {len(table)} detections to {folder}")

    def detections_layer(self):
        """The detections Shapes layer, created (empty) if missing.

        It is made once, when the panel opens, and then updated in place: adding a layer to the
        viewer and compiling its shaders costs ~160 ms of main thread under software OpenGL (a
        frozen window as an export ends), replacing its shapes ~75 ms with the repaint.
        """
        from napari.layers import Shapes

        if DETECTIONS_LAYER in self.viewer.layers:
            return self.viewer.layers[DETECTIONS_LAYER]
        active = self.viewer.layers.selection.active
        layer = Shapes(name=DETECTIONS_LAYER, ndim=2, face_color="transparent")
        self.viewer.layers.append(layer)
        if active is not None and active in self.viewer.layers:
            self.viewer.layers.selection.active = active  # drawing goes on in the footprints layer
        return layer

    def show_detections(self, table) -> None:
        """Show a detection table of the scene on screen (feature ``mean_confidence`` per shape).

        The shapes go in :data:`DRAW_CHUNK` at a time, one batch per event-loop turn: napari
        builds and triangulates each shape on the main thread (~0.3 ms per 16-gon here), so a
        whole scene's thousand detections at once would freeze the window for a third of a
        second; batched, it stays live and the layer fills in. ``drawing`` is True until done.
        """
        transform = self.session.scene.transform
        data, conf = [], []
        for geom, c in zip(table.geometry, table["mean_confidence"], strict=True):
            for part in polygon_parts(geom):
                data.append(geometry_to_napari(part, transform))
                conf.append(float(c) if np.isfinite(c) else 0.0)
        self._clear_detections()
        self._draw_chunk(self._draw_generation, data, np.asarray(conf, dtype=float), 0)

    @property
    def drawing(self) -> bool:
        """True while detections are still being added to the layer."""
        return self._drawing

    def _draw_chunk(self, generation: int, data: list, conf: np.ndarray, start: int) -> None:
        if generation != self._draw_generation:  # cleared or replaced meanwhile (scene switch, new export)
            return
        layer = self.detections_layer()
        end = min(start + DRAW_CHUNK, len(data))
        with quiet_data(layer):
            if end > start:
                layer.add(data[start:end], shape_type="polygon", face_color=DETECTION_FACE, edge_width=4,
                          edge_color=DETECTION_EDGE)
            if end == len(data):
                layer.features = {"mean_confidence": conf}
        self._drawing = end < len(data)
        if self._drawing:
            QTimer.singleShot(0, lambda: self._draw_chunk(generation, data, conf, end))

    def _clear_detections(self):
        """Empty the detections layer, e.g. when another scene is shown (files stay written); returns it.

        Detections still being drawn in batches stop being added.
        """
        self._draw_generation += 1
        self._drawing = False
        layer = self.detections_layer()
        with quiet_data(layer):
            layer.selected_data = set()
            layer.data = []
            layer.features = {"mean_confidence": np.zeros(0)}
        return layer

    def _on_error(self, exc: Exception) -> None:
        if isinstance(exc, Cancelled):
            self.status.setText("cancelled; nothing was written.")
            show_info("Detection cancelled; nothing was written.")
        else:
            self.status.setText(f"failed: {exc}")
            show_error(f"Detection failed: {exc}")

    def _on_finished(self) -> None:
        self.job = None
        self._job_scene = None
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
