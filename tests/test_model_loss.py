"""The training loss (soft Dice leaves all-negative batches to the pixel-wise term) and the lr schedule."""

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
