"""The Lightning task: U-Net, loss, optimiser and metrics (pixel IoU/Dice/precision/recall, object F1)."""

from __future__ import annotations

import math
import time
from typing import Literal

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from model.metrics import counts_to_metrics, f1_from_counts, label_objects, match_objects
from model.unet import UNet, UNetConfig

LossName = Literal["dice_bce", "focal_dice", "ce"]
Schedule = Literal["cosine", "constant"]


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice over the whole batch; 0 for a batch with no positive pixel.

    Dice is undefined without positives, and its smoothed form would reward predicting nothing at
    all, which collapses a model trained on few labels where most batches are reviewed-empty chips.
    Such batches are left to the pixel-wise term (BCE or focal) of the loss.
    """
    if not bool((target > 0).any()):
        return logits.sum() * 0.0
    p = torch.sigmoid(logits)
    inter = (p * target).sum()
    return 1 - (2 * inter + eps) / (p.sum() + target.sum() + eps)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, alpha: float = 0.25,
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """Binary focal loss (Lin et al. 2017), mean over pixels (each scaled by ``weight`` if given)."""
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = torch.exp(-bce)
    a_t = alpha * target + (1 - alpha) * (1 - target)
    loss = a_t * (1 - p_t) ** gamma * bce
    return (loss * weight if weight is not None else loss).mean()


class SegmentationTask(L.LightningModule):
    """Binary footprint segmentation.

    Args:
        unet: U-Net shape as a dict of :class:`UNetConfig` fields.
        mean: Per-band means of uint8 input (normalisation, stored as buffers).
        std: Per-band standard deviations.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        loss: ``dice_bce`` (BCE + soft Dice), ``focal_dice`` or ``ce`` (plain cross-entropy with
            equal class weights: the seed's recipe; with one logit it equals binary cross-entropy).
        pos_weight: Weight of positive pixels in the BCE term.
        min_object_px: Predicted objects smaller than this are ignored by object F1.
        lr_schedule: ``cosine`` (annealed to 0 per step over the run) or ``constant``.
        max_time_s: Wall-clock budget of the run, if any: the cosine schedule then follows
            whichever of steps and time runs out first, so a time-capped run still anneals
            (with ``epochs`` large and a time cap, a step-based schedule would stay at full rate).
            Under DDP the schedule follows steps only: each rank's clock differs, and ranks
            stepping at different rates would drift apart.
    """

    def __init__(
        self,
        unet: dict,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        loss: LossName = "dice_bce",
        pos_weight: float = 1.0,
        min_object_px: int = 100,
        lr_schedule: Schedule = "cosine",
        max_time_s: float | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = UNet(UNetConfig(**unet))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self._counts = np.zeros(6)
        self._started: float | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for raw (0..255) float images."""
        return self.model((x - self.mean) / self.std)

    def _loss(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """The configured loss; ``weight`` (per pixel, e.g. separation weights) scales the pixel-wise term."""
        name = self.hparams.loss
        if name == "ce":
            return F.binary_cross_entropy_with_logits(logits, target, weight=weight)
        if name == "focal_dice":
            return focal_loss(logits, target, weight=weight) + soft_dice_loss(logits, target)
        pw = torch.tensor(self.hparams.pos_weight, device=logits.device)
        bce = F.binary_cross_entropy_with_logits(logits, target, weight=weight, pos_weight=pw)
        return bce + soft_dice_loss(logits, target)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self._loss(self(batch["image"]), batch["mask"], batch.get("weight"))
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(batch["image"]))
        return loss

    def on_validation_epoch_start(self) -> None:
        self._counts = np.zeros(6)  # pixel tp, fp, fn; object tp, fp, fn

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits = self(batch["image"])
        self.log("val_loss", self._loss(logits, batch["mask"]), on_epoch=True, batch_size=len(logits))
        pred = (logits > 0).cpu().numpy()[:, 0]
        true = batch["mask"].cpu().numpy()[:, 0] > 0.5
        self._counts[0] += np.count_nonzero(pred & true)
        self._counts[1] += np.count_nonzero(pred & ~true)
        self._counts[2] += np.count_nonzero(~pred & true)
        for p, t in zip(pred, true, strict=True):
            m = match_objects(label_objects(p, self.hparams.min_object_px)[0], label_objects(t)[0])
            self._counts[3:] += (m["tp"], m["fp"], m["fn"])

    def on_validation_epoch_end(self) -> None:
        if self.trainer.world_size > 1:  # DDP: every rank saw a shard of the validation chips
            total = self.trainer.strategy.reduce(torch.tensor(self._counts, device=self.device), reduce_op="sum")
            self._counts = total.cpu().numpy()
        pix = counts_to_metrics(*self._counts[:3])
        obj = f1_from_counts(*(int(c) for c in self._counts[3:]))
        for k, v in pix.items():
            self.log(f"val_{k}", v, prog_bar=k == "iou")
        self.log("val_object_f1", obj["f1"])

    def on_train_start(self) -> None:
        self._started = time.monotonic()

    def training_progress(self, step: int) -> float:
        """Share of the run done at optimizer step ``step``: steps or wall-clock time, the larger."""
        total = self.trainer.estimated_stepping_batches
        done = step / total if math.isfinite(total) and total > 0 else 0.0
        if self.hparams.max_time_s and self._started is not None and self.trainer.world_size == 1:
            done = max(done, (time.monotonic() - self._started) / self.hparams.max_time_s)
        return min(done, 1.0)

    def _lr_factor(self, step: int) -> float:
        return 0.5 * (1.0 + math.cos(math.pi * self.training_progress(step)))

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        if self.hparams.lr_schedule == "constant":
            return opt
        sched = torch.optim.lr_scheduler.LambdaLR(opt, self._lr_factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
