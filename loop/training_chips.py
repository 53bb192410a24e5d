"""What the reviewed labels mean as training data: image + mask chips of the reviewed windows.

A reviewed chip is a window whose every data center is labelled, so the rest of it is background:
its mask is 1 inside the store's ``datacenter`` footprints and 0 elsewhere (hard-negative classes
are background). :func:`reviewed_training_chips` reads them for retraining and the simulation;
:func:`positive_reviewed_count` counts them without reading pixels, for the checks that come
before any training starts.
"""

from __future__ import annotations

import warnings
from dataclasses import replace

import rasterio
import rasterio.windows
from rasterio.windows import Window

from loop.errors import NoTrainingDataError, ProjectError
from loop.project import CLASSES, POSITIVE_CLASS, Project
from model.errors import SceneError
from model.scene import Chip, SceneInfo, read_chip


def _window_box(info: SceneInfo, window: Window):
    from shapely.geometry import box

    left, bottom, right, top = rasterio.windows.bounds(window, info.transform)
    return box(left, bottom, right, top)


def reviewed_training_chips(project: Project, scene_id: str | None = None) -> list[Chip]:
    """Training chips (image + mask) for every reviewed chip of the project.

    The mask is 1 inside the store's ``datacenter`` footprints (clipped to the chip) and 0
    elsewhere; hard-negative classes (warehouse, retail, other) are background. A chip touching a
    footprint whose class is unknown (typed outside dclabel, e.g. ``building`` in QGIS) is left out
    with a warning naming the fids: it could be a data center, so it is not trained as background.

    Args:
        project: The project.
        scene_id: Only this scene; default every scene.

    Returns:
        One :class:`Chip` with ``mask`` per reviewed chip.
    """
    from model.masks import rasterize_footprints

    store = project.labels
    by_scene: dict[str, list] = {}
    for rc in store.reviewed_chips(scene_id):
        by_scene.setdefault(rc.scene_id, []).append(rc)
    chips: list[Chip] = []
    readable = {info.scene_id: info for info in project.readable_scenes(by_scene)}  # only scenes with chips
    for sid, items in by_scene.items():
        if sid not in readable:  # its file is gone (warned): train on the other scenes' chips
            continue
        info = readable[sid]
        footprints = store.footprints(sid)  # read once: positives and unknown classes come from it
        positives = [g for g in footprints[footprints["class"] == POSITIVE_CLASS].geometry
                     if g is not None and not g.is_empty]
        unsure = footprints[~footprints["class"].isin(CLASSES)]
        unknown = dict(zip(unsure["fid"].astype(int), unsure["class"], strict=True))
        left_out = 0
        with rasterio.open(info.path) as src:
            for rc in items:
                box = _window_box(info, rc.window)
                if unknown and unsure.intersects(box).any():
                    left_out += 1
                    continue
                chip = read_chip(info, rc.window, src)
                geoms = [g for g in positives if g.intersects(box)]
                shape = (int(rc.window.height), int(rc.window.width))
                mask = rasterize_footprints(geoms, None, info.crs, chip.transform, shape)
                chips.append(replace(chip, mask=mask.astype("uint8")))
        if left_out:
            names = ", ".join(f"{fid} ({cls!r})" for fid, cls in list(unknown.items())[:5])
            warnings.warn(f"scene {sid}: {left_out} reviewed chip(s) left out of training: they touch footprints "
                          f"whose class is not one of {', '.join(CLASSES)}: fid {names}; set their class in the app "
                          "(or QGIS) and retrain", UserWarning, stacklevel=2)
    return chips


def positive_reviewed_count(project: Project) -> tuple[int, int]:
    """(reviewed chips, reviewed chips touching a ``datacenter`` footprint), without reading pixels.

    Chips on scenes that cannot be read (file missing, replaced, unusable) are counted as reviewed
    but never as positive: they cannot be trained on.

    Raises:
        NoTrainingDataError: No chip on a readable scene touches a data center while some reviewed
            chips lie on scenes that cannot be read: the message names those scenes and why, so
            their chips are not taken for negatives.
    """
    store = project.labels
    reviewed = store.reviewed_chips()
    n_pos = 0
    cache: dict[str, list] = {}
    unreadable: dict[str, list] = {}
    why: dict[str, str] = {}
    for rc in reviewed:
        if rc.scene_id in why:
            unreadable[rc.scene_id].append(rc)
            continue
        try:
            info = project.scene(rc.scene_id)
        except (ProjectError, SceneError) as exc:
            why[rc.scene_id] = str(exc)
            unreadable[rc.scene_id] = [rc]
            continue
        if _touches_positive(store, cache, rc.scene_id, info.transform, rc.window):
            n_pos += 1
    if unreadable and n_pos == 0:
        n_off = sum(len(chips) for chips in unreadable.values())
        parts = []
        for sid, chips in unreadable.items():
            transform = project.recorded_transform(sid)
            pos = "" if transform is None else (
                f", {sum(_touches_positive(store, cache, sid, transform, rc.window) for rc in chips)} with a data center")
            parts.append(f"scene {sid}: {len(chips)} chip(s){pos} ({why[sid]})")
        rest = len(reviewed) - n_off
        raise NoTrainingDataError(
            f"{n_off} of the {len(reviewed)} reviewed chips in {project.root} are on scenes that cannot be read, "
            f"so they cannot be trained on; " + "; ".join(parts) + ". "
            + (f"The other {rest} hold no data center. " if rest else "")
            + "Fix the scene files as said, or review chips with a data center on the readable scenes.")
    return len(reviewed), n_pos


def _touches_positive(store, cache: dict[str, list], scene_id: str, transform, window: Window) -> bool:
    if scene_id not in cache:
        cache[scene_id] = _positive_geoms(store, scene_id)
    left, bottom, right, top = rasterio.windows.bounds(window, transform)
    from shapely.geometry import box as shapely_box

    box = shapely_box(left, bottom, right, top)
    return any(g.intersection(box).area > 0 for g in cache[scene_id] if g.intersects(box))


def _positive_geoms(store, scene_id: str) -> list:
    """Active ``datacenter`` footprints of a scene, in the scene CRS."""
    gdf = store.footprints(scene_id)
    if gdf.empty:
        return []
    return [g for g in gdf[gdf["class"] == POSITIVE_CLASS].geometry if g is not None and not g.is_empty]
