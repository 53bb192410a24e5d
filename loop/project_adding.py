"""Adding scenes to a project: scene files and folders of chips, validated, at the project's
pixel size and north-up, each once (the same file under another name, or a byte-identical copy,
is the scene already added).

Adding holds ``PROJECT/.project.lock`` and re-reads project.json first, so scenes added by two
processes at once are all kept. :class:`SceneAdding` is a part of :class:`loop.project.Project`.
"""

from __future__ import annotations

import filecmp
import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import rasterio
import rasterio.errors
from filelock import FileLock

from loop.errors import ProjectError
from loop.project_scenes import ProjectScenes
from loop.scene_grid import SceneGrid
from model.ground import pixel_size_m, same_resolution
from model.scene import SceneInfo, open_scene, scene_id_for
from model.scene_vrt import is_north_up, north_up_scene, resampled_scene

if TYPE_CHECKING:
    from loop.labelstore import LabelStore

LOCK_FILE = ".project.lock"  # held while a scene is added: project.json is read, changed and written
TIF_SUFFIXES = (".tif", ".tiff")
MASK_FOLDERS = ("mask", "masks", "label", "labels")


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


class SceneAdding(ProjectScenes):
    """Adding scenes to a project (part of :class:`loop.project.Project`)."""

    _warned_small: bool
    _labels: LabelStore | None

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
            if self.file.exists():  # keep (and know) the scenes others added meanwhile
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
