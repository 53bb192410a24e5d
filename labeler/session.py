"""What the panels of one open project share: the project, the scene on screen and its layers.

A :class:`ProjectSession` is created per opened project and handed to each widget explicitly (no
global state). Widgets talk to each other only through its psygnal signals.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from psygnal import Signal
from qtpy.QtCore import QTimer
from rasterio.windows import Window

from labeler.footprint_editor import FootprintEditor
from labeler.scene_layers import add_chip_grid, add_scene_layer, set_composite, update_chip_grid
from model.scene import SceneInfo

SESSION_KEY = "dclabel_session"


class ProjectSession:
    """One open project in one viewer.

    Args:
        viewer: The napari viewer.
        project: The opened :class:`loop.project.Project`.
        scene_id: Scene to show first (default: the project's first scene).

    Raises:
        ProjectError: The project has no scenes, or ``scene_id`` is unknown.
        SceneError: The scene file cannot be read.
    """

    #: Footprints were added, edited, deleted or re-classified (or undone).
    labels_changed = Signal()
    #: Chips were marked reviewed.
    reviewed_changed = Signal()
    #: A new model version became current (its version string).
    model_changed = Signal(str)
    #: Another scene is on screen.
    scene_changed = Signal(str)

    def __init__(self, viewer, project, scene_id: str | None = None) -> None:
        from loop.errors import ProjectError

        self.viewer = viewer
        self.project = project
        if not project.scene_ids:
            raise ProjectError(f"{project.root}: the project holds no scenes; add one with "
                               f"`dclabel init {project.root} --image SCENE.tif`.")
        self.queued: set[tuple[int, int]] = set()
        self.current_chip: tuple[int, int] | None = None
        if scene_id:
            self.scene: SceneInfo = project.scene(scene_id)
        else:  # the first scene that opens; a moved one is reported and the others still work
            readable = _readable_scenes(project)
            self.scene = readable[0] if readable else project.scene(project.scene_ids[0])  # raises why
        self.editor: FootprintEditor | None = None
        self.overview_job = None
        self._grid_pending = False
        self.show_scene(self.scene.scene_id)

    # ----- scene -------------------------------------------------------------------------------
    def show_scene(self, scene_id: str) -> None:
        """Show a scene: image pyramid, chip grid and footprints layer.

        The layers are made once and refilled on every switch, so they keep their order (under the
        review's proposals) and a switch removes none (napari runs ``gc.collect()``, about 0.25 s,
        for each layer removed).
        """
        scene = self.project.scene(scene_id)
        composite = "true"
        if "scene" in self.viewer.layers:
            composite = self.viewer.layers["scene"].metadata["display"].composite
        # the image is read first: a scene that cannot be shown (file gone, damaged) raises here
        # and leaves the session, the layers and every panel on the scene shown before
        self.image_layer = add_scene_layer(self.viewer, scene, composite, cache_dir=self.cache_dir)
        self.scene = scene
        self._build_overviews()
        self.grid_layer = add_chip_grid(
            self.viewer, self.project.chip_windows(scene_id), self.reviewed_keys(), self.queued
        )
        if self.editor is None:
            self.editor = FootprintEditor(
                self.viewer, self.project.labels, scene, on_change=self.labels_changed.emit,
                show_scene=self.show_scene,
            )
        else:
            self.editor.set_scene(scene)
        self.viewer.layers.selection.active = self.editor.layer
        self.viewer.reset_view()
        self.scene_changed.emit(scene_id)

    @property
    def cache_dir(self) -> Path:
        """The project's cache folder (overview levels of scenes without overviews)."""
        return Path(self.project.root) / "cache"

    def _build_overviews(self) -> None:
        """Build the overview cache in the background when the scene has no overviews."""
        from napari.utils.notifications import show_info, show_warning

        from labeler.overviews import build_overview_cache
        from labeler.scene_layers import pyramid_factors, refresh_pyramid
        from labeler.workers import ProgressJob

        display = self.image_layer.metadata["display"]
        if not display.needs_cache:
            return
        layer, scene = self.image_layer, self.scene
        job = ProgressJob(build_overview_cache, scene, self.cache_dir,
                          pyramid_factors(scene.width, scene.height))

        def done(paths) -> None:  # the layer may show another scene by now
            if paths and layer in self.viewer.layers and layer.metadata.get("display") is display:
                display.use_cache(paths)
                refresh_pyramid(layer)

        job.worker.returned.connect(done)
        job.worker.errored.connect(lambda exc: show_warning(f"Overviews not built ({exc}); zooming out stays slow."))
        self.overview_job = job
        show_info(f"{scene.path.name} has no overviews: building them once in the background for fast zoom.")
        job.start()

    def set_composite(self, composite: str) -> None:
        """Switch true colour / NIR false colour."""
        set_composite(self.image_layer, composite)

    # ----- chips -------------------------------------------------------------------------------
    def reviewed_keys(self) -> set[tuple[int, int]]:
        """``(row_off, col_off)`` of the reviewed chips of the scene on screen."""
        return {
            (int(r.window.row_off), int(r.window.col_off))
            for r in self.project.labels.reviewed_chips(self.scene.scene_id)
        }

    def set_queued(self, windows: list[Window]) -> None:
        """Chips waiting in the review queue (coloured in the grid)."""
        self.queued = {(int(w.row_off), int(w.col_off)) for w in windows}
        self.refresh_grid()

    def set_current_chip(self, window: Window | None) -> None:
        """Highlight the chip under review in the grid."""
        self.current_chip = None if window is None else (int(window.row_off), int(window.col_off))
        self.refresh_grid()

    def refresh_grid(self) -> None:
        """Recolour the chip grid soon (coalesced: one recolour per turn of the event loop).

        Recolouring a 12,000 px scene's 2,209 chips costs about 35 ms, and accepting a chip
        changes the grid twice (reviewed, then the next chip becomes current).
        """
        if not self._grid_pending:
            self._grid_pending = True
            QTimer.singleShot(0, self.refresh_grid_now)

    def refresh_grid_now(self) -> None:
        """Recolour the chip grid from the store's reviewed chips, the queue and the current chip."""
        self._grid_pending = False
        if self.grid_layer in self.viewer.layers:
            update_chip_grid(self.grid_layer, self.reviewed_keys(), self.queued, self.current_chip)

    def current_model(self):
        """The registry's current :class:`~loop.registry.ModelVersion`, or None."""
        return self.project.registry.current()


def find_session(viewer) -> ProjectSession | None:
    """The session opened in a viewer, if any (kept on the viewer's scene layer metadata)."""
    for layer in viewer.layers:
        session = layer.metadata.get(SESSION_KEY)
        if session is not None:
            return session
    return None


def _readable_scenes(project) -> list[SceneInfo]:
    """The project's scenes that open; each one that does not is shown as a napari warning."""
    from napari.utils.notifications import show_warning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        readable = project.readable_scenes()
    for w in caught:
        show_warning(str(w.message))
    return readable
