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

import filecmp
import json
import os
import shutil
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import rasterio
import rasterio.errors
from filelock import FileLock
from rasterio.windows import Window

from loop.errors import ProjectError
from loop.scene_grid import SceneGrid
from model.atomic import write_json_atomic
from model.errors import ConfigError, SceneError, SceneNotFoundError
from model.ground import pixel_size_m, same_resolution
from model.scene import SceneInfo, chip_windows, open_scene, scene_id_for
from model.scene_vrt import is_north_up, north_up_scene, resampled_scene

if TYPE_CHECKING:  # imported lazily at run time: the store and registry land in their own modules
    from loop.labelstore import LabelStore
    from loop.registry import CheckpointRegistry

CLASSES: tuple[str, ...] = ("datacenter", "warehouse", "retail", "other")
POSITIVE_CLASS = "datacenter"
PROJECT_FILE = "project.json"
LOCK_FILE = ".project.lock"  # held while a scene is added: project.json is read, changed and written
FORMAT = "dclabel-project/1"
TIF_SUFFIXES = (".tif", ".tiff")
MASK_FOLDERS = ("mask", "masks", "label", "labels")


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


def _expand_images(images: Iterable[str | os.PathLike]) -> list[Path]:
    """Files stay as they are; a folder becomes its GeoTIFFs (mask/label sub-folders skipped)."""
    out: list[Path] = []
    for item in images:
        p = Path(item)
        if not p.exists():
            raise ProjectError(
                f"{p}: no such file or folder. Expected a 4-band GeoTIFF or a folder of chip GeoTIFFs."
            )
        if p.is_dir():
            tifs = sorted(
                f
                for f in p.rglob("*")
                if f.suffix.lower() in TIF_SUFFIXES
                and not any(part.lower() in MASK_FOLDERS for part in f.relative_to(p).parts[:-1])
            )
            if not tifs:
                raise ProjectError(
                    f"{p}: folder holds no GeoTIFFs (*.tif). Expected chip images such as "
                    "data/chips/*.tif; point --image at a scene file or a folder of chips."
                )
            _refuse_mixed_scales(p, tifs)
            out.extend(tifs)
        else:
            out.append(p)
    return out


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


def _reads(vrt: Path, source: Path) -> bool:
    """Whether a VRT the project made reads ``source``, directly or through another VRT of it (GDAL
    lists only the source files that exist)."""
    try:
        with rasterio.open(vrt) as src:
            files = [Path(f).resolve() for f in src.files[1:]]
    except rasterio.errors.RasterioIOError:
        return True  # not ours to remake: opening the scene reports it
    return any(f == source or (f.suffix.lower() == ".vrt" and f != vrt.resolve() and _reads(f, source))
               for f in files)


def _chip_side(info: SceneInfo) -> int:
    """The largest multiple of 32 that fits the scene (a chip side the U-Net takes)."""
    return max(32, min(info.width, info.height) // 32 * 32)


def _refuse_mixed_scales(folder: Path, tifs: list[Path]) -> None:
    """A folder of chips that are not 8-bit is refused: each would be scaled to 0-255 from its own
    values (the bit depth its brightest pixel needs), so one roof would look 4x brighter in one chip
    than in the next. ``train`` refuses such chips too."""
    if len(tifs) < 2:
        return
    for tif in tifs:
        try:
            with rasterio.open(tif) as src:
                dtype = src.dtypes[0]
        except rasterio.errors.RasterioIOError:
            continue  # reported when the scene is added
        if dtype != "uint8":
            raise ProjectError(
                f"{tif}: a chip of {folder} is {dtype}, not 8-bit; chips would each be scaled from their own "
                "values, so their brightness would differ chip to chip. Convert the folder with one scale "
                "first, e.g. `gdal_translate -ot Byte -scale 0 4095 0 255 IN OUT` per chip (12-bit data)."
            )


class Project:
    """A project folder holding scenes, labels and model versions.

    Use :meth:`create` or :meth:`open`; the constructor does not touch the disk.

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
        _atomic_write_json(self.root / PROJECT_FILE, payload)

    # ----- scenes -------------------------------------------------------------------------------
    def add_scene(self, path: str | os.PathLike, bands: Sequence[int] | None = None) -> SceneInfo:
        """Add a scene GeoTIFF (validated) to the project, recording its grid; adding it again is a no-op.

        The same file under another spelling (relative, absolute, through a symlink or hard link)
        is the same scene; so is a byte-identical copy of a scene's file (with a warning), since its
        chips would otherwise be queued twice.

        Args:
            path: The GeoTIFF.
            bands: 1-based bands read as (R, G, B, NIR); default the project's bands.

        Returns:
            The scene's :class:`SceneInfo` (the existing scene's when the file is already one).

        Raises:
            SceneNotFoundError, SceneError: The file is missing or cannot be used.
        """
        with FileLock(str(self.root / LOCK_FILE)):  # one process adds scenes at a time
            if (self.root / PROJECT_FILE).exists():  # keep (and know) the scenes others added meanwhile
                self._entries = type(self).open(self.root)._entries
            return self._add_scene(Path(path), bands)

    def _add_scene(self, path: Path, bands: Sequence[int] | None) -> SceneInfo:
        if bands is None and tuple(self.settings.bands) != (1, 2, 3, 4):
            bands = self.settings.bands
        info = open_scene(path, bands)  # no bands: 1-4, with open_scene's warning for a file with more
        known = self._scene_holding(path)
        if known is not None:
            scene_id, same_file = known
            if not same_file:
                warnings.warn(self._already_added(path, scene_id, same_file), UserWarning, stacklevel=2)
            return self.scene(scene_id)
        here, want = pixel_size_m(info), self.settings.resolution_m
        source = None
        if want is not None and (here is None or not same_resolution(here, want)):  # degrees: warped to UTM
            source, info = path, resampled_scene(info, want, self.root / "scenes")
        elif want is None and here is None:
            warnings.warn(f"{path}: the scene is in degrees ({info.crs.to_string()}), so its pixels are not square "
                          "metres and models see buildings distorted; re-create the project with "
                          "`dclabel init --res 0.6` to read it warped to its UTM zone.", UserWarning, stacklevel=2)
        elif want is None and here is not None:
            others = [m for m in (pixel_size_m(s) for s in self.scenes) if m is not None]
            if others and not same_resolution(here, others[0]):
                warnings.warn(f"{path}: pixels are {here:.2f} m, the project's first scene has {others[0]:.2f} m; "
                              "models trained on one scale miss buildings at the other. Create a new project "
                              f"with `dclabel init NEW_PROJECT --res {others[0]:.2g} --image ...` to read every "
                              "scene at one pixel size.",
                              UserWarning, stacklevel=2)
        size = self.settings.chip_size
        if (info.width < size or info.height < size) and not self._warned_small:
            self._warned_small = True
            warnings.warn(f"{path}: {info.width} x {info.height} px, smaller than the project's {size} px chips, so "
                          f"each chip is mostly zero fill (trained as background); for a folder of small chips like it "
                          f"create the project with `dclabel init --chip-size {_chip_side(info)}`.",
                          UserWarning, stacklevel=2)
        if not is_north_up(info.transform):  # shown, labelled and chipped north-up like every scene
            source, info = source or path, north_up_scene(info, self.root / "scenes")
        entry = {"id": self._new_scene_id(path), "path": self._stored(info.path), "bands": list(info.bands),
                 "grid": SceneGrid.of_file(info.path).to_json()}
        if source is not None:
            entry["source"] = self._stored(source)
            entry["source_grid"] = SceneGrid.of_file(source).to_json()
        self._entries.append(entry)
        self._save()
        info = replace(info, scene_id=entry["id"])
        self._scenes[entry["id"]] = info
        if self._labels is not None:
            self._labels.register_scene(info.scene_id, info.crs)
        return info

    def _add_images(self, images: Iterable[str | os.PathLike], bands: Sequence[int] | None) -> None:
        """Add scene files and chip folders; one that is already a scene is named and left out."""
        for path in _expand_images(images):
            known = self._scene_holding(path)
            if known is not None:
                warnings.warn(self._already_added(path, *known), UserWarning, stacklevel=3)
                continue
            self.add_scene(path, bands=bands)

    def _already_added(self, path: Path, scene_id: str, same_file: bool) -> str:
        entry = self._entry(scene_id)
        stored = self._resolve(entry.get("source", entry["path"]))
        if same_file:
            return f"{path}: already scene {scene_id} of {self.root} ({stored}); nothing added."
        return (f"{path}: holds the same pixels as scene {scene_id} of {self.root} ({stored}); not added again "
                "(its chips would be queued twice). If the scene's file moved here, point the project at it: "
                f"`dclabel init {self.root} --relink {scene_id} {path}`.")

    def _scene_holding(self, path: Path) -> tuple[str, bool] | None:
        """(scene id, same file) of the scene whose file ``path`` is, or is a byte-identical copy of.

        The same file: equal resolved paths (any spelling, symlinks) or one inode (hard links). A copy:
        same grid, same size and same bytes (compared only when grid and size agree).
        """
        resolved = Path(path).resolve()
        files = [(e["id"], self._resolve(e.get("source", e["path"])), e.get("source_grid" if "source" in e else "grid"))
                 for e in self._entries]
        files += [(e["id"], self._resolve(e["path"]), e.get("grid")) for e in self._entries if "source" in e]
        for scene_id, stored, _ in files:
            if stored == resolved or (stored.exists() and resolved.exists() and os.path.samefile(stored, resolved)):
                return scene_id, True
        try:
            grid, size = SceneGrid.of_file(resolved), resolved.stat().st_size
        except (OSError, rasterio.errors.RasterioIOError):
            return None  # not a readable raster: add_scene says why
        for scene_id, stored, recorded in files:
            try:
                if stored.stat().st_size != size:
                    continue
                stored_grid = SceneGrid.from_json(recorded) if recorded else SceneGrid.of_file(stored)
            except (OSError, rasterio.errors.RasterioIOError):
                continue
            if stored_grid.same_as(grid) and filecmp.cmp(stored, resolved, shallow=False):
                return scene_id, False
        return None

    def _new_scene_id(self, path: Path) -> str:
        """:func:`scene_id_for` the file, with a suffix when a scene already has that id (a copied project
        keeps the ids of the files it was made from)."""
        base = scene_id_for(path)
        taken = set(self.scene_ids)
        scene_id, n = base, 1
        while scene_id in taken:
            n += 1
            scene_id = f"{base}-{n}"
        return scene_id

    def _entry(self, scene_id: str) -> dict:
        entry = next((e for e in self._entries if e["id"] == scene_id), None)
        if entry is None:
            raise ProjectError(f"{self.root / PROJECT_FILE}: no scene with id {scene_id!r}; the project has "
                               f"{', '.join(self.scene_ids) or 'none'}.")
        return entry

    def _check_grid(self, scene_id: str, key: str, path: Path) -> None:
        """Refuse a scene file whose grid is not the one recorded when the scene was added."""
        entry = self._entry(scene_id)
        if not entry.get(key):
            return  # added before grids were recorded
        recorded = SceneGrid.from_json(entry[key])
        try:
            found = SceneGrid.of_file(path)
        except rasterio.errors.RasterioIOError as exc:
            raise SceneError(f"{path}: not a raster GDAL can read ({exc}); it is scene {scene_id} of {self.root}. "
                             "Put the original file back.") from exc
        if found.same_as(recorded):
            return
        via = "" if key == "grid" else f" (read through {self._resolve(entry['path'])})"
        raise SceneError(
            f"{path}: not the raster scene {scene_id} of {self.root} was added with{via}: recorded "
            f"{recorded.describe()}; found {found.describe()}. Its reviewed chips are pixel windows of the "
            f"recorded grid, so the scene is not used. Put the original file back at {path}; if it moved, "
            f"point the project at it: `dclabel init {self.root} --relink {scene_id} ORIGINAL.tif` (checked against "
            f"the recorded grid); to label this raster, add it under another file name: "
            f"`dclabel init {self.root} --image NEW.tif`.")

    def _check_labels_fit(self, scene_id: str, info: SceneInfo, path: Path) -> None:
        """Refuse a file for a scene whose labels it does not hold: another CRS, footprints or reviewed
        chips outside it."""
        from pyproj import CRS as ProjCRS
        from shapely.geometry import box

        store = self.labels
        if scene_id not in store.scene_ids():
            return
        if ProjCRS.from_user_input(store.scene_crs(scene_id)) != ProjCRS.from_user_input(info.crs):
            raise SceneError(f"{path}: its CRS ({info.crs.to_string()}) is not the one scene {scene_id}'s labels "
                             "are stored in; it is not the same scene.")
        footprints = store.footprints(scene_id)
        scene_box = box(*info.bounds)
        outside = int((~footprints.geometry.intersects(scene_box)).sum()) if len(footprints) else 0
        if outside:
            raise SceneError(f"{path}: {outside} of scene {scene_id}'s {len(footprints)} footprint(s) lie "
                             "outside it; it is not the same scene.")
        chips = store.reviewed_chips(scene_id)
        off = sum(1 for rc in chips  # a scene smaller than a chip has one chip at (0, 0) reaching past it
                  if rc.window.col_off + rc.window.width > max(info.width, rc.window.width)
                  or rc.window.row_off + rc.window.height > max(info.height, rc.window.height))
        if off:
            raise SceneError(f"{path}: {off} of scene {scene_id}'s {len(chips)} reviewed chip(s) reach past its "
                             f"{info.width} x {info.height} px; it is not the same scene.")

    def _record_missing_grids(self) -> None:
        """Record the grid of scenes added before grids were recorded, when their labels fit the file
        (:meth:`scene` checks that); one that fails is left unrecorded (the caller reports it)."""
        changed = False
        for entry in self._entries:
            if entry.get("grid") or self.read_only:
                continue
            try:
                info = self.scene(entry["id"])
            except SceneError:
                continue
            entry["grid"] = SceneGrid.of_file(info.path).to_json()
            if "source" in entry:
                entry["source_grid"] = SceneGrid.of_file(self._resolve(entry["source"])).to_json()
            changed = True
        if changed:
            self._save()

    def relink_scene(self, scene_id: str, path: str | os.PathLike) -> SceneInfo:
        """Point a scene whose file moved at its new location (labels stay attached to the id).

        Raises:
            ProjectError: No such scene id, or the scene is a resampled view (re-create it instead).
            SceneError: The new file cannot be used, its grid is not the one recorded for the scene, it
                is in another CRS than the scene's labels, or the scene's footprints or reviewed chips
                fall outside it (then it is not the same scene).
        """
        entry = self._entry(scene_id)
        if "source" in entry:
            raise ProjectError(f"scene {scene_id} is read through a resampled VRT; add the moved file again with "
                               f"`dclabel init {self.root} --image FILE` instead.")
        info = replace(open_scene(path, entry["bands"]), scene_id=scene_id)
        found = SceneGrid.of_file(info.path)
        if entry.get("grid") and not found.same_as(recorded := SceneGrid.from_json(entry["grid"])):
            raise SceneError(f"{path}: its grid ({found.describe()}) is not the one recorded for scene {scene_id} "
                             f"({recorded.describe()}); it is not the same scene.")
        self._check_labels_fit(scene_id, info, Path(path))
        entry["path"] = self._stored(info.path)
        entry["grid"] = found.to_json()
        self._save()
        self._scenes[scene_id] = info
        self._unreadable.discard(scene_id)
        return info

    def _stored(self, path: Path) -> str:
        """How a file path is kept in project.json: relative inside the project, else absolute."""
        resolved = Path(path).resolve()
        try:
            return resolved.relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return str(resolved)

    def _resolve(self, stored: str) -> Path:
        p = Path(stored)
        return (p if p.is_absolute() else self.root / p).resolve()

    @property
    def scene_ids(self) -> list[str]:
        """Ids of the project's scenes, in the order they were added."""
        return [e["id"] for e in self._entries]

    @property
    def scenes(self) -> list[SceneInfo]:
        """Every scene of the project, opened and validated (cached)."""
        return [self.scene(sid) for sid in self.scene_ids]

    def readable_scenes(self, scene_ids: Iterable[str] | None = None) -> list[SceneInfo]:
        """The scenes (default: all) whose files open; one that does not (moved, deleted) is skipped
        with a warning.

        For what can go on without it: ranking, retraining, the app. :attr:`scenes` is strict.
        """
        found = []
        for sid in self.scene_ids if scene_ids is None else scene_ids:
            try:
                found.append(self.scene(sid))
            except SceneError as exc:
                if sid not in self._unreadable:
                    self._unreadable.add(sid)
                    warnings.warn(f"{exc} Going on without scene {sid}; its labels stay in the store.",
                                  UserWarning, stacklevel=2)
        return found

    def scene(self, scene_id: str) -> SceneInfo:
        """One scene by id.

        Raises:
            ProjectError: No scene has this id.
            SceneError: The scene file is gone or unusable, or its grid (size, transform, CRS, band
                count) is not the one recorded when the scene was added (the file was replaced).
        """
        if scene_id in self._scenes:
            return self._scenes[scene_id]
        for entry in self._entries:
            if entry["id"] == scene_id:
                source = self._resolve(entry["source"]) if "source" in entry else None
                if source is not None and not source.exists():  # a resampled view whose imagery moved
                    raise SceneNotFoundError(
                        f"{source}: no such file. Scene {scene_id} of {self.root} reads it through "
                        f"{self._resolve(entry['path'])} (resampled to {self.settings.resolution_m} m); "
                        "put the file back, or re-create the project with `dclabel init --res`.")
                path = self._resolve(entry["path"])
                if not path.exists():
                    raise SceneNotFoundError(
                        f"{path}: no such file. It is scene {scene_id} of {self.root}; put the file back, or "
                        f"point the project at it: `dclabel init {self.root} --relink {scene_id} NEW_PATH` (its "
                        "labels stay attached to the scene id).")
                if source is not None and not _reads(path, source):  # the project moved: a view of its own
                    self._remake_view(entry, source)  # imagery still named the old place
                info = replace(open_scene(path, entry["bands"]), scene_id=scene_id)
                self._check_grid(scene_id, "grid", path)
                if source is not None:
                    self._check_grid(scene_id, "source_grid", source)
                if not entry.get("grid") and (self.root / "labels.gpkg").exists():
                    try:  # no grid recorded (an older project): its labels must at least fit the file
                        self._check_labels_fit(scene_id, info, path)
                    except SceneError as exc:
                        raise SceneError(
                            f"{exc} Scene {scene_id} of {self.root} was added before projects recorded scene grids, "
                            f"so its file was replaced or is another one: put the original file back at {path}, "
                            f"or point the project at it: `dclabel init {self.root} --relink {scene_id} "
                            "ORIGINAL.tif`.") from exc
                self._scenes[scene_id] = info
                return info
        known = ", ".join(self.scene_ids[:5]) + (" ..." if len(self._entries) > 5 else "")
        raise ProjectError(
            f"{self.root / PROJECT_FILE}: no scene with id {scene_id!r}; the project has "
            f"{len(self._entries)} scene(s) ({known or 'none'}). Add it with `dclabel init {self.root} --image FILE`."
        )

    def _remake_view(self, entry: dict, source: Path) -> None:
        """Write the VRT of a resampled or north-up scene again from its source file, as
        :meth:`add_scene` wrote it. GDAL names a source outside the VRT's folder by its absolute
        path, so imagery kept inside the project (``PROJECT/imagery/``) was read from where the
        project used to be once the folder moved; :meth:`scene` checks the result's grid."""
        with warnings.catch_warnings():  # what opening the source warns about was said when it was added
            warnings.simplefilter("ignore", UserWarning)
            info = open_scene(source, entry["bands"])
            want, here = self.settings.resolution_m, pixel_size_m(info)
            try:
                if want is not None and (here is None or not same_resolution(here, want)):
                    info = resampled_scene(info, want, self.root / "scenes")
                if not is_north_up(info.transform):
                    info = north_up_scene(info, self.root / "scenes")
            except SceneError:
                return  # e.g. a read-only folder: the scene reports its unreadable source as before

    def recorded_transform(self, scene_id: str):
        """The pixel-to-CRS transform recorded for a scene when it was added (None for scenes added
        before grids were recorded); known without its file, e.g. to place the chips of a missing scene."""
        grid = self._entry(scene_id).get("grid")
        return SceneGrid.from_json(grid).affine if grid else None

    def chip_windows(self, scene_id: str) -> list[Window]:
        """Chip windows (``settings.chip_size``, edges covered) of a scene."""
        info = self.scene(scene_id)
        return chip_windows(info.width, info.height, self.settings.chip_size)

    def chips(self, scene_id: str) -> list[Window]:
        """Alias of :meth:`chip_windows` (the name used in the architecture table)."""
        return self.chip_windows(scene_id)

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
