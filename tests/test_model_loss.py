"""The training loss: soft Dice leaves all-negative batches to the pixel-wise term."""

from __future__ import annotations

import torch

from model.task import SegmentationTask, soft_dice_loss


def test_dice_is_zero_without_positives_and_has_no_gradient():
    logits = torch.full((2, 1, 8, 8), 3.0, requires_grad=True)
    loss = soft_dice_loss(logits, torch.zeros(2, 1, 8, 8))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.count_nonzero(logits.grad) == 0


def test_dice_rewards_overlap_when_positives_exist():
    target = torch.zeros(1, 1, 8, 8)
    target[..., 2:6, 2:6] = 1
    good = soft_dice_loss(torch.where(target > 0, 6.0, -6.0), target)
    bad = soft_dice_loss(torch.where(target > 0, -6.0, 6.0), target)
    assert good.item() < 0.05 < 0.9 < bad.item()


def test_all_negative_batch_still_penalises_false_positives():
    task = SegmentationTask({"base_channels": 4, "depth": 2}, (0.0,) * 4, (1.0,) * 4, loss="dice_bce")
    target = torch.zeros(2, 1, 8, 8)
    confident_fp = task._loss(torch.full((2, 1, 8, 8), 4.0), target)
    quiet = task._loss(torch.full((2, 1, 8, 8), -4.0), target)
    assert confident_fp.item() > 1.0 > 0.1 > quiet.item()
