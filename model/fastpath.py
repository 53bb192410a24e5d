"""Faster CPU detection: a cheap coarse pass decides which tiles the full U-Net runs on.

The exact path (:func:`model.predict_scene.predict_scene`) runs the U-Net on every tile. The fast
path, chosen with ``DetectConfig(mode="fast")`` or ``dclabel detect --fast``:

1. runs the same U-Net on each tile downsampled ``coarse_factor`` times (1/16 of the work at 4x)
   and keeps the tile only if the coarse probability reaches ``coarse_threshold`` somewhere in it;
2. runs the full-resolution U-Net on the kept tiles only, with batch norm folded into the
   convolutions, channels-last memory and bfloat16 autocast where the CPU supports it natively
   (AVX512-BF16/AMX; otherwise float32);
3. blends kept tiles exactly as the exact path does; pixels that no kept tile covers get
   probability 0 (skipped tiles contribute nothing, so they do not dilute their neighbours).

Memory streams strip by strip as in the exact path.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import rasterio
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from model.blend import StripBlender, probability_raster, read_strips
from model.checkpoint import Checkpoint, build_model
from model.errors import Cancelled
from model.inference import tile_batch_size
from model.scene import SceneInfo

Precision = Literal["auto", "fp32", "bf16"]


def bf16_native(device: torch.device) -> bool:
    """True when bfloat16 convolutions are native on ``device`` (CUDA with bf16, or a CPU with AVX512-BF16/AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and _cpu_has_bf16_instructions()
    except (AttributeError, RuntimeError):
        return False


def _cpu_has_bf16_instructions() -> bool:
    """oneDNN emulates bf16 on AVX512 CPUs without AVX512-BF16 (slower than float32): require it."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: trust oneDNN's answer
        return True
    return "avx512_bf16" in flags or "amx_bf16" in flags


def fuse_batch_norm(model: nn.Module) -> nn.Module:
    """A copy of an eval-mode model with every Conv2d -> BatchNorm2d pair folded into one Conv2d."""
    fused = copy.deepcopy(model).eval()
    for seq in [m for m in fused.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            if isinstance(seq[i], nn.Conv2d) and isinstance(seq[i + 1], nn.BatchNorm2d):
                seq[i] = fuse_conv_bn_eval(seq[i], seq[i + 1])
                seq[i + 1] = nn.Identity()
    return fused


class FastModel:
    """The U-Net prepared for fast inference, with the coarse gate.

    Args:
        ckpt: Checkpoint to run.
        device: Torch device (default: CUDA/MPS when present, else CPU).
        precision: ``auto`` (bf16 where native, else fp32), ``fp32`` or ``bf16``.
        coarse_factor: Downsampling of the coarse pass (1 disables the gate).
        coarse_threshold: A tile runs at full resolution when its coarse probability reaches this.
    """

    def __init__(
        self,
        ckpt: Checkpoint,
        device: str | torch.device | None = None,
        precision: Precision = "auto",
        coarse_factor: int = 4,
        coarse_threshold: float = 0.1,
    ) -> None:
        base = build_model(ckpt, device)
        self.device = next(base.parameters()).device
        self.net = fuse_batch_norm(base).to(memory_format=torch.channels_last)
        self.multiple = 2 ** ckpt.unet.depth
        self.mean, self.std = ckpt.normalization.tensors(self.device)
        self.bf16 = precision == "bf16" or (precision == "auto" and bf16_native(self.device))
        self.coarse_factor, self.coarse_threshold = coarse_factor, coarse_threshold

    def _normalise(self, tiles: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(tiles)).to(self.device, torch.float32)
        return (x - self.mean) / self.std

    def _probs(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "replicate")
        x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            logits = self.net(x)
        return torch.sigmoid(logits.float())[:, 0, :h, :w]

    @torch.inference_mode()
    def predict(self, tiles: np.ndarray) -> np.ndarray:
        """Full-resolution probabilities (N, H, W) float32 of uint8 tiles (N, C, H, W)."""
        return self._probs(self._normalise(tiles)).cpu().numpy()

    @torch.inference_mode()
    def gate(self, tiles: np.ndarray) -> np.ndarray:
        """Boolean (N,): which tiles the coarse pass keeps (all of them when the gate is off)."""
        f = self.coarse_factor
        if f <= 1 or len(tiles) == 0:
            return np.ones(len(tiles), bool)
        x = F.avg_pool2d(self._normalise(tiles), f, ceil_mode=True)
        peak = self._probs(x).amax(dim=(1, 2)).cpu().numpy()
        return peak >= self.coarse_threshold


@dataclass(frozen=True)
class FastStats:
    """What the fast path did over a scene.

    Attributes:
        tiles: Tiles in the grid.
        with_data: Tiles holding data (not nodata or zero fill).
        full_res: Tiles the full-resolution U-Net ran on.
        seconds: Wall time.
        bf16: Whether bfloat16 autocast was used.
    """

    tiles: int
    with_data: int
    full_res: int
    seconds: float
    bf16: bool


def predict_scene_fast(
    ckpt: Checkpoint,
    scene: SceneInfo,
    prob_path: str | os.PathLike,
    tile_size: int = 256,
    overlap: int = 32,
    batch_size: int | None = None,
    device: str | torch.device | None = None,
    coarse_factor: int = 4,
    coarse_threshold: float = 0.1,
    precision: Precision = "auto",
    progress=None,
    cancel=None,
) -> FastStats:
    """Predict a scene's probability GeoTIFF (uint8, p * 255) with the coarse gate.

    Args:
        ckpt: Loaded checkpoint.
        scene: Scene to predict.
        prob_path: Output GeoTIFF (written under a temporary name, renamed when complete).
        tile_size: Tile side in pixels.
        overlap: Overlap between neighbouring tiles in pixels.
        batch_size: Tiles per full-resolution forward pass (None: the device's default).
        device: Torch device (default: CUDA/MPS when present, else CPU).
        coarse_factor: Downsampling of the coarse pass (1 runs every tile at full resolution).
        coarse_threshold: Coarse probability a tile must reach somewhere to run at full resolution.
        precision: ``auto``, ``fp32`` or ``bf16`` (see :class:`FastModel`).
        progress: ``progress(tiles_done, tiles_total, {"tiles_per_s", "full_res"})``.
        cancel: Returns True to stop (raises :class:`Cancelled`, nothing is left at ``prob_path``).

    Returns:
        Counts and timing of the run.
    """
    fast = FastModel(ckpt, device, precision, coarse_factor, coarse_threshold)
    batch_size = tile_batch_size(batch_size, fast.device)
    done, with_data, full_res = 0, 0, 0
    t0 = time.perf_counter()
    with rasterio.open(scene.path) as src, probability_raster(scene, prob_path) as dst:
        blender = StripBlender(scene, dst, tile_size, overlap)
        total = len(blender.rows) * len(blender.cols)
        for strip in read_strips(scene, src, tile_size, overlap):
            origins = strip.origins
            with_data += len(origins)
            if cancel is not None and cancel():
                raise Cancelled("detection was cancelled; no output was written.")
            if origins:
                tiles = strip.tiles(origins, tile_size)
                keep = fast.gate(tiles)
                origins = [c for c, k in zip(origins, keep, strict=True) if k]
                tiles = tiles[keep]
            for b in range(0, len(origins), batch_size):
                if cancel is not None and cancel():
                    raise Cancelled("detection was cancelled; no output was written.")
                for p, c in zip(fast.predict(tiles[b : b + batch_size]), origins[b : b + batch_size], strict=True):
                    blender.add(c, p)
            full_res += len(origins)
            blender.finish_strip(strip.index, strip.valid)
            done += len(blender.cols)
            if progress is not None:
                rate = done / max(time.perf_counter() - t0, 1e-9)
                progress(done, total, {"tiles_per_s": rate, "full_res": full_res})
    return FastStats(total, with_data, full_res, time.perf_counter() - t0, fast.bf16)

