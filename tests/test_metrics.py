"""Object matching: one to one at IoU >= 0.5, whatever the label ids."""

from __future__ import annotations

import numpy as np

from model.metrics import f1_from_counts, match_objects, object_f1


def _boxes(shape, boxes, ids=None):
    img = np.zeros(shape, np.int32)
    for k, (r0, r1, c0, c1) in enumerate(boxes):
        img[r0:r1, c0:c1] = ids[k] if ids else k + 1
    return img


def test_a_prediction_merging_two_buildings_matches_neither():
    true = _boxes((40, 60), [(5, 25, 5, 25), (5, 25, 35, 55)])
    merged = _boxes((40, 60), [(5, 25, 5, 55)])  # IoU 400/1000 with each
    assert match_objects(merged, true) == {"tp": 0, "fp": 1, "fn": 2}
    split = _boxes((40, 60), [(5, 25, 5, 22), (5, 25, 38, 55)])  # IoU 0.85 each
    assert match_objects(split, true) == {"tp": 2, "fp": 0, "fn": 0}


def test_matching_is_one_to_one():
    true = _boxes((30, 30), [(0, 20, 0, 20)])
    pred = _boxes((30, 30), [(0, 20, 0, 12), (0, 20, 12, 20)])  # halves: IoU 0.6 and 0.4
    assert match_objects(pred, true) == {"tp": 1, "fp": 1, "fn": 0}


def test_label_ids_absent_from_the_image_are_not_objects():
    # The labels of a whole scene's footprints cut to a test region keep their scene-wide ids;
    # ids that fall outside the region must not count as missed objects.
    true = _boxes((30, 30), [(0, 10, 0, 10), (15, 25, 15, 25)], ids=[4, 9])
    pred = _boxes((30, 30), [(0, 10, 0, 10)], ids=[7])
    assert match_objects(pred, true) == {"tp": 1, "fp": 0, "fn": 1}
    assert f1_from_counts(**match_objects(pred, true))["f1"] == 2 / 3
    assert match_objects(np.zeros((30, 30), np.int32), true) == {"tp": 0, "fp": 0, "fn": 2}


def test_object_f1_of_boolean_masks_labels_components():
    true = _boxes((40, 60), [(5, 25, 5, 25), (5, 25, 35, 55)]) > 0
    assert object_f1(true.copy(), true)["f1"] == 1.0
    assert object_f1(np.zeros_like(true), true) == {"f1": 0.0, "precision": 0.0, "recall": 0.0,
                                                    "tp": 0, "fp": 0, "fn": 2}
