"""Pure pieces of the review queue: strategies, chip scores, diversity and cold start.

Arrays in, arrays out; nothing here reads files or runs a model (see :mod:`loop.ranking`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from loop.proposals import bald_map, entropy_map, margin_map, tta_disagreement

Passes = Literal["none", "single", "tta", "mc"]

#: Fraction of a chip's most uncertain pixels averaged into its score (see :func:`chip_score`).
TOP_FRACTION = 0.05
#: Weight of the chip's mean uncertainty in its score (see :func:`chip_score`).
AREA_WEIGHT = 0.1
#: Chips with less than this share of pixels holding data (any band non-zero; the rest is outside
#: the scene, a NAIP collar or no data) go to the end of the queue, whatever the strategy: their
#: score (or, in the cold start, their odd all-black features) says nothing about buildings.
MIN_VALID_FRACTION = 0.25
#: Default distance (m) under which a chip is penalised for being near an already queued one:
#: about two 256 px NAIP chips (256 x 0.6 m = 154 m), so the neighbours of one building are spread.
DIVERSITY_RADIUS_M = 300.0
#: NIR reflectance (0..1) under which a pixel counts as water, deep shadow or no data in
#: :func:`built_up_share` (clear water absorbs near infrared; roofs and pavement reflect 0.2+).
DARK_NIR = 0.1


def _mean_of(pixel_map: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """Apply a single-map uncertainty to a (H, W) map or to the mean of a (S, H, W) stack."""

    def apply(pred: np.ndarray) -> np.ndarray:
        return pixel_map(pred if pred.ndim == 2 else pred.mean(axis=0))

    return apply


@dataclass(frozen=True)
class Strategy:
    """How a chip's model output becomes an uncertainty map and a chip score.

    Attributes:
        name: Registry key (``--strategy`` value).
        passes: Model passes needed: ``"single"`` forward, ``"tta"`` (8 dihedral transforms),
            ``"mc"`` (Monte-Carlo dropout samples), or ``"none"`` (no model).
        uncertainty: Maps a chip's prediction, (H, W) or (S, H, W), to a (H, W) map in [0, 1].
        random: Chip scores are seeded random numbers instead of :func:`chip_score`.
        description: One line for ``--help`` and the GUI.
    """

    name: str
    passes: Passes
    uncertainty: Callable[[np.ndarray], np.ndarray] | None
    random: bool = False
    description: str = ""


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy(
            "random",
            "single",
            _mean_of(entropy_map),
            random=True,
            description="seeded random order (baseline); proposals still shown",
        ),
        Strategy(
            "entropy",
            "single",
            _mean_of(entropy_map),
            description="predictive entropy of one forward pass",
        ),
        Strategy(
            "margin", "single", _mean_of(margin_map), description="1 - |2p - 1| of one forward pass"
        ),
        Strategy(
            "tta",
            "tta",
            tta_disagreement,
            description="disagreement across the 8 dihedral test-time augmentations",
        ),
        Strategy(
            "bald",
            "mc",
            bald_map,
            description="BALD mutual information of MC-dropout samples (needs dropout > 0)",
        ),
        Strategy(
            "cold_start",
            "none",
            None,
            description="k-means on image features, spread over clusters (used when no model)",
        ),
    )
}


def chip_score(
    uncertainty: np.ndarray, top_fraction: float = TOP_FRACTION, area_weight: float = AREA_WEIGHT
) -> float:
    """Score of one chip: mostly the mean of its ``top_fraction`` most uncertain pixels.

    Why not the plain mean: a data center fills a small part of a 256 px chip and the model's
    doubt sits on its roof edges and on the odd building, so a chip with one genuinely ambiguous
    building (a few percent of pixels near p = 0.5) must outrank a chip of a wide field the model
    is mildly unsure about everywhere (p = 0.2 on every pixel). The plain mean ranks them the other
    way round; the maximum is decided by a single noisy pixel. The mean over the top 5 % (about
    3,300 px, a 35 m square at 0.6 m) is driven by the most doubtful object in the chip yet needs
    an object-sized patch of doubt, not one pixel, to score high.

    That term saturates: with a young model many chips hold a patch at p = 0.5 and all score 1.0,
    which leaves their order arbitrary. ``area_weight`` of the score is therefore the plain mean,
    so among chips with an equally doubtful patch the one with more of its area in doubt comes
    first, while a chip's most doubtful patch still dominates (a weight of 0.1 cannot lift a
    uniformly mildly uncertain field above a chip with one ambiguous building).

    Args:
        uncertainty: (H, W) per-pixel uncertainty in [0, 1].
        top_fraction: Fraction of pixels averaged, in (0, 1]; 1 gives the plain mean.
        area_weight: Weight of the plain mean, in [0, 1].

    Returns:
        ``(1 - area_weight) * top_mean + area_weight * mean``, in [0, 1].

    Raises:
        ValueError: ``top_fraction`` or ``area_weight`` is out of range, or the map is empty.
    """
    if not 0.0 < top_fraction <= 1.0:
        raise ValueError(f"top_fraction must be in (0, 1], got {top_fraction}")
    if not 0.0 <= area_weight <= 1.0:
        raise ValueError(f"area_weight must be in [0, 1], got {area_weight}")
    flat = np.asarray(uncertainty, dtype=np.float32).ravel()
    if flat.size == 0:
        raise ValueError("chip_score needs a non-empty uncertainty map")
    k = max(1, int(round(flat.size * top_fraction)))
    top_mean = float(np.partition(flat, flat.size - k)[flat.size - k :].mean())
    return (1.0 - area_weight) * top_mean + area_weight * float(flat.mean())


def diversify(
    scores: np.ndarray,
    centers_m: np.ndarray,
    radius_m: float = DIVERSITY_RADIUS_M,
    top: int | None = None,
) -> np.ndarray:
    """Greedy order that trades score against distance to the chips already queued.

    At each step the chip with the largest ``score * factor`` is taken, where ``factor`` is
    ``1 - exp(-(d / radius_m) ** 2)`` for ``d`` its distance to the nearest queued chip (1 when
    nothing is queued). An adjacent chip of the same building (d = one chip) keeps about a fifth
    of its score; a chip two radii away keeps 98 %. Cost O(n x top), vectorised.

    Args:
        scores: (N,) chip scores, larger is more informative (non-negative).
        centers_m: (N, 2) chip centres in a common metric frame.
        radius_m: Distance scale of the penalty; <= 0 disables it.
        top: Number of chips to order greedily; the rest follow by adjusted score. Default all.

    Returns:
        (N,) indexes into ``scores``, most informative first.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n = scores.size
    if n == 0 or radius_m <= 0:
        return np.argsort(-scores, kind="stable")
    centers = np.asarray(centers_m, dtype=np.float64).reshape(n, 2)
    factor = np.ones(n)
    taken = np.zeros(n, dtype=bool)
    order = []
    for _ in range(n if top is None else min(top, n)):
        adjusted = np.where(taken, -np.inf, scores * factor)
        i = int(np.argmax(adjusted))
        order.append(i)
        taken[i] = True
        d2 = ((centers - centers[i]) ** 2).sum(axis=1)
        factor = np.minimum(factor, 1.0 - np.exp(-d2 / radius_m**2))
    rest = np.flatnonzero(~taken)
    rest = rest[np.argsort(-(scores * factor)[rest], kind="stable")]
    return np.concatenate([np.asarray(order, dtype=np.int64), rest])


def chip_features(image: np.ndarray, edge_threshold: float = 20.0) -> np.ndarray:
    """Cheap image features of one chip for cold-start clustering.

    Args:
        image: uint8 (4, H, W) in band order red, green, blue, nir.
        edge_threshold: Gradient magnitude (0..255 scale) above which a pixel counts as an edge.

    Returns:
        float32 (10,): per-band means and standard deviations (0..1), mean NDVI (NIR ratio,
        low on roofs and pavement, high on vegetation) and edge density (fraction of edge pixels,
        high on built-up land).
    """
    x = np.asarray(image, dtype=np.float32) / 255.0
    means = x.reshape(x.shape[0], -1).mean(axis=1)
    stds = x.reshape(x.shape[0], -1).std(axis=1)
    ndvi = float(_ndvi(x).mean())
    gray = x[:3].mean(axis=0) * 255.0
    gy, gx = np.gradient(gray)
    edges = float((np.hypot(gx, gy) > edge_threshold).mean())
    return np.concatenate([means, stds, [ndvi, edges]]).astype(np.float32)


def built_up_share(image: np.ndarray, dark_nir: float = DARK_NIR) -> float:
    """How built-up one chip looks: mean over its pixels of ``1 - clip(NDVI, 0, 1)``, dark ones 0.

    Roofs and pavement score near 1, crops and forest near 0; water, deep shadow and no data
    (NIR under ``dark_nir``) score 0, so a lake, whose NDVI is negative, does not pass for the
    most built-up chip. The cold start takes each image cluster's most built-up chip first.

    Args:
        image: uint8 (4, H, W) in band order red, green, blue, nir.
        dark_nir: NIR (0..1) under which a pixel counts as water, shadow or no data.

    Returns:
        Share in 0..1.
    """
    x = np.asarray(image, dtype=np.float32) / 255.0
    return float(np.where(x[3] > dark_nir, 1.0 - np.clip(_ndvi(x), 0.0, 1.0), 0.0).mean())


def _ndvi(x: np.ndarray) -> np.ndarray:
    """Per-pixel NDVI of a (4, H, W) red, green, blue, nir array."""
    red, nir = x[0], x[3]
    return (nir - red) / (nir + red + 1e-6)


def kmeans(
    features: np.ndarray, k: int, seed: int = 0, iterations: int = 50
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded k-means with k-means++ initialisation.

    Args:
        features: (N, F) points.
        k: Number of clusters (clipped to N).
        seed: Random seed.
        iterations: Maximum Lloyd iterations.

    Returns:
        (labels (N,), centers (k, F)).
    """
    x = np.asarray(features, dtype=np.float64)
    n = x.shape[0]
    k = max(1, min(int(k), n))
    rng = np.random.default_rng(seed)
    centers = [x[rng.integers(n)]]
    for _ in range(1, k):
        d2 = np.min(((x[:, None, :] - np.asarray(centers)[None]) ** 2).sum(-1), axis=1)
        total = d2.sum()
        centers.append(x[rng.choice(n, p=d2 / total)] if total > 0 else x[rng.integers(n)])
    centers = np.asarray(centers)
    labels = np.full(n, -1)
    for _ in range(iterations):
        new = ((x[:, None, :] - centers[None]) ** 2).sum(-1).argmin(axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            if (labels == j).any():
                centers[j] = x[labels == j].mean(axis=0)
    return labels, centers


def cold_start_order(
    features: np.ndarray, k: int, seed: int = 0, priority: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Order chips for a project without a model: one chip per image cluster, round after round.

    Features are standardised, clustered with :func:`kmeans`; each round takes from every cluster
    its chip of highest ``priority`` not yet taken (without ``priority``: the one nearest the
    centre, the most typical). Clusters are visited most unusual first (centre farthest from the
    overall mean), so bright large roofs and bare pads come before the n-th field, and the first
    ``k`` chips cover ``k`` different kinds of landscape.

    :func:`loop.ranking.rank_chips` passes :func:`built_up_share` as the priority: the typical
    chip of a built-up cluster often holds only a sliver of a building, and a first model trained
    on slivers learns nothing. On five synthetic 4096 x 2048 px scenes (2026-12-06, 30 clustering
    seeds each, 6 clusters), the share of first batches with at most one chip holding 5,000+
    data-center pixels was 10-33% taking the typical chip, 13-47% for a random draw of 6 and 0-7%
    taking the most built-up one.

    Args:
        features: (N, F) from :func:`chip_features`.
        k: Number of clusters.
        seed: Random seed of the clustering.
        priority: (N,) order within a cluster, highest first; ties go to the chip nearest the
            centre. None: nearest the centre first.

    Returns:
        (order (N,) indexes, labels (N,) cluster of each chip).
    """
    x = np.asarray(features, dtype=np.float64)
    if x.shape[0] == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    x = (x - x.mean(axis=0)) / np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)
    labels, centers = kmeans(x, k, seed)
    dist = np.sqrt(((x - centers[labels]) ** 2).sum(axis=1))
    first = np.zeros(len(x)) if priority is None else -np.asarray(priority, dtype=np.float64)
    if first.shape != (len(x),):
        raise ValueError(f"cold_start_order: priority has shape {first.shape}, expected ({len(x)},)")
    members = {
        j: list(np.flatnonzero(labels == j)[np.lexsort((dist[labels == j], first[labels == j]))])
        for j in np.argsort(-(centers**2).sum(axis=1), kind="stable")
        if (labels == j).any()
    }
    order: list[int] = []
    while members:
        for j in list(members):
            order.append(int(members[j].pop(0)))
            if not members[j]:
                del members[j]
    return np.asarray(order, dtype=np.int64), labels
