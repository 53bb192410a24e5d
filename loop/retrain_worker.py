"""One retraining round, run inside the retraining process (or in-process by benches and tests).

The round takes the project's retraining lock (one round per project at a time), reads the
reviewed chips, splits a held-out validation subset by a hash of each chip's window (so successive
rounds validate on the same chips; data-center chips are split on their own so that validation
holds one whenever two are reviewed), warm-starts from the current model (or, when that model
finds nothing on the chips reviewed since it was trained, starts over: :func:`blind_parent`), trains with
:func:`model.train.fit`, then measures the new and the current model on the same validation chips
with one evaluator (:func:`evaluate`: each at its own decision threshold, after training is over)
and publishes through the registry. Nothing is written before training has finished, and the
checkpoint and registry writes are atomic, so a killed process leaves the previous state intact.
In the retraining process, the round also stops without publishing when the process that asked
for it is gone (``kill -9`` of the command): a forkserver child cannot rely on its parent pid.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import signal
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from loop.registry import RetrainLock
from model.checkpoint import Checkpoint
from model.errors import Cancelled, ConfigError, DclabelError
from model.ground import median_pixel_size_m
from model.scene import Chip
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

#: A round trains at least this many chip passes (epochs are raised to reach it). Five epochs of a
#: few reviewed chips are a few dozen optimizer steps: in ``simulate`` (README, Active learning),
#: entropy-ranked rounds reached holdout IoU 0.45 after 18 chips at 128 passes a round, and 0.60
#: (the full-label model's) after 12 chips at 512. 256 keeps a 50-chip round on one thread within
#: the 120 s target; ``--min-passes 576`` trains as the simulation does.
MIN_PASSES = 256


def round_epochs(epochs: int, min_passes: int, n_train: int) -> int:
    """Epochs of a round on ``n_train`` chips: at least ``epochs`` and ``min_passes`` chip passes."""
    return max(epochs, -(-min_passes // max(1, n_train)))


#: A warm start is dropped (the round trains a new model from scratch at the full learning rate)
#: when the current model finds under this share of the data-center pixels on the reviewed chips it
#: was not trained on, and those hold at least :data:`BLIND_MIN_PX` of them. Fine-tuning slowly
#: keeps what a model knows; a model that finds nothing on new labels has nothing to keep, and slow
#: fine-tuning kept it finding nothing: in ``simulate`` a 6-chip model at holdout IoU 0.000 (recall
#: 0.000 on the next chips) fine-tuned on 12 chips stayed at 0.000, trained from scratch on the same
#: 12 chips it scored 0.222 (README). Recall, not IoU: a sound 6-chip model (holdout IoU 0.24) had
#: IoU 0.048 but recall 0.65 on its next chips, which held few data-center pixels.
BLIND_MAX_RECALL = 0.05
BLIND_MIN_PX = 500


def trained_keys(ckpt: Checkpoint | None) -> frozenset[str]:
    """:func:`chip_key` of the chips a loop round trained ``ckpt`` on; empty for a model trained
    elsewhere (``model.train.fit`` records only a count, ``"train_chips"``)."""
    keys = ckpt.train.get("train_chip_keys", ()) if ckpt is not None else ()
    return frozenset(k for k in keys if isinstance(k, str)) if isinstance(keys, (list, tuple)) else frozenset()


def unseen_chips(ckpt: Checkpoint, chips: Sequence[Chip]) -> list[Chip]:
    """The chips ``ckpt`` was not trained on; none when that is unknown (:func:`trained_keys` empty)."""
    trained = trained_keys(ckpt)
    return [c for c in chips if chip_key(c) not in trained] if trained else []


def blind_parent(parent: Checkpoint, unseen: Sequence[Chip], max_recall: float = BLIND_MAX_RECALL,
                 min_px: int = BLIND_MIN_PX) -> str | None:
    """Why a round should not warm-start from ``parent``, or None when it should.

    Args:
        parent: The current model.
        unseen: Reviewed chips (with masks) that ``parent`` was not trained on.
        max_recall: Pixel recall on ``unseen`` (at the parent's threshold) under which it is blind.
        min_px: Fewest data-center pixels on ``unseen`` for a judgement (fewer: None).
    """
    if not unseen:
        return None
    ev = evaluate(parent, unseen)
    n_px = ev.tp + ev.fn
    if n_px < min_px or ev.metrics["recall"] >= max_recall:
        return None
    return (f"the current model{' ' + parent.version if parent.version else ''} finds {ev.tp} of the {n_px} "
            f"data-center pixels (recall {ev.metrics['recall']:.3f}) on the {len(unseen)} chip(s) reviewed since "
            "it was trained: training a new model from scratch instead of fine-tuning it")


def round_lr(lr: float, finetune_lr_factor: float, warm_start: bool) -> float:
    """Learning rate of a round: ``lr`` for a first model, ``lr * finetune_lr_factor`` for a warm start."""
    return lr * finetune_lr_factor if warm_start else lr


@dataclass(frozen=True)
class RetrainSettings:
    """Knobs of one retraining round (mirrors :class:`loop.retrain.RetrainJob`'s arguments).

    Attributes:
        epochs: Training epochs (at least; see ``min_passes``).
        min_passes: Fewest chip passes of a round: with few reviewed chips the epochs are raised
            to reach it (:data:`MIN_PASSES`; 0 trains exactly ``epochs``).
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
    min_passes: int = MIN_PASSES
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
        if self.min_passes < 0:
            raise ConfigError(f"RetrainSettings.min_passes must be >= 0, got {self.min_passes}")
        if not 0.0 < self.finetune_lr_factor <= 1.0:
            raise ConfigError(f"RetrainSettings.finetune_lr_factor must be in (0, 1], got {self.finetune_lr_factor}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"RetrainSettings.val_fraction must be in (0, 1), got {self.val_fraction}")
        if not math.isfinite(self.lr):
            raise ConfigError(f"RetrainSettings.lr must be a finite number, got {self.lr}")
        if not math.isfinite(self.tolerance):
            raise ConfigError(f"RetrainSettings.tolerance must be a finite number (an IoU drop), got {self.tolerance}")
        if self.max_time_s is not None and not (math.isfinite(self.max_time_s) and self.max_time_s > 0):
            raise ConfigError(f"RetrainSettings.max_time_s must be a positive number of seconds or None, got "
                              f"{self.max_time_s}")


def chip_key(chip: Chip) -> str:
    """A chip's identity as text: ``scene_id:col:row:width:height`` (stored in checkpoints)."""
    w = chip.window
    return f"{chip.scene_id}:{int(w.col_off)}:{int(w.row_off)}:{int(w.width)}:{int(w.height)}"


def chip_hash(chip: Chip) -> float:
    """A stable number in [0, 1) from a chip's scene id and window."""
    return int(hashlib.sha1(chip_key(chip).encode()).hexdigest()[:12], 16) / 16**12


def _is_positive(chip: Chip) -> bool:
    return chip.mask is not None and bool(np.asarray(chip.mask).any())


def split_train_val(chips: Sequence[Chip], val_fraction: float,
                    trained: frozenset[str] | set[str] = frozenset()) -> tuple[list[Chip], list[Chip]]:
    """Deterministic split by :func:`chip_hash`, stratified by data-center chips.

    A chip goes to validation when its hash is below ``val_fraction``, so its side does not depend
    on the other chips, with these exceptions, all decided by hash order (so still deterministic):

    - a chip the current model trained on (``trained``, :func:`chip_key` values) is trained on
      again: validating on it would flatter the current model in the regression guard;
    - with two or more chips holding a data center (``mask.any()``), at least one of them is
      validated (the lowest hash among those the current model did not train on, if any) and at
      least one trained on (the highest hash); a single one is always trained on;
    - at least one chip goes to each side when there are two or more (a single chip is used for
      both: the validation score is then optimistic).
    """
    if len(chips) <= 1:
        return list(chips), list(chips)
    keyed = sorted(((chip_hash(c), i) for i, c in enumerate(chips)))
    positives = [i for _, i in keyed if _is_positive(chips[i])]
    val_idx = {i for h, i in keyed if h < val_fraction and chip_key(chips[i]) not in trained}
    if len(positives) >= 2:
        if not val_idx.intersection(positives):
            unseen = [i for i in positives if chip_key(chips[i]) not in trained]
            val_idx.add((unseen or positives)[0])
        if val_idx.issuperset(positives):
            val_idx.discard(positives[-1])
    elif positives:
        val_idx.discard(positives[0])  # the only data-center chip is needed for training
    if not val_idx:
        sole = set(positives) if len(positives) == 1 else set()
        val_idx = {next(i for _, i in keyed if i not in sole)}
    if len(val_idx) == len(chips):
        val_idx.discard(keyed[-1][1])
    train = [c for i, c in enumerate(chips) if i not in val_idx]
    val = [c for i, c in enumerate(chips) if i in val_idx]
    return train, val


@dataclass(frozen=True)
class Evaluation:
    """Pixel and object scores of one checkpoint on validation chips, all at one threshold.

    Attributes:
        threshold: Decision threshold the scores were measured at.
        tp, fp, fn: Pooled pixel counts over all chips.
        metrics: ``iou``, ``dice``, ``precision``, ``recall`` (pixels) and ``object_f1``.
    """

    threshold: float
    tp: int
    fp: int
    fn: int
    metrics: dict[str, float]

    @property
    def measurable(self) -> bool:
        """False when the chips hold no data-center pixel: IoU, recall and F1 say nothing then."""
        return self.tp + self.fn > 0


def evaluate(ckpt: Checkpoint, chips: Sequence[Chip], threshold: float | None = None, batch_size: int = 8,
             min_object_px: int = 100) -> Evaluation:
    """Score a checkpoint on chips with masks: pooled pixel metrics (all pixels of all chips together)
    and object F1, at ``threshold`` or, by default, the checkpoint's own (what its detections use).

    Args:
        ckpt: The model.
        chips: Chips with ``mask``.
        threshold: Decision threshold; default ``ckpt.threshold``.
        batch_size: Chips per forward pass.
        min_object_px: Predicted objects smaller than this are ignored by object F1 (as in training).

    Returns:
        The scores and the counts they come from.
    """
    from model.checkpoint import build_model
    from model.inference import predict_tiles
    from model.metrics import counts_to_metrics, f1_from_counts, label_objects, match_objects

    model = build_model(ckpt, "cpu")
    threshold = float(ckpt.threshold if threshold is None else threshold)
    pix = np.zeros(3, dtype=np.int64)
    obj = np.zeros(3, dtype=np.int64)
    for b in range(0, len(chips), batch_size):
        batch = chips[b : b + batch_size]
        pred = predict_tiles(model, ckpt.normalization, np.stack([c.image for c in batch]), "cpu") >= threshold
        true = np.stack([c.mask for c in batch]).astype(bool)
        pix += (np.count_nonzero(pred & true), np.count_nonzero(pred & ~true), np.count_nonzero(~pred & true))
        for p, t in zip(pred, true, strict=True):
            m = match_objects(label_objects(p, min_object_px)[0], label_objects(t)[0])
            obj += (m["tp"], m["fp"], m["fn"])
    tp, fp, fn = (int(v) for v in pix)
    metrics = {**counts_to_metrics(tp, fp, fn), "object_f1": f1_from_counts(*(int(v) for v in obj))["f1"]}
    return Evaluation(threshold=threshold, tp=tp, fp=fp, fn=fn, metrics={k: float(v) for k, v in metrics.items()})


def evaluate_iou(ckpt: Checkpoint, chips: Sequence[Chip], threshold: float | None = None, batch_size: int = 8) -> float:
    """Pooled pixel IoU of :func:`evaluate` (1.0 on chips without data-center pixels: check
    :attr:`Evaluation.measurable` before trusting it)."""
    return evaluate(ckpt, chips, threshold, batch_size).metrics["iou"]


def unique_log_dir(logs_dir: Path) -> Path:
    """A new ``train-YYYYmmdd-HHMMSS[-N]`` folder under ``logs_dir``, created here (never shared)."""
    logs_dir.mkdir(parents=True, exist_ok=True)
    stem = time.strftime("train-%Y%m%d-%H%M%S")
    for n in itertools.count(1):
        path = logs_dir / (stem if n == 1 else f"{stem}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise AssertionError("unreachable")


def run_round(project_root: str | os.PathLike, settings: RetrainSettings, emit: Emit, cancel: Any = None) -> dict:
    """Train and publish one model version; report through ``emit``.

    Holds the project's :class:`loop.registry.RetrainLock` from start to publish, so no other
    round can change the current model between the warm start and the comparison.

    Args:
        project_root: Project folder.
        settings: Round settings.
        emit: Called with each event dict (``started``, ``step``, ``epoch``, ``published`` or
            ``rejected``, ``cancelled``); ``error`` and ``done`` are left to the caller.
        cancel: Callable or Event; when set, training stops and nothing is published.

    Returns:
        The final event (``published``, ``rejected`` or ``cancelled``). ``published`` and
        ``rejected`` carry ``val_iou`` and ``metrics``: the new model's scores on the validation
        chips measured after training at its decision ``threshold`` (the figures recorded in the
        registry; ``epoch`` events report Lightning's figures during training, at 0.5).

    Raises:
        RetrainBusyError: Another process is retraining the project.
        ProjectError: The registry cannot be read (e.g. a hand-edited entry is malformed).
        NoTrainingDataError: No reviewed chips, or none with a data center in it.
        DclabelError: Anything else the learner or the store reports.
    """
    from loop.project import Project

    project = Project.open(project_root, read_only=True)
    with RetrainLock(project.root / "checkpoints"):
        return _locked_round(project, settings, emit, _as_callable(cancel))


def _locked_round(project: Any, settings: RetrainSettings, emit: Emit, is_cancelled: Callable[[], bool]) -> dict:
    from loop.errors import NoTrainingDataError
    from loop.training_chips import reviewed_training_chips
    from model.checkpoint import load_checkpoint
    from model.train import TrainConfig, fit

    t0 = time.perf_counter()
    current = project.registry.current()  # reads and checks registry.json before any training
    chips = reviewed_training_chips(project)
    if not chips:
        raise NoTrainingDataError(f"no reviewed chips in {project.root}: review some chips first.")
    if not any(c.mask.any() for c in chips):
        raise NoTrainingDataError(
            f"the {len(chips)} reviewed chips in {project.root} hold no data-center footprint: "
            "review some chips with a data center first."
        )
    init = load_checkpoint(current.path) if current is not None else None
    train, val = split_train_val(chips, settings.val_fraction, trained_keys(init))
    unet = init.unet if init is not None else (settings.unet or COLD_START_UNET)
    parent = init  # the registry's comparison and lineage keep the current model even when training starts over
    restart = blind_parent(init, unseen_chips(init, chips)) if init is not None else None
    if restart:
        init = None
    data_version = str(project.labels.version)
    lr = round_lr(settings.lr, settings.finetune_lr_factor, warm_start=init is not None)
    epochs = round_epochs(settings.epochs, settings.min_passes, len(train))
    emit({"type": "started", "n_train": len(train), "n_val": len(val), "parent": current.version if current else None,
          "data_version": data_version, "lr": lr, "epochs": epochs, "restart": restart})
    config = TrainConfig(
        epochs=epochs, batch_size=settings.batch_size, lr=lr, pos_weight=settings.pos_weight,
        base_channels=unet.base_channels,
        depth=unet.depth, dropout=unet.dropout, seed=settings.seed, accelerator="auto",
        max_time_s=settings.max_time_s, log_dir=unique_log_dir(project.logs_dir),
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
        final = {"type": "cancelled", "message": _cancel_message(is_cancelled, "retraining cancelled; the "
                                                                 "current model is unchanged.")}
        emit(final)
        return final
    if is_cancelled():
        final = {"type": "cancelled", "message": _cancel_message(is_cancelled, "cancelled after training; "
                                                                 "nothing was published.")}
        emit(final)
        return final
    new = evaluate(ckpt, val)
    base = evaluate(parent, val) if parent is not None else None
    n_val_px = sum(int(c.mask.size) for c in val)
    unmeasured = None
    if not new.measurable:
        unmeasured = (f"the {len(val)} validation chip(s) hold no data-center pixel (it predicts {new.fp} of "
                      f"{n_val_px} pixels there" + (f", current {current.version} {base.fp}" if base else "") + ")")
    # One set of figures, measured together: the final weights at their decision threshold. What
    # Lightning logged for the best epoch (at 0.5, before the batch-norm recompute) goes to train.
    epoch_figures = {k: v for k, v in ckpt.metrics.items() if k != "threshold"}
    ckpt.metrics = {"threshold": new.threshold, "epoch": float(epoch_figures.get("epoch", float("nan"))),
                    **(new.metrics if new.measurable else {})}
    ckpt.data_version = data_version
    ckpt.train = {**ckpt.train, "n_train": len(train), "n_val": len(val), "epochs": epochs,
                  "min_passes": settings.min_passes,
                  "train_chip_keys": sorted(chip_key(c) for c in train),  # the next round validates elsewhere
                  "lr": lr, "seconds": round(time.perf_counter() - t0, 1), "restart": restart,
                  "val_pixels": {"tp": new.tp, "fp": new.fp, "fn": new.fn},
                  "best_epoch_metrics": {k: float(v) for k, v in epoch_figures.items()},
                  "best_epoch_metrics_note": "Lightning's validation of the best epoch during training, at 0.5, "
                                             "before the batch-norm recompute; metrics hold the final figures"}
    if is_cancelled():  # the evaluations take a while: a cancel (or a vanished requester) still counts
        final = {"type": "cancelled", "message": _cancel_message(is_cancelled, "cancelled after training; "
                                                                 "nothing was published.")}
        emit(final)
        return final
    baseline = base.metrics["iou"] if base is not None and new.measurable else None
    result = project.registry.publish(ckpt, tolerance=settings.tolerance, baseline=baseline,
                                      trained_from=current.version if current else None, unmeasured=unmeasured)
    final = {"type": "published" if result.promoted else "rejected", "version": result.version,
             "promoted": result.promoted, "reason": result.reason,
             "val_iou": new.metrics["iou"] if new.measurable else None, "threshold": new.threshold,
             "metrics": dict(ckpt.metrics), "baseline_iou": baseline, "seconds": round(time.perf_counter() - t0, 2)}
    emit(final)
    return final


def _cancel_message(is_cancelled: Callable[[], bool], default: str) -> str:
    """The requester-gone explanation when that is why the round stopped, else ``default``."""
    why = getattr(is_cancelled, "reason", None)
    return why() if callable(why) and why() else default


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


def process_alive(pid: int, start_time: str | None = None) -> bool:
    """True while process ``pid`` runs (not a zombie; with ``start_time``, not a reused pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else: only /proc can tell more
    state = _proc_stat(pid)
    if state is None:
        return True
    return state[0] not in ("Z", "X") and (start_time is None or state[1] == start_time)


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time) of a process from ``/proc`` (Linux), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], fields[19]


class RequesterWatch:
    """The cancel check of a retraining process: the job's cancel event, or its requester gone.

    A forkserver child's parent is the fork server, not the process that asked for the round, so
    ``os.getppid()`` cannot tell that the command was killed; the requester's pid (and, on Linux,
    its start time, against pid reuse) is checked instead, at every step the trainer polls.

    Args:
        cancel_event: Set by :meth:`loop.retrain.RetrainJob.cancel`.
        requester_pid: Pid of the process that started the round (None: not watched).
    """

    def __init__(self, cancel_event: Any, requester_pid: int | None) -> None:
        self._event = _as_callable(cancel_event)
        self.requester_pid = requester_pid
        stat = _proc_stat(requester_pid) if requester_pid else None
        self._start_time = stat[1] if stat else None
        self.gone = False

    def __call__(self) -> bool:
        if self._event():
            return True
        if self.requester_pid and not self.gone and not process_alive(self.requester_pid, self._start_time):
            self.gone = True
        return self.gone

    def reason(self) -> str | None:
        """Why the round stops, when it is because the requester is gone."""
        if not self.gone:
            return None
        return (f"the process that started this round (pid {self.requester_pid}) is gone; stopped without "
                "publishing, the current model is unchanged.")


class _Terminated(BaseException):
    """SIGTERM from the job (a cancel that outstayed its grace period): leave quietly."""


def _on_sigterm(signum, frame) -> None:
    raise _Terminated


def log_event(project_root: str | os.PathLike, event: dict) -> None:
    """Append an event to ``logs/retrain.jsonl`` (best effort: a full disk must not stop a round)."""
    log = Path(project_root) / "logs" / "retrain.jsonl"
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(event) + "\n")
    except OSError:
        pass


def child_main(project_root: str, settings: RetrainSettings, queue: Any, cancel_event: Any,
               requester_pid: int | None = None) -> None:
    """Entry point of the retraining process: run one round, put every event on ``queue``.

    Ctrl+C is left to the requester (which cancels through ``cancel_event``); SIGTERM (the job's
    last resort after a cancel) ends the process quietly, without a traceback; a requester that is
    gone (``requester_pid``) cancels the round.
    """
    import torch

    from loop.background import ignore_interrupts, one_line_warnings
    from model.runtime import tune_allocator

    ignore_interrupts()  # Ctrl+C reaches the parent too, which cancels the round cleanly
    signal.signal(signal.SIGTERM, _on_sigterm)
    # Lightning announces a SIGTERM it sees during fit ("[rank: 0] Received SIGTERM: 15"): here it is
    # the job stopping us after a cancel, which the job reports itself
    logging.getLogger("lightning.pytorch.trainer.connectors.signal_connector").setLevel(logging.WARNING)
    one_line_warnings()
    tune_allocator()
    torch.set_num_threads(max(1, settings.threads))
    watch = RequesterWatch(cancel_event, requester_pid)

    def emit(event: dict) -> None:
        event = {**event, "time": time.time()}
        if not watch.gone:
            queue.put(event)
        if event["type"] != "step":
            log_event(project_root, event)

    terminated = False
    try:
        run_round(project_root, settings, emit, watch)
    except _Terminated:
        terminated = True  # the job has reported (and logged) the cancel
    except DclabelError as exc:
        emit({"type": "error", "message": str(exc), "kind": type(exc).__name__})
    except Exception as exc:  # report, never hang the GUI on a silent child
        emit({"type": "error", "message": f"{type(exc).__name__}: {exc}", "kind": type(exc).__name__,
              "traceback": traceback.format_exc(limit=8)})
    finally:
        if watch.gone or terminated:
            queue.cancel_join_thread()  # nobody reads the queue any more: do not block the exit on it
        if not terminated:
            emit({"type": "done"})


def with_threads(settings: RetrainSettings, threads: int | None) -> RetrainSettings:
    """``settings`` with a thread count: given, or half the CPUs (at least 1)."""
    return replace(settings, threads=threads or max(1, (os.cpu_count() or 2) // 2))
