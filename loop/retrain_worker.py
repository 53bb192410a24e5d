"""One retraining round, run inside the retraining process (or in-process by benches and tests).

The round reads the reviewed chips, splits a held-out validation subset by a hash of each chip's
window (so successive rounds validate on the same chips), warm-starts from the current model,
trains with :func:`model.train.fit`, re-evaluates the current model on the same validation chips
and publishes through the registry. Nothing is written before training has finished, and the
checkpoint and registry writes are atomic, so a killed process leaves the previous state intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from model.checkpoint import Checkpoint
from model.errors import Cancelled, ConfigError, DclabelError
from model.scene import Chip, median_pixel_size_m
from model.unet import UNetConfig

Emit = Callable[[dict], None]
#: Model shape of a first model: the seed's 4-level U-Net at half width (base 16: ~4x cheaper per
#: step, so interactive rounds on a CPU take minutes, not tens of minutes; pass base 32 on a GPU),
#: plus dropout so BALD (MC-dropout) ranking works.
COLD_START_UNET = UNetConfig(base_channels=16, depth=4, dropout=0.1)

#: A warm-started round fine-tunes the current model at this share of the learning rate. From the
#: full rate, fresh AdamW steps on a few chips threw a good model far off: in ``simulate`` single
#: rounds swung by 0.2-0.4 holdout IoU and one seed's model collapsed to predicting nothing (README).
FINETUNE_LR_FACTOR = 0.25


def round_lr(lr: float, finetune_lr_factor: float, warm_start: bool) -> float:
    """Learning rate of a round: ``lr`` for a first model, ``lr * finetune_lr_factor`` for a warm start."""
    return lr * finetune_lr_factor if warm_start else lr


@dataclass(frozen=True)
class RetrainSettings:
    """Knobs of one retraining round (mirrors :class:`loop.retrain.RetrainJob`'s arguments).

    Attributes:
        epochs: Training epochs.
        lr: Learning rate of a first model (cold start).
        finetune_lr_factor: A warm start (a current model exists) trains at ``lr`` times this.
        batch_size: Chips per batch.
        pos_weight: BCE weight of data-center pixels. 2 (as the demo's first model): reviewed chips
            are mostly background, and with weight 1 the few-label models end under-confident
            (holdout IoU 0.28 -> 0.33 over 3 seeds of 9 random chips, see README).
        val_fraction: Share of reviewed chips held out for validation.
        unet: Model shape of a cold start (no current model); default :data:`COLD_START_UNET`.
        tolerance: Allowed validation drop before a new model is kept as a candidate only.
        seed: Training seed.
        max_time_s: Stop training after this many seconds (best-so-far weights are kept).
        threads: Torch CPU threads of the training process.
    """

    epochs: int = 5
    lr: float = 1e-3
    finetune_lr_factor: float = FINETUNE_LR_FACTOR
    batch_size: int = 8
    pos_weight: float = 2.0
    val_fraction: float = 0.2
    unet: UNetConfig | None = None
    tolerance: float = 0.02
    seed: int = 0
    max_time_s: float | None = None
    threads: int = 1

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError(f"RetrainSettings needs epochs, batch_size >= 1 and lr > 0, got {self}")
        if not 0.0 < self.finetune_lr_factor <= 1.0:
            raise ConfigError(f"RetrainSettings.finetune_lr_factor must be in (0, 1], got {self.finetune_lr_factor}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"RetrainSettings.val_fraction must be in (0, 1), got {self.val_fraction}")


def chip_hash(chip: Chip) -> float:
    """A stable number in [0, 1) from a chip's scene id and window."""
    w = chip.window
    key = f"{chip.scene_id}:{int(w.col_off)}:{int(w.row_off)}:{int(w.width)}:{int(w.height)}"
    return int(hashlib.sha1(key.encode()).hexdigest()[:12], 16) / 16**12


def split_train_val(chips: Sequence[Chip], val_fraction: float) -> tuple[list[Chip], list[Chip]]:
    """Deterministic split by :func:`chip_hash`: a chip's side never depends on the other chips.

    At least one chip goes to each side when there are two or more; a single chip is used for
    both (the validation score is then optimistic).
    """
    if len(chips) <= 1:
        return list(chips), list(chips)
    keyed = sorted(((chip_hash(c), i) for i, c in enumerate(chips)))
    val_idx = {i for h, i in keyed if h < val_fraction}
    if not val_idx:
        val_idx = {keyed[0][1]}
    if len(val_idx) == len(chips):
        val_idx.discard(keyed[-1][1])
    train = [c for i, c in enumerate(chips) if i not in val_idx]
    val = [c for i, c in enumerate(chips) if i in val_idx]
    return train, val


def evaluate_iou(ckpt: Checkpoint, chips: Sequence[Chip], threshold: float | None = None, batch_size: int = 8) -> float:
    """Pooled pixel IoU of a checkpoint on chips with masks (all pixels of all chips together), at
    ``threshold`` or, by default, the checkpoint's own (what its detections will use)."""
    from model.checkpoint import build_model
    from model.inference import predict_tiles
    from model.metrics import counts_to_metrics

    model = build_model(ckpt, "cpu")
    threshold = ckpt.threshold if threshold is None else threshold
    tp = fp = fn = 0.0
    for b in range(0, len(chips), batch_size):
        batch = chips[b : b + batch_size]
        pred = predict_tiles(model, ckpt.normalization, np.stack([c.image for c in batch]), "cpu") >= threshold
        true = np.stack([c.mask for c in batch]).astype(bool)
        tp += float(np.count_nonzero(pred & true))
        fp += float(np.count_nonzero(pred & ~true))
        fn += float(np.count_nonzero(~pred & true))
    return counts_to_metrics(tp, fp, fn)["iou"]


def run_round(project_root: str | os.PathLike, settings: RetrainSettings, emit: Emit, cancel: Any = None) -> dict:
    """Train and publish one model version; report through ``emit``.

    Args:
        project_root: Project folder.
        settings: Round settings.
        emit: Called with each event dict (``started``, ``step``, ``epoch``, ``published`` or
            ``rejected``, ``cancelled``); ``error`` and ``done`` are left to the caller.
        cancel: Callable or Event; when set, training stops and nothing is published.

    Returns:
        The final event (``published``, ``rejected`` or ``cancelled``).

    Raises:
        NoTrainingDataError: No reviewed chips, or none with a data center in it.
        DclabelError: Anything else the learner or the store reports.
    """
    from loop.errors import NoTrainingDataError
    from loop.project import Project, reviewed_training_chips
    from model.checkpoint import load_checkpoint
    from model.train import TrainConfig, fit

    is_cancelled = _as_callable(cancel)
    t0 = time.perf_counter()
    project = Project.open(project_root, read_only=True)
    chips = reviewed_training_chips(project)
    if not chips:
        raise NoTrainingDataError(f"no reviewed chips in {project.root}: review some chips first.")
    if not any(c.mask.any() for c in chips):
        raise NoTrainingDataError(
            f"the {len(chips)} reviewed chips in {project.root} hold no data-center footprint: "
            "review some chips with a data center first."
        )
    train, val = split_train_val(chips, settings.val_fraction)
    current = project.registry.current()
    init = load_checkpoint(current.path) if current is not None else None
    unet = init.unet if init is not None else (settings.unet or COLD_START_UNET)
    data_version = str(project.labels.version)
    lr = round_lr(settings.lr, settings.finetune_lr_factor, warm_start=init is not None)
    emit({"type": "started", "n_train": len(train), "n_val": len(val), "parent": current.version if current else None,
          "data_version": data_version, "lr": lr})
    config = TrainConfig(
        epochs=settings.epochs, batch_size=settings.batch_size, lr=lr, pos_weight=settings.pos_weight,
        base_channels=unet.base_channels,
        depth=unet.depth, dropout=unet.dropout, seed=settings.seed, accelerator="auto",
        max_time_s=settings.max_time_s, log_dir=project.logs_dir / time.strftime("train-%Y%m%d-%H%M%S"),
        gate_seconds=0,  # rounds feed the review queue; the fast path's gate (+15 s here) is train-gate's job
        resolution_m=median_pixel_size_m([project.scene(sid) for sid in sorted({c.scene_id for c in chips})]),
    )

    def progress(done: int, total: int, info: dict) -> None:
        event = {k: _plain(v) for k, v in info.items() if k != "event"}
        emit({"type": info.get("event", "step"), "done": done, "total": total, **event})

    try:
        ckpt = fit([(c.image, c.mask) for c in train], [(c.image, c.mask) for c in val], config,
                   init=init, progress=progress, cancel=is_cancelled)
    except Cancelled:
        final = {"type": "cancelled", "message": "retraining cancelled; the current model is unchanged."}
        emit(final)
        return final
    if is_cancelled():
        final = {"type": "cancelled", "message": "cancelled after training; nothing was published."}
        emit(final)
        return final
    new_iou = evaluate_iou(ckpt, val)
    baseline = evaluate_iou(init, val) if init is not None else None
    ckpt.metrics = {**ckpt.metrics, "iou": new_iou}  # same evaluator as the baseline
    ckpt.data_version = data_version
    ckpt.train = {**ckpt.train, "n_train": len(train), "n_val": len(val), "epochs": settings.epochs,
                  "lr": lr, "seconds": round(time.perf_counter() - t0, 1)}
    result = project.registry.publish(ckpt, tolerance=settings.tolerance, baseline=baseline)
    final = {"type": "published" if result.promoted else "rejected", "version": result.version,
             "promoted": result.promoted, "reason": result.reason, "val_iou": new_iou,
             "baseline_iou": baseline, "seconds": round(time.perf_counter() - t0, 2)}
    emit(final)
    return final


def _as_callable(cancel: Any) -> Callable[[], bool]:
    if cancel is None:
        return lambda: False
    is_set = getattr(cancel, "is_set", None)
    return is_set if callable(is_set) else cancel


def _plain(value: Any) -> Any:
    """Numbers from numpy/torch as plain Python values (queue- and JSON-friendly)."""
    if hasattr(value, "item") and callable(value.item):
        try:
            return value.item()
        except (ValueError, RuntimeError):
            return str(value)
    return value if isinstance(value, str | int | float | bool | type(None)) else str(value)


def child_main(project_root: str, settings: RetrainSettings, queue: Any, cancel_event: Any) -> None:
    """Entry point of the retraining process: run one round, put every event on ``queue``."""
    import torch

    from loop.background import ignore_interrupts, one_line_warnings
    from model.runtime import tune_allocator

    ignore_interrupts()  # Ctrl+C reaches the parent too, which cancels the round cleanly
    one_line_warnings()
    tune_allocator()
    torch.set_num_threads(max(1, settings.threads))
    log = Path(project_root) / "logs" / "retrain.jsonl"

    def emit(event: dict) -> None:
        event = {**event, "time": time.time()}
        queue.put(event)
        if event["type"] != "step":
            try:
                log.parent.mkdir(parents=True, exist_ok=True)
                with log.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps(event) + "\n")
            except OSError:
                pass

    try:
        run_round(project_root, settings, emit, cancel_event)
    except DclabelError as exc:
        emit({"type": "error", "message": str(exc), "kind": type(exc).__name__})
    except Exception as exc:  # report, never hang the GUI on a silent child
        emit({"type": "error", "message": f"{type(exc).__name__}: {exc}", "kind": type(exc).__name__,
              "traceback": traceback.format_exc(limit=8)})
    finally:
        emit({"type": "done"})


def with_threads(settings: RetrainSettings, threads: int | None) -> RetrainSettings:
    """``settings`` with a thread count: given, or half the CPUs (at least 1)."""
    return replace(settings, threads=threads or max(1, (os.cpu_count() or 2) // 2))
