"""The tile gate of the fast path: a small CNN taught by the U-Net where the U-Net will detect.

The fast path (:mod:`model.fastpath`) runs the full U-Net only on tiles a cheap pass flags. The
U-Net itself run on 4x-downsampled tiles (the "coarse" gate) is a model used off its training
scale: the rooftop cues that tell a data center from a warehouse are gone at 2.4 m, so it flags
every large roof or nothing. The tile gate is trained for the job instead, by distillation:

- its targets are the U-Net's own probabilities on the training imagery, max-pooled to 16 px
  cells (soft targets: a near miss at 0.8 teaches more than a hard 0), so it needs no labels and
  learns where the exact path would detect, false positives included (object F1 of the fast
  path then follows the exact path's). Soft targets kept 32 % of the benchmark's dense scene
  for 30 % holding exact detections; hard 0/1 targets (U-Net detections of at least
  ``min_area`` px) kept 47 % (trial runs on bench/fastpath.py's scenes, 2026-11-29);
- it is fully convolutional (1.2 m input, 16 px output cells) and, with its input pooled in
  integers and batch norm folded, costs about 4 % of a base-16 U-Net per tile in a scene run
  (1.7 ms with its input pooling, of which the CNN about 1 ms, against 36-47 ms; profile of
  bench/fastpath.py's typical scene, 2026-11-29), so a skipped tile costs little;
- its decision threshold is chosen on held-out chips so that every chip where the U-Net detects
  something is kept: the lowest such chip's score (at most 0.5). Until 2026-11-29 it was half
  that; once the fast path grew into the tile above as well as left, right and below, the margin
  only kept more tiles: on bench/fastpath.py's scenes the lower threshold ran 35 % of the tiles of
  the typical scene and the higher one 20 %, each with every exact detection that matches a true
  data center kept (two gates checked, 16 such detections).

Trained at the end of :func:`model.train.fit` (``TrainConfig.gate_seconds``) and stored in the
checkpoint; ``dclabel train-gate`` adds one to an existing checkpoint from any imagery.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.checkpoint import Checkpoint, default_device
from model.data import dihedral
from model.errors import Cancelled, CheckpointError
from model.metrics import label_objects

CELL = 16  # pixels per output cell of the gate
MARGIN = 1.0  # the threshold is this fraction of the lowest held-out positive chip's score
__all__ = ["CELL", "GateFit", "TileGate", "build_gate", "detection_cells", "fit_gate", "gate_input", "gate_scores"]


def _block(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def gate_input(tiles: np.ndarray) -> torch.Tensor:
    """uint8 tiles (N, C, H, W) -> float (N, C, H/2, W/2): means of 2x2 pixels (1.2 m for NAIP).

    Summed in int16 before one float conversion: 4-5x faster than converting the full tiles and
    average-pooling, and exactly equal (a trailing odd row or column is dropped).
    """
    x = torch.from_numpy(np.ascontiguousarray(tiles)).to(torch.int16)
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    return (x[..., 0:h:2, 0:w:2] + x[..., 0:h:2, 1:w:2] + x[..., 1:h:2, 0:w:2] + x[..., 1:h:2, 1:w:2]).float() * 0.25


class TileGate(nn.Module):
    """Half-resolution pixels (:func:`gate_input`) -> logits (N, 1, ~H/16, ~W/16) of "the U-Net detects here".

    Three stride-2 blocks take the 1.2 m input to 16 px cells, two dilated blocks widen the view
    to about 300 px (a whole roof and its yard), a 1x1 convolution scores each cell.

    Args:
        mean: Per-band mean of uint8 pixels (the checkpoint's normalisation).
        std: Per-band standard deviation.
        width: Channels of the first block (then 2x and 4x).
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], width: int = 16) -> None:
        super().__init__()
        w, c = width, len(mean)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.body = nn.Sequential(
            _block(c, w, stride=2),
            _block(w, 2 * w, stride=2),
            _block(2 * w, 4 * w, stride=2),  # 16 px cells
            _block(4 * w, 4 * w, dilation=2),
            _block(4 * w, 4 * w, dilation=4),
            nn.Conv2d(4 * w, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body((x - self.mean) / self.std)


@dataclass(frozen=True)
class GateFit:
    """A trained gate and how it did on held-out chips.

    Attributes:
        payload: What the checkpoint stores (``state_dict``, ``width``, ``threshold`` ...).
        threshold: Tile score (highest cell probability) at or above which a tile runs the U-Net.
        recall: Share of held-out chips with U-Net detections that the gate keeps (1.0 by construction
            of the threshold, unless there were none to hold out).
        keep_share: Share of held-out chips without U-Net detections that it keeps anyway.
        chips: Chips it was trained and checked on.
        positive_chips: Chips where the U-Net detects something.
        seconds: Wall time of target computation and training.
    """

    payload: dict
    threshold: float
    recall: float
    keep_share: float
    chips: int
    positive_chips: int
    seconds: float


def build_gate(payload: dict, device: str | torch.device | None = None) -> tuple[nn.Module, float]:
    """The gate stored in a checkpoint, ready for inference on ``device`` (batch norm folded,
    channels-last), and its threshold."""
    from model.inference import fuse_batch_norm

    try:
        sd = payload["state_dict"]
        gate = TileGate(tuple(sd["mean"].flatten().tolist()), tuple(sd["std"].flatten().tolist()),
                        int(payload["width"]))
        gate.load_state_dict(sd)
        threshold = float(payload["threshold"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"the checkpoint's tile gate is damaged ({type(exc).__name__}: {str(exc)[:200]}); "
                              "add a new one with `dclabel train-gate` or detect with --gate coarse.") from exc
    gate = fuse_batch_norm(gate.eval()).to(device or default_device(), memory_format=torch.channels_last)
    return gate, threshold


def gate_scores(gate: nn.Module, tiles: np.ndarray) -> np.ndarray:
    """Each uint8 tile's score: the gate's highest cell probability."""
    dev = next(gate.parameters()).device
    x = gate_input(tiles).to(dev).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        return torch.sigmoid(gate(x)).amax(dim=(1, 2, 3)).cpu().numpy()


def detection_cells(probs: np.ndarray, threshold: float, min_area: int) -> np.ndarray:
    """Per 16 px cell, whether a U-Net detection covers it.

    Args:
        probs: Probabilities (N, H, W).
        threshold: Decision threshold.
        min_area: Smallest component kept, in pixels (smaller specks are dropped as detect drops them).

    Returns:
        Boolean (N, ceil(H/16), ceil(W/16)).
    """
    n, h, w = probs.shape
    out = np.zeros((n, -(-h // CELL), -(-w // CELL)), bool)
    for i in range(n):
        labels, k = label_objects(probs[i] >= threshold, min_area)
        if k:
            pooled = F.max_pool2d(torch.from_numpy((labels > 0)[None, None].astype(np.float32)), CELL,
                                  ceil_mode=True)
            out[i] = pooled[0, 0].numpy() > 0
    return out


def fit_gate(
    ckpt: Checkpoint,
    chips: Sequence[np.ndarray],
    min_area: int = 100,
    max_seconds: float = 60.0,
    epochs: int = 40,
    width: int = 16,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> GateFit | None:
    """Distil a tile gate from ``ckpt``'s U-Net on uint8 chips (C, H, W) of one size (H, W multiples of 16).

    A fifth of the chips (seeded) is held out to choose the threshold when at least five of them
    hold U-Net detections; otherwise the threshold is chosen on all chips.

    Args:
        ckpt: The checkpoint whose U-Net the gate imitates (its threshold defines a detection).
        chips: Imagery to learn from; no labels needed.
        min_area: Smallest detection detection will keep, in pixels (``DetectConfig.min_area``).
            Components from a quarter of it count, since a chip's edge can cut a large one.
        max_seconds: Training stops after this (targets excluded).
        epochs: Passes over the training chips at most.
        width: First block's channels.
        seed: Seed of the split, shuffling and augmentation.
        device: Torch device (default: best available).
        progress: ``progress(epoch, epochs)``.
        cancel: Returns True to stop (checked every epoch; raises :class:`~model.errors.Cancelled`).

    Returns:
        The fit, or None when the U-Net detects nothing on any chip (nothing to learn).
    """
    from model.inference import TileModel

    t0 = time.perf_counter()
    if len(chips) == 0:
        return None
    shape = chips[0].shape
    if any(c.shape != shape for c in chips) or shape[1] % CELL or shape[2] % CELL:
        raise ValueError(f"fit_gate: chips must share one shape with sides divisible by {CELL}")
    unet = TileModel(ckpt, device, "fp32", coarse_factor=1)
    dev = unet.device
    y_all, soft_all = [], []
    for b in range(0, len(chips), 16):
        probs = unet.predict(np.stack(chips[b : b + 16]))
        y_all.append(torch.from_numpy(detection_cells(probs, ckpt.threshold, max(1, min_area // 4))))
        soft_all.append(F.max_pool2d(torch.from_numpy(probs)[:, None], CELL, ceil_mode=True))
    x = torch.cat([gate_input(np.stack(chips[b : b + 64])) for b in range(0, len(chips), 64)])
    y = torch.cat(y_all).float()[:, None]
    soft = torch.cat(soft_all)

    def inputs(idx) -> torch.Tensor:
        return x[idx].to(dev)

    pos_chip = (y.amax(dim=(1, 2, 3)) > 0).numpy()
    if not pos_chip.any():
        return None
    t_train = time.perf_counter()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(x))
    n_val = len(x) // 5
    val, train = order[:n_val], order[n_val:]
    if pos_chip[val].sum() < 5:
        val = order  # too few held-out positives to judge: choose on every chip
    torch.manual_seed(seed)
    gate = TileGate(ckpt.normalization.mean, ckpt.normalization.std, width).to(dev)
    opt = torch.optim.AdamW(gate.parameters(), lr=3e-3, weight_decay=1e-4)
    for epoch in range(epochs):
        gate.train()
        for b in range(0, len(train), 16):
            idx = torch.from_numpy(train[b : b + 16])
            k = int(rng.integers(8))
            xb, yb = dihedral(inputs(idx), k), dihedral(soft[idx], k).to(dev)
            loss = F.binary_cross_entropy_with_logits(gate(xb), yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
        rng.shuffle(train)
        if cancel is not None and cancel():
            raise Cancelled("gate training was cancelled; nothing was written.")
        if progress is not None:
            progress(epoch + 1, epochs)
        if time.perf_counter() - t_train > max_seconds:
            break
    gate.eval()
    with torch.inference_mode():
        scores = torch.cat([torch.sigmoid(gate(inputs(torch.from_numpy(val[b : b + 64])))).amax(dim=(1, 2, 3)).cpu()
                            for b in range(0, len(val), 64)]).numpy()
    pos_val = pos_chip[val]
    threshold = float(np.clip(MARGIN * scores[pos_val].min(), 1e-3, 0.5))
    keep = scores >= threshold
    recall = float(keep[pos_val].mean())
    keep_share = float(keep[~pos_val].mean()) if (~pos_val).any() else float("nan")
    payload = {
        "state_dict": {k: v.detach().cpu() for k, v in gate.state_dict().items()},
        "width": int(width),
        "threshold": threshold,
        "recall": recall,
        "keep_share": keep_share,
        "chips": int(len(x)),
        "positive_chips": int(pos_chip.sum()),
        "min_area": int(min_area),
        "model_version": ckpt.version,
    }
    return GateFit(payload, threshold, recall, keep_share, len(x), int(pos_chip.sum()),
                   time.perf_counter() - t0)
