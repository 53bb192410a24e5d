"""Pixel and object metrics for binary footprint masks."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def pixel_metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """IoU, Dice, precision and recall of two boolean masks of the same shape.

    Empty-vs-empty counts as perfect (1.0) so that reviewed-empty chips do not punish a model
    that correctly predicts nothing.
    """
    pred, true = np.asarray(pred, bool), np.asarray(true, bool)
    tp = float(np.count_nonzero(pred & true))
    fp = float(np.count_nonzero(pred & ~true))
    fn = float(np.count_nonzero(~pred & true))
    return counts_to_metrics(tp, fp, fn)


def counts_to_metrics(tp: float, fp: float, fn: float) -> dict[str, float]:
    """Pixel metrics from accumulated true/false positive/negative counts."""

    def ratio(a: float, b: float) -> float:
        return a / b if b > 0 else 1.0

    return {
        "iou": ratio(tp, tp + fp + fn),
        "dice": ratio(2 * tp, 2 * tp + fp + fn),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
    }


def label_objects(mask: np.ndarray, min_size: int = 0) -> tuple[np.ndarray, int]:
    """Connected components (8-connectivity) of a boolean mask, dropping ones under ``min_size`` px."""
    labels, n = ndimage.label(np.asarray(mask, bool), structure=np.ones((3, 3), bool))
    if min_size > 0 and n:
        sizes = np.bincount(labels.ravel())
        small = sizes < min_size
        small[0] = False
        if small.any():
            labels[small[labels]] = 0
            labels, n = ndimage.label(labels > 0, structure=np.ones((3, 3), bool))
    return labels, n


def match_objects(pred_labels: np.ndarray, true_labels: np.ndarray, iou_threshold: float = 0.5) -> dict:
    """One-to-one matching of labelled objects at IoU >= ``iou_threshold``.

    Because two objects of one label image never overlap, at most one predicted object can
    reach IoU > 0.5 with a given true object, so greedy matching by IoU is optimal there.

    Labels need not be consecutive: an object counts when its label occurs in the image (a label
    raster of a scene's footprints cut to a test region holds only some of their ids).

    Returns:
        ``{"tp", "fp", "fn"}`` counts.
    """
    n_pred, n_true = int(pred_labels.max(initial=0)), int(true_labels.max(initial=0))
    area_p = np.bincount(pred_labels.ravel(), minlength=n_pred + 1)
    area_t = np.bincount(true_labels.ravel(), minlength=n_true + 1)
    present_p, present_t = int(np.count_nonzero(area_p[1:])), int(np.count_nonzero(area_t[1:]))
    if present_p == 0 or present_t == 0:
        return {"tp": 0, "fp": present_p, "fn": present_t}
    both = (pred_labels > 0) & (true_labels > 0)
    pairs = pred_labels[both].astype(np.int64) * (n_true + 1) + true_labels[both]
    inter = np.bincount(pairs, minlength=(n_pred + 1) * (n_true + 1)).reshape(n_pred + 1, n_true + 1)
    pi, ti = np.nonzero(inter)
    ious = inter[pi, ti] / (area_p[pi] + area_t[ti] - inter[pi, ti])
    order = np.argsort(-ious)
    used_p, used_t, tp = set(), set(), 0
    for k in order:
        if ious[k] < iou_threshold:
            break
        if pi[k] in used_p or ti[k] in used_t:
            continue
        used_p.add(pi[k])
        used_t.add(ti[k])
        tp += 1
    return {"tp": tp, "fp": present_p - tp, "fn": present_t - tp}


def object_f1(
    pred: np.ndarray, true: np.ndarray, iou_threshold: float = 0.5, min_size: int = 0
) -> dict[str, float]:
    """Object-level F1: a predicted footprint matches a true one at IoU >= 0.5, one to one.

    Args:
        pred: Boolean predicted mask, or an integer label image.
        true: Boolean true mask, or an integer label image (use labels when true footprints touch).
        iou_threshold: Match threshold.
        min_size: Predicted components under this many pixels are ignored.

    Returns:
        ``{"f1", "precision", "recall", "tp", "fp", "fn"}``.
    """
    pl = label_objects(pred, min_size)[0] if pred.dtype == bool else pred
    tl = label_objects(true)[0] if true.dtype == bool else true
    return f1_from_counts(**match_objects(pl, tl, iou_threshold))


def f1_from_counts(tp: int, fp: int, fn: int) -> dict[str, float]:
    """Object precision, recall and F1 from match counts (1.0 when there is nothing to find)."""
    precision = tp / (tp + fp) if tp + fp else 1.0 if fn == 0 else 0.0
    recall = tp / (tp + fn) if tp + fn else 1.0 if fp == 0 else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"f1": f1, "precision": precision, "recall": recall, "tp": tp, "fp": fp, "fn": fn}
