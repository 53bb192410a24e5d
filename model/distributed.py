"""Batch detection on Lightning's engine: tiles spread over processes, GPUs and nodes.

``Trainer.predict`` runs :class:`TileDetector.predict_step` over a :class:`TileDataset` (every tile
of every scene, as scene index + window); with ``strategy="ddp"`` Lightning gives each rank an
interleaved share of the tiles (its ``UnrepeatedDistributedSampler``: no tile twice). A
:class:`TileWriter` appends each rank's float32 tile probabilities to per-rank files in
``output_dir/.dclabel-parts``; after a barrier, each rank blends a share of the scenes (scene k on
rank k % world size) with the exact path's arithmetic (:class:`model.blend.StripBlender`),
vectorizes and writes ``<scene>.geojson``; after a second barrier rank 0 writes
``all_detections``. With the same per-tile probabilities the GeoJSON equals the one-process
:func:`model.detect.batch_detect`.

The output folder must be on a file system every rank sees (for several nodes: a shared one).
Non-zero ranks write their part files and their scenes' outputs, and return None.

Example:
    dclabel batch-detect --checkpoint m.pt --input-dir scenes/ --output-dir out/ \
        --accelerator cpu --devices 2 --strategy ddp
"""

from __future__ import annotations

import logging
import os
import shutil
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import lightning as L
import numpy as np
import rasterio
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from rasterio.windows import Window
from torch.utils.data import DataLoader, Dataset

from model import resume
from model.blend import (
    StripBlender,
    has_mask,
    keep_tile,
    probability_raster,
    read_strip_valid,
    strip_width,
    tile_grid,
)
from model.checkpoint import Checkpoint, build_model, load_checkpoint
from model.config import DetectConfig
from model.detect import (
    SCENE_FAILURES,
    export_scene,
    merge_scene_tables,
    scene_for_model,
    scene_stems,
    with_threshold,
)
from model.inference import TileModel, tile_batch_size
from model.scene import SceneInfo, open_scene, read_window, valid_pixels

PARTS = ".dclabel-parts"


@dataclass(frozen=True)
class EngineConfig:
    """Where ``batch-detect`` runs (``dclabel batch-detect`` flags of the same names).

    Attributes:
        accelerator: Lightning accelerator (``cpu``, ``gpu``, ``auto``).
        devices: Processes (CPU) or GPUs per node.
        num_nodes: Machines.
        strategy: Lightning strategy (``ddp`` for several devices, ``auto`` for one).
        num_workers: DataLoader processes reading tiles, per rank.
    """

    accelerator: str = "cpu"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    num_workers: int = 0


class TileDataset(Dataset):
    """Every tile of every scene, in scene order then row-major order (the exact path's order).

    Items are ``{"image": uint8 (C, T, T), "index": int, "keep": bool}``; ``keep`` is False for
    tiles that are all nodata or zero fill (the exact path skips them too).
    """

    def __init__(self, scenes: Sequence[SceneInfo], tile_size: int, overlap: int) -> None:
        self.scenes, self.tile_size = list(scenes), tile_size
        self.items: list[tuple[int, int, int]] = []
        self.offsets: list[int] = []
        for s, scene in enumerate(self.scenes):
            rows, cols = tile_grid(scene, tile_size, overlap)
            self.offsets.append(len(self.items))
            self.items += [(s, r, c) for r in rows for c in cols]
        self._open: dict[int, tuple[rasterio.DatasetReader, bool]] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __getstate__(self) -> dict:  # open datasets stay in the process that opened them
        return {**self.__dict__, "_open": {}}

    def _source(self, s: int) -> tuple[rasterio.DatasetReader, bool]:
        if s not in self._open:
            for src, _ in self._open.values():  # scenes are visited in order: keep one open
                src.close()
            src = rasterio.open(self.scenes[s].path)
            self._open = {s: (src, has_mask(src))}
        return self._open[s]

    def __getitem__(self, i: int) -> dict:
        s, r, c = self.items[i]
        t = self.tile_size
        src, masked = self._source(s)
        win = Window(c, r, t, t)
        image = read_window(self.scenes[s], win, src)
        valid = valid_pixels(src, win, self.scenes[s].bands) if masked else None
        return {"image": torch.from_numpy(image), "index": i, "keep": keep_tile(image, valid)}


class TileDetector(L.LightningModule):
    """Predicts tile probabilities with the model the single-process paths use (:class:`TileModel`):
    folded fp32 without a gate in ``exact`` mode, gated and in the configured precision in ``fast``.

    Args:
        ckpt: Checkpoint to run.
        config: Detection settings (``mode`` chooses the forward).
    """

    def __init__(self, ckpt: Checkpoint, config: DetectConfig) -> None:
        super().__init__()
        self.ckpt, self.config = ckpt, config
        self.model = build_model(ckpt, "cpu")  # registered so Lightning moves it; TileModel folds a copy
        self.tiles: TileModel | None = None

    def on_predict_start(self) -> None:
        c = self.config
        if c.mode == "fast":
            self.tiles = TileModel(self.ckpt, self.device, c.precision, c.coarse_factor, c.coarse_threshold,
                                   c.gate, c.gate_threshold)
        else:
            self.tiles = TileModel(self.ckpt, self.device, "fp32", coarse_factor=1)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        keep = batch["keep"].cpu().numpy().astype(bool)
        index = batch["index"].cpu().numpy()[keep]
        images = batch["image"].cpu().numpy()[keep]
        if self.tiles is not None and len(images):
            gate = self.tiles.gate(images)
            index, images = index[gate], images[gate]
        if len(images) == 0:
            t = self.config.tile_size
            return {"index": index, "probs": np.zeros((0, t, t), np.float32)}
        probs = self.tiles.predict(images)
        return {"index": index, "probs": probs.astype(np.float32, copy=False)}


class TileWriter(BasePredictionWriter):
    """Appends each rank's tile probabilities to ``parts/r{rank}_s{scene}.{f32,idx}``.

    Args:
        parts: Folder shared by all ranks.
        offsets: First dataset index of each scene (:attr:`TileDataset.offsets`).
        tile_size: Tile side in pixels.
        progress: Called on rank 0 as ``progress(batches_done, batches_total, {"rank0_tiles": n})``.
    """

    def __init__(self, parts: Path, offsets: list[int], tile_size: int, progress=None) -> None:
        super().__init__(write_interval="batch")
        self.parts, self.offsets, self.tile_size, self.progress = parts, np.asarray(offsets), tile_size, progress
        self._files: dict[tuple[str, int], object] = {}
        self.tiles = 0

    def _file(self, rank: int, scene: int, ext: str):
        key = (ext, scene)
        if key not in self._files:
            self._files[key] = open(self.parts / f"r{rank}_s{scene}.{ext}", "wb")  # noqa: SIM115
        return self._files[key]

    def on_predict_start(self, trainer, pl_module) -> None:
        self.parts.mkdir(parents=True, exist_ok=True)
        for old in self.parts.glob(f"r{trainer.global_rank}_s*"):
            old.unlink()

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx,
                           dataloader_idx=0) -> None:
        index, probs = prediction["index"], prediction["probs"]
        scenes = np.searchsorted(self.offsets, index, side="right") - 1
        for s in np.unique(scenes):
            sel = scenes == s
            self._file(trainer.global_rank, int(s), "idx").write(index[sel].astype(np.int64).tobytes())
            self._file(trainer.global_rank, int(s), "f32").write(np.ascontiguousarray(probs[sel]).tobytes())
        self.tiles += len(index)
        if self.progress is not None and trainer.is_global_zero:
            total = trainer.num_predict_batches[dataloader_idx] if trainer.num_predict_batches else 0
            self.progress(batch_idx + 1, int(total), {"rank0_tiles": self.tiles})

    def on_predict_end(self, trainer, pl_module) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
        trainer.strategy.barrier("dclabel-parts-written")


def blend_parts(scene: SceneInfo, scene_index: int, offset: int, parts: Path, world_size: int,
                prob_path: Path, tile_size: int, overlap: int) -> Path:
    """Blend every rank's tiles of one scene into its probability GeoTIFF (exact-path order)."""
    t = tile_size
    lookup: dict[int, np.ndarray] = {}
    for rank in range(world_size):
        idx_file = parts / f"r{rank}_s{scene_index}.idx"
        if not idx_file.exists() or idx_file.stat().st_size == 0:
            continue
        index = np.fromfile(idx_file, np.int64)
        probs = np.memmap(parts / f"r{rank}_s{scene_index}.f32", np.float32, "r", shape=(len(index), t, t))
        lookup.update({int(g): probs[k] for k, g in enumerate(index)})
    rows, cols = tile_grid(scene, t, overlap)
    width = strip_width(scene, t)
    with rasterio.open(scene.path) as src, probability_raster(scene, prob_path) as dst:
        masked = has_mask(src)
        blender = StripBlender(scene, dst, t, overlap)
        for i, r in enumerate(rows):
            for j, c in enumerate(cols):
                tile = lookup.get(offset + i * len(cols) + j)
                if tile is not None:
                    blender.add(c, tile)
            blender.finish_strip(i, read_strip_valid(src, r, width, t, scene.bands) if masked else None)
    return prob_path


def _quiet_lightning() -> None:
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
                 "lightning.fabric.utilities.distributed", "lightning.pytorch.utilities.distributed"):
        logging.getLogger(name).setLevel(logging.WARNING)


def batch_detect_distributed(
    checkpoint: str | os.PathLike,
    images: Sequence[str | os.PathLike],
    output_dir: str | os.PathLike,
    config: DetectConfig | None = None,
    engine: EngineConfig | None = None,
    masks: bool = False,
    progress=None,
) -> gpd.GeoDataFrame | None:
    """:func:`model.detect.batch_detect` on Lightning's engine (same files, same resume rule:
    :mod:`model.resume`).

    Launched as one command: with ``strategy="ddp"`` Lightning starts the other local ranks by
    re-running the command, and every rank runs this function.

    Args:
        checkpoint: Checkpoint path.
        images: Scene files.
        output_dir: Folder for ``<scene>.geojson`` (+ ``_mask.tif``) and ``all_detections.*``.
        config: Detection settings (``mode="fast"`` uses the fast path's forward and gate).
        engine: Accelerator, devices, nodes, strategy.
        masks: Also write a 0/1 mask per scene.
        progress: Rank 0's ``progress(batches_done, batches_total, info)``.

    Returns:
        On global rank 0: all detections in EPSG:4326 with a ``scene`` column, scenes that could
        not be read in ``attrs["failed"]``, ``attrs["skipped"]`` and ``attrs["redone"]`` (as
        :func:`model.detect.batch_detect`); elsewhere None.
    """
    config, engine = config or DetectConfig(), engine or EngineConfig()
    stems = scene_stems(images)  # refuses clashing and reserved names before any work
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = load_checkpoint(checkpoint)
    identity = resume.checkpoint_identity(checkpoint, ckpt.version)
    settings = resume.detection_settings(with_threshold(config, ckpt))
    parts = out / PARTS
    todo, grids, scenes, sources, failed, skipped, redone = [], [], [], [], {}, [], {}
    for i, stem in enumerate(stems):
        try:  # an unreadable scene is reported, not a reason to detect nothing
            decision = resume.decide(out, stem, images[i], identity, settings, masks)
            if decision.skip:  # same input, checkpoint and settings, every output there
                skipped.append(stem)
                continue
            if decision.reason:
                redone[stem] = decision.reason
            source = resume.input_identity(images[i])
            grid = open_scene(images[i], config.bands)
            scene = scene_for_model(grid, ckpt, config, parts / "scenes")  # resampled where needed
        except SCENE_FAILURES as exc:
            failed[str(images[i])] = str(exc)
            continue
        todo.append(i)
        grids.append(grid)
        scenes.append(scene)
        sources.append(source)
    dataset = TileDataset(scenes, config.tile_size, config.overlap)
    writer = TileWriter(parts, dataset.offsets, config.tile_size, progress)
    _quiet_lightning()
    trainer = L.Trainer(
        accelerator=engine.accelerator, devices=engine.devices, num_nodes=engine.num_nodes,
        strategy=engine.strategy, logger=False, callbacks=[writer], enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, use_distributed_sampler=True,
    )
    on_cpu = engine.accelerator == "cpu" or (engine.accelerator == "auto" and not torch.cuda.is_available())
    batch = tile_batch_size(config.batch_size, "cpu" if on_cpu else "cuda")
    loader = DataLoader(dataset, batch_size=batch, shuffle=False, num_workers=engine.num_workers)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
        if len(dataset):
            trainer.predict(TileDetector(ckpt, config), loader, return_predictions=False)
    # Every rank blends, vectorizes and exports its share of the scenes (scene k on rank k % world).
    rank, world = (trainer.global_rank, trainer.world_size) if len(dataset) else (0, 1)
    for k in range(rank, len(scenes), world):
        stem = stems[todo[k]]
        resume.forget(out, stem, masks)  # this rank owns the scene's outputs and its record
        prob = parts / f"{stem}_prob.tif"
        blend_parts(scenes[k], k, dataset.offsets[k], parts, world, prob, config.tile_size, config.overlap)
        export_scene(prob, scenes[k], ckpt.version, with_threshold(config, ckpt), output_geojson=out / f"{stem}.geojson",
                     output_mask=out / f"{stem}_mask.tif" if masks else None, grid=grids[k])
        prob.unlink()
        resume.remember(out, stem, sources[k], identity, settings, masks)
    trainer.strategy.barrier("dclabel-scenes-exported")
    if not trainer.is_global_zero:
        return None
    tables = []
    for img, stem in zip(images, stems, strict=True):
        if str(img) in failed:
            continue
        t = gpd.read_file(out / f"{stem}.geojson")
        t["scene"] = stem
        tables.append(t)
    shutil.rmtree(parts, ignore_errors=True)
    table = merge_scene_tables(tables, out)
    table.attrs.update(failed=failed, skipped=skipped, redone=redone)
    return table
