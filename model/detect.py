"""Detect data centers over whole scenes: tiled prediction, vectorizing, export (the seed's ``detect.py``)."""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import geopandas as gpd
import pandas as pd

from model import resume
from model.atomic import all_or_none, check_outputs
from model.checkpoint import Checkpoint, load_checkpoint
from model.config import DetectConfig
from model.errors import Cancelled, ConfigError, DclabelError, SceneError
from model.export import (
    detection_table,
    scene_has_nodata,
    write_detections,
    write_mask,
    write_probability,
)
from model.ground import ground_metres_per_unit, pixel_size_m, same_resolution, scene_centre_lonlat
from model.predict_scene import predict_scene
from model.scene import SceneInfo, open_scene
from model.scene_vrt import is_north_up, north_up_scene, resampled_scene
from model.vectorize import vectorize_probability


def _metres_per_unit(scene: SceneInfo) -> float:
    """Ground metres per CRS unit at the scene's centre (``--merge-distance`` and ``--simplify``
    are metres on the ground, whatever the projection's scale)."""
    if scene.crs.is_geographic:
        raise SceneError(
            f"{scene.path}: the scene is in geographic coordinates ({scene.crs.to_string()}); "
            "detection needs a projected CRS in metres (NAIP is UTM). Reproject it first "
            "(e.g. `gdalwarp -t_srs EPSG:326XX`)."
        )
    return ground_metres_per_unit(scene.crs, *scene_centre_lonlat(scene))


def scene_for_model(scene: SceneInfo, ckpt: Checkpoint, config: DetectConfig, folder: str | os.PathLike) -> SceneInfo:
    """The scene as the model should see it: resampled (a VRT in ``folder``) to the pixel size the
    checkpoint was trained at when the two differ by more than 20 % and ``config.resample``;
    otherwise the scene itself. Either way a mismatch is reported as a warning, since a U-Net
    sees buildings at the scale it learned them and ``min_area`` counts the model's pixels.

    A grid that is not north-up (stored south-up, mirrored, rotated or sheared) is first read
    through a north-up VRT (:func:`model.scene_vrt.north_up_scene`, a flip pixel for pixel), as a
    project adds it: the model learned buildings with north at the top."""
    if not is_north_up(scene.transform):
        scene = north_up_scene(scene, folder)
    here, want = pixel_size_m(scene), ckpt.resolution_m
    if here is None:  # degrees: warp to the local UTM zone at the model's pixel size
        if not config.resample:
            _metres_per_unit(scene)  # raises: detection needs metres
        warnings.warn(f"{scene.path}: the scene is in geographic coordinates ({scene.crs.to_string()}): detecting "
                      f"on it warped to the local UTM zone at {want:g} m (outputs stay on the scene's grid).",
                      UserWarning, stacklevel=2)
        return resampled_scene(scene, want, folder)
    if same_resolution(here, want):
        return scene
    if not config.resample:
        warnings.warn(f"{scene.path}: pixels are {here:.2f} m but checkpoint {ckpt.version} was trained on "
                      f"{want:g} m imagery; detecting at {here:.2f} m as asked (--no-resample): buildings look "
                      f"{want / here:.1f}x their trained size and --min-area counts the scene's pixels.",
                      UserWarning, stacklevel=2)
        return scene
    warnings.warn(f"{scene.path}: pixels are {here:.2f} m, checkpoint {ckpt.version} was trained on {want:g} m "
                  f"imagery: detecting on the scene resampled to {want:g} m (outputs stay on the scene's grid; "
                  "--no-resample turns this off).", UserWarning, stacklevel=2)
    return resampled_scene(scene, want, folder)


def detect_scene(
    checkpoint: str | os.PathLike | Checkpoint,
    image: str | os.PathLike | SceneInfo,
    config: DetectConfig | None = None,
    output_geojson: str | os.PathLike | None = None,
    output_gpkg: str | os.PathLike | None = None,
    output_csv: str | os.PathLike | None = None,
    output_mask: str | os.PathLike | None = None,
    output_prob: str | os.PathLike | None = None,
    progress=None,
    cancel=None,
) -> gpd.GeoDataFrame:
    """Detect data-center footprints over a scene and write the requested outputs.

    Args:
        checkpoint: Checkpoint path or loaded :class:`Checkpoint`.
        image: Scene path or :class:`SceneInfo`.
        config: Detection settings.
        output_geojson: Polygons in EPSG:4326 (RFC 7946).
        output_gpkg: Polygons in the scene CRS.
        output_csv: One row per detection with centroid lat/lon, area and confidence.
        output_mask: 0/1 GeoTIFF mask on the scene grid.
        output_prob: Probability GeoTIFF (uint8, p * 255) on the scene grid.
        progress: ``progress(tiles_done, tiles_total, info)``.
        cancel: Returns True to stop; raises :class:`model.errors.Cancelled`, no output is written.

    Returns:
        The detection table in the scene CRS (see :func:`model.export.detection_table`).
    """
    config = config or DetectConfig()
    check_outputs(
        {"GeoJSON output": output_geojson, "GeoPackage output": output_gpkg, "CSV output": output_csv,
         "mask output": output_mask, "probability output": output_prob},
        {"input scene": image.path if isinstance(image, SceneInfo) else image,
         "checkpoint": None if isinstance(checkpoint, Checkpoint) else checkpoint},
    )
    scene = image if isinstance(image, SceneInfo) else open_scene(image, config.bands)
    if not config.resample:
        _metres_per_unit(scene)  # fail before predicting on a geographic CRS
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint, len(scene.bands))
    with tempfile.TemporaryDirectory(prefix="dclabel-detect-") as tmp:
        grid, scene = scene, scene_for_model(scene, ckpt, config, tmp)
        # the probabilities go straight to --output-prob unless they must be resampled onto the scene's
        # grid or given a no-data mask (export.write_probability)
        direct = output_prob and scene is grid and not scene_has_nodata(grid.path)
        prob = Path(output_prob) if direct else Path(tmp) / "prob.tif"
        if config.mode == "fast":
            from model.fastpath import predict_scene_fast

            if ckpt.gate is None and config.gate == "auto" and config.coarse_factor > 1:
                warnings.warn(f"checkpoint {ckpt.version} has no trained tile gate: --fast falls back to the coarse "
                              "pass, which skips fewer tiles and can miss detections; add a gate with "
                              "`dclabel train-gate --checkpoint ... --image SCENE.tif`", UserWarning, stacklevel=2)

            predict_scene_fast(ckpt, scene, prob, config.tile_size, config.overlap, config.batch_size,
                               config.device, config.coarse_factor, config.coarse_threshold,
                               config.precision, progress, cancel, config.gate, config.gate_threshold,
                               with_threshold(config, ckpt).threshold if config.grow else None)
        else:
            predict_scene(ckpt, scene, prob, config.tile_size, config.overlap, config.batch_size,
                          config.device, progress, cancel)
        with all_or_none() as written:  # outputs are complete together or absent
            if output_prob:
                written.append(Path(output_prob))
                if prob != Path(output_prob):
                    write_probability(prob, output_prob, grid, valid=grid)
            return export_scene(prob, scene, ckpt.version, with_threshold(config, ckpt), output_geojson,
                                output_gpkg, output_csv, output_mask, grid, output_prob)


def with_threshold(config: DetectConfig, ckpt: Checkpoint) -> DetectConfig:
    """``config`` with its threshold set: the user's, else the one the checkpoint was validated at."""
    return config if config.threshold is not None else replace(config, threshold=ckpt.threshold)


def export_scene(
    prob_path: str | os.PathLike,
    scene: SceneInfo,
    model_version: str,
    config: DetectConfig,
    output_geojson: str | os.PathLike | None = None,
    output_gpkg: str | os.PathLike | None = None,
    output_csv: str | os.PathLike | None = None,
    output_mask: str | os.PathLike | None = None,
    grid: SceneInfo | None = None,
    prob_output: str | os.PathLike | None = None,
) -> gpd.GeoDataFrame:
    """Vectorize a probability GeoTIFF of a scene and write the requested outputs.

    ``grid``: the scene's own grid when ``scene`` is a resampled view of it (the mask is written
    there, with a no-data mask where the scene has none). ``prob_output``: the probability GeoTIFF
    kept for the user, if any (named in the mask's ``source`` tag).

    Returns:
        The detection table in the scene CRS.
    """
    unit = _metres_per_unit(scene)
    if config.threshold is None:
        raise ValueError("export_scene needs a threshold: pass with_threshold(config, checkpoint).")
    found = vectorize_probability(prob_path, config.threshold, config.min_area,
                                  config.merge_distance / unit, config.simplify / unit)
    table = detection_table(found, model_version)  # areas and centroids measured on the model's grid
    if grid is not None and grid.crs != table.crs:  # a warped scene: back to the scene's own CRS
        table = table.to_crs(grid.crs)
    with all_or_none() as written:  # a failed mask takes the vector files with it
        written += write_detections(table, geojson=output_geojson, gpkg=output_gpkg, csv=output_csv)
        if output_mask:
            written.append(write_mask(prob_path, output_mask, config.threshold, grid=grid, source=prob_output,
                                      valid=grid or scene))
    return table


#: Output names of a batch that are not a scene's: a scene with one of these stems is refused.
RESERVED_STEMS = ("all_detections",)


def merge_scene_tables(tables: list[gpd.GeoDataFrame], output_dir: Path) -> gpd.GeoDataFrame:
    """Concatenate per-scene EPSG:4326 tables and write ``all_detections.{geojson,csv}``.

    ``id`` is renumbered 1..N over the aggregate (unique across scenes); ``scene_detection_id``
    keeps each row's ``id`` in its ``<scene>.geojson``, so (``scene``, ``scene_detection_id``)
    finds it there.
    """
    allt = gpd.GeoDataFrame(pd.concat(tables, ignore_index=True), crs="EPSG:4326") if tables else \
        gpd.GeoDataFrame({"id": [], "scene": []}, geometry=[], crs="EPSG:4326")
    if "id" not in allt:  # only scenes without detections (an empty GeoJSON reads back without columns)
        allt.insert(0, "id", pd.Series(dtype="int64"))
    allt.insert(allt.columns.get_loc("id") + 1, "scene_detection_id", allt["id"].astype("int64"))
    allt["id"] = range(1, len(allt) + 1)
    write_detections(allt, geojson=output_dir / "all_detections.geojson", csv=output_dir / "all_detections.csv")
    return allt


#: What fails one scene of a batch without stopping the others: an unreadable or unusable scene.
SCENE_FAILURES = (DclabelError, OSError)


def scene_stems(images: Sequence[str | os.PathLike]) -> list[str]:
    """Output names of a batch's scenes (file stems).

    Raises:
        ConfigError: Two scenes share a stem, so their outputs would overwrite each other, or a
            scene's stem is one of the batch's own outputs (:data:`RESERVED_STEMS`).
    """
    stems: dict[str, str | os.PathLike] = {}
    for img in images:
        stem = Path(img).stem
        if stem.lower() in RESERVED_STEMS:
            raise ConfigError(f"{img}: a scene cannot be named {stem}: batch-detect writes {stem}.geojson and "
                              f"{stem}.csv for all scenes together, which this scene's outputs would overwrite "
                              "(and a rerun would read back as its detections). Rename the scene file.")
        if stem in stems and Path(stems[stem]).resolve() != Path(img).resolve():
            raise ConfigError(f"{stems[stem]} and {img} would both write {stem}.geojson; rename one of them "
                              "(or run them into different --output-dir folders).")
        stems.setdefault(stem, img)
    return [Path(img).stem for img in images]


def batch_detect(
    checkpoint: str | os.PathLike,
    images: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    config: DetectConfig | None = None,
    masks: bool = False,
    progress=None,
    cancel=None,
) -> gpd.GeoDataFrame:
    """Detect over many scenes; one GeoJSON (+ mask) per scene and ``all_detections.{geojson,csv}``.

    A scene is skipped when its outputs were made from the same input file, checkpoint and
    settings and all outputs asked for exist (:mod:`model.resume`: ``<scene>.detect.json``), so an
    interrupted run resumes; otherwise it is detected again. A scene that cannot be read or used
    (:data:`SCENE_FAILURES`) does not stop the others: it is left out and reported in
    ``table.attrs["failed"]`` (``{scene path: message}``), and a rerun tries it again.

    Returns:
        All detections in EPSG:4326 with a ``scene`` column; ``attrs["skipped"]`` lists the scenes
        already done, ``attrs["redone"]`` says why scenes with earlier outputs were detected again.
    """
    config = config or DetectConfig()
    stems = scene_stems(images)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = load_checkpoint(checkpoint)
    identity = resume.checkpoint_identity(checkpoint, ckpt.version)
    settings = resume.detection_settings(with_threshold(config, ckpt))
    tables, failed, skipped, redone = [], {}, [], {}
    for i, (img, stem) in enumerate(zip(images, stems, strict=True)):
        gj = out / f"{stem}.geojson"
        try:
            decision = resume.decide(out, stem, img, identity, settings, masks)
            if decision.skip:
                t = gpd.read_file(gj)
                skipped.append(stem)
            else:
                if decision.reason:
                    redone[stem] = decision.reason
                resume.forget(out, stem, masks)
                source = resume.input_identity(img)
                t = detect_scene(ckpt, img, config, output_geojson=gj,
                                 output_mask=out / f"{stem}_mask.tif" if masks else None,
                                 cancel=cancel).to_crs("EPSG:4326")
                resume.remember(out, stem, source, identity, settings, masks)
        except Cancelled:
            raise
        except SCENE_FAILURES as exc:
            failed[str(img)] = str(exc)
            n = 0
        else:
            t["scene"] = stem
            tables.append(t)
            n = len(t)
        if progress is not None:
            progress(i + 1, len(images), {"scene": stem, "detections": n, "failed": len(failed)})
    table = merge_scene_tables(tables, out)
    table.attrs.update(failed=failed, skipped=skipped, redone=redone)
    return table
