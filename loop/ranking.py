"""The review queue: rank a project's unreviewed chips by how much labelling them would teach.

:func:`rank_chips` reads every unreviewed chip, predicts with the current checkpoint, turns the
output into a per-pixel uncertainty map with the chosen strategy (:data:`STRATEGIES`), scores
each chip (:func:`~loop.ranking_scores.chip_score`), spreads the top of the queue over space
(:func:`~loop.ranking_scores.diversify`) and attaches the model's proposals. Without a model it
falls back to a cold start (:func:`~loop.ranking_scores.cold_start_order`). :func:`save_queue`
and :func:`load_queue` (:mod:`loop.ranking_queue`, re-exported here) keep it in ``queue.json``.
"""

from __future__ import annotations

import os
import time
import warnings
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import rasterio
from pyproj import Transformer
from rasterio.windows import Window

from loop.errors import ProjectError
from loop.proposals import Proposal, proposals_from_probability
from loop.ranking_predict import predict_probabilities
from loop.ranking_queue import (
    QueueItem,
    load_queue,
    queue_is_stale,
    queue_model_version,
    save_queue,
    window_key,
)
from loop.ranking_scores import (
    DIVERSITY_RADIUS_M,
    MIN_VALID_FRACTION,
    STRATEGIES,
    TOP_FRACTION,
    built_up_share,
    chip_features,
    chip_score,
    cold_start_order,
    diversify,
)
from model.checkpoint import Checkpoint, build_model, load_checkpoint
from model.errors import Cancelled, CheckpointError, SceneError
from model.scene import Chip, SceneInfo, read_chip

#: Clusters of the cold start when ``top`` is not given.
COLD_START_CLUSTERS = 16
#: Without ``top``, only the first this many chips are ordered greedily (O(n x this) cost); the rest
#: follow by their diversity-adjusted score.
DIVERSITY_GREEDY_MAX = 1000

__all__ = ["STRATEGIES", "QueueItem", "rank_chips", "rank_project", "save_queue", "load_queue", "queue_is_stale", "queue_model_version",
           "window_key"]


def rank_project(
    root: str | os.PathLike, strategy: str = "entropy", progress: Callable | None = None, cancel: Any = None
) -> list[QueueItem]:
    """Rank a project's unreviewed chips with its current model and save the queue.

    What the app runs in a background process when a project opens or a new model is published:
    it takes the folder, not a :class:`~loop.project.Project`, so it can be sent to that process.

    Raises:
        ProjectError: ``root`` is not a project folder.
        Cancelled: ``cancel`` was set.
    """
    from loop.project import Project

    project = Project.open(root)
    current = project.registry.current()
    items = rank_chips(project, strategy=strategy, checkpoint=current.path if current is not None else None,
                       progress=progress, cancel=cancel)
    save_queue(project, items, strategy, model_version=current.version if current is not None else None)
    return items


def _is_cancelled(cancel: Any) -> bool:
    if cancel is None:
        return False
    is_set = getattr(cancel, "is_set", None)
    return bool(is_set() if callable(is_set) else cancel())


def _skip_unreadable(scene: SceneInfo, indices, exc: Exception, unreadable: set[int], warned: set[str]) -> None:
    """Leave chips whose pixels cannot be read out of the queue; warn once per scene."""
    unreadable.update(indices)
    if scene.scene_id not in warned:
        warned.add(scene.scene_id)
        warnings.warn(f"{exc} Ranking goes on without the chips of scene {scene.scene_id} that cannot be read.",
                      UserWarning, stacklevel=3)


def _unreviewed_chips(project) -> list[tuple[SceneInfo, Window]]:
    reviewed = {window_key(r.scene_id, r.window) for r in project.labels.reviewed_chips()}
    return [
        (scene, window)
        for scene in project.readable_scenes()  # a moved scene is skipped with a warning
        for window in project.chip_windows(scene.scene_id)
        if window_key(scene.scene_id, window) not in reviewed
    ]


def _resolve_checkpoint(
    project, checkpoint: str | os.PathLike | Checkpoint | None
) -> Checkpoint | None:
    if isinstance(checkpoint, Checkpoint):
        return checkpoint
    if checkpoint is None:
        current = project.registry.current()
        if current is None:
            return None
        checkpoint = current.path
    return load_checkpoint(checkpoint, expected_bands=4)


def _centers_m(chips: list[tuple[SceneInfo, Window]]) -> np.ndarray:
    """Chip centres in a local metric frame shared by all scenes (equirectangular around their mean)."""
    lonlat = np.zeros((len(chips), 2))
    by_crs: dict[Any, list[int]] = {}
    for i, (scene, _) in enumerate(chips):
        by_crs.setdefault(scene.crs, []).append(i)
    for crs, idx in by_crs.items():
        xy = np.array(
            [
                chips[i][0].transform
                @ (
                    chips[i][1].col_off + chips[i][1].width / 2,
                    chips[i][1].row_off + chips[i][1].height / 2,
                )
                for i in idx
            ]
        )
        to_ll = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
        lonlat[idx] = np.column_stack(to_ll.transform(xy[:, 0], xy[:, 1]))
    lat0 = np.deg2rad(lonlat[:, 1].mean()) if len(chips) else 0.0
    return np.column_stack([lonlat[:, 0] * 111_320.0 * np.cos(lat0), lonlat[:, 1] * 110_574.0])


def _score_chip(
    spec,
    pred: np.ndarray,
    chip: Chip,
    scene: SceneInfo,
    top_fraction: float,
    threshold: float,
    min_area_px: int,
) -> tuple[float, tuple[Proposal, ...]]:
    """Chip score and proposals of one chip's prediction (H, W) or (S, H, W).

    Pixels with no data (all bands 0: outside the scene or a NAIP collar) are neither uncertain
    nor proposed: an empty chip scores 0 whatever the model makes of black, and a chip partly in
    the collar keeps its top-fraction term (while its real pixels fill that fraction) but its area
    term counts the collar as certain, since that part holds nothing to learn.
    """
    valid = chip.image.any(axis=0)
    prob = np.where(valid, pred if pred.ndim == 2 else pred.mean(axis=0), 0.0).astype(np.float32)
    unc = np.where(valid, spec.uncertainty(pred), 0.0).astype(np.float32)
    found = proposals_from_probability(
        prob,
        chip.transform,
        scene.scene_id,
        chip.window,
        threshold=threshold,
        min_area_px=min_area_px,
        uncertainty=unc,
        crs=scene.crs,
    )
    return chip_score(unc, top_fraction), tuple(found)


def _random_key(seed: int, scene_id: str, window) -> float:
    """A chip's seeded random sort key, fixed for the chip whatever else is unreviewed.

    Drawing one value per position of the unreviewed list instead made every round reuse the same
    positions, so round after round took the chips just after the last picks in raster order."""
    entropy = [seed, zlib.crc32(scene_id.encode()), int(window.col_off), int(window.row_off)]
    return float(np.random.default_rng(entropy).random())


def rank_chips(
    project,
    strategy: str = "entropy",
    top: int | None = None,
    checkpoint: str | os.PathLike | Checkpoint | None = None,
    batch_size: int = 8,
    diversity: bool = True,
    seed: int = 0,
    progress: Callable[[int, int, dict], None] | None = None,
    cancel: Callable[[], bool] | Any | None = None,
    *,
    mc_samples: int = 8,
    top_fraction: float = TOP_FRACTION,
    diversity_radius_m: float = DIVERSITY_RADIUS_M,
    threshold: float | None = None,
    min_area_px: int = 100,
    device: str | None = None,
) -> list[QueueItem]:
    """Rank every unreviewed chip of a project, most informative first.

    Chips with less than :data:`~loop.ranking_scores.MIN_VALID_FRACTION` (a quarter) of their
    pixels holding data (a chip of a scene narrower than a chip, or mostly in a NAIP collar) come
    after all the others, whatever the strategy.

    Args:
        project: A :class:`loop.project.Project` (or anything with ``scenes``, ``chip_windows``,
            ``labels.reviewed_chips()`` and ``registry.current()``).
        strategy: A key of :data:`STRATEGIES`. Without a model every strategy but ``random``
            becomes ``cold_start``.
        top: Keep only the first ``top`` chips (default all).
        checkpoint: Checkpoint (object or file) to use; default the registry's current one.
        batch_size: Chips per forward pass.
        diversity: Penalise chips near already queued ones (not used by random or cold start).
        seed: Seed of ``random`` and of the cold-start clustering.
        progress: ``progress(done, total, info)`` after each batch; ``info`` has ``scene_id``,
            ``strategy`` and ``chips_per_s``.
        cancel: Callable returning True (or an Event) to stop; checked between batches.
        mc_samples: MC-dropout samples for ``bald``.
        top_fraction: Fraction of pixels averaged into a chip's score.
        diversity_radius_m: Distance scale of the diversity penalty, in metres.
        threshold: Probability threshold of the proposals (default: the checkpoint's own).
        min_area_px: Smallest proposal in chip pixels.
        device: Torch device (default: best available).

    Returns:
        Queue items ranked from 1.

    Raises:
        ProjectError: Unknown strategy.
        CheckpointError: The checkpoint cannot be loaded, or ``bald`` on a model without dropout.
        Cancelled: ``cancel`` became true; nothing was saved.
    """
    if strategy not in STRATEGIES:
        raise ProjectError(
            f"unknown ranking strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}."
        )
    chips = _unreviewed_chips(project)
    ckpt = None if strategy == "cold_start" else _resolve_checkpoint(project, checkpoint)
    spec = STRATEGIES[strategy]
    if ckpt is None and not spec.random:
        spec = STRATEGIES["cold_start"]
    if not chips:
        return []
    if spec.name == "bald" and ckpt.unet.dropout <= 0:
        raise CheckpointError(
            f"checkpoint {ckpt.version}: BALD needs MC-dropout but the model has dropout=0, so every "
            "sample would agree. Use --strategy tta or entropy, or retrain with dropout > 0."
        )
    model = build_model(ckpt, device) if ckpt is not None else None
    if threshold is None:
        threshold = ckpt.threshold if ckpt is not None else 0.5
    scores = np.zeros(len(chips))
    if spec.random:  # one fixed draw per chip: each round takes the next chips of one seeded shuffle
        scores = np.array([_random_key(seed, chip[0].scene_id, chip[1]) for chip in chips])
    features: dict[int, np.ndarray] = {}
    built_up: dict[int, float] = {}  # cold start: each cluster's most built-up chip first
    valid_share = np.ones(len(chips))  # share of each chip's pixels that hold data
    proposals: list[tuple[Proposal, ...]] = [()] * len(chips)
    unreadable: set[int] = set()  # chips whose pixels cannot be read: left out of the queue
    warned: set[str] = set()
    start, done = time.perf_counter(), 0
    i = 0
    while i < len(chips):
        scene = chips[i][0]
        j = i
        while j < len(chips) and chips[j][0].scene_id == scene.scene_id:
            j += 1
        try:
            src = rasterio.open(scene.path)
        except OSError as exc:  # rasterio's RasterioIOError too: the file no longer opens
            _skip_unreadable(scene, range(i, j), exc, unreadable, warned)
            i = j
            continue
        with src:
            for b in range(i, j, batch_size):
                if _is_cancelled(cancel):
                    raise Cancelled(
                        f"ranking cancelled after {done} of {len(chips)} chips; queue not changed."
                    )
                batch, index = [], []
                for k in range(b, min(b + batch_size, j)):
                    try:
                        batch.append(read_chip(scene, chips[k][1], src))
                        index.append(k)
                        valid_share[k] = float(batch[-1].image.any(axis=0).mean())
                    except SceneError as exc:  # a damaged block: the rest of the scene goes on
                        _skip_unreadable(scene, [k], exc, unreadable, warned)
                if batch and model is None and not spec.random:
                    for k, c in zip(index, batch, strict=True):
                        features[k], built_up[k] = chip_features(c.image), built_up_share(c.image)
                elif batch and model is not None:
                    images = np.stack([c.image for c in batch])
                    preds = predict_probabilities(
                        model, ckpt.normalization, images, spec.passes, mc_samples, device
                    )
                    for n, (k, chip) in enumerate(zip(index, batch, strict=True)):
                        score, found = _score_chip(
                            spec, preds[n], chip, scene, top_fraction, threshold, min_area_px
                        )
                        if not spec.random:
                            scores[k] = score
                        proposals[k] = found
                done += min(b + batch_size, j) - b
                if progress is not None:
                    rate = done / max(time.perf_counter() - start, 1e-9)
                    progress(
                        done,
                        len(chips),
                        {"scene_id": scene.scene_id, "strategy": spec.name, "chips_per_s": rate},
                    )
        i = j
    readable = np.array([k for k in range(len(chips)) if k not in unreadable], dtype=int)
    if not len(readable):
        return []
    # chips mostly outside the scene or in no data go last, in every strategy (MIN_VALID_FRACTION)
    ranked = readable[valid_share[readable] >= MIN_VALID_FRACTION]
    sparse = readable[valid_share[readable] < MIN_VALID_FRACTION]
    if not len(ranked):
        ranked, sparse = readable, readable[:0]
    if spec.name == "cold_start":
        k = min(len(ranked), top or COLD_START_CLUSTERS)
        feats, priority = np.stack([features[i] for i in ranked]), np.array([built_up[i] for i in ranked])
        order = ranked[cold_start_order(feats, k, seed, priority)[0]]
        order = np.concatenate([order, sparse[np.argsort(-valid_share[sparse], kind="stable")]])
        scores = np.zeros(len(chips))
        scores[order] = 1.0 - np.arange(len(order)) / len(order)
    else:
        if diversity and not spec.random:
            sub = diversify(
                scores[ranked], _centers_m([chips[i] for i in ranked]), diversity_radius_m,
                top or DIVERSITY_GREEDY_MAX,
            )
            order = ranked[sub]
        else:
            order = ranked[np.argsort(-scores[ranked], kind="stable")]
        order = np.concatenate([order, sparse[np.argsort(-scores[sparse], kind="stable")]])
    order = order[:top] if top is not None else order
    return [
        QueueItem(
            rank=r + 1,
            scene_id=chips[i][0].scene_id,
            window=chips[i][1],
            score=float(scores[i]),
            proposals=proposals[i],
        )
        for r, i in enumerate(order)
    ]
