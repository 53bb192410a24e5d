"""Batched probabilities for ranking: one pass, 8 dihedral TTA passes, or MC-dropout samples.

Uses :func:`model.inference.predict_tiles` when that module provides it (the shared, tested
inference path), and falls back to the small forward below when it does not or when it returns
a shape other than the contract's ((N, H, W), or (N, S, H, W) with ``tta``/``mc_samples``).
MC dropout on the seed U-Net always uses the one-pass shortcut here (see
:func:`forward_probabilities`).
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from model.checkpoint import Normalization
from model.unet import UNet

N_DIHEDRAL = 8


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """Transform ``k`` (0..7) of the dihedral group on the last two axes: flip if k >= 4, then rotate k % 4."""
    if k >= 4:
        x = torch.flip(x, dims=(-1,))
    return torch.rot90(x, k % 4, dims=(-2, -1))


def dihedral_inverse(x: torch.Tensor, k: int) -> torch.Tensor:
    """Undo :func:`dihedral` ``k``: maps a prediction made on the transformed chip back onto the chip."""
    x = torch.rot90(x, -(k % 4), dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if k >= 4 else x


def _shared_predict_tiles() -> Callable | None:
    try:
        return importlib.import_module("model.inference").predict_tiles
    except (ImportError, AttributeError):
        return None


def _model_device(model: nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _multiple(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    return 2 ** int(getattr(config, "depth", 0))


def _dropout_feeds_head_only(model: nn.Module) -> bool:
    drops = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    return isinstance(model, UNet) and len(drops) == 1 and drops[0] is model.dropout


def _head_only_mc(model: UNet, x: torch.Tensor, samples: int) -> torch.Tensor:
    """MC-dropout samples of a UNet computing ``head(dropout(features))``: one body pass."""
    captured: list[torch.Tensor] = []
    handle = model.dropout.register_forward_hook(
        lambda module, inputs, output: captured.append(inputs[0])
    )
    try:
        model(x)
    finally:
        handle.remove()
    model.dropout.train()
    return torch.stack(
        [torch.sigmoid(model.head(model.dropout(captured[0]))[:, 0]) for _ in range(samples)], dim=1
    )


@torch.no_grad()
def forward_probabilities(
    model: nn.Module,
    normalization: Normalization,
    images: np.ndarray,
    tta: bool = False,
    mc_samples: int = 0,
    device: str | torch.device | None = None,
    head_only_mc: bool = True,
) -> np.ndarray:
    """Sigmoid probabilities of a batch of uint8 chips (the fallback forward).

    Inputs are normalised as ``(x - mean) / std`` on 0..255 values and zero-padded (after
    normalisation, i.e. to the band mean) up to a multiple of ``2 ** depth``, then cropped back.
    With ``mc_samples`` the dropout layers run in train mode and BatchNorm stays in eval mode.
    When the model is the seed :class:`~model.unet.UNet`, whose only dropout sits right before the
    1x1 head, the network runs once and only dropout + head are sampled ``mc_samples`` times: the
    same distribution (the same numbers under the same torch seed) at the cost of one pass.

    Args:
        model: A U-Net returning logits (N, 1, H, W).
        normalization: The checkpoint's normalisation.
        images: uint8 (N, C, H, W); H == W when ``tta``.
        tta: Predict the 8 dihedral transforms, each mapped back.
        mc_samples: Number of MC-dropout samples (0 = none).
        device: Where to run; default the model's device.
        head_only_mc: Allow the one-pass MC shortcut above (False forces S full passes).

    Returns:
        float32 (N, H, W), or (N, 8, H, W) with ``tta``, or (N, S, H, W) with ``mc_samples``.
    """
    device = torch.device(device) if device is not None else _model_device(model)
    mean, std = normalization.tensors(device)
    x = (torch.from_numpy(np.ascontiguousarray(images)).to(device).float() - mean) / std
    h, w = x.shape[-2:]
    m = _multiple(model)
    x = F.pad(x, (0, (-w) % m, 0, (-h) % m))

    def run(inp: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(model(inp)[:, 0])

    was_training = model.training
    model.eval()
    try:
        if tta:
            outs = [dihedral_inverse(run(dihedral(x, k)), k) for k in range(N_DIHEDRAL)]
            probs = torch.stack(outs, dim=1)
        elif mc_samples > 0 and head_only_mc and _dropout_feeds_head_only(model):
            probs = _head_only_mc(model, x, mc_samples)
        elif mc_samples > 0:
            for module in model.modules():
                if isinstance(module, nn.modules.dropout._DropoutNd):
                    module.train()
            probs = torch.stack([run(x) for _ in range(mc_samples)], dim=1)
        else:
            probs = run(x)
    finally:
        model.train(was_training)
    return probs[..., :h, :w].float().cpu().numpy()


def predict_probabilities(
    model: nn.Module,
    normalization: Normalization,
    images: np.ndarray,
    passes: str,
    mc_samples: int = 8,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Probabilities for a ranking strategy's ``passes``.

    Args:
        model: U-Net in eval mode.
        normalization: The checkpoint's normalisation.
        images: uint8 (N, C, H, W).
        passes: ``"single"``, ``"tta"`` or ``"mc"``.
        mc_samples: Samples for ``"mc"``.
        device: Where to run.

    Returns:
        float32 (N, H, W) for ``"single"``, (N, S, H, W) otherwise.
    """
    tta = passes == "tta"
    samples = mc_samples if passes == "mc" else 0
    n, _, h, w = images.shape
    want = (n, h, w) if passes == "single" else (n, N_DIHEDRAL if tta else samples, h, w)
    # MC on the seed UNet: the one-pass shortcut of forward_probabilities is S times cheaper.
    fast_mc = passes == "mc" and _dropout_feeds_head_only(model)
    shared = None if fast_mc else _shared_predict_tiles()
    if shared is not None:
        probs = np.asarray(
            shared(model, normalization, images, device=device, tta=tta, mc_samples=samples)
        )
        if probs.shape == want:
            return probs.astype(np.float32, copy=False)
        warnings.warn(
            f"model.inference.predict_tiles returned shape {probs.shape}, expected {want}; "
            "using loop.ranking_predict.forward_probabilities instead.",
            stacklevel=2,
        )
    return forward_probabilities(
        model, normalization, images, tta=tta, mc_samples=samples, device=device
    )
