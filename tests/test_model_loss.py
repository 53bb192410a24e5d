"""The training loss (soft Dice leaves all-negative batches to the pixel-wise term) and the lr schedule."""

from __future__ import annotations

import numpy as np
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


def _learning_rates(monkeypatch, **config) -> list[float]:
    """Learning rate of every optimizer step of a tiny training run."""
    import lightning as L
    import numpy as np

    from model.config import TrainConfig
    from model.train import fit

    seen: list[float] = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    rng = np.random.default_rng(0)
    pairs = [(rng.integers(0, 255, (4, 32, 32), dtype=np.uint8), (rng.random((32, 32)) > 0.7).astype(np.uint8))
             for _ in range(4)]
    original = L.Trainer.__init__

    def with_recorder(self, *args, **kwargs):
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), Record()]
        original(self, *args, **kwargs)

    monkeypatch.setattr(L.Trainer, "__init__", with_recorder)
    fit(pairs, [], TrainConfig(**{"batch_size": 2, "lr": 1e-2, "base_channels": 4, "depth": 2,
                                  "accelerator": "cpu", "augment": False, **config}))
    return seen


def test_cosine_schedule_anneals_over_the_epochs(monkeypatch):
    lrs = _learning_rates(monkeypatch, epochs=4)  # 2 steps per epoch
    assert len(lrs) == 8
    assert lrs[0] == 1e-2
    assert all(a > b for a, b in zip(lrs, lrs[1:], strict=False))
    assert lrs[-1] < 0.1 * lrs[0]


def test_cosine_schedule_follows_the_time_budget_when_it_ends_the_run_first(monkeypatch):
    lrs = _learning_rates(monkeypatch, epochs=100_000, max_time_s=2.0)
    steps_share = len(lrs) / 200_000
    assert steps_share < 0.1  # time ended the run, far from the step budget
    assert lrs[-1] < 0.25 * lrs[0]  # yet the rate was annealed


def test_constant_schedule_keeps_the_rate(monkeypatch):
    assert set(_learning_rates(monkeypatch, epochs=3, lr_schedule="constant")) == {1e-2}


def _two_roofs(gap: int) -> np.ndarray:
    mask = np.zeros((96, 160), np.uint8)
    mask[30:70, 10:60] = 1
    mask[30:70, 60 + gap : 110 + gap] = 1
    return mask


def test_separation_weights_stress_the_gap_between_footprints_only():
    from model.data import separation_weights

    near, far = separation_weights(_two_roofs(10), 10.0, 20.0), separation_weights(_two_roofs(40), 10.0, 20.0)
    mid_near, mid_far = near[50, 60 + 5], far[50, 60 + 20]
    assert mid_near > mid_far > 1.0  # the narrower the yard, the costlier to paint it
    assert near[50, 30] == 1.0 and near[5, 5] < 1.01  # footprints and far background keep weight ~1
    single = np.zeros((64, 64), np.uint8)
    single[10:30, 10:30] = 1
    assert (separation_weights(single, 10.0, 20.0) == 1.0).all()
    # flips commute with the map (the dataset computes it after its dihedral augmentation)
    np.testing.assert_allclose(separation_weights(_two_roofs(10)[:, ::-1], 10.0, 20.0), near[:, ::-1], rtol=1e-5)


def test_separation_weight_makes_painting_the_yard_costlier():
    from model.data import ChipDataset

    mask = _two_roofs(12)
    image = np.zeros((4, *mask.shape), np.uint8)
    sample = ChipDataset([(image, mask)], separation=(10.0, 20.0))[0]
    plain = ChipDataset([(image, mask)])[0]
    assert "weight" in sample and "weight" not in plain
    task = SegmentationTask({"base_channels": 4, "depth": 2}, (0.0,) * 4, (1.0,) * 4, loss="dice_bce")
    target = sample["mask"][None]
    painted_yard = torch.where(target > 0, 6.0, -6.0)
    painted_yard[..., 30:70, 60:72] = 6.0  # the yard joins the roofs
    costs = [task._loss(painted_yard, target, w).item() - task._loss(torch.where(target > 0, 6.0, -6.0), target, w).item()
             for w in (None, sample["weight"][None])]
    assert costs[1] > 2 * costs[0] > 0
