"""Decision threshold chosen on validation chips by object F1.

A U-Net trained with a positive-weighted BCE + Dice loss is not calibrated: its probabilities run
high, and at 0.5 it paints the yards and driveways between the buildings of a campus, so
neighbouring data centers come out as one polygon that matches none of them. The threshold at
which footprints separate is a property of the trained model, so it is chosen after training on
the held-out validation chips (the operating point a detector of objects cares about: object F1,
pixel IoU breaking ties) and stored in the checkpoint; detection and proposals use it unless the
user sets one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from model.checkpoint import Checkpoint, build_model
from model.inference import predict_tiles
from model.metrics import counts_to_metrics, f1_from_counts, label_objects, match_objects

DEFAULT_THRESHOLD = 0.5
THRESHOLDS = tuple(round(0.3 + 0.05 * i, 2) for i in range(13))  # 0.30 .. 0.90
MIN_OBJECTS = 5


@dataclass(frozen=True)
class ThresholdChoice:
    """Result of :func:`choose_threshold`.

    Attributes:
        threshold: The chosen threshold (:data:`DEFAULT_THRESHOLD` when validation is too small).
        n_objects: True objects (connected footprints) in the validation chips.
        table: One row per tried threshold: ``threshold``, ``object_f1``, ``iou``.
        reason: Why this threshold (for logs and the registry).
        judged: Whether validation held enough objects to choose (else the default was kept).
    """

    threshold: float
    n_objects: int
    table: tuple[dict[str, float], ...]
    reason: str
    judged: bool = True


def threshold_table(
    probs: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    thresholds: Sequence[float] = THRESHOLDS,
    min_object_px: int = 100,
) -> tuple[list[dict[str, float]], int]:
    """Object F1 and pixel IoU of probability maps against masks at every threshold.

    Args:
        probs: Probability maps (H, W) in [0, 1].
        masks: Matching true masks (non-zero = data center).
        thresholds: Thresholds to try.
        min_object_px: Predicted objects smaller than this are ignored (as detection drops them).

    Returns:
        ``(rows, n_objects)``: a row per threshold and the number of true objects.
    """
    truths = [label_objects(np.asarray(m) > 0)[0] for m in masks]
    n_objects = sum(int(np.count_nonzero(np.bincount(t.ravel())[1:])) for t in truths)
    rows = []
    for t in thresholds:
        pix = np.zeros(3)
        obj = np.zeros(3, int)
        for p, true in zip(probs, truths, strict=True):
            pred = p >= t
            pos = true > 0
            pix += (np.count_nonzero(pred & pos), np.count_nonzero(pred & ~pos), np.count_nonzero(~pred & pos))
            m = match_objects(label_objects(pred, min_object_px)[0], true)
            obj += (m["tp"], m["fp"], m["fn"])
        rows.append({"threshold": float(t), "object_f1": float(f1_from_counts(*obj)["f1"]),
                     "iou": float(counts_to_metrics(*pix)["iou"])})
    return rows, n_objects


def pick_threshold(rows: Sequence[dict[str, float]], n_objects: int, min_objects: int = MIN_OBJECTS) -> ThresholdChoice:
    """Best row by object F1, then pixel IoU, then nearness to 0.5; 0.5 when there is too little to judge."""
    if n_objects < min_objects:
        return ThresholdChoice(DEFAULT_THRESHOLD, n_objects, tuple(rows),
                               f"{n_objects} validation objects (< {min_objects}): kept {DEFAULT_THRESHOLD}", False)
    best = max(rows, key=lambda r: (round(r["object_f1"], 6), round(r["iou"], 6), -abs(r["threshold"] - 0.5)))
    return ThresholdChoice(best["threshold"], n_objects, tuple(rows),
                           f"best validation object F1 {best['object_f1']:.3f} (pixel IoU {best['iou']:.3f}) "
                           f"over {n_objects} objects")


def choose_threshold(
    ckpt: Checkpoint,
    pairs: Sequence,
    device: str | None = None,
    batch_size: int = 8,
    min_object_px: int = 100,
    min_objects: int = MIN_OBJECTS,
) -> ThresholdChoice:
    """Run the checkpoint over validation ``(image, mask)`` pairs and pick its threshold.

    Args:
        ckpt: Trained checkpoint.
        pairs: Validation chips: ``(uint8 image (C, H, W), mask (H, W))``.
        device: Inference device (default: the best available).
        batch_size: Chips per forward pass.
        min_object_px: Smallest predicted object counted.
        min_objects: Fewer true objects than this: keep :data:`DEFAULT_THRESHOLD`.
    """
    read = [pairs[i] for i in range(len(pairs))]  # once: pairs may read chips from disk
    images, masks = [np.asarray(p[0]) for p in read], [np.asarray(p[1]) for p in read]
    if sum(int(m.any()) for m in masks) == 0:
        return ThresholdChoice(DEFAULT_THRESHOLD, 0, (), f"no data center in the validation chips: kept {DEFAULT_THRESHOLD}",
                               False)
    model = build_model(ckpt, device)
    probs: list[np.ndarray] = []
    batch: list[np.ndarray] = []
    for image in images:
        if batch and (len(batch) == batch_size or image.shape != batch[0].shape):
            probs.extend(predict_tiles(model, ckpt.normalization, np.stack(batch)))
            batch = []
        batch.append(image)
    if batch:
        probs.extend(predict_tiles(model, ckpt.normalization, np.stack(batch)))
    rows, n = threshold_table(probs, masks, THRESHOLDS, min_object_px)
    return pick_threshold(rows, n, min_objects)
