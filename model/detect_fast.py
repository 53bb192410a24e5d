"""Detection over scenes on the fast path, and the vectorize-and-export step shared with distributed detection.

:func:`detect_scene_fast` and :func:`batch_detect_fast` mirror :func:`model.detect.detect_scene` and
:func:`model.detect.batch_detect` (same outputs, same resume rule) with the probability map made by
:func:`model.fastpath.predict_scene_fast`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import geopandas as gpd
import pandas as pd

from model.checkpoint import Checkpoint, load_checkpoint
from model.config import DetectConfig
from model.detect import _metres_per_unit
from model.export import detection_table, write_detections, write_mask
from model.fastpath import predict_scene_fast
from model.scene import SceneInfo, open_scene
from model.vectorize import vectorize_probability


def export_scene(
    prob_path: str | os.PathLike,
    scene: SceneInfo,
    model_version: str,
    config: DetectConfig,
    output_geojson: str | os.PathLike | None = None,
    output_gpkg: str | os.PathLike | None = None,
    output_csv: str | os.PathLike | None = None,
    output_mask: str | os.PathLike | None = None,
) -> gpd.GeoDataFrame:
    """Vectorize a probability GeoTIFF and write the requested outputs, as :func:`detect_scene` does.

    Returns:
        The detection table in the scene CRS.
    """
    unit = _metres_per_unit(scene)
    found = vectorize_probability(prob_path, config.threshold, config.min_area,
                                  config.merge_distance / unit, config.simplify / unit)
    table = detection_table(found, model_version)
    write_detections(table, geojson=output_geojson, gpkg=output_gpkg, csv=output_csv)
    if output_mask:
        write_mask(prob_path, output_mask, config.threshold)
    return table


def detect_scene_fast(
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
    """:func:`model.detect.detect_scene` on the fast path (coarse gate, fused bf16 U-Net).

    Args:
        checkpoint: Checkpoint path or loaded :class:`Checkpoint`.
        image: Scene path or :class:`SceneInfo`.
        config: Detection settings (``coarse_factor``, ``coarse_threshold`` and ``precision`` apply).
        output_geojson: Polygons in EPSG:4326 (RFC 7946).
        output_gpkg: Polygons in the scene CRS.
        output_csv: One row per detection.
        output_mask: 0/1 GeoTIFF mask on the scene grid.
        output_prob: Probability GeoTIFF (uint8, p * 255); skipped tiles hold 0.
        progress: ``progress(tiles_done, tiles_total, info)``.
        cancel: Returns True to stop; raises :class:`model.errors.Cancelled`, no output is written.

    Returns:
        The detection table in the scene CRS.
    """
    config = config or DetectConfig(mode="fast")
    scene = image if isinstance(image, SceneInfo) else open_scene(image, config.bands)
    _metres_per_unit(scene)  # fail before predicting on a geographic CRS
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint, len(scene.bands))
    with tempfile.TemporaryDirectory(prefix="dclabel-detect-") as tmp:
        prob = Path(output_prob) if output_prob else Path(tmp) / "prob.tif"
        predict_scene_fast(ckpt, scene, prob, config.tile_size, config.overlap, config.batch_size, config.device,
                           config.coarse_factor, config.coarse_threshold, config.precision, progress, cancel)
        return export_scene(prob, scene, ckpt.version, config, output_geojson, output_gpkg, output_csv,
                            output_mask)


def merge_scene_tables(tables: list[gpd.GeoDataFrame], output_dir: Path) -> gpd.GeoDataFrame:
    """Concatenate per-scene EPSG:4326 tables, renumber ``id`` and write ``all_detections.{geojson,csv}``."""
    allt = gpd.GeoDataFrame(pd.concat(tables, ignore_index=True), crs="EPSG:4326") if tables else \
        gpd.GeoDataFrame({"scene": []}, geometry=[], crs="EPSG:4326")
    allt["id"] = range(1, len(allt) + 1)
    write_detections(allt, geojson=output_dir / "all_detections.geojson", csv=output_dir / "all_detections.csv")
    return allt


def batch_detect_fast(
    checkpoint: str | os.PathLike,
    images: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    config: DetectConfig | None = None,
    masks: bool = False,
    progress=None,
    cancel=None,
) -> gpd.GeoDataFrame:
    """:func:`model.detect.batch_detect` on the fast path (same files, same resume rule).

    Returns:
        All detections in EPSG:4326 with a ``scene`` column.
    """
    config = config or DetectConfig(mode="fast")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = load_checkpoint(checkpoint)
    tables = []
    for i, img in enumerate(images):
        stem = Path(img).stem
        gj = out / f"{stem}.geojson"
        if gj.exists():
            t = gpd.read_file(gj)
        else:
            t = detect_scene_fast(ckpt, img, config, output_geojson=gj,
                                  output_mask=out / f"{stem}_mask.tif" if masks else None,
                                  cancel=cancel).to_crs("EPSG:4326")
        t["scene"] = stem
        tables.append(t)
        if progress is not None:
            progress(i + 1, len(images), {"scene": stem, "detections": len(t)})
    return merge_scene_tables(tables, out)
