"""Precise batch norm: after training, BN statistics are the training chips' exact ones."""

from __future__ import annotations

import numpy as np
import torch

from model.config import TrainConfig
from model.task import SegmentationTask
from model.train import fit, precise_bn
from model.unet import UNetConfig


def _pairs(n: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        image = rng.integers(0, 256, (4, 32, 32), dtype=np.uint8)
        mask = (image[0] > 128).astype(np.uint8)
        out.append((image, mask))
    return out


def test_precise_bn_sets_the_first_layers_statistics_to_the_population_ones_and_keeps_weights():
    torch.manual_seed(0)
    unet = UNetConfig(base_channels=4, depth=2, dropout=0.0)
    task = SegmentationTask(unet=unet.to_dict(), mean=(100.0,) * 4, std=(50.0,) * 4)
    state = {k: v.clone() for k, v in task.model.state_dict().items()}
    bn_key = next(k for k in state if k.endswith("running_mean"))
    state[bn_key] = torch.full_like(state[bn_key], 1e3)  # as stale as running averages get
    pairs = _pairs(8)
    out = precise_bn(task, state, pairs, TrainConfig(batch_size=4, accelerator="cpu"))

    conv = task.model.state_dict()[bn_key.replace("1.running_mean", "0.weight")]
    x = (torch.from_numpy(np.stack([p[0] for p in pairs]).astype(np.float32)) - 100.0) / 50.0
    y = torch.nn.functional.conv2d(x, conv, padding=1)
    torch.testing.assert_close(out[bn_key], y.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-4)
    for k, v in state.items():
        if "running" not in k and "num_batches" not in k:
            assert torch.equal(out[k], v), k


def test_fit_returns_precise_statistics_unless_told_not_to():
    pairs = _pairs(8, seed=1)
    base = dict(epochs=1, batch_size=4, base_channels=4, depth=2, dropout=0.0, accelerator="cpu",
                augment=True, tune_threshold=False)
    plain = fit(pairs, [], TrainConfig(**base, precise_bn=False))
    precise = fit(pairs, [], TrainConfig(**base, precise_bn=True))
    key = next(k for k in plain.state_dict if k.endswith("running_var"))
    weights = [k for k in plain.state_dict if k.endswith("weight")]
    assert all(torch.equal(plain.state_dict[k], precise.state_dict[k]) for k in weights)  # same training
    assert not torch.allclose(plain.state_dict[key], precise.state_dict[key])  # statistics redone


def test_without_a_data_center_in_validation_the_best_epoch_is_the_lowest_validation_loss():
    train = _pairs(8, seed=2)
    val = [(image, np.zeros_like(mask)) for image, mask in _pairs(4, seed=3)]  # reviewed-empty chips
    history = []
    ckpt = fit(train, val, TrainConfig(epochs=4, batch_size=4, base_channels=4, depth=2, dropout=0.0, lr=3e-2,
                                       accelerator="cpu", tune_threshold=False),
               progress=lambda done, total, info: history.append(info) if info.get("event") == "epoch" else None)
    losses = [h["val_loss"] for h in history]
    assert len(losses) == 4
    assert ckpt.metrics["epoch"] == 1 + int(np.argmin(losses))  # not the epoch whose IoU of nothing is 1.0


def test_precise_bn_weights_a_short_last_batch_by_its_chips():
    torch.manual_seed(0)
    unet = UNetConfig(base_channels=4, depth=2, dropout=0.0)
    task = SegmentationTask(unet=unet.to_dict(), mean=(100.0,) * 4, std=(50.0,) * 4)
    state = {k: v.clone() for k, v in task.model.state_dict().items()}
    bn_key = next(k for k in state if k.endswith("running_mean"))
    pairs = _pairs(9)
    pairs[8] = (np.full_like(pairs[8][0], 250), pairs[8][1])  # one bright chip, alone in the last batch
    out = precise_bn(task, state, pairs, TrainConfig(batch_size=4, accelerator="cpu"))
    conv = task.model.state_dict()[bn_key.replace("1.running_mean", "0.weight")]
    x = (torch.from_numpy(np.stack([p[0] for p in pairs]).astype(np.float32)) - 100.0) / 50.0
    y = torch.nn.functional.conv2d(x, conv, padding=1)
    torch.testing.assert_close(out[bn_key], y.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-4)  # all 9 chips alike


def test_without_validation_chips_the_last_epoch_is_kept():
    history = []
    ckpt = fit(_pairs(8, seed=4), [], TrainConfig(epochs=3, batch_size=4, base_channels=4, depth=2, dropout=0.0,
                                                  lr=5e-2, accelerator="cpu", tune_threshold=False, precise_bn=False),
               progress=lambda done, total, info: history.append(info) if info.get("event") == "epoch" else None)
    assert len(history) == 3 and ckpt.metrics["epoch"] == 3


def test_augmentation_differs_between_dataloader_workers():
    from torch.utils.data import DataLoader

    from model.data import ChipDataset

    image = np.random.default_rng(0).integers(0, 256, (4, 16, 16), dtype=np.uint8)
    same = [(image, (image[0] > 128).astype(np.uint8))] * 8  # identical chips: only augmentation differs
    loader = DataLoader(ChipDataset(same, augment=True, seed=3), batch_size=1, num_workers=2,
                        generator=torch.Generator().manual_seed(0))
    seen = [batch["image"][0] for batch in loader]  # workers alternate: samples 0, 1 come from two workers
    assert not any(torch.equal(seen[i], seen[i + 1]) for i in range(0, 8, 2))
