"""Configuration of training and detection as frozen dataclasses (CLI flags map onto fields).

Kept free of torch and Lightning imports so the command line starts fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from model.errors import ConfigError


@dataclass(frozen=True)
class TrainConfig:
    """How to train. CLI flags of ``dclabel train`` map onto these fields one to one.

    Attributes:
        epochs: Passes over the training chips.
        batch_size: Chips per step.
        lr: AdamW learning rate.
        lr_schedule: ``cosine``: annealed to 0 per step over the run (``epochs``, or ``max_time_s``
            when that ends it first); ``constant``: no schedule.
        loss: ``dice_bce``, ``focal_dice`` or ``ce`` (the seed's plain cross-entropy).
        pos_weight: BCE weight of data-center pixels (``dice_bce`` only).
        augment: Dihedral flips/rotations and brightness/contrast jitter.
        base_channels: U-Net width (the seed used 32).
        depth: U-Net levels (the seed used 4).
        dropout: Dropout before the head (enables MC-dropout uncertainty).
        weight_decay: AdamW weight decay.
        seed: Seed for initialisation, shuffling and augmentation.
        accelerator: Lightning accelerator: ``auto`` (GPU when present), ``cpu``, ``gpu``, ``mps``.
        devices: Lightning devices (count or ``auto``).
        num_nodes: Lightning nodes.
        strategy: Lightning strategy (``auto``, ``ddp``, ...).
        max_time_s: Stop training after this many seconds (None = no limit).
        log_dir: Folder for the CSV metrics log (None = no log).
        progress_bar: Show Lightning's progress bar.
        num_workers: DataLoader worker processes.
        separation_weight: Extra BCE weight ``w0`` on the background between neighbouring
            footprints (U-Net paper weight map, :func:`model.data.separation_weights`), so the
            yards between a campus's buildings are not painted over and the buildings come out as
            separate polygons; 0 = off (the default: at w0 10 it helped one-core benchmark runs
            and cost recall in a two-thread run, see README).
        separation_sigma_px: Distance scale of that weight, in pixels (20 px = 12 m of NAIP).
        tune_threshold: After training, choose the decision threshold on the validation chips by
            object F1 and store it in the checkpoint (:mod:`model.calibrate`); off: 0.5.
        precise_bn: After training, recompute the batch-norm statistics over the training chips
            (:func:`model.train.precise_bn`); off: keep the running averages of the last batches,
            which on a few chips can leave the model predicting everything or nothing.
        gate_seconds: After training, distil the fast path's tile gate (:mod:`model.gate`) from
            the U-Net on the training chips' imagery, training it for at most this many seconds
            (plus one U-Net pass over up to 512 chips for its targets); 0 = no gate. A gate cut
            short scores flatly and keeps most tiles: safe, but little faster.
        resolution_m: Pixel size of the training imagery in metres, stored in the checkpoint so
            detection can resample scenes of another resolution to it (None: not known; the
            checkpoint then stands for NAIP's 0.6 m).
    """

    epochs: int = 20
    batch_size: int = 8
    lr: float = 1e-3
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    loss: Literal["dice_bce", "focal_dice", "ce"] = "dice_bce"
    pos_weight: float = 1.0
    augment: bool = True
    base_channels: int = 32
    depth: int = 4
    dropout: float = 0.1
    weight_decay: float = 1e-4
    seed: int = 0
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    max_time_s: float | None = None
    log_dir: Path | None = None
    progress_bar: bool = False
    num_workers: int = 0
    tune_threshold: bool = True
    separation_weight: float = 0.0
    separation_sigma_px: float = 20.0
    precise_bn: bool = True
    gate_seconds: float = 60.0
    resolution_m: float | None = None

    def __post_init__(self) -> None:
        if self.gate_seconds < 0:
            raise ConfigError(f"gate_seconds must be >= 0, got {self.gate_seconds}")
        if self.resolution_m is not None and not 0.01 <= self.resolution_m <= 100:
            raise ConfigError(f"resolution_m must be a pixel size in metres (0.01-100), got {self.resolution_m}")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0 or not math.isfinite(self.lr):
            raise ConfigError(f"--epochs, --batch-size and --lr must be positive, got {self.epochs}, "
                              f"{self.batch_size} and {self.lr}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise ConfigError(f"lr_schedule must be cosine or constant, got {self.lr_schedule!r}")
        if self.loss not in ("dice_bce", "focal_dice", "ce"):
            raise ConfigError(f"loss must be dice_bce, focal_dice or ce, got {self.loss!r}")
        if self.separation_weight < 0 or self.separation_sigma_px <= 0:
            raise ConfigError(f"need separation_weight >= 0 and separation_sigma_px > 0, got "
                              f"{self.separation_weight} and {self.separation_sigma_px}")


@dataclass(frozen=True)
class DetectConfig:
    """How to detect. CLI flags of ``dclabel detect`` map onto these fields one to one.

    Attributes:
        tile_size: Tile side in pixels (the seed: 256).
        overlap: Overlap of neighbouring tiles in pixels (the seed: 32).
        batch_size: Tiles per forward pass (None: 2 on a CPU, where small batches keep the
            activations in cache and run fastest per tile, 16 on a GPU).
        threshold: Probability above which a pixel is a data center (None: the checkpoint's own,
            chosen on its validation chips; 0.5 for checkpoints without one).
        min_area: Minimum footprint size in pixels (the seed: 100).
        merge_distance: Merge footprints closer than this, in metres (the seed: 10).
        simplify: Polygon simplification tolerance in metres (0 keeps pixel edges).
        device: Torch device (None: CUDA/MPS when present, else CPU).
        bands: 1-based source bands read as R,G,B,NIR (None: 1,2,3,4).
        mode: ``exact`` runs the U-Net on every tile; ``fast`` (model/fastpath.py) runs it only on
            tiles a coarse pass flags, with batch norm folded and bf16 where the CPU has it.
        coarse_factor: Fast mode: downsampling of the coarse pass (1 = no gate).
        coarse_threshold: Fast mode: coarse probability a tile must reach to run at full resolution.
        precision: Fast mode: ``auto`` (bf16 where native), ``fp32`` or ``bf16``.
        gate: Fast mode: ``auto`` uses the checkpoint's trained tile gate (:mod:`model.gate`) when it
            has one, else the coarse pass; ``trained`` or ``coarse`` force one.
        gate_threshold: Fast mode: tile score at which the trained gate runs the U-Net (None: the
            one stored with the gate, chosen on held-out chips; lower keeps more tiles).
        grow: Fast mode: also run a skipped tile when a detection in a kept neighbour reaches
            their shared edge, so a skip does not cut an object in two (about 10 % more tiles;
            one-process detection only: ``batch-detect`` on Lightning's engine gates tile by tile).
        resample: Detect on a scene whose pixel size differs by more than 20 % from the one the
            checkpoint was trained at through a VRT resampled to the checkpoint's, and on a scene
            in degrees through a VRT warped to its UTM zone (outputs stay on the scene's grid and
            in its CRS); False runs the model at the scene's own pixel size, with a warning, and
            refuses scenes in degrees.
    """

    tile_size: int = 256
    overlap: int = 32
    batch_size: int | None = None
    threshold: float | None = None
    min_area: float = 100
    merge_distance: float = 10.0
    simplify: float = 0.6
    device: str | None = None
    bands: tuple[int, ...] | None = None
    mode: Literal["exact", "fast"] = "exact"
    coarse_factor: int = 4
    coarse_threshold: float = 0.1
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    gate: Literal["auto", "trained", "coarse"] = "auto"
    gate_threshold: float | None = None
    grow: bool = True
    resample: bool = True

    def __post_init__(self) -> None:
        if self.mode not in ("exact", "fast") or self.precision not in ("auto", "fp32", "bf16"):
            raise ConfigError(f"mode must be exact or fast and precision auto, fp32 or bf16, got mode "
                              f"{self.mode!r}, precision {self.precision!r}")
        if self.gate not in ("auto", "trained", "coarse"):
            raise ConfigError(f"gate must be auto, trained or coarse, got {self.gate!r}")
        if self.gate_threshold is not None and not 0 <= self.gate_threshold < 1:
            raise ConfigError(f"--gate-threshold must be in [0, 1), got {self.gate_threshold}")
        if self.coarse_factor < 1 or not 0 <= self.coarse_threshold < 1:
            raise ConfigError(f"need --coarse-factor >= 1 and 0 <= --coarse-threshold < 1, got "
                              f"{self.coarse_factor} and {self.coarse_threshold}")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1 (or None for the device's default), got {self.batch_size}")
        if self.tile_size < 16:
            raise ConfigError(f"--tile-size must be at least 16 px, got {self.tile_size}")
        if not 0 <= self.overlap <= self.tile_size // 2:
            raise ConfigError(f"--overlap must be between 0 and half of --tile-size ({self.tile_size // 2} px for "
                              f"--tile-size {self.tile_size}), got {self.overlap}")
        for flag, value in (("--min-area", self.min_area), ("--merge-distance", self.merge_distance),
                            ("--simplify", self.simplify)):
            if not value >= 0:  # also NaN
                raise ConfigError(f"{flag} must be 0 or more, got {value}")
        if self.threshold is not None and not 0 < self.threshold < 1:
            raise ConfigError(f"--threshold must be in (0, 1), got {self.threshold}")
