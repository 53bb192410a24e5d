"""The dclabel application: open a project in a napari viewer and dock the panels.

:func:`open_project` builds a :class:`~labeler.session.ProjectSession` (scene pyramid, chip grid,
footprints layer) and docks the labels, review, retrain and export panels, wired through the
session's signals. Errors (bad project, wrong bands, no CRS, unreadable file) are shown in the
GUI, never raised into Qt.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from napari.utils.notifications import show_error
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QLabel

from labeler.download_widget import DownloadWidget
from labeler.export_widget import ExportWidget
from labeler.labels_widget import LabelsWidget
from labeler.retrain_widget import RetrainWidget
from labeler.review_widget import ReviewWidget
from labeler.session import SESSION_KEY, ProjectSession, find_session
from model.errors import DclabelError

TITLE = "dclabel"


@dataclass
class OpenedProject:
    """The session and the docked panels of an opened project."""

    session: ProjectSession
    labels: LabelsWidget
    review: ReviewWidget
    retrain: RetrainWidget
    export: ExportWidget
    download: DownloadWidget

    def close(self) -> None:
        """Stop every background job of the project (training process, workers)."""
        self.review.close_jobs()
        if self.session.overview_job is not None:
            self.session.overview_job.cancel()
        self.export.close_jobs()
        self.download.close_jobs()
        self.retrain.close_job()


def open_project(viewer, root: str | os.PathLike, scene_id: str | None = None,
                 retrain_options: dict | None = None) -> OpenedProject:
    """Open a project folder in a viewer and dock its panels.

    Args:
        viewer: The napari viewer.
        root: Project folder (holding ``project.json``).
        scene_id: Scene to show first (default: the first one).
        retrain_options: Extra keyword arguments of :class:`loop.retrain.RetrainJob`.

    Returns:
        The session and its panels.

    Raises:
        ProjectError: Not a project folder, or it has no scenes.
        SceneError: The scene cannot be read (wrong bands, no CRS, unreadable).
    """
    from loop.project import Project

    _warm_up()
    project = Project.open(root)
    session = ProjectSession(viewer, project, scene_id)
    session.image_layer.metadata[SESSION_KEY] = session
    session.scene_changed.connect(lambda _: session.image_layer.metadata.__setitem__(SESSION_KEY, session))
    labels = LabelsWidget(session)
    review = ReviewWidget(session)
    retrain = RetrainWidget(session, **(retrain_options or {}))
    export = ExportWidget(session)
    download = DownloadWidget(session)
    download.scene_added.connect(labels.add_scene_item)
    download.scene_added.connect(lambda _scene_id: review.rank())  # its chips join the queue

    session.labels_changed.connect(session.refresh_grid)
    session.labels_changed.connect(review.update_counts)
    session.model_changed.connect(lambda _version: review.rank())

    win = getattr(viewer, "window", None)
    if win is not None:
        win.add_dock_widget(labels, name="Labels", area="right")
        review_dock = win.add_dock_widget(review, name="Review queue", area="right", tabify=False)
        win.add_dock_widget(retrain, name="Retrain", area="right", tabify=True)
        win.add_dock_widget(export, name="Export", area="right", tabify=True)
        win.add_dock_widget(download, name="Download NAIP", area="right", tabify=True)
        # tabify leaves the last panel in front; reviewing comes first (once the docks are laid out)
        QTimer.singleShot(0, review_dock.raise_)
        viewer.title = f"{TITLE}: {Path(project.root).name}"
    opened = OpenedProject(session, labels, review, retrain, export, download)
    if win is not None:
        try:
            win._qt_window.destroyed.connect(opened.close)
        except (AttributeError, RuntimeError):
            pass
    from loop.ranking_queue import queue_is_stale, unqueued_scenes

    if not review.items or queue_is_stale(project) or unqueued_scenes(project, review.items):
        review.rank()
    return opened


def _warm_up() -> None:
    """Import what the background jobs need now, on the main thread, before the window is used.

    A first import inside a worker thread holds the GIL for a few hundred milliseconds (measured:
    a 340 ms freeze on the first uncertainty map), which would stall the GUI mid-review. Also starts
    the niced fork server of retraining and export processes, which imports torch and Lightning in
    the background so that those jobs start without 3-5 s of imports competing with the window.
    """
    from loop import background

    background.warm_up()
    import loop.proposals  # noqa: F401
    import loop.ranking  # noqa: F401
    import loop.ranking_predict  # noqa: F401
    import loop.retrain  # noqa: F401
    import model.detect  # noqa: F401


def launch(root: str | os.PathLike | None, show: bool = True):
    """Create a viewer and open a project in it; errors are shown in the window.

    Args:
        root: Project folder, or None for the demo project.
        show: Show the window (False for tests and screenshots).

    Returns:
        ``(viewer, OpenedProject or None)``.
    """
    from loop import background

    background.warm_up()  # the fork server imports torch while napari builds the window
    import napari

    viewer = napari.Viewer(title=TITLE, show=show)
    # napari shows every warning as a toast; library deprecation notices (e.g. rasterio's own use of
    # the `*` Affine operator) are for developers, and a user can do nothing about them
    for category in (DeprecationWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    try:
        if root is None:
            from loop.demo import ensure_demo_project

            root = ensure_demo_project()
        return viewer, open_project(viewer, root)
    except (DclabelError, OSError, ImportError) as exc:
        message = f"Cannot open project {root or '(demo)'}: {exc}"
        show_error(message)
        note = QLabel(message)
        note.setWordWrap(True)
        viewer.window.add_dock_widget(note, name="dclabel: error", area="right")
        return viewer, None


def session_widget(widget_cls):
    """npe2 widget factory for a panel: the panel of the project open in the viewer."""

    def factory(napari_viewer):
        session = find_session(napari_viewer)
        if session is None:
            return QLabel("Open a dclabel project first (File ▸ Open… its project.json, "
                          "or `dclabel app PROJECT`).")
        return widget_cls(session)

    return factory


review_widget = session_widget(ReviewWidget)
retrain_widget = session_widget(RetrainWidget)
export_widget = session_widget(ExportWidget)
labels_widget = session_widget(LabelsWidget)
download_widget = session_widget(DownloadWidget)


#: The file that makes a folder a dclabel project (``loop.project.PROJECT_FILE``; not imported
#: here, so napari asking the reader about a file costs no geospatial imports).
PROJECT_FILE = "project.json"


def get_reader(path):
    """npe2 reader of a dclabel project: its ``project.json`` (the manifest's one pattern), or the folder.

    The manifest claims no other file and no folder, so napari opens GeoTIFFs and plain folders with
    its own readers and never asks which plugin to use; a ``project.json`` of another program is
    refused (None).
    """
    if isinstance(path, list):
        return None
    root = Path(path)
    if root.name == PROJECT_FILE and root.is_file():
        root = root.parent
    if not _is_project_folder(root):
        return None

    def read_project(p):
        import napari

        viewer = napari.current_viewer()
        if viewer is None:
            return [(None,)]
        try:
            open_project(viewer, root)
        except (DclabelError, OSError) as exc:
            show_error(f"Cannot open project {root}: {exc}")
        return [(None,)]

    return read_project


def _is_project_folder(root: Path) -> bool:
    """A folder whose ``project.json`` is a dclabel project file (read, not trusted by its name)."""
    import json

    try:
        payload = json.loads((root / PROJECT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(payload, dict) and (
        str(payload.get("format", "")).startswith("dclabel-project") or {"chip_size", "scenes"} <= payload.keys()
    )
