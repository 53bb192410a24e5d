"""A project's scenes as project.json records them: looked up by id, opened and checked against
the grid recorded when each was added, and pointed at a file that moved.

Reviewed chips and proposals are pixel windows, so a scene file whose grid (size, transform, CRS,
band count) is not the recorded one is refused (:mod:`loop.scene_grid`); a resampled or north-up
view whose project folder moved is written again from its source. :class:`ProjectScenes` is a part
of :class:`loop.project.Project`, which holds the state and writes project.json.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import rasterio
import rasterio.errors
from rasterio.crs import CRS
from rasterio.windows import Window

from loop.errors import ProjectError
from loop.scene_grid import SceneGrid
from model.errors import SceneError, SceneNotFoundError
from model.ground import pixel_size_m, same_resolution
from model.scene import SceneInfo, chip_windows, open_scene
from model.scene_vrt import is_north_up, north_up_scene, resampled_scene

if TYPE_CHECKING:
    from loop.labelstore import LabelStore
    from loop.project import ProjectSettings


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


class ProjectScenes:
    """The scenes of a project: their ids, files and recorded grids (part of :class:`loop.project.Project`,
    which holds the attributes below and writes project.json with ``_save()``).

    Attributes:
        root: Project folder.
        settings: Project-wide settings.
        read_only: Whether the project was opened read-only.
        file: The project file (``project.json``).
        labels: The project's label store.
    """

    root: Path
    settings: ProjectSettings
    read_only: bool
    file: Path
    labels: LabelStore
    _entries: list[dict]
    _scenes: dict[str, SceneInfo]
    _unreadable: set[str]

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
            f"{self.file}: no scene with id {scene_id!r}; the project has "
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

    def scene_for_labels(self, scene_id: str) -> SceneInfo:
        """A scene as placing labels on it needs it: :meth:`scene` when its file opens; when the file is
        missing (moved, deleted), the grid recorded in project.json (size, CRS, transform), with a
        warning (once) naming the file. Its pixels cannot be read then; its footprints and reviewed
        chips are in the grid's coordinates, so importing or exporting labels needs none.

        Raises:
            ProjectError: No scene has this id.
            SceneError: The file is unusable, or missing in a project made before grids were recorded.
        """
        try:
            return self.scene(scene_id)
        except SceneNotFoundError as exc:
            entry = self._entry(scene_id)
            if not entry.get("grid"):
                raise
            grid = SceneGrid.from_json(entry["grid"])
            transform = grid.affine
            info = SceneInfo(path=self._resolve(entry["path"]), scene_id=scene_id, width=grid.width,
                             height=grid.height, crs=CRS.from_user_input(grid.crs), transform=transform,
                             bands=tuple(entry["bands"]), nodata=None, res=(abs(transform.a), abs(transform.e)))
            if scene_id not in self._unreadable:
                self._unreadable.add(scene_id)
                warnings.warn(f"{exc} Its labels are placed on the grid project.json records for it "
                              f"({grid.describe()}); reviewing them needs the file.", UserWarning, stacklevel=2)
            return info

    def chip_windows(self, scene_id: str) -> list[Window]:
        """Chip windows (``settings.chip_size``, edges covered) of a scene."""
        info = self.scene(scene_id)
        return chip_windows(info.width, info.height, self.settings.chip_size)

    def chips(self, scene_id: str) -> list[Window]:
        """Alias of :meth:`chip_windows` (the name used in the architecture table)."""
        return self.chip_windows(scene_id)

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

    def _entry(self, scene_id: str) -> dict:
        entry = next((e for e in self._entries if e["id"] == scene_id), None)
        if entry is None:
            raise ProjectError(f"{self.file}: no scene with id {scene_id!r}; the project has "
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
