"""Active-learning simulation: an oracle plays the reviewer, strategies compete on label efficiency.

The scene is split in two: the left part is the *pool* offered to the oracle (a project of its
own per strategy and seed), the right ``holdout_fraction`` is never offered and measures every
model (pixel IoU and object F1 from :mod:`model.metrics`). Further scenes with their truth can be
held out whole (``holdout_scenes``): a strip of one scene holds few data centers, and missing one
large building moves its IoU by tenths; the scores are then pooled over every held-out region. Each round the strategy picks chips
with :func:`loop.ranking.rank_chips`; the oracle marks them reviewed and adds the ground-truth
footprints touching them to the label store (hard negatives keep their class); the model is
retrained (warm start, in-process :func:`model.train.fit`) and scored. The first round is the
same seeded random pick for every strategy, so curves differ only by what the strategy chose.
"""

from __future__ import annotations

import csv
import os
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.features import rasterize
from rasterio.windows import Window
from shapely.geometry import box

from loop.ranking import rank_chips
from loop.ranking_scores import STRATEGIES
from loop.retrain_worker import FINETUNE_LR_FACTOR, round_lr
from model.atomic import atomic_path
from model.checkpoint import Checkpoint, build_model, save_checkpoint
from model.errors import Cancelled, ConfigError, LabelError
from model.scene import SceneInfo, open_scene, read_window, write_geotiff

Progress = Callable[[int, int, dict], None]
CSV_FIELDS = ("strategy", "seed", "round", "n_reviewed", "fraction", "n_positive", "iou", "dice", "precision",
              "recall", "object_f1", "train_s", "rank_s", "restarted")


@dataclass(frozen=True)
class SimulationConfig:
    """How to simulate. ``dclabel simulate`` flags map onto these fields.

    Attributes:
        strategies: Ranking strategies to compare (keys of ``loop.ranking_scores.STRATEGIES``).
        rounds: Label-and-retrain rounds per strategy and seed.
        batch: Chips the oracle labels per round.
        seeds: Number of seeds (0, 1, ...): initial pick, training and random ranking.
        chip_size: Chip side in pixels.
        holdout_fraction: Right-hand share of the scene kept for evaluation only.
        epochs: Minimum training epochs per round.
        train_passes: Minimum chip passes per round (epochs are raised to reach it, so the first
            rounds on a few chips still take enough optimizer steps).
        full_epochs: Epochs of the full-label reference model (default: 10x the chip passes of a
            round, at least ``3 * epochs``): the reference should be trained to convergence.
        val_fraction: Share of reviewed chips held out for picking the best epoch, as the retraining
            job does; 0 (default) trains on every reviewed chip and keeps the last epoch, which is
            less noisy with a few chips (the holdout region is the judge here).
        base_channels: U-Net width.
        depth: U-Net levels.
        dropout: Dropout (> 0 so ``bald`` has MC samples).
        lr: Learning rate of the first round (and of the full-label reference).
        finetune_lr_factor: Warm-started rounds train at ``lr`` times this (as the retraining job,
            :data:`loop.retrain_worker.FINETUNE_LR_FACTOR`).
        pos_weight: BCE weight of data-center pixels (as the retraining job's default).
        batch_size: Chips per training step.
        warm_start: Start each round from the previous round's model.
        blind_restart: Except when that model finds (almost) nothing on the chips reviewed since
            it was trained (:func:`loop.retrain_worker.blind_parent`, as the retraining job): then
            the round trains from scratch at the full learning rate.
        full_label: Also train on every pool chip for the reference line: one model per seed,
            the line at their mean (a single model's holdout IoU moved from 0.557 to 0.419 with
            nothing but the torch thread count changed; the strategies' curves are means too).
        min_object_px: Predicted objects under this size are ignored by object F1.
        threads: Torch CPU threads (of each worker process when ``jobs`` > 1).
        jobs: Runs (the full-label reference, each strategy and seed) trained at once, each in
            a worker process of its own. Small U-Nets use extra threads poorly: on a 2-core CPU,
            two one-thread jobs do about 40% more training steps per second than one two-thread
            job. Results do not depend on it (same seeds, same rows).
        first_pick: How the first round's chips are chosen. ``cold_start`` (default): as the app
            and ``dclabel rank`` do on a project without a model, the uncertainty strategies take
            the cold-start queue (chips spread over clusters of image features, seeded) and
            ``random`` takes random chips; so each curve is its strategy's whole loop. ``random``:
            every strategy starts from the same random chips (isolates the model-based rounds).
    """

    strategies: tuple[str, ...] = ("random", "entropy", "tta", "bald")
    rounds: int = 5
    batch: int = 8
    seeds: int = 3
    chip_size: int = 256
    holdout_fraction: float = 0.25
    epochs: int = 3
    train_passes: int = 96
    full_epochs: int | None = None
    base_channels: int = 16
    depth: int = 4
    dropout: float = 0.1
    lr: float = 2e-3
    finetune_lr_factor: float = FINETUNE_LR_FACTOR
    pos_weight: float = 2.0
    batch_size: int = 4
    val_fraction: float = 0.0
    warm_start: bool = True
    blind_restart: bool = True
    full_label: bool = True
    min_object_px: int = 100
    threads: int = 1
    jobs: int = 1
    first_pick: str = "cold_start"

    def __post_init__(self) -> None:
        if self.first_pick not in ("cold_start", "random"):
            raise ConfigError(f"SimulationConfig.first_pick (--first-pick) must be cold_start or random, "
                              f"got {self.first_pick!r}")
        for flag, value in (("--rounds", self.rounds), ("--batch", self.batch), ("--seeds", self.seeds),
                            ("--epochs", self.epochs), ("--threads", self.threads), ("--jobs", self.jobs)):
            if value < 1:
                raise ConfigError(f"{flag} must be at least 1, got {value}")
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown or not self.strategies:
            raise ConfigError(f"--strategies: unknown strategy {unknown or list(self.strategies)}; choose from "
                              f"{', '.join(STRATEGIES)}")
        if not 0.0 < self.finetune_lr_factor <= 1.0:
            raise ConfigError(f"--finetune-lr-factor must be in (0, 1], got {self.finetune_lr_factor}")
        if not 0.05 <= self.holdout_fraction <= 0.5:
            raise ConfigError(f"--holdout (the share of the scene kept for scoring) must be in 0.05..0.5, "
                              f"got {self.holdout_fraction}")


@dataclass(frozen=True)
class Holdout:
    """The evaluation region: pixels, true mask and true object labels."""

    image: np.ndarray  # uint8 (4, H, W)
    labels: np.ndarray  # int32 (H, W): 0 background, i = i-th true data center

    @property
    def mask(self) -> np.ndarray:
        return self.labels > 0


@dataclass(frozen=True)
class SimulationResult:
    """What :func:`run_simulation` produced."""

    rows: list[dict]
    full_label: dict | None
    summary: dict
    csv_path: Path
    png_path: Path


def split_scene(scene: SceneInfo, truth, work_dir: Path, holdout_fraction: float, chip_size: int) -> tuple[Path, Holdout]:
    """Write the pool (left) part of a scene as a GeoTIFF and read the held-out right part.

    The split column is a multiple of ``chip_size`` so pool chips never reach into the holdout.
    """
    split = int(round(scene.width * (1 - holdout_fraction) / chip_size)) * chip_size
    split = min(max(split, chip_size), scene.width - chip_size)
    pool_win, hold_win = Window(0, 0, split, scene.height), Window(split, 0, scene.width - split, scene.height)
    with rasterio.open(scene.path) as src:
        pool = read_window(scene, pool_win, src)
        hold = read_window(scene, hold_win, src)
    pool_tif = write_geotiff(work_dir / "pool.tif", pool, scene.crs, scene.transform)
    hold_transform = rasterio.windows.transform(hold_win, scene.transform)
    positives = [g for g, c in zip(truth.geometry, truth["class"], strict=True) if c == "datacenter"]
    shape = (hold.shape[1], hold.shape[2])
    labels = (rasterize(((g, i + 1) for i, g in enumerate(positives)), out_shape=shape, transform=hold_transform,
                        fill=0, dtype="int32") if positives else np.zeros(shape, np.int32))
    return pool_tif, Holdout(hold, labels)


def evaluate(ckpt: Checkpoint, holdout: Holdout | Sequence[Holdout], chip_size: int,
             min_object_px: int = 100) -> dict[str, float]:
    """Pixel metrics and object F1 of a model over the held-out regions (tiled, edges covered).

    Several regions are pooled: pixel and object counts are summed before the ratios are taken.
    The model's own decision threshold (``ckpt.threshold``) decides; see
    :func:`score_probabilities` for others.
    """
    return score_probabilities(holdout_probabilities(ckpt, holdout, chip_size), holdout, ckpt.threshold,
                               min_object_px)


def _regions(holdout: Holdout | Sequence[Holdout]) -> list[Holdout]:
    return [holdout] if isinstance(holdout, Holdout) else list(holdout)


def holdout_probabilities(ckpt: Checkpoint, holdout: Holdout | Sequence[Holdout], chip_size: int) -> list[np.ndarray]:
    """The model's data-center probability (H, W) of each held-out region, chip by chip on the CPU."""
    model = build_model(ckpt, "cpu")
    return [_predict(model, ckpt, region.image, chip_size) for region in _regions(holdout)]


def score_probabilities(probabilities: Sequence[np.ndarray], holdout: Holdout | Sequence[Holdout],
                        threshold: float, min_object_px: int = 100) -> dict[str, float]:
    """Pooled pixel metrics and object F1 of probability maps thresholded at ``threshold``.

    Args:
        probabilities: One (H, W) map per region, as :func:`holdout_probabilities` gives.
        holdout: The regions they belong to, in the same order.
        threshold: Pixels with a probability at or above it are data center.
        min_object_px: Predicted objects under this size are ignored by object F1.

    Returns:
        ``iou``, ``dice``, ``precision``, ``recall`` and ``object_f1``.
    """
    from model.metrics import counts_to_metrics, f1_from_counts, label_objects, match_objects

    pix, obj = np.zeros(3), np.zeros(3, int)
    for prob, region in zip(probabilities, _regions(holdout), strict=True):
        pred = prob >= threshold
        true = region.mask
        pix += (np.count_nonzero(pred & true), np.count_nonzero(pred & ~true), np.count_nonzero(~pred & true))
        m = match_objects(label_objects(pred, min_object_px)[0], region.labels)
        obj += (m["tp"], m["fp"], m["fn"])
    out = counts_to_metrics(*map(float, pix))
    out["object_f1"] = f1_from_counts(*map(int, obj))["f1"]
    return out


def _predict(model, ckpt: Checkpoint, image: np.ndarray, chip_size: int) -> np.ndarray:
    """Probability map of an image (4, H, W), chip by chip (edge chips zero-padded)."""
    from model.inference import predict_tiles
    from model.scene import chip_windows

    _, h, w = image.shape
    prob = np.zeros((h, w), np.float32)
    pad = np.zeros((image.shape[0], max(h, chip_size), max(w, chip_size)), np.uint8)
    pad[:, :h, :w] = image
    windows = chip_windows(w, h, chip_size)
    for b in range(0, len(windows), 8):
        batch = windows[b : b + 8]
        tiles = np.stack([pad[:, int(x.row_off) : int(x.row_off) + chip_size, int(x.col_off) : int(x.col_off) + chip_size]
                          for x in batch])
        for win, p in zip(batch, predict_tiles(model, ckpt.normalization, tiles, "cpu"), strict=True):
            r, c = int(win.row_off), int(win.col_off)
            prob[r : r + chip_size, c : c + chip_size] = p[: h - r, : w - c]
    return prob


def read_holdout_scene(image: str | os.PathLike, truth: str | os.PathLike) -> Holdout:
    """A whole scene and its true data centers as a held-out region.

    Raises:
        LabelError: No data-center footprint of ``truth`` lies inside the scene.
    """
    from model.masks import load_footprints

    scene = open_scene(image)
    gt = load_footprints(truth).to_crs(scene.crs)
    positives = [g for g, c in zip(gt.geometry, gt["class"], strict=True)
                 if c == "datacenter" and g.intersects(box(*scene.bounds))]
    if not positives:
        raise LabelError(f"{truth}: no data-center footprint lies inside the held-out scene {image}: give that "
                         "scene's truth.")
    with rasterio.open(scene.path) as src:
        pixels = read_window(scene, Window(0, 0, scene.width, scene.height), src)
    labels = rasterize(((g, i + 1) for i, g in enumerate(positives)), out_shape=(scene.height, scene.width),
                       transform=scene.transform, fill=0, dtype="int32")
    return Holdout(pixels, labels)


class Oracle:
    """Plays the reviewer: marks chips reviewed and adds the true footprints touching them."""

    def __init__(self, project, truth) -> None:
        from shapely.geometry import box

        self.project = project
        self.scene = project.scenes[0]
        left, bottom, right, top = self.scene.bounds
        region = box(left, bottom, right, top)
        self._truth = [(g, c) for g, c in zip(truth.geometry, truth["class"], strict=True) if g.intersects(region)]
        self._added: set[int] = set()

    def review(self, windows: Sequence[Window]) -> None:
        """Label these chips of the pool scene."""
        from shapely.geometry import box

        store = self.project.labels
        for window in windows:
            left, bottom, right, top = rasterio.windows.bounds(window, self.scene.transform)
            chip = box(left, bottom, right, top)
            for i, (geom, cls) in enumerate(self._truth):
                if i not in self._added and geom.intersects(chip) and geom.intersection(chip).area > 0:
                    store.add_footprint(self.scene.scene_id, geom, cls, source="imported")
                    self._added.add(i)
            store.mark_reviewed(self.scene.scene_id, window)


def _train(project, config: SimulationConfig, seed: int, init: Checkpoint | None,
           cancel: Callable[[], bool] | None) -> Checkpoint:
    from loop.retrain_worker import blind_parent, chip_key, split_train_val, unseen_chips
    from loop.training_chips import reviewed_training_chips
    from model.train import TrainConfig, fit

    chips = reviewed_training_chips(project)
    train, val = split_train_val(chips, config.val_fraction) if config.val_fraction > 0 else (chips, [])
    warm, restart = (init if config.warm_start else None), None
    if warm is not None and config.blind_restart:  # as the retraining job: a blind model is not fine-tuned
        restart = blind_parent(warm, unseen_chips(warm, chips))
        warm = None if restart else warm
    lr = round_lr(config.lr, config.finetune_lr_factor, warm_start=warm is not None)
    tc = TrainConfig(epochs=round_epochs(config, len(train)), batch_size=config.batch_size, lr=lr,
                     pos_weight=config.pos_weight,
                     base_channels=config.base_channels, depth=config.depth, dropout=config.dropout, seed=seed,
                     accelerator="cpu", gate_seconds=0)  # the simulation never runs the fast path
    ckpt = fit([(c.image, c.mask) for c in train], [(c.image, c.mask) for c in val], tc, init=warm, cancel=cancel)
    ckpt.train = {**ckpt.train, "train_chip_keys": sorted(chip_key(c) for c in train), "restarted": bool(restart)}
    return ckpt


def round_epochs(config: SimulationConfig, n_train: int) -> int:
    """Epochs of a round on ``n_train`` chips: at least ``epochs`` and ``train_passes`` chip passes."""
    return max(config.epochs, -(-config.train_passes // max(1, n_train)))


def _is_cancelled(cancel: Any) -> bool:
    if cancel is None:
        return False
    is_set = getattr(cancel, "is_set", None)
    return bool(is_set() if callable(is_set) else cancel())


def run_simulation(
    image: str | os.PathLike,
    truth: str | os.PathLike,
    output_dir: str | os.PathLike,
    config: SimulationConfig = SimulationConfig(),
    progress: Progress | None = None,
    cancel: Any = None,
    holdout_scenes: Sequence[tuple[str | os.PathLike, str | os.PathLike]] = (),
) -> SimulationResult:
    """Run every strategy for every seed; write ``simulation.csv``, ``learning_curve.png``.

    Every row's model is kept: ``runs/<strategy>-s<seed>/rounds/round<N>.pt`` (in the run's
    project folder) and ``runs/full-s<seed>.pt``, so a row can be scored again at another
    threshold or on other imagery (``dclabel detect --checkpoint``).

    The full-label reference and each (strategy, seed) run are independent: with
    ``config.jobs`` > 1 they run in that many worker processes (``config.threads`` torch threads
    each); the rows are the same as with one job and come out in the same order.

    Args:
        image: Scene GeoTIFF.
        truth: Ground-truth footprints (any vector format and CRS; ``class`` column).
        output_dir: Where the CSV, PNG and the per-run projects go.
        config: Simulation settings.
        holdout_scenes: ``(image, truth)`` pairs of further scenes held out whole; every model
            is scored over them and the scene's held-out strip together.
        progress: ``progress(done, total, info)`` after each round (info: strategy, seed, round, iou).
        cancel: Callable or Event; checked between rounds and training steps (raises :class:`Cancelled`).

    Returns:
        Rows, full-label scores, label-efficiency summary and output paths.
    """
    import torch

    torch.set_num_threads(max(1, config.threads))
    out = Path(output_dir)
    scene = open_scene(image)  # inputs are checked before anything is written
    gt = load_truth(truth, scene)
    inside = gt[(gt["class"] == "datacenter") & gt.intersects(box(*scene.bounds))]
    if inside.empty:
        raise LabelError(f"{truth}: no data-center footprint lies inside {image}; the oracle would have nothing "
                         "to label: give the truth of this scene.")
    extra = [read_holdout_scene(i, t) for i, t in holdout_scenes]
    (out / "runs").mkdir(parents=True, exist_ok=True)
    pool_tif, strip = split_scene(scene, gt, out, config.holdout_fraction, config.chip_size)
    setup = _Setup(pool_tif, gt, (strip, *extra), config, len(_pool_windows(open_scene(pool_tif), config.chip_size)))
    if config.batch * config.rounds > setup.n_pool:
        warnings.warn(f"--batch {config.batch} x --rounds {config.rounds} chips is more than the {setup.n_pool} chips "
                      "of the pool: the last rounds have fewer (or no) chips left to review.", UserWarning, stacklevel=2)
    runs = [("full", seed) for seed in range(config.seeds)] if config.full_label else []
    runs += [(strategy, seed) for seed in range(config.seeds) for strategy in config.strategies]
    total = (len(config.strategies) * config.rounds + int(config.full_label)) * config.seeds
    if config.jobs > 1 and len(runs) > 1:
        results = _run_parallel(setup, runs, out, total, progress, cancel)
    else:
        results, done = {}, 0

        def report(info: dict) -> None:
            nonlocal done
            done += 1
            if progress:
                progress(done, total, info)

        for key in runs:
            results[key] = _run_one(setup, key, out, report, lambda: _is_cancelled(cancel))
    rows = [row for key in runs for row in results[key]]
    full = full_label_mean([r for r in rows if r["strategy"] == "full"]) if config.full_label else None
    csv_path = write_csv(rows, out / "simulation.csv")
    summary = label_efficiency(rows, full["iou"] if full else None, setup.n_pool)
    if full:
        summary["full_iou_per_seed"] = full["iou_per_seed"]
    png_path = plot_learning_curves(rows, full, out / "learning_curve.png", summary)
    return SimulationResult(rows, full, summary, csv_path, png_path)


def load_truth(truth: str | os.PathLike, scene: SceneInfo):
    """Ground-truth footprints in the scene's CRS."""
    from model.masks import load_footprints

    return load_footprints(truth).to_crs(scene.crs)


@dataclass(frozen=True)
class _Setup:
    """What every run of a simulation shares (picklable: worker processes get a copy)."""

    pool_tif: Path
    gt: Any  # GeoDataFrame of the truth in the scene CRS
    holdout: tuple[Holdout, ...]
    config: SimulationConfig
    n_pool: int


def _run_one(setup: _Setup, key: tuple[str, int], out: Path, report: Callable[[dict], None],
             cancelled: Callable[[], bool]) -> list[dict]:
    """One run's rows: the full-label reference (``("full", 0)``) or a strategy and seed, round by round."""
    strategy, seed = key
    config = setup.config
    pool = open_scene(setup.pool_tif)
    if strategy == "full":
        full = _full_label(pool, setup.gt, setup.holdout, config, seed, cancelled, out / "runs" / f"full-s{seed}.pt")
        report({"strategy": "full", "seed": seed, "iou": full["iou"]})
        return [{"strategy": "full", "seed": seed, "round": 0, "n_reviewed": setup.n_pool, "fraction": 1.0, **full}]
    from loop.project import Project
    from loop.training_chips import positive_reviewed_count

    run_dir = out / "runs" / f"{strategy}-s{seed}"
    if run_dir.exists():  # a previous simulation's run: its reviewed chips must not carry over
        shutil.rmtree(run_dir)
    project = Project.create(run_dir, images=[setup.pool_tif], chip_size=config.chip_size)
    rows: list[dict] = []
    try:
        oracle = Oracle(project, setup.gt)
        ckpt: Checkpoint | None = None
        shuffled = _pool_shuffle(pool, config, seed)  # random's picks, round after round
        pick, rank_s = shuffled[: config.batch], 0.0
        if config.first_pick == "cold_start" and not STRATEGIES[strategy].random:
            t0 = time.perf_counter()
            queue = rank_chips(project, "cold_start", top=config.batch, seed=seed, device="cpu", cancel=cancelled)
            pick, rank_s = [q.window for q in queue], time.perf_counter() - t0
        for rnd in range(1, config.rounds + 1):
            if cancelled():
                raise Cancelled(f"simulation cancelled ({strategy}, seed {seed}, before round {rnd}).")
            oracle.review(pick)
            t0 = time.perf_counter()
            ckpt = _train(project, config, seed, ckpt, cancelled)
            train_s = time.perf_counter() - t0
            save_checkpoint(ckpt, run_dir / "rounds" / f"round{rnd}.pt")  # the model behind this row
            scores = evaluate(ckpt, setup.holdout, config.chip_size, config.min_object_px)
            n_rev, n_pos = positive_reviewed_count(project)
            rows.append({"strategy": strategy, "seed": seed, "round": rnd, "n_reviewed": n_rev,
                         "fraction": n_rev / setup.n_pool, "n_positive": n_pos, **scores,
                         "train_s": round(train_s, 2), "rank_s": round(rank_s, 2),
                         "restarted": int(ckpt.train.get("restarted", False))})
            report({"strategy": strategy, "seed": seed, "round": rnd, "iou": scores["iou"], "n_reviewed": n_rev})
            if rnd < config.rounds and STRATEGIES[strategy].random:
                # the next chips of one seeded shuffle of the pool grid, as rank_chips' random does,
                # but not keyed on the scene id: that hashes the pool's path, so random's picks (and
                # the benchmark's baseline) changed with --output-dir
                pick, rank_s = shuffled[rnd * config.batch : (rnd + 1) * config.batch], 0.0
            elif rnd < config.rounds:
                t0 = time.perf_counter()
                queue = rank_chips(project, strategy, top=config.batch, checkpoint=ckpt, seed=seed,
                                   device="cpu", cancel=cancelled)
                pick, rank_s = [q.window for q in queue], time.perf_counter() - t0
    finally:
        project.labels.close()
    return rows


#: A worker process's link to the simulation that started it (set by :func:`_init_worker`).
_WORKER: dict[str, Any] = {}


def _init_worker(events, stop, parent: int, threads: int) -> None:
    """Set up a worker process: torch threads, progress queue, stop event, and a parent watchdog.

    A parent killed outright (``kill -9``) cannot set ``stop``, and an idle pool worker would
    wait for work forever: the watchdog ends the worker as soon as its parent is gone.
    """
    import threading

    import torch

    torch.set_num_threads(max(1, threads))
    _WORKER.update(events=events, stop=stop)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="dclabel-parent-watchdog", daemon=True).start()


def _worker_run(setup: _Setup, key: tuple[str, int], out: Path) -> list[dict]:
    """:func:`_run_one` in a worker process: progress goes to the events queue, the stop event cancels."""
    return _run_one(setup, key, out, _WORKER["events"].put, _WORKER["stop"].is_set)


def _run_parallel(setup: _Setup, runs: list[tuple[str, int]], out: Path, total: int,
                  progress: Progress | None, cancel: Any) -> dict[tuple[str, int], list[dict]]:
    """The runs in ``config.jobs`` worker processes, longest (the full-label reference) first.

    The first failure (or ``cancel``) stops every other run at its next training step and is raised.
    """
    import multiprocessing
    import queue as queue_mod
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = multiprocessing.get_context("spawn")  # no fork of a process that holds torch threads
    events, stop = ctx.Queue(), ctx.Event()
    results: dict[tuple[str, int], list[dict]] = {}
    done = 0

    def drain(wait_s: float = 0.0) -> None:
        nonlocal done
        while done < total:
            try:
                info = events.get(timeout=wait_s) if wait_s else events.get_nowait()
            except queue_mod.Empty:
                return
            done += 1
            if progress:
                progress(done, total, info)

    with ProcessPoolExecutor(max_workers=min(setup.config.jobs, len(runs)), mp_context=ctx, initializer=_init_worker,
                             initargs=(events, stop, os.getpid(), setup.config.threads)) as pool:
        futures = {pool.submit(_worker_run, setup, key, out): key for key in runs}
        pending = set(futures)
        try:
            while pending:
                finished, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                drain()
                if _is_cancelled(cancel):
                    raise Cancelled(f"simulation cancelled after {done} of {total} rounds.")
                for future in finished:
                    results[futures[future]] = future.result()
        except BaseException:
            stop.set()
            for future in pending:
                future.cancel()
            raise
    drain(wait_s=5.0)  # a worker's last events may still be on their way through the queue
    return results


def _pool_windows(pool: SceneInfo, chip_size: int) -> list[Window]:
    from model.scene import chip_windows

    return chip_windows(pool.width, pool.height, chip_size)


def _pool_shuffle(pool: SceneInfo, config: SimulationConfig, seed: int) -> list[Window]:
    """Pool windows in one seeded order that depends on the seed and the grid only: each batch of
    ``config.batch`` is in raster order (the first batch is every strategy's with ``first_pick``
    random, and random's first round)."""
    windows = _pool_windows(pool, config.chip_size)
    idx = np.random.default_rng(1000 + seed).permutation(len(windows))
    batches = [sorted(idx[i : i + config.batch]) for i in range(0, len(idx), config.batch)]
    return [windows[i] for batch in batches for i in batch]


def pool_pairs(pool: SceneInfo, gt, chip_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every pool chip with its true data-center mask: ``(image, mask)`` pairs in grid order."""
    from model.masks import rasterize_footprints
    from model.scene import read_chip

    positives = [g for g, c in zip(gt.geometry, gt["class"], strict=True) if c == "datacenter"]
    pairs = []
    with rasterio.open(pool.path) as src:
        for w in _pool_windows(pool, chip_size):
            chip = read_chip(pool, w, src)
            shape = (int(w.height), int(w.width))
            pairs.append((chip.image, rasterize_footprints(positives, None, pool.crs, chip.transform, shape)))
    return pairs


def full_label_mean(rows: Sequence[dict]) -> dict:
    """The full-label reference over its seeds: mean of every metric, ``<metric>_std``, ``iou_per_seed``."""
    keys = ("iou", "dice", "precision", "recall", "object_f1", "n_positive", "train_s")
    out: dict[str, Any] = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    out.update({f"{k}_std": float(np.std([r[k] for r in rows])) for k in keys[:5]})
    out["seeds"] = len(rows)
    out["iou_per_seed"] = [float(r["iou"]) for r in rows]
    return out


def _full_label(pool: SceneInfo, gt, holdout: Sequence[Holdout], config: SimulationConfig, seed: int,
                cancel, path: Path) -> dict:
    """Train on every pool chip with its true mask (one seed): the reference the strategies chase.

    The model is saved at ``path``."""
    from model.train import TrainConfig, fit

    pairs = pool_pairs(pool, gt, config.chip_size)
    t0 = time.perf_counter()
    tc = TrainConfig(epochs=config.full_epochs or max(3 * config.epochs, -(-10 * config.train_passes // len(pairs))),
                     batch_size=config.batch_size, lr=config.lr, pos_weight=config.pos_weight,
                     base_channels=config.base_channels, depth=config.depth, dropout=config.dropout, seed=seed,
                     accelerator="cpu", gate_seconds=0)
    ckpt = fit(pairs, [], tc, cancel=cancel)
    save_checkpoint(ckpt, path)
    scores = evaluate(ckpt, holdout, config.chip_size, config.min_object_px)
    n_pos = sum(int(m.any()) for _, m in pairs)
    return {**scores, "n_positive": n_pos, "train_s": round(time.perf_counter() - t0, 2), "rank_s": 0.0}


def write_csv(rows: list[dict], path: Path) -> Path:
    """Write the rows atomically (temporary file, then ``os.replace``)."""
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
    return path


def _curves(rows: list[dict], metric: str) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per strategy: (mean fraction, mean metric, std metric) by round, over seeds."""
    out = {}
    for strategy in dict.fromkeys(r["strategy"] for r in rows if r["strategy"] != "full"):
        mine = [r for r in rows if r["strategy"] == strategy]
        rounds = sorted({r["round"] for r in mine})
        frac = np.array([np.mean([r["fraction"] for r in mine if r["round"] == k]) for k in rounds])
        vals = [[r[metric] for r in mine if r["round"] == k] for k in rounds]
        out[strategy] = (frac, np.array([np.mean(v) for v in vals]), np.array([np.std(v) for v in vals]))
    return out


def label_efficiency(rows: list[dict], full_iou: float | None, n_pool: int, budget: float = 0.10) -> dict:
    """Label-efficiency figures of a simulation.

    Args:
        rows: Rows of :func:`run_simulation`.
        full_iou: Holdout IoU of the full-label model (None: no fraction-to-95% figures).
        n_pool: Chips in the pool.
        budget: Labelling budget (fraction of pool chips) for the comparison with random.

    Returns:
        ``per_strategy``: {strategy: ``fraction_to_95`` (mean fraction of chips at the first round whose
        mean IoU reaches 95% of full-label IoU, or None), ``iou_at_budget`` (mean IoU interpolated at
        ``budget``; clamped to the nearest round outside the simulated range), ``final_iou``};
        ``best`` (fewest chips to 95%, then highest mean IoU), ``best_fraction_to_95`` and
        ``best_minus_random_at_budget``.
    """
    curves = _curves(rows, "iou")
    per: dict[str, dict] = {}
    for s, (frac, mean, _) in curves.items():
        reach = None
        if full_iou is not None:
            hit = np.nonzero(mean >= 0.95 * full_iou)[0]
            reach = float(frac[hit[0]]) if hit.size else None
        per[s] = {"fraction_to_95": reach, "iou_at_budget": float(np.interp(budget, frac, mean)),
                  "final_iou": float(mean[-1]), "mean_iou": float(mean.mean()),
                  "budget_in_range": bool(frac[0] <= budget <= frac[-1])}
    best = min(per, key=lambda s: (per[s]["fraction_to_95"] if per[s]["fraction_to_95"] is not None else 2.0,
                                   -per[s]["mean_iou"])) if per else None
    summary = {"full_iou": full_iou, "n_pool": n_pool, "budget": budget, "per_strategy": per, "best": best,
               "best_fraction_to_95": per[best]["fraction_to_95"] if best else None,
               "best_minus_random_at_budget": None}
    if best and "random" in per:
        summary["best_minus_random_at_budget"] = per[best]["iou_at_budget"] - per["random"]["iou_at_budget"]
    return summary


def plot_learning_curves(rows: list[dict], full: dict | None, path: Path, summary: dict | None = None) -> Path:
    """Pixel IoU and object F1 against reviewed chips: mean +- std over seeds, full-label line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    n_pool = (summary or {}).get("n_pool") or 1
    for ax, metric, title in ((axes[0], "iou", "holdout pixel IoU"), (axes[1], "object_f1", "holdout object F1")):
        for strategy, (frac, mean, std) in _curves(rows, metric).items():
            x = frac * n_pool
            (line,) = ax.plot(x, mean, marker="o", label=strategy)
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.15)
        if full is not None:
            n = full.get("seeds", 1)
            ax.axhline(full[metric], color="black", linestyle="--",
                       label="all pool chips labelled" + (f" (mean of {n} seeds, +- std)" if n > 1 else ""))
            if n > 1:
                ax.axhspan(full[metric] - full[f"{metric}_std"], full[metric] + full[f"{metric}_std"],
                           color="black", alpha=0.08)
        ax.set_xlabel(f"reviewed chips (pool: {n_pool})")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # chips come whole
        ax.set_ylabel(title)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle("dclabel active learning: mean +- std over seeds")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def config_dict(config: SimulationConfig) -> dict:
    """The config as plain data (for logs and bench output)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}


__all__ = ["SimulationConfig", "SimulationResult", "Holdout", "Oracle", "run_simulation", "evaluate",
           "read_holdout_scene", "split_scene", "write_csv", "label_efficiency", "plot_learning_curves"]
