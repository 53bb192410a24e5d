"""Tile layout and overlap blending for streaming scene inference (pure functions)."""

from __future__ import annotations

import numpy as np

PROB_SCALE = 255.0  # probability rasters store round(p * 255) as uint8


def tile_starts(n: int, tile: int, stride: int) -> list[int]:
    """Origins of tiles of ``tile`` px with step ``stride`` covering ``n`` px; the last one snapped inside.

    A length shorter than a tile gets one tile at 0 (read past the edge with zero fill).
    """
    if stride < 1 or stride > tile:
        raise ValueError(f"stride must be in 1..{tile}, got {stride}")
    if n <= tile:
        return [0]
    starts = list(range(0, n - tile + 1, stride))
    if starts[-1] + tile < n:
        starts.append(n - tile)
    return starts


def blend_weights(tile: int, overlap: int, floor: float = 1e-3) -> np.ndarray:
    """Separable weight window (tile, tile): flat centre, squared-sine ramps over ``overlap`` px.

    Adjacent tiles' ramps sum to one across their overlap (sin^2 + cos^2), so a normalised
    weighted average has no seams and no bias toward either tile; the floor keeps pixels that
    only one tile covers (scene edges) at that tile's value after normalisation.
    """
    ramp = np.ones(tile, dtype=np.float64)
    if overlap > 0:
        i = np.arange(overlap)
        r = np.sin(0.5 * np.pi * (i + 0.5) / overlap) ** 2
        ramp[:overlap] = r
        ramp[-overlap:] = r[::-1]
    w = np.maximum(np.outer(ramp, ramp), floor)
    return w.astype(np.float32)
