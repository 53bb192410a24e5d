"""Self-describing checkpoints: weights, model config, band order, normalisation, metrics.

A checkpoint is data, never code: it is saved as plain tensors, numbers and strings and loaded
with ``torch.load(..., weights_only=True)``, so loading needs no other file and runs no pickle code.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch

from model.atomic import atomic_path
from model.errors import CheckpointError
from model.scene import BANDS, NAIP_RES_M
from model.unet import UNet, UNetConfig

FORMAT = "dclabel-checkpoint/1"


@dataclass(frozen=True)
class Normalization:
    """Per-band mean and standard deviation of uint8 pixel values (0..255)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise ValueError(f"Normalization needs one positive std per mean, got {self}")

    def tensors(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) as (1, C, 1, 1) float tensors."""
        mean = torch.tensor(self.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        return mean, std


@dataclass
class Checkpoint:
    """A trained model that describes itself.

    Attributes:
        state_dict: U-Net weights.
        unet: Model shape.
        bands: Band names in input order.
        normalization: Per-band normalisation applied to uint8 input.
        version: Unique version string (e.g. ``v3``).
        parent: Version it was warm-started from, or None.
        metrics: Validation metrics (``iou``, ``dice``, ...) and ``threshold``, the decision
            threshold chosen on the validation chips (see :mod:`model.calibrate`).
        data_version: Version of the label data it was trained on, or None.
        created: ISO 8601 UTC time.
        train: Training settings (epochs, lr, loss, number of chips, ...).
        gate: The fast path's tile gate distilled from this U-Net (:mod:`model.gate`): plain data
            (``state_dict``, ``width``, ``threshold`` ...), or None when it has none.
    """

    state_dict: dict[str, torch.Tensor]
    unet: UNetConfig
    normalization: Normalization
    bands: tuple[str, ...] = BANDS
    version: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    parent: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    data_version: str | None = None
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    train: dict = field(default_factory=dict)
    gate: dict | None = None

    @property
    def resolution_m(self) -> float:
        """Pixel size of the training imagery in metres (``train["resolution_m"]``); NAIP's 0.6 m
        when the checkpoint does not record one (the seed study and every synthetic scene here)."""
        r = self.train.get("resolution_m")
        return float(r) if r else NAIP_RES_M

    @property
    def threshold(self) -> float:
        """Decision threshold chosen on validation chips (``metrics["threshold"]``), else 0.5."""
        t = float(self.metrics.get("threshold", 0.5))
        return t if 0.0 < t < 1.0 else 0.5

    def to_payload(self) -> dict:
        """Plain-data form that ``torch.load(weights_only=True)`` accepts."""
        return {
            "format": FORMAT,
            "state_dict": {k: v.detach().cpu() for k, v in self.state_dict.items()},
            "unet": asdict(self.unet),
            "bands": list(self.bands),
            "normalization": {"mean": list(self.normalization.mean), "std": list(self.normalization.std)},
            "version": self.version,
            "parent": self.parent,
            "metrics": {k: float(v) for k, v in self.metrics.items()},
            "data_version": self.data_version,
            "created": self.created,
            "train": dict(self.train),
            "gate": None if self.gate is None else {
                **self.gate, "state_dict": {k: v.detach().cpu() for k, v in self.gate["state_dict"].items()}},
        }


def save_checkpoint(ckpt: Checkpoint, path: str | os.PathLike) -> Path:
    """Write a checkpoint atomically (temporary file in the same folder, then ``os.replace``)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(ckpt.to_payload(), tmp)
    return path


def load_checkpoint(path: str | os.PathLike, expected_bands: int | None = None) -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: The ``.pt`` file.
        expected_bands: If given, the number of input bands the caller will feed.

    Returns:
        The checkpoint.

    Raises:
        CheckpointError: Missing, corrupt, not a dclabel checkpoint, or incompatible.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint. Train one with `dclabel train` first.")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or pickled-code files
        # torch's own text for a refused pickle suggests weights_only=False: never do that (a
        # checkpoint is data, and that would run code from the file), so it is not passed on
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        detail = "" if "weights_only" in str(exc) or not first else f": {first[:160]}"
        raise CheckpointError(
            f"{path}: not a readable dclabel checkpoint ({type(exc).__name__}{detail}). It is truncated, "
            "corrupt, from another tool, or holds Python objects other than tensors (dclabel loads "
            "checkpoints as plain data only); retrain or pick another file."
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: expected a {FORMAT} checkpoint, found {found!r}.")
    try:
        unet = UNetConfig(**payload["unet"])
        ckpt = Checkpoint(
            state_dict=payload["state_dict"],
            unet=unet,
            normalization=Normalization(
                tuple(payload["normalization"]["mean"]), tuple(payload["normalization"]["std"])
            ),
            bands=tuple(payload["bands"]),
            version=payload["version"],
            parent=payload.get("parent"),
            metrics=dict(payload.get("metrics", {})),
            data_version=payload.get("data_version"),
            created=payload.get("created", ""),
            train=dict(payload.get("train", {})),
            gate=payload.get("gate"),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: checkpoint is missing or has a bad field ({exc}).") from exc
    if expected_bands is not None and unet.in_channels != expected_bands:
        raise CheckpointError(
            f"{path}: model expects {unet.in_channels} bands ({', '.join(ckpt.bands)}), "
            f"the scene gives {expected_bands}. Use --bands or a matching checkpoint."
        )
    return ckpt


def build_model(ckpt: Checkpoint, device: str | torch.device | None = None) -> UNet:
    """Instantiate the U-Net of a checkpoint in eval mode on ``device`` (default: best available)."""
    model = UNet(ckpt.unet)
    try:
        model.load_state_dict(ckpt.state_dict)
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint {ckpt.version}: weights do not fit its own model config ({str(exc)[:200]})."
        ) from exc
    return model.to(device or default_device()).eval()


def default_device() -> torch.device:
    """CUDA when present, then Apple MPS, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")
