"""The decision threshold chosen on validation chips, and detection using the checkpoint's own."""

from __future__ import annotations

import numpy as np
from geodata import make_scene
from test_model_detect import constant_checkpoint

from model.calibrate import DEFAULT_THRESHOLD, THRESHOLDS, pick_threshold, threshold_table
from model.detect import DetectConfig, detect_scene


def two_buildings_and_a_yard(yard_p: float = 0.7) -> tuple[np.ndarray, np.ndarray]:
    """Two 40 px roofs (p 0.95) 12 px apart, the yard between them at ``yard_p``; truth: the roofs."""
    prob = np.full((128, 128), 0.05, np.float32)
    mask = np.zeros((128, 128), np.uint8)
    for c0 in (20, 72):
        prob[40:80, c0 : c0 + 40] = 0.95
        mask[40:80, c0 : c0 + 40] = 1
    prob[50:70, 60:72] = yard_p
    return prob, mask


def test_threshold_that_separates_neighbouring_buildings_is_chosen() -> None:
    prob, mask = two_buildings_and_a_yard(0.7)
    rows, n = threshold_table([prob] * 3, [mask] * 3, min_object_px=100)
    assert n == 6
    by_t = {r["threshold"]: r for r in rows}
    assert by_t[0.5]["object_f1"] == 0.0  # the yard joins the roofs: one blob matching neither
    assert by_t[0.75]["object_f1"] == 1.0 and by_t[0.75]["iou"] == 1.0
    choice = pick_threshold(rows, n, min_objects=5)
    # every threshold above the yard and below the roofs is perfect; the one nearest 0.5 wins
    assert choice.threshold == min(t for t in THRESHOLDS if t > 0.7)


def test_threshold_stays_at_default_without_enough_objects() -> None:
    prob, mask = two_buildings_and_a_yard(0.7)
    rows, n = threshold_table([prob], [mask])
    choice = pick_threshold(rows, n, min_objects=5)
    assert n == 2 and choice.threshold == DEFAULT_THRESHOLD and "< 5" in choice.reason


def test_detection_uses_the_checkpoints_threshold_unless_told(tmp_path) -> None:
    path, _ = make_scene(tmp_path / "s.tif", (64, 64))
    ckpt = constant_checkpoint(0.6)  # p = 0.6 everywhere: one scene-wide footprint at thresholds <= 0.6
    assert ckpt.threshold == 0.5  # no threshold chosen yet: the seed's 0.5
    assert len(detect_scene(ckpt, path, DetectConfig(min_area=10))) == 1
    ckpt.metrics["threshold"] = 0.7
    assert len(detect_scene(ckpt, path, DetectConfig(min_area=10))) == 0
    assert len(detect_scene(ckpt, path, DetectConfig(min_area=10, threshold=0.55))) == 1


def test_warm_start_keeps_the_parents_threshold_when_validation_cannot_judge() -> None:
    from model.train import tune_threshold

    ckpt = constant_checkpoint(0.6)
    prob, mask = two_buildings_and_a_yard()
    image = np.zeros((4, *mask.shape), np.uint8)
    ckpt.metrics["threshold"] = 0.8  # inherited from the parent
    tune_threshold(ckpt, [(image, mask)])  # two objects: too few to judge
    assert ckpt.threshold == 0.8 and "kept the parent's 0.8" in ckpt.train["threshold_choice"]
    fresh = constant_checkpoint(0.6)
    tune_threshold(fresh, [(image, mask)])
    assert fresh.threshold == DEFAULT_THRESHOLD
