"""Download NAIP panel: fetch imagery from the Planetary Computer into the project and show it.

:func:`loop.naip.download_naip` runs in a worker thread (progress, cancel); the finished GeoTIFF
is added to the project as a scene and opened. The area is typed as lat/lon/size, or taken from
the current view of the scene on screen.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from napari.utils.notifications import show_error, show_info
from psygnal import Signal
from pyproj import Transformer
from qtpy.QtWidgets import (
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QWidget,
)

from labeler.session import ProjectSession
from labeler.workers import ProgressJob
from loop.naip import MAX_SIDE_M
from model.errors import Cancelled, DclabelError


def view_area(viewer, scene) -> tuple[float, float, float]:
    """(lat, lon, size in metres) of the part of ``scene`` shown in ``viewer`` (square, whole view)."""
    row, col = viewer.camera.center[-2:]
    x, y = scene.transform @ (col, row)
    lon, lat = Transformer.from_crs(scene.crs, "EPSG:4326", always_xy=True).transform(x, y)
    canvas = getattr(getattr(getattr(viewer, "window", None), "_qt_viewer", None), "canvas", None)
    pixels = max(canvas.size) if canvas is not None and max(canvas.size) > 0 else 1000
    size_m = pixels / max(viewer.camera.zoom, 1e-9) * scene.res[0]
    return float(lat), float(lon), float(np.clip(size_m, 60.0, MAX_SIDE_M))


def output_name(lat: float, lon: float, size_m: float, year: int | None) -> str:
    """A readable file name for a download (``naip_38.95000_-77.45000_1000m_2022.tif``)."""
    return f"naip_{lat:.5f}_{lon:.5f}_{size_m:.0f}m_{year or 'newest'}.tif"


class DownloadWidget(QWidget):
    """The Download NAIP panel.

    Args:
        session: The open project session.
    """

    scene_added = Signal(str)

    def __init__(self, session: ProjectSession, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.session = session
        self.job: ProgressJob | None = None
        self.lat = QDoubleSpinBox(decimals=6, minimum=-90, maximum=90)
        self.lon = QDoubleSpinBox(decimals=6, minimum=-180, maximum=180)
        self.size = QDoubleSpinBox(decimals=0, minimum=60, maximum=MAX_SIDE_M, singleStep=100, suffix=" m")
        self.year = QSpinBox(minimum=0, maximum=2100, specialValueText="newest")
        self.lat.setValue(38.95)
        self.lon.setValue(-77.45)
        self.size.setValue(1000)
        self.from_view = QPushButton("Use current view")
        self.start = QPushButton("Download")
        self.cancel = QPushButton("Cancel")
        self.cancel.setEnabled(False)
        self.bar = QProgressBar()
        self.status = QLabel("NAIP (US only) from the Planetary Computer STAC API.")
        self.status.setWordWrap(True)
        buttons = QHBoxLayout()
        for b in (self.from_view, self.start, self.cancel):
            buttons.addWidget(b)
        form = QFormLayout(self)
        form.addRow("Latitude", self.lat)
        form.addRow("Longitude", self.lon)
        form.addRow("Size", self.size)
        form.addRow("Year", self.year)
        form.addRow(buttons)
        form.addRow(self.bar)
        form.addRow(self.status)
        self.from_view.clicked.connect(self.use_view)
        self.start.clicked.connect(self.download)
        self.cancel.clicked.connect(lambda: self.job.cancel() if self.job else None)

    def use_view(self) -> None:
        """Fill lat/lon/size from the view of the scene on screen."""
        lat, lon, size = view_area(self.session.viewer, self.session.scene)
        self.lat.setValue(lat)
        self.lon.setValue(lon)
        self.size.setValue(size)

    def download(self) -> ProgressJob:
        """Start the download in the background; returns the job (tests wait on its worker)."""
        from loop.naip import download_naip

        lat, lon, size = self.lat.value(), self.lon.value(), self.size.value()
        year = self.year.value() or None
        out = Path(self.session.project.root) / "scenes" / output_name(lat, lon, size, year)
        self.job = ProgressJob(download_naip, lat, lon, size, out, year=year)
        worker = self.job.worker
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(self._on_done)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self.start.setEnabled(False)
        self.cancel.setEnabled(True)
        self.status.setText(f"Searching NAIP around {lat:.5f}, {lon:.5f} ({size:.0f} m)…")
        self.job.start()
        return self.job

    def _on_progress(self, p) -> None:
        self.bar.setMaximum(max(p.total, 1))
        self.bar.setValue(p.done)

    def _on_done(self, path) -> None:
        before = set(self.session.project.scene_ids)  # ids only: .scenes would raise on an unreadable scene
        try:
            with warnings.catch_warnings():  # "already a scene" is said below, in the panel
                warnings.simplefilter("ignore", UserWarning)
                scene = self.session.project.add_scene(path)
        except DclabelError as exc:
            self._on_error(exc)
            return
        if scene.scene_id in before:  # the same area and year downloaded again: nothing new
            self.status.setText(f"{Path(path).name} is already scene {scene.scene_id}; nothing added, showing it.")
            show_info(f"Already in the project: scene {scene.scene_id}")
        else:
            self.status.setText(f"Added {Path(path).name} as scene {scene.scene_id}.")
            show_info(f"NAIP scene added: {scene.scene_id}")
            self.scene_added.emit(scene.scene_id)
        self.session.show_scene(scene.scene_id)

    def _on_error(self, exc: BaseException) -> None:
        message = "Download cancelled; nothing was written." if isinstance(exc, Cancelled) else str(exc)
        self.status.setText(message)
        if not isinstance(exc, Cancelled):
            show_error(f"Download NAIP: {message}")

    def _on_finished(self) -> None:
        self.start.setEnabled(True)
        self.cancel.setEnabled(False)

    def close_jobs(self) -> None:
        """Cancel a running download (application shutdown)."""
        if self.job is not None:
            self.job.cancel()
