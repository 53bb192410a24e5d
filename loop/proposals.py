"""Model proposals and per-pixel uncertainty maps (pure functions: arrays in, arrays out).

A :class:`Proposal` is one connected region of a chip's thresholded probability map, turned into a
polygon in the scene CRS, with the model's mean probability and mean uncertainty inside it. The
uncertainty maps here are the raw material of the ranking strategies in :mod:`loop.ranking`:

* :func:`entropy_map` and :func:`margin_map` need one probability map;
* :func:`tta_disagreement` needs the 8 dihedral test-time-augmented maps (mapped back);
* :func:`bald_map` needs S Monte-Carlo-dropout samples.

Every map is scaled to [0, 1] so strategies can be compared and thresholds mean the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import rasterio.features
from affine import Affine
from pyproj import Geod
from rasterio.crs import CRS
from rasterio.windows import Window
from scipy import ndimage
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from model.ground import ground_metres_per_unit, lonlat

_EPS = 1e-7
# 4-connectivity: rasterio.features.shapes with connectivity=4 then yields one valid polygon per
# labelled region (8-connected regions touching at a corner would give self-touching rings).
_FOUR = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class Proposal:
    """A candidate data-center footprint proposed by the model for one chip.

    Attributes:
        scene_id: Scene the chip belongs to.
        window: The chip's window in scene pixels.
        geometry: Polygon in the scene CRS.
        score: Mean probability of the pixels inside (the model's confidence).
        uncertainty: Mean per-pixel uncertainty inside, in [0, 1].
        area_m2: Ground area in square metres (:func:`pixel_area_m2`).
    """

    scene_id: str
    window: Window
    geometry: BaseGeometry
    score: float
    uncertainty: float
    area_m2: float


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in bits of Bernoulli(p), element-wise, in [0, 1]."""
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS)
    return -(p * np.log2(p) + (1.0 - p) * np.log2(1.0 - p))


def entropy_map(p: np.ndarray) -> np.ndarray:
    """Per-pixel predictive entropy of a probability map.

    Args:
        p: Probabilities (H, W) in [0, 1].

    Returns:
        float32 (H, W) in [0, 1]: 1 at p = 0.5, 0 at p = 0 or 1.
    """
    return binary_entropy(p).astype(np.float32)


def margin_map(p: np.ndarray) -> np.ndarray:
    """Per-pixel margin uncertainty ``1 - |2p - 1|`` (1 at p = 0.5, 0 at p = 0 or 1).

    Args:
        p: Probabilities (H, W) in [0, 1].

    Returns:
        float32 (H, W) in [0, 1].
    """
    p = np.asarray(p, dtype=np.float32)
    return (1.0 - np.abs(2.0 * p - 1.0)).astype(np.float32)


def tta_disagreement(probs: np.ndarray) -> np.ndarray:
    """Disagreement between test-time-augmented predictions of the same chip.

    The variance across the T maps (each already mapped back to the chip's own orientation),
    times 4 so it lies in [0, 1] (the largest variance of values in [0, 1] is 1/4, reached when
    half the transforms say 0 and half say 1). Unlike entropy it is 0 where every transform agrees
    on p = 0.5: it measures instability of the model under symmetries a footprint does not care
    about, not ambiguity of the pixel.

    Args:
        probs: (T, H, W) probabilities, one map per dihedral transform, aligned to the chip.

    Returns:
        float32 (H, W) in [0, 1].

    Raises:
        ValueError: ``probs`` is not 3-D or has fewer than 2 maps.
    """
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 3 or probs.shape[0] < 2:
        raise ValueError(
            f"tta_disagreement expects (T>=2, H, W) probabilities, got shape {probs.shape}"
        )
    return np.clip(4.0 * probs.var(axis=0), 0.0, 1.0).astype(np.float32)


def bald_map(probs: np.ndarray) -> np.ndarray:
    """BALD mutual information of Monte-Carlo-dropout samples: ``H(mean p) - mean H(p)``.

    High where the samples disagree (epistemic uncertainty, which labels can reduce); low where
    every sample confidently says the same thing, including where they all say 0.5 (aleatoric
    ambiguity, which more labels of the same kind will not resolve).

    Args:
        probs: (S, H, W) probabilities, one map per dropout sample.

    Returns:
        float32 (H, W) in [0, 1] (bits).

    Raises:
        ValueError: ``probs`` is not 3-D or has fewer than 2 samples.
    """
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 3 or probs.shape[0] < 2:
        raise ValueError(f"bald_map expects (S>=2, H, W) probabilities, got shape {probs.shape}")
    mi = binary_entropy(probs.mean(axis=0)) - binary_entropy(probs).mean(axis=0)
    return np.clip(mi, 0.0, 1.0).astype(np.float32)


def pixel_area_m2(transform: Affine, crs: CRS | None = None, shape: tuple[int, int] = (1, 1)) -> float:
    """Ground area of one pixel of ``transform`` in square metres (square CRS units if ``crs`` is None),
    averaged over a grid of ``shape`` (a chip: the area hardly varies across 256 pixels).

    The same measure as ``area_m2`` of ``detect``: CRS units converted to metres, divided by the
    projection's scale where lengths are off by more than 1 % (Web Mercator's "square metres"
    are 1.66 of the ground's at 39 N; UTM, state plane and Albers count as true), and for a
    geographic CRS the geodesic area of the grid's outline on the WGS84 ellipsoid.

    Args:
        transform: Pixel grid.
        crs: CRS of the grid.
        shape: (height, width) of the grid whose mean pixel area is returned.
    """
    area = abs(transform.a * transform.e - transform.b * transform.d)
    if crs is None:
        return float(area)
    h, w = shape
    lon, lat = lonlat(crs, *(transform * (w / 2, h / 2)))
    if not crs.is_geographic:
        return float(area * ground_metres_per_unit(crs, lon, lat) ** 2)
    corners = [lonlat(crs, *(transform * xy)) for xy in ((0, 0), (w, 0), (w, h), (0, h))]
    ring, _ = Geod(ellps="WGS84").polygon_area_perimeter([c[0] for c in corners], [c[1] for c in corners])
    return float(abs(ring) / (w * h))


def proposals_from_probability(
    prob: np.ndarray,
    transform: Affine,
    scene_id: str,
    window: Window,
    threshold: float = 0.5,
    min_area_px: int = 100,
    uncertainty: np.ndarray | None = None,
    crs: CRS | None = None,
) -> list[Proposal]:
    """Polygons of the regions where a chip's probability reaches ``threshold`` (outlines
    simplified by one pixel).

    Args:
        prob: float (H, W) probabilities on the chip's own pixel grid.
        transform: The chip's transform (chip pixel -> scene CRS), e.g. ``Chip.transform``.
        scene_id: Scene id carried into each proposal.
        window: Chip window carried into each proposal.
        threshold: Pixels with ``prob >= threshold`` are foreground.
        min_area_px: Regions with fewer pixels are dropped.
        uncertainty: Optional per-pixel uncertainty (H, W) in [0, 1] to average inside each region;
            default :func:`entropy_map` of ``prob``.
        crs: Scene CRS, used only to measure ``area_m2`` on the ground (:func:`pixel_area_m2`).

    Returns:
        Proposals, largest first.

    Raises:
        ValueError: ``prob`` is not 2-D or ``uncertainty`` has another shape.
    """
    prob = np.asarray(prob, dtype=np.float32)
    if prob.ndim != 2:
        raise ValueError(f"proposals_from_probability expects a (H, W) map, got shape {prob.shape}")
    if uncertainty is None:
        uncertainty = entropy_map(prob)
    elif uncertainty.shape != prob.shape:
        raise ValueError(
            f"uncertainty shape {uncertainty.shape} differs from probability shape {prob.shape}"
        )
    labels, n = ndimage.label(prob >= threshold, structure=_FOUR)
    if n == 0:
        return []
    flat = labels.ravel()
    counts = np.bincount(flat, minlength=n + 1)
    prob_sum = np.bincount(flat, weights=prob.ravel(), minlength=n + 1)
    unc_sum = np.bincount(
        flat, weights=np.asarray(uncertainty, dtype=np.float64).ravel(), minlength=n + 1
    )
    keep = counts >= max(int(min_area_px), 1)
    keep[0] = False
    if not keep.any():
        return []
    px_area = pixel_area_m2(transform, crs, prob.shape)
    # a region's outline is a pixel staircase (thousands of vertices on a large roof): simplified
    # by one pixel it keeps its shape and stays editable as a footprint once accepted
    tolerance = float(np.hypot(transform.a, transform.b))
    labels = labels.astype(np.int32)
    proposals = []
    for geom, value in rasterio.features.shapes(
        labels, mask=keep[labels], connectivity=4, transform=transform
    ):
        i = int(value)
        proposals.append(
            Proposal(
                scene_id=scene_id,
                window=window,
                geometry=shape(geom).simplify(tolerance, preserve_topology=True),
                score=float(prob_sum[i] / counts[i]),
                uncertainty=float(unc_sum[i] / counts[i]),
                area_m2=float(counts[i] * px_area),
            )
        )
    proposals.sort(key=lambda p: p.area_m2, reverse=True)
    return proposals
