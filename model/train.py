"""Training entry point (no CLI parsing): in-memory or lazy chip pairs in, a :class:`Checkpoint` out."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader

from model.checkpoint import Checkpoint, save_checkpoint
from model.config import TrainConfig
from model.data import ChipDataset, ChipFolder, ChipPair, compute_normalization
from model.errors import Cancelled, ConfigError, LabelError
from model.task import SegmentationTask
from model.unet import UNetConfig

Progress = Callable[[int, int, dict], None]
CancelCheck = Callable[[], bool]


class _Reporter(L.Callback):
    """Forwards steps and epochs to ``progress``, stops on ``cancel``, keeps the best weights."""

    def __init__(self, progress: Progress | None, cancel: CancelCheck | None, total_steps: int) -> None:
        self.progress, self.cancel, self.total_steps = progress, cancel, total_steps
        self.cancelled = False
        self.best_score = -1.0
        self.best_state: dict | None = None
        self.best_metrics: dict[str, float] = {}
        self.history: list[dict] = []
        self.by_loss = False  # pick the best epoch by validation loss, not IoU

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.progress is not None:
            loss = float(outputs["loss"]) if isinstance(outputs, dict) else float(outputs)
            self.progress(
                trainer.global_step, self.total_steps, {"event": "step", "epoch": trainer.current_epoch + 1, "loss": loss}
            )
        if self.cancel is not None and self.cancel():
            self.cancelled = True
            trainer.should_stop = True

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        m = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val_")}
        loss = trainer.callback_metrics.get("train_loss_epoch")
        record = {"epoch": trainer.current_epoch + 1, "loss": float(loss) if loss is not None else float("nan"), **m}
        self.history.append(record)
        if not m:
            score = float(trainer.current_epoch)  # no validation: the last epoch is kept
        elif self.by_loss:
            score = -m.get("val_loss", float(record["loss"]))
        else:
            score = m.get("val_iou", -1.0)
        if self.best_state is None or score > self.best_score:
            self.best_score = score
            self.best_state = {k: v.detach().cpu().clone() for k, v in pl_module.model.state_dict().items()}
            self.best_metrics = {k.removeprefix("val_"): v for k, v in m.items()}
            self.best_metrics["epoch"] = record["epoch"]
        if self.progress is not None:
            self.progress(record["epoch"], trainer.max_epochs, {"event": "epoch", **record})
        if self.cancel is not None and self.cancel():
            self.cancelled = True
            trainer.should_stop = True


def fit(
    train: Sequence[ChipPair],
    val: Sequence[ChipPair],
    config: TrainConfig,
    init: Checkpoint | None = None,
    progress: Progress | None = None,
    cancel: CancelCheck | None = None,
) -> Checkpoint:
    """Train a U-Net and return the weights of its best validation epoch.

    Args:
        train: Training ``(image uint8 (4,H,W), mask uint8 (H,W))`` pairs; H and W multiples of 16.
        val: Validation pairs (may be empty: then the last epoch is returned).
        config: Training settings.
        init: Warm start from this checkpoint (its model shape and normalisation are kept).
        progress: ``progress(done, total, info)`` with ``info["event"]`` ``step`` or ``epoch``.
        cancel: Returns True to stop; checked after every step.

    Returns:
        A checkpoint with ``metrics`` of the best validation epoch (``iou``, ``dice``, ``precision``,
        ``recall``, ``object_f1``, ``loss``, ``epoch``, measured at 0.5) and ``parent`` set to
        ``init.version``; with ``config.tune_threshold``, ``metrics["threshold"]`` is the decision
        threshold chosen on ``val`` after training (0.5 when it holds too few objects); with
        ``config.gate_seconds`` > 0, ``gate`` holds the fast path's tile gate distilled from it
        (None when it detects nothing on the training chips).

    Raises:
        LabelError: No training chips.
        Cancelled: ``cancel()`` returned True; nothing is returned or saved.
    """
    if len(train) == 0:
        raise LabelError("no training chips: label or review some chips first.")
    L.seed_everything(config.seed, workers=True, verbose=False)
    if not config.progress_bar:  # keep library callers' output clean ("GPU available: ..." lines)
        for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda"):
            logging.getLogger(name).setLevel(logging.WARNING)
    if init is not None:
        unet, norm = init.unet, init.normalization
    else:
        unet = UNetConfig(base_channels=config.base_channels, depth=config.depth, dropout=config.dropout)
        norm = compute_normalization([train[i][0] for i in range(len(train))])
    task = SegmentationTask(
        unet=asdict(unet),
        mean=norm.mean,
        std=norm.std,
        lr=config.lr,
        weight_decay=config.weight_decay,
        loss=config.loss,
        pos_weight=config.pos_weight,
        lr_schedule=config.lr_schedule,
        max_time_s=config.max_time_s,
    )
    if init is not None:
        task.model.load_state_dict(init.state_dict)
    gen = torch.Generator().manual_seed(config.seed)
    train_dl = DataLoader(
        ChipDataset(train, augment=config.augment, seed=config.seed,
                    separation=(config.separation_weight, config.separation_sigma_px)
                    if config.separation_weight > 0 else None),
        batch_size=config.batch_size,
        shuffle=True,
        generator=gen,
        num_workers=config.num_workers,
        persistent_workers=config.num_workers > 0,
    )
    val_dl = (
        DataLoader(ChipDataset(val), batch_size=config.batch_size, num_workers=config.num_workers)
        if len(val)
        else None
    )
    reporter = _Reporter(progress, cancel, total_steps=len(train_dl) * config.epochs)
    # without a data-center pixel in validation, IoU is 1.0 for a model that finds nothing: the
    # best epoch is then the one with the lowest validation loss
    reporter.by_loss = not any(np.asarray(val[i][1]).any() for i in range(len(val)))
    logger = CSVLogger(str(config.log_dir), name="", version="") if config.log_dir else False
    trainer = L.Trainer(
        accelerator=config.accelerator,
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=config.strategy,
        max_epochs=config.epochs,
        max_time=timedelta(seconds=config.max_time_s) if config.max_time_s else None,
        logger=logger,
        callbacks=[reporter],
        enable_checkpointing=False,
        enable_progress_bar=config.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=max(1, min(10, len(train_dl))),
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*number of training batches.*")
        warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
        # Lightning's own use of a torch API torch deprecated; nothing a user can act on
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
        # training without validation chips (simulate's rounds, --val-fraction 0) is on purpose
        warnings.filterwarnings("ignore", message=".*validation_step.*but have no `val_dataloader`.*")
        try:
            trainer.fit(task, train_dl, val_dl)
        except SystemExit:  # Lightning turns Ctrl+C into sys.exit(1) after its own shutdown
            if trainer.interrupted:
                raise KeyboardInterrupt from None
            raise
    if reporter.cancelled:
        raise Cancelled("training was cancelled; no checkpoint was written.")
    state = reporter.best_state or {k: v.detach().cpu() for k, v in task.model.state_dict().items()}
    if config.precise_bn:
        state = precise_bn(task, state, train, config)
    metrics = dict(reporter.best_metrics)
    if "object_f1" not in metrics and "iou" in metrics:
        metrics["object_f1"] = float("nan")
    ckpt = Checkpoint(
        state_dict=state,
        unet=unet,
        normalization=norm,
        parent=init.version if init is not None else None,
        metrics=metrics,
        train={
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(config).items()},
            "train_chips": len(train),
            "val_chips": len(val),
            "epochs_run": len(reporter.history),
        },
    )
    if init is not None and "threshold" in init.metrics:
        ckpt.metrics["threshold"] = init.threshold  # kept unless this round's validation can judge
    if config.tune_threshold and len(val):
        tune_threshold(ckpt, val, "cpu" if config.accelerator == "cpu" else None)
    if config.gate_seconds > 0:
        ckpt.gate = train_gate(ckpt, train, config, progress=progress, cancel=cancel)
    return ckpt


def train_gate(ckpt: Checkpoint, train: Sequence[ChipPair], config: TrainConfig, max_chips: int = 512,
               progress: Progress | None = None, cancel: CancelCheck | None = None) -> dict | None:
    """The fast path's tile gate distilled from ``ckpt`` on up to ``max_chips`` training images
    (seeded sample, the most common chip shape), or None when the U-Net detects nothing on them.

    ``progress(epoch, epochs, {"event": "gate"})`` after each gate epoch; ``cancel`` as in :func:`fit`."""
    from model.gate import CELL, fit_gate

    shapes = [tuple(train[i][0].shape) for i in range(len(train))]
    common = max(set(shapes), key=shapes.count)
    if common[1] % CELL or common[2] % CELL:
        return None
    idx = [i for i, s in enumerate(shapes) if s == common]
    if len(idx) > max_chips:
        idx = sorted(np.random.default_rng(config.seed).choice(idx, max_chips, replace=False).tolist())
    device = "cpu" if config.accelerator == "cpu" else None
    fit = fit_gate(ckpt, [train[i][0] for i in idx], max_seconds=config.gate_seconds, seed=config.seed,
                   device=device, cancel=cancel,
                   progress=None if progress is None else lambda e, n: progress(e, n, {"event": "gate"}))
    return None if fit is None else fit.payload


def precise_bn(task: SegmentationTask, state: dict, train: Sequence[ChipPair], config: TrainConfig,
               max_chips: int = 256) -> dict:
    """Replace the batch-norm running statistics of ``state`` by exact ones over the training chips.

    During training each BatchNorm layer keeps an exponential average of the last few (augmented)
    batches' statistics, taken while the weights were still moving; on a few chips those averages
    can sit far from what the final weights produce, and the model then predicts all background
    or all data center at inference ("precise BN", Wu & Johnson 2021, "Rethinking 'Batch' in
    BatchNorm"). Here the final weights see up to ``max_chips`` training chips (seeded sample,
    no augmentation) and each layer's statistics become the average of the batches' statistics
    weighted by their chips (as :func:`torch.optim.swa_utils.update_bn`, which weights a short last
    batch like a full one: with 9 chips in batches of 8, the 9th was half of every mean). Weights
    are unchanged.

    Returns:
        A CPU state dict with the recomputed statistics.
    """
    from torch.nn.modules.batchnorm import _BatchNorm

    task.model.load_state_dict(state)
    idx = np.arange(len(train))
    if len(idx) > max_chips:
        idx = np.sort(np.random.default_rng(config.seed).choice(idx, max_chips, replace=False))
    device = torch.device("cuda" if config.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
                          else "cpu")
    task.to(device)
    loader = DataLoader(ChipDataset(_Subset(train, idx.tolist())), batch_size=config.batch_size)
    norms = [m for m in task.modules() if isinstance(m, _BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
    task.train()
    seen = 0
    with torch.no_grad():
        for batch in loader:
            x = batch["image"].to(device)
            for m in norms:  # running = (1 - w) * running + w * this batch's: a chip-weighted mean
                m.momentum = len(x) / (seen + len(x))
            task(x)
            seen += len(x)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    task.cpu().eval()
    return {k: v.detach().cpu().clone() for k, v in task.model.state_dict().items()}


def tune_threshold(ckpt: Checkpoint, val: Sequence[ChipPair], device: str | None = None) -> None:
    """Store in ``ckpt`` the decision threshold its validation chips favour (see :mod:`model.calibrate`).

    With too few validation objects to judge, a threshold ``ckpt`` already holds (a warm start's
    parent's) is kept; otherwise 0.5.
    """
    from model.calibrate import choose_threshold

    choice = choose_threshold(ckpt, val, device=device)
    if choice.judged or "threshold" not in ckpt.metrics:
        ckpt.metrics["threshold"] = choice.threshold
        ckpt.train["threshold_choice"] = choice.reason
    else:
        ckpt.train["threshold_choice"] = f"{choice.reason}; kept the parent's {ckpt.threshold:g} instead"


def split_random(n: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """The seed's random chip split: indexes of training and validation chips."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(n * val_fraction)) if n > 1 else 0
    n_val = min(max(n_val, 1 if n > 1 and val_fraction > 0 else 0), n - 1)
    return sorted(order[n_val:].tolist()), sorted(order[:n_val].tolist())


class _Subset(Sequence):
    def __init__(self, base: Sequence, idx: list[int]) -> None:
        self.base, self.idx = base, idx

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i):  # type: ignore[override]
        return self.base[self.idx[i]]


def train_from_folders(
    chips_dir: str | os.PathLike,
    masks_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    config: TrainConfig,
    val_fraction: float = 0.2,
    init: Checkpoint | None = None,
    progress: Progress | None = None,
) -> Path:
    """Train on the seed's chip/mask folders; write ``best.pt`` and ``metrics.csv`` into ``output_dir``.

    Returns:
        Path of the best checkpoint.
    """
    pairs = ChipFolder(chips_dir, masks_dir)
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output-dir {out} is a file; give a folder for best.pt and logs/.")
    pairs.check(multiple=2 ** config.depth)  # before anything is written
    tr, va = split_random(len(pairs), val_fraction, config.seed)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    staging = None
    if config.log_dir is None:  # the log moves in beside best.pt when training ends, so the two agree
        staging = Path(tempfile.mkdtemp(prefix=".logs.", suffix=".part", dir=out))
        config = TrainConfig(**{**asdict(config), "log_dir": staging})
    if config.resolution_m is None:
        config = TrainConfig(**{**asdict(config), "resolution_m": pairs.resolution_m()})
    try:
        ckpt = fit(_Subset(pairs, tr), _Subset(pairs, va), config, init=init, progress=progress)
        ckpt.train["chips_dir"] = str(Path(chips_dir).resolve())
        ckpt.train["log_dir"] = str(out / "logs")
        path = out / "best.pt"
        if rank_zero_only.rank == 0:  # under DDP every rank returns the same weights; one writes them
            save_checkpoint(ckpt, path)
            if staging is not None:
                shutil.rmtree(out / "logs", ignore_errors=True)
                os.replace(staging, out / "logs")
    finally:  # interrupted or failed: the previous run's best.pt and logs stay as they were
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
    return path
