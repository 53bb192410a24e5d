"""Learner sub-commands with the seed scripts' flag names: create-masks, train, detect, batch-detect."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from tqdm import tqdm

from model.config import DetectConfig, TrainConfig
from model.errors import ConfigError


def parse_bands(text: str) -> tuple[int, ...]:
    """argparse type of ``--bands``: four 1-based source band indexes read as R,G,B,NIR."""
    try:
        bands = tuple(int(b) for b in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--bands takes 1-based indexes like 1,2,3,4; got {text!r}") from exc
    if len(bands) != 4 or min(bands) < 1:
        raise argparse.ArgumentTypeError(f"--bands needs 4 indexes >= 1 (R,G,B,NIR), got {text!r}")
    if len(set(bands)) != len(bands):
        raise argparse.ArgumentTypeError(f"--bands reads one band as two of R,G,B,NIR in {text!r}; give 4 different "
                                         "bands, e.g. 1,2,3,4")
    return bands


class TqdmProgress:
    """A ``progress(done, total, info)`` callback drawing a tqdm bar."""

    def __init__(self, desc: str, unit: str) -> None:
        self.desc, self.unit = desc, unit
        self.bar: tqdm | None = None  # created on the first update, so an early error prints no bar

    def __call__(self, done: int, total: int, info: dict) -> None:
        if self.bar is None:
            self.bar = tqdm(desc=self.desc, unit=self.unit, total=total, dynamic_ncols=True)
        self.bar.total = total
        self.bar.n = done
        shown = {k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in info.items() if k != "event"}
        self.bar.set_postfix(shown, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _add_detect_flags(p: argparse.ArgumentParser) -> None:
    d = DetectConfig()
    p.add_argument("--checkpoint", required=True, type=Path, help="trained model (.pt)")
    p.add_argument("--tile-size", type=int, default=d.tile_size, help="tile side in px (default 256)")
    p.add_argument("--overlap", type=int, default=d.overlap, help="tile overlap in px (default 32)")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help="tiles per forward pass (default: 2 on a CPU, fastest per tile there; 16 on a GPU)")
    p.add_argument("--threshold", type=float, default=d.threshold,
                   help="probability threshold (default: the one the checkpoint was validated at; 0.5 if none)")
    p.add_argument("--min-area", type=float, default=d.min_area, help="drop footprints under this many px")
    p.add_argument("--merge-distance", type=float, default=d.merge_distance, help="merge within metres")
    p.add_argument("--simplify", type=float, default=d.simplify, help="simplify tolerance in metres")
    p.add_argument("--device", default=None, help="torch device (default: GPU when present, else CPU)")
    p.add_argument("--bands", type=parse_bands, default=None, help="source bands as R,G,B,NIR, e.g. 3,2,1,4")
    p.add_argument("--fast", dest="mode", action="store_const", const="fast", default=d.mode,
                   help="fast path: a tile gate picks the tiles the full U-Net runs on (the checkpoint's trained "
                   "gate when it has one, else a coarse pass; see --gate), bf16 where native (model/fastpath.py)")
    p.add_argument("--coarse-factor", type=int, default=d.coarse_factor, help="fast: coarse downsampling")
    p.add_argument("--coarse-threshold", type=float, default=d.coarse_threshold,
                   help="fast: coarse probability a tile needs to run at full resolution")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=d.precision,
                   help="fast: auto = bf16 where the CPU/GPU has it natively")
    p.add_argument("--gate", choices=["auto", "trained", "coarse"], default=d.gate,
                   help="fast: which pass picks the tiles: the checkpoint's trained tile gate (auto, when it has "
                   "one; see train-gate) or the U-Net on --coarse-factor downsampled tiles")
    p.add_argument("--no-grow", dest="grow", action="store_false",
                   help="fast: do not run skipped tiles that a detection next to them runs into (faster; "
                   "a skip may then cut an object)")
    p.add_argument("--no-resample", dest="resample", action="store_false",
                   help="run the model at the scene's own pixel size even when it differs by more than 20%% from "
                   "the one the checkpoint was trained at (default: read the scene resampled to it)")
    p.add_argument("--gate-threshold", type=float, default=d.gate_threshold,
                   help="fast: trained gate's tile score that runs the U-Net (default: the one stored with the gate; "
                   "lower keeps more tiles, slower and closer to the exact path)")


def _detect_config(a: argparse.Namespace) -> DetectConfig:
    return DetectConfig(**{f.name: getattr(a, f.name) for f in fields(DetectConfig)})


def register(sub: argparse._SubParsersAction) -> None:
    """Add the learner's sub-commands to the ``dclabel`` parser."""
    p = sub.add_parser("create-masks", help="rasterize footprint polygons onto chip grids")
    p.add_argument("--chips-dir", required=True, type=Path)
    p.add_argument("--geojson", required=True, type=Path, help="footprints, any CRS")
    p.add_argument("--output-dir", required=True, type=Path)
    p.add_argument("--buffer", type=float, default=0.0, help="grow footprints by metres")
    p.add_argument("--layer", default=None, help="layer of a multi-layer file such as a GeoPackage "
                   "(required when several layers have geometry)")
    p.set_defaults(func=_create_masks)

    t = TrainConfig()
    p = sub.add_parser("train", help="train the U-Net on chip and mask folders")
    p.add_argument("--chips-dir", required=True, type=Path)
    p.add_argument("--masks-dir", required=True, type=Path)
    p.add_argument("--output-dir", required=True, type=Path)
    p.add_argument("--batch-size", type=int, default=t.batch_size)
    p.add_argument("--epochs", type=int, default=t.epochs)
    p.add_argument("--lr", type=float, default=t.lr)
    p.add_argument("--lr-schedule", choices=["cosine", "constant"], default=t.lr_schedule,
                   help="cosine: annealed over the run (epochs or --max-time, whichever ends it first)")
    p.add_argument("--loss", choices=["dice_bce", "focal_dice", "ce"], default=t.loss)
    p.add_argument("--pos-weight", type=float, default=t.pos_weight)
    p.add_argument("--no-augment", dest="augment", action="store_false")
    p.add_argument("--base-channels", type=int, default=t.base_channels)
    p.add_argument("--depth", type=int, default=t.depth)
    p.add_argument("--dropout", type=float, default=t.dropout)
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=t.seed)
    p.add_argument("--max-time", dest="max_time_s", type=float, default=None, help="seconds")
    p.add_argument("--accelerator", default=t.accelerator, help="auto (GPU when present), cpu, gpu")
    p.add_argument("--devices", default=t.devices, help="device count or 'auto'")
    p.add_argument("--num-nodes", type=int, default=t.num_nodes)
    p.add_argument("--strategy", default=t.strategy, help="auto, ddp, ...")
    p.add_argument("--num-workers", type=int, default=t.num_workers)
    p.add_argument("--init", type=Path, default=None, help="warm start from this checkpoint")
    p.add_argument("--separation-weight", type=float, default=t.separation_weight,
                   help="extra loss weight on the background between close footprints (U-Net paper w0; 0 = off)")
    p.add_argument("--separation-sigma", dest="separation_sigma_px", type=float, default=t.separation_sigma_px,
                   help="distance scale of --separation-weight in pixels")
    p.add_argument("--no-tune-threshold", dest="tune_threshold", action="store_false",
                   help="keep the decision threshold at 0.5 (default: chosen on the validation chips by object F1)")
    p.add_argument("--no-precise-bn", dest="precise_bn", action="store_false",
                   help="keep batch norm's running averages (default: recomputed over the training chips after training)")
    p.add_argument("--gate-seconds", type=float, default=t.gate_seconds,
                   help="after training, distil the fast path's tile gate for up to this long (0 = no gate)")
    p.set_defaults(func=_train)

    p = sub.add_parser("train-gate", help="add a tile gate for detect --fast to a checkpoint (no labels needed)")
    p.add_argument("--checkpoint", required=True, type=Path, help="trained model (.pt)")
    p.add_argument("--image", dest="images", required=True, type=Path, nargs="+",
                   help="GeoTIFF scenes or chips to learn from: imagery like what you will detect on")
    p.add_argument("--output", type=Path, default=None, help="gated checkpoint (default: CHECKPOINT_gated.pt)")
    p.add_argument("--max-chips", type=int, default=512, help="256 px chips sampled from the images")
    p.add_argument("--max-time", dest="max_time_s", type=float, default=120.0, help="training seconds")
    p.add_argument("--min-area", type=float, default=DetectConfig.min_area, help="as detect --min-area")
    p.add_argument("--bands", type=parse_bands, default=None, help="source bands as R,G,B,NIR")
    p.add_argument("--device", default=None, help="torch device (default: GPU when present, else CPU)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_train_gate)

    p = sub.add_parser("detect", help="detect data centers over a scene")
    p.add_argument("--image", required=True, type=Path, help="4-band GeoTIFF scene")
    p.add_argument("--output-geojson", type=Path, help="polygons, EPSG:4326")
    p.add_argument("--output-gpkg", type=Path, help="polygons, scene CRS")
    p.add_argument("--output-csv", type=Path, help="centroids, area, confidence")
    p.add_argument("--output-mask", type=Path, help="0/1 GeoTIFF mask")
    p.add_argument("--output-prob", type=Path, help="probability GeoTIFF (p*255)")
    _add_detect_flags(p)
    p.set_defaults(func=_detect)

    p = sub.add_parser(
        "batch-detect", help="detect over many scenes",
        description="Detect over many scenes: OUTPUT_DIR/<scene>.geojson (+ <scene>_mask.tif) per scene and "
        "all_detections.{geojson,csv} over all (its id is unique across scenes; scene_detection_id is the id in "
        "<scene>.geojson). A rerun skips a scene only when its outputs were made from the same scene file, "
        "checkpoint and settings (recorded in <scene>.detect.json) and every output asked for exists; other "
        "scenes are detected again, and the run says why.")
    p.add_argument("--input-dir", type=Path,
                   help="folder of scenes (.tif/.tiff/.vrt directly in it: subfolders are not searched, the run "
                   "says how many it left out; give their scenes with --images, or run batch-detect on each; a VRT "
                   "mosaic of the folder's own GeoTIFFs is left out, with a note)")
    p.add_argument("--images", type=Path, nargs="*", default=[], help="scene files")
    p.add_argument("--output-dir", required=True, type=Path)
    p.add_argument("--output-mask", action="store_true", help="also write a mask per scene")
    p.add_argument("--accelerator", default=None, help="run on Lightning's engine: cpu, gpu, auto")
    p.add_argument("--devices", default=None, help="Lightning devices (processes or GPUs per node)")
    p.add_argument("--num-nodes", type=int, default=None, help="Lightning nodes")
    p.add_argument("--strategy", default=None, help="Lightning strategy, e.g. ddp")
    p.add_argument("--num-workers", type=int, default=0, help="tile-reading processes per rank")
    _add_detect_flags(p)
    p.set_defaults(func=_batch_detect)


def _create_masks(a: argparse.Namespace) -> int:
    from model.chips import create_masks

    counts = create_masks(a.chips_dir, a.geojson, a.output_dir, a.buffer, layer=a.layer)
    print(f"wrote {counts['chips']} masks ({counts['with_positives']} with data centers) to {a.output_dir}")
    return 0


def _train(a: argparse.Namespace) -> int:
    from model.checkpoint import load_checkpoint
    from model.train import train_from_folders

    devices = int(a.devices) if str(a.devices).isdigit() else a.devices
    cfg = TrainConfig(
        epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, lr_schedule=a.lr_schedule, loss=a.loss,
        pos_weight=a.pos_weight,
        augment=a.augment, base_channels=a.base_channels, depth=a.depth, dropout=a.dropout, seed=a.seed,
        accelerator=a.accelerator, devices=devices, num_nodes=a.num_nodes, strategy=a.strategy,
        max_time_s=a.max_time_s, progress_bar=True, num_workers=a.num_workers, tune_threshold=a.tune_threshold,
        precise_bn=a.precise_bn, gate_seconds=a.gate_seconds,
        separation_weight=a.separation_weight, separation_sigma_px=a.separation_sigma_px,
    )
    init = load_checkpoint(a.init) if a.init else None
    path = train_from_folders(a.chips_dir, a.masks_dir, a.output_dir, cfg, a.val_fraction, init)
    from lightning.pytorch.utilities import rank_zero_only

    if rank_zero_only.rank != 0:
        return 0
    m = load_checkpoint(path).metrics
    shown = ", ".join(f"{k} {v:.3f}" for k, v in m.items() if isinstance(v, float))
    print(f"best checkpoint: {path} ({shown}); metrics log: {a.output_dir / 'logs' / 'metrics.csv'}")
    return 0


def _train_gate(a: argparse.Namespace) -> int:
    import tempfile

    import numpy as np
    import rasterio
    from rasterio.windows import Window

    from model.checkpoint import load_checkpoint, save_checkpoint
    from model.detect import scene_for_model
    from model.gate import fit_gate
    from model.scene import open_scene, read_window

    if a.max_chips < 1 or a.max_time_s <= 0:
        raise ConfigError(f"--max-chips and --max-time must be positive, got {a.max_chips} and {a.max_time_s}")
    scenes = [open_scene(p, a.bands) for p in a.images]
    ckpt = load_checkpoint(a.checkpoint, len(scenes[0].bands))
    vrt_dir = tempfile.TemporaryDirectory(prefix="dclabel-gate-")  # scenes seen at the model's pixel size
    scenes = [scene_for_model(s, ckpt, DetectConfig(), vrt_dir.name) for s in scenes]
    # chips at random offsets (seeded), so buildings come cut at every place a detection tile can cut them
    rng = np.random.default_rng(a.seed)
    area = np.array([s.width * s.height for s in scenes], float)
    counts = np.bincount(rng.choice(len(scenes), a.max_chips, p=area / area.sum()), minlength=len(scenes))
    chips = []
    for scene, n_chips in zip(scenes, counts, strict=True):
        with rasterio.open(scene.path) as src:  # once per scene, not per chip
            for _ in range(n_chips):
                r, c = (int(rng.integers(0, max(n - 256, 0) + 1)) for n in (scene.height, scene.width))
                chips.append(read_window(scene, Window(c, r, 256, 256), src))
    vrt_dir.cleanup()
    fit = fit_gate(ckpt, chips, min_area=int(a.min_area), max_seconds=a.max_time_s, seed=a.seed, device=a.device)
    if fit is None:
        raise ConfigError(f"{a.checkpoint} detects nothing on {len(chips)} chips of "
                         f"{', '.join(str(p) for p in a.images)}; give imagery with data centers (or look-alikes) "
                         "so the gate has something to learn")
    ckpt.gate = fit.payload
    out = a.output or a.checkpoint.with_name(f"{a.checkpoint.stem}_gated.pt")
    save_checkpoint(ckpt, out)
    print(f"tile gate from {fit.chips} chips ({fit.positive_chips} with detections) in {fit.seconds:.0f} s: "
          f"threshold {fit.threshold:.3f}, keeps {fit.recall:.0%} of held-out chips with detections"
          + (f" and {fit.keep_share:.0%} of those without" if np.isfinite(fit.keep_share)
             else " (every held-out chip had some)")
          + f"; wrote {out} (use: dclabel detect --fast)")
    return 0


def _detect(a: argparse.Namespace) -> int:
    outputs = [a.output_geojson, a.output_gpkg, a.output_csv, a.output_mask, a.output_prob]
    if not any(outputs):
        raise ConfigError("no output asked for: give at least one of --output-geojson/-gpkg/-csv/-mask/-prob")
    from model.atomic import check_outputs
    from model.detect import detect_scene
    from model.export import check_suffixes

    # before any work: an output that is an input (or a label store) first, as detect_scene says it,
    # then a name whose extension is another format's
    check_outputs({"GeoJSON output": a.output_geojson, "GeoPackage output": a.output_gpkg, "CSV output": a.output_csv,
                   "mask output": a.output_mask, "probability output": a.output_prob},
                  {"input scene": a.image, "checkpoint": a.checkpoint})
    check_suffixes({"--output-geojson": (a.output_geojson, "geojson"), "--output-gpkg": (a.output_gpkg, "gpkg"),
                    "--output-csv": (a.output_csv, "csv"), "--output-mask": (a.output_mask, "mask"),
                    "--output-prob": (a.output_prob, "prob")})

    bar = TqdmProgress("detect", "tile")
    try:
        table = detect_scene(a.checkpoint, a.image, _detect_config(a), a.output_geojson, a.output_gpkg,
                             a.output_csv, a.output_mask, a.output_prob, progress=bar)
    finally:
        bar.close()
    print(f"{len(table)} data-center footprints; wrote {', '.join(str(o) for o in outputs if o)}")
    return 0


#: Scene files ``batch-detect --input-dir`` reads: GeoTIFFs and GDAL VRTs (mosaics, resampled views).
SCENE_SUFFIXES = (".tif", ".tiff", ".vrt")


def _note_subfolders(input_dir: Path, output_dir: Path) -> None:
    """Say how many subfolders of ``--input-dir`` (and scenes in them) batch-detect leaves out."""
    out = output_dir.resolve()
    subs = [d for d in input_dir.iterdir() if d.is_dir() and d.resolve() != out and not d.name.startswith(".")]
    inside = sum(1 for d in subs for f in d.rglob("*") if f.suffix.lower() in SCENE_SUFFIXES)
    if inside:  # subfolders without scenes leave nothing out
        print(f"dclabel batch-detect: note: {len(subs)} subfolder(s) of {input_dir} not searched "
              f"({inside} .tif/.vrt file(s) in them); give those scenes with --images or run batch-detect on each "
              "subfolder", file=sys.stderr)


def _scenes_in_folder(input_dir: Path) -> list[Path]:
    """The ``.tif``/``.tiff``/``.vrt`` files directly in ``input_dir``; a VRT built over other scenes
    of the folder (a mosaic of its tiles) is left out, with a note, so no area is detected twice."""
    import rasterio

    found = sorted(p for p in input_dir.iterdir() if p.suffix.lower() in SCENE_SUFFIXES and p.is_file())
    rasters = {p.resolve() for p in found if p.suffix.lower() != ".vrt"}
    kept = []
    for path in found:
        if path.suffix.lower() == ".vrt":
            try:
                with rasterio.open(path) as src:
                    sources = {Path(f).resolve() for f in src.files[1:]}
            except Exception:  # an unreadable VRT is batch-detect's to report, with the other failures
                sources = set()
            inside = sorted(p.name for p in sources & rasters)
            if inside:
                print(f"dclabel batch-detect: note: {path.name} left out: it is built over {len(inside)} scene(s) "
                      f"of {input_dir} that are detected on their own (e.g. {inside[0]}); give it with --images "
                      "to detect the mosaic instead", file=sys.stderr)
                continue
        kept.append(path)
    return kept


def _batch_detect(a: argparse.Namespace) -> int:
    images = list(a.images)
    if a.input_dir:
        if not a.input_dir.is_dir():
            raise ConfigError(f"--input-dir {a.input_dir}: {'not a folder' if a.input_dir.exists() else 'no such folder'}; "
                              "give the folder that holds the scene GeoTIFFs (or list them with --images).")
        if a.input_dir.resolve() == a.output_dir.resolve():
            raise ConfigError(f"--output-dir {a.output_dir} is the input folder: the outputs (masks are GeoTIFFs too) "
                              "would be read as scenes on the next run; give another folder, e.g. "
                              f"{a.input_dir / 'detections'}.")
        found = _scenes_in_folder(a.input_dir)
        _note_subfolders(a.input_dir, a.output_dir)
        if not found and not images:
            raise ConfigError(f"--input-dir {a.input_dir} holds no .tif/.tiff/.vrt scenes.")
        images += found
    if not images:
        raise ConfigError("no scenes: give --input-dir (a folder of .tif/.vrt scenes) or --images")
    engine_flags = (a.accelerator, a.devices, a.num_nodes, a.strategy)
    if any(f is not None for f in engine_flags):
        from model.distributed import EngineConfig, batch_detect_distributed

        e = EngineConfig()
        devices = a.devices if a.devices is None or not str(a.devices).isdigit() else int(a.devices)
        engine = EngineConfig(a.accelerator or e.accelerator, devices or e.devices, a.num_nodes or e.num_nodes,
                              a.strategy or e.strategy, a.num_workers)
        bar = TqdmProgress("batch-detect", "batch")
        try:
            table = batch_detect_distributed(a.checkpoint, images, a.output_dir, _detect_config(a), engine,
                                             a.output_mask, progress=bar)
        finally:
            bar.close()
        if table is None:  # not global rank 0: rank 0 reports
            return 0
    else:
        from model.detect import batch_detect

        bar = TqdmProgress("batch-detect", "scene")
        try:
            table = batch_detect(a.checkpoint, images, a.output_dir, _detect_config(a), a.output_mask, progress=bar)
        finally:
            bar.close()
    failed, redone = table.attrs.get("failed", {}), table.attrs.get("redone", {})
    if table.attrs.get("skipped"):
        print(f"{len(table.attrs['skipped'])} scene(s) already done with this checkpoint and these settings: skipped")
    for stem, reason in redone.items():
        print(f"{stem}: detected again: {reason}")
    for img, message in failed.items():
        print(f"dclabel batch-detect: FAILED {img}: {message}", file=sys.stderr)
    done = len(images) - len(failed)
    print(f"{len(table)} footprints over {done} of {len(images)} scenes; see {a.output_dir / 'all_detections.geojson'}"
          + (f"; {len(failed)} scene(s) failed (listed above; fix them and rerun: finished scenes are kept)"
             if failed else ""))
    return 1 if failed else 0
