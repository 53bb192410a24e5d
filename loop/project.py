"""The project folder: scenes, settings, label store and checkpoint registry in one place.

Layout::

    PROJECT/
        project.json      settings and scenes (atomic writes)
        labels.gpkg       the label store (footprints, reviewed chips)
        checkpoints/      model versions (registry.json + vN.pt)
        logs/             training logs
        scenes/           imagery copied or downloaded into the project

Scenes inside the project folder are stored by relative path (the folder can move), others by
absolute path. Each scene keeps the id it was given when added, so labels stay attached to it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loop.errors import ProjectError
from loop.project_adding import SceneAdding
from loop.scene_grid import SceneGrid
from model.atomic import write_json_atomic
from model.errors import ConfigError
from model.scene import SceneInfo

if TYPE_CHECKING:  # imported lazily at run time: the store and registry land in their own modules
    from loop.labelstore import LabelStore
    from loop.registry import CheckpointRegistry

CLASSES: tuple[str, ...] = ("datacenter", "warehouse", "retail", "other")
POSITIVE_CLASS = "datacenter"
PROJECT_FILE = "project.json"
FORMAT = "dclabel-project/1"


@dataclass(frozen=True)
class ProjectSettings:
    """Settings shared by every scene of a project.

    Attributes:
        chip_size: Side of a review/training chip in pixels.
        classes: Footprint classes; ``classes[0]`` (``datacenter``) is the positive one.
        bands: Default 1-based source bands read as (red, green, blue, nir).
        resolution_m: Pixel size every scene is read at, in metres: a scene whose own differs by
            more than 20 % is added as a VRT resampled to it (in ``scenes/``), so labels, chips and
            models share one scale. None: each scene at its own pixel size.
        version: Settings format version.
    """

    chip_size: int = 256
    classes: tuple[str, ...] = CLASSES
    bands: tuple[int, ...] = (1, 2, 3, 4)
    resolution_m: float | None = None
    version: int = 1

    def __post_init__(self) -> None:
        if self.chip_size < 16:
            raise ConfigError(f"the chip size (--chip-size) must be at least 16 px, got {self.chip_size}")
        if len(self.bands) != 4:
            raise ConfigError(f"--bands needs 4 band indexes (R,G,B,NIR), got {list(self.bands)}")
        if self.resolution_m is not None and not 0.01 <= self.resolution_m <= 100:
            raise ConfigError(f"the project pixel size (--res) must be in metres, 0.01-100, got {self.resolution_m}")


def _atomic_write_json(path: Path, payload: Any) -> None:
    write_json_atomic(path, payload)


def _remove_new(root: Path, existed: set[str] | None) -> None:
    """Remove what creating a project in ``root`` added (all of ``root`` if it did not exist)."""
    if existed is None:
        shutil.rmtree(root, ignore_errors=True)
        return
    for p in root.iterdir() if root.is_dir() else ():
        if p.name in existed:
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def _check_writable(root: Path) -> None:
    """Refuse, before any work, a project folder (or the folder it would be made in) that cannot be
    written: a read-only folder or disk."""
    folder = root
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
        raise ProjectError(
            f"{folder}: cannot be written (a read-only folder or disk); dclabel keeps project.json, labels.gpkg, "
            f"checkpoints and logs in {root}. Make it writable (e.g. `chmod -R u+w {folder}`), or copy the project "
            "to a folder you can write to."
        )


class Project(SceneAdding):
    """A project folder holding scenes, labels and model versions.

    Use :meth:`create` or :meth:`open`; the constructor does not touch the disk. Its scenes are
    looked up, opened and checked by :class:`~loop.project_scenes.ProjectScenes` and added by
    :class:`~loop.project_adding.SceneAdding`.

    Attributes:
        root: Project folder.
        settings: Project-wide settings.
    """

    def __init__(
        self, root: Path, settings: ProjectSettings, scene_entries: list[dict], read_only: bool = False
    ) -> None:
        self.root = Path(root)
        self.read_only = read_only
        self.settings = settings
        self._entries = scene_entries
        self._scenes: dict[str, SceneInfo] = {}
        self._unreadable: set[str] = set()  # scenes already warned about as unreadable
        self._warned_small = False  # a folder of small chips warns once, not per chip
        self._labels: LabelStore | None = None
        self._registry: CheckpointRegistry | None = None

    # ----- creation and persistence -------------------------------------------------------------
    @classmethod
    def create(
        cls,
        root: str | os.PathLike,
        images: Iterable[str | os.PathLike] = (),
        bands: Sequence[int] | None = None,
        chip_size: int = 256,
        resolution_m: float | None = None,
    ) -> Project:
        """Create a project folder (or re-open an existing one) and add scenes to it.

        Args:
            root: Project folder; created if missing.
            images: Scene GeoTIFFs and/or folders of chip GeoTIFFs (each chip becomes a scene).
            bands: Default 1-based bands read as (R, G, B, NIR); default ``(1, 2, 3, 4)``.
            chip_size: Review and training chip side in pixels.
            resolution_m: Read every scene at this pixel size (:attr:`ProjectSettings.resolution_m`);
                only for a new project.

        Returns:
            The project.

        Raises:
            ProjectError: A path does not exist, or a folder holds no GeoTIFFs.
            SceneError: A scene cannot be used (no CRS, too few bands, ...).
        """
        root = Path(root)
        _check_writable(root)
        if (root / PROJECT_FILE).exists():
            project = cls.open(root)
            project._record_missing_grids()
            project._add_images(images, bands)
            return project
        settings = ProjectSettings(
            chip_size=chip_size, bands=tuple(bands) if bands is not None else (1, 2, 3, 4),
            resolution_m=resolution_m,
        )
        existed = {p.name for p in root.iterdir()} if root.is_dir() else None
        project = cls(root, settings, [])
        try:
            for sub in ("checkpoints", "logs", "scenes"):
                (root / sub).mkdir(parents=True, exist_ok=True)
            project._save()
            project._add_images(images, bands)
        except BaseException:  # a scene that cannot be used: leave no half-made project behind
            _remove_new(root, existed)
            raise
        return project

    @classmethod
    def open(cls, root: str | os.PathLike, read_only: bool = False) -> Project:
        """Open an existing project folder.

        Args:
            root: Project folder.
            read_only: Open the label store read-only (for readers such as the retraining process).

        Raises:
            ProjectError: The folder or its ``project.json`` is missing or unreadable.
        """
        root = Path(root)
        if not root.is_dir():
            raise ProjectError(
                f"{root}: no such project folder. Create one with `dclabel init {root} --image SCENE.tif`."
            )
        path = root / PROJECT_FILE
        if not path.exists():
            raise ProjectError(
                f"{path}: missing. {root} is not a dclabel project; create one with "
                f"`dclabel init {root} --image SCENE.tif`."
            )
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            settings = ProjectSettings(
                chip_size=int(payload["chip_size"]),
                classes=tuple(payload["classes"]),
                bands=tuple(int(b) for b in payload["bands"]),
                resolution_m=float(payload["resolution_m"]) if payload.get("resolution_m") else None,
                version=int(payload.get("version", 1)),
            )
            entries = [
                {"id": str(s["id"]), "path": str(s["path"]), "bands": [int(b) for b in s["bands"]],
                 **({"source": str(s["source"])} if s.get("source") else {}),
                 **{key: SceneGrid.from_json(s[key]).to_json() for key in ("grid", "source_grid") if s.get(key)}}
                for s in payload["scenes"]
            ]  # projects made before grids were recorded have none: their scenes open unchecked
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ProjectError(
                f"{path}: expected a dclabel project file (JSON with chip_size, classes, bands, scenes), "
                f"found something unreadable ({type(exc).__name__}: {exc}). Restore it from a backup "
                "or re-create the project with `dclabel init`."
            ) from exc
        return cls(root, settings, entries, read_only=read_only)

    def _save(self) -> None:
        payload = {"format": FORMAT, **asdict(self.settings), "scenes": self._entries}
        payload["classes"] = list(self.settings.classes)
        payload["bands"] = list(self.settings.bands)
        _atomic_write_json(self.file, payload)

    @property
    def file(self) -> Path:
        """The project file (``project.json``): settings and scenes."""
        return self.root / PROJECT_FILE

    # ----- label store, registry, logs ------------------------------------------------------------
    @property
    def labels(self) -> LabelStore:
        """The label store ``labels.gpkg``, opened on first use with every scene registered."""
        if self._labels is None:
            from loop.labelstore import LabelStore

            if self.read_only:
                self._labels = LabelStore(self.root / "labels.gpkg", read_only=True)
            else:
                self._labels = store = LabelStore(self.root / "labels.gpkg")  # set first: scene() checks labels
                for info in self.readable_scenes():  # labels need no pixels: a moved scene's still export
                    store.register_scene(info.scene_id, info.crs)
        return self._labels

    @property
    def registry(self) -> CheckpointRegistry:
        """The checkpoint registry in ``checkpoints/``."""
        if self._registry is None:
            from loop.registry import CheckpointRegistry

            self._registry = CheckpointRegistry(self.root / "checkpoints")
        return self._registry

    @property
    def logs_dir(self) -> Path:
        """Folder for training logs (created on access)."""
        path = self.root / "logs"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def __repr__(self) -> str:
        return f"Project({str(self.root)!r}, scenes={len(self._entries)})"
