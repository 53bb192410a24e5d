"""Shrink-and-perturb warm starts: the starting weights are scaled and mixed with a fresh init."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from model.config import TrainConfig
from model.errors import ConfigError
from model.train import fit, shrink_perturb
from model.unet import UNet, UNetConfig

UNET = UNetConfig(base_channels=4, depth=2, dropout=0.0)


def _trained_like(seed: int = 0) -> UNet:
    """A U-Net whose weights and statistics are not the initial ones (as after training)."""
    torch.manual_seed(seed)
    model = UNet(UNET)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.fill_(3.0)
    return model


def test_shrink_alone_scales_every_weight_and_keeps_the_statistics():
    model = _trained_like()
    before = copy.deepcopy(model)
    shrink_perturb(model, 0.5, 0.0)
    for (name, p), q in zip(model.named_parameters(), before.parameters(), strict=True):
        torch.testing.assert_close(p, 0.5 * q, msg=name)
    for (name, b), c in zip(model.named_buffers(), before.buffers(), strict=True):
        assert torch.equal(b, c), name


def test_perturbation_is_a_seeded_fresh_initialisation_of_each_layer():
    model = _trained_like()
    a, b, c = copy.deepcopy(model), copy.deepcopy(model), copy.deepcopy(model)
    shrink_perturb(a, 0.5, 0.1, seed=3)
    shrink_perturb(b, 0.5, 0.1, seed=3)
    shrink_perturb(c, 0.5, 0.1, seed=4)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)  # same seed, same start
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters(), strict=True))
    bn_weight = next(p for n, p in a.named_parameters() if n.endswith("1.weight") and p.dim() == 1)
    original = next(p for n, p in model.named_parameters() if n.endswith("1.weight") and p.dim() == 1)
    torch.testing.assert_close(bn_weight, 0.5 * original + 0.1)  # a fresh BN scale is all ones
    bn_bias = next(p for n, p in a.named_parameters() if n.endswith("1.bias") and p.dim() == 1)
    original = next(p for n, p in model.named_parameters() if n.endswith("1.bias") and p.dim() == 1)
    torch.testing.assert_close(bn_bias, 0.5 * original)  # and its shift all zeros


def test_fit_applies_it_only_to_a_warm_start():
    rng = np.random.default_rng(0)
    pairs = [(rng.integers(0, 256, (4, 32, 32), dtype=np.uint8), (rng.random((32, 32)) > 0.5).astype(np.uint8))
             for _ in range(4)]
    base = dict(epochs=1, batch_size=4, base_channels=4, depth=2, dropout=0.0, accelerator="cpu",
                tune_threshold=False, precise_bn=False, gate_seconds=0, lr=1e-12)
    first = fit(pairs, [], TrainConfig(**base))
    plain = fit(pairs, [], TrainConfig(**base), init=first)
    shrunk = fit(pairs, [], TrainConfig(**base, warm_shrink=0.5), init=first)
    key = next(k for k in first.state_dict if k.endswith("weight") and first.state_dict[k].dim() == 4)
    # an lr of 1e-12 leaves the starting weights: the plain warm start kept them, the shrunk one halved them
    torch.testing.assert_close(plain.state_dict[key], first.state_dict[key])
    torch.testing.assert_close(shrunk.state_dict[key], 0.5 * first.state_dict[key])


@pytest.mark.parametrize("shrink, perturb", [(0.0, 0.1), (1.5, 0.0), (0.5, -0.1)])
def test_bad_settings_are_refused(shrink, perturb):
    with pytest.raises(ConfigError, match="warm_shrink"):
        TrainConfig(warm_shrink=shrink, warm_perturb=perturb)
