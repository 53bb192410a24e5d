"""Painting primitives for synthetic scenes: a float canvas, windows, masks, building frames.

Everything draws into a float32 (4, H, W) canvas in band order R, G, B, NIR on the 0..255 scale.
Shapes are given in scene CRS metres and rasterized only over their own bounding window, so
the cost of a building does not depend on the scene size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from affine import Affine
from rasterio import features
from shapely.geometry.base import BaseGeometry

# Materials as (R, G, B, NIR) on the NAIP 0..255 scale.
ASPHALT = np.array([84, 87, 92, 78], np.float32)
OLD_ASPHALT = np.array([112, 112, 112, 102], np.float32)
CONCRETE = np.array([176, 175, 170, 160], np.float32)
GRAVEL = np.array([148, 143, 133, 138], np.float32)
PAINT = np.array([225, 225, 215, 205], np.float32)
GRASS = np.array([86, 106, 74, 178], np.float32)
TREE = np.array([46, 64, 52, 165], np.float32)


@dataclass(frozen=True)
class Win:
    """A pixel window of the canvas with its own transform."""

    rows: slice
    cols: slice
    transform: Affine

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols)."""
        return self.rows.stop - self.rows.start, self.cols.stop - self.cols.start


@dataclass(frozen=True)
class Frame:
    """A building's own axes: centre, angle of the long side, half length and half width (m)."""

    cx: float
    cy: float
    angle: float
    half_len: float
    half_wid: float

    @classmethod
    def of(cls, geom: BaseGeometry) -> Frame:
        """The frame of a polygon's minimum rotated rectangle."""
        rect = geom.minimum_rotated_rectangle
        xy = np.asarray(rect.exterior.coords)[:4]
        e1, e2 = xy[1] - xy[0], xy[2] - xy[1]
        long_, short = (e1, e2) if np.hypot(*e1) >= np.hypot(*e2) else (e2, e1)
        c = xy.mean(axis=0)
        return cls(
            float(c[0]), float(c[1]), float(np.arctan2(long_[1], long_[0])),
            float(np.hypot(*long_) / 2), float(np.hypot(*short) / 2),
        )


class Canvas:
    """A float32 (4, H, W) image with its north-up transform and helpers to draw on it."""

    def __init__(self, width: int, height: int, transform: Affine):
        self.img = np.zeros((4, height, width), np.float32)
        self.transform = transform
        self.res = float(transform.a)
        self.width, self.height = width, height

    def window(self, bounds: tuple[float, float, float, float], pad_m: float = 0.0) -> Win | None:
        """The canvas window covering ``bounds`` (minx, miny, maxx, maxy) plus ``pad_m``."""
        minx, miny, maxx, maxy = bounds
        inv = ~self.transform
        c0, r0 = inv @ (minx - pad_m, maxy + pad_m)
        c1, r1 = inv @ (maxx + pad_m, miny - pad_m)
        c0, r0 = max(int(np.floor(c0)), 0), max(int(np.floor(r0)), 0)
        c1, r1 = min(int(np.ceil(c1)), self.width), min(int(np.ceil(r1)), self.height)
        if c1 <= c0 or r1 <= r0:
            return None
        return Win(slice(r0, r1), slice(c0, c1), self.transform @ Affine.translation(c0, r0))

    def mask(self, geom: BaseGeometry, win: Win, all_touched: bool = False) -> np.ndarray:
        """Boolean mask of ``geom`` over ``win``."""
        if geom.is_empty:
            return np.zeros(win.shape, bool)
        return features.rasterize(
            [(geom, 1)], out_shape=win.shape, transform=win.transform, fill=0,
            dtype="uint8", all_touched=all_touched,
        ).astype(bool)

    def local(self, win: Win, frame: Frame) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-centre coordinates (u, v) in metres along and across a building frame."""
        h, w = win.shape
        t = win.transform
        x = (t.c + (np.arange(w, dtype=np.float32) + 0.5) * t.a - frame.cx)[None, :]
        y = (t.f + (np.arange(h, dtype=np.float32) + 0.5) * t.e - frame.cy)[:, None]
        ca, sa = np.float32(np.cos(frame.angle)), np.float32(np.sin(frame.angle))
        return x * ca + y * sa, -x * sa + y * ca

    def view(self, win: Win) -> np.ndarray:
        """The (4, h, w) view of the canvas under ``win`` (writes go to the canvas)."""
        return self.img[:, win.rows, win.cols]

    def paint(self, win: Win, mask: np.ndarray, color, alpha: float = 1.0) -> None:
        """Blend ``color`` (4 values, or (4, n) per masked pixel) into the masked pixels."""
        if not mask.any():
            return
        sub = self.view(win)
        col = np.asarray(color, np.float32)
        col = col[:, None] if col.ndim == 1 else col
        if alpha >= 1.0:
            sub[:, mask] = col
        else:
            sub[:, mask] = sub[:, mask] * (1 - alpha) + col * alpha

    def scale(self, win: Win, mask: np.ndarray, factor) -> None:
        """Multiply the masked pixels by ``factor`` (scalar or 4 values)."""
        if mask.any():
            sub = self.view(win)
            sub[:, mask] *= np.asarray(factor, np.float32).reshape(-1, 1)


def rect(u: np.ndarray, v: np.ndarray, u0: float, u1: float, v0: float, v1: float) -> np.ndarray:
    """Mask of the (u, v) rectangle [u0, u1) x [v0, v1) (bounds in any order)."""
    u0, u1 = sorted((u0, u1))
    v0, v1 = sorted((v0, v1))
    return (u >= u0) & (u < u1) & (v >= v0) & (v < v1)


def grid(u: np.ndarray, v: np.ndarray, pitch_u: float, pitch_v: float, size_u: float, size_v: float,
         phase_u: float = 0.0, phase_v: float = 0.0) -> np.ndarray:
    """Mask of a regular grid of ``size_u`` x ``size_v`` boxes repeating every pitch (metres)."""
    return (np.mod(u - phase_u, pitch_u) < size_u) & (np.mod(v - phase_v, pitch_v) < size_v)


def cell_random(iu: np.ndarray, iv: np.ndarray, table: np.ndarray) -> np.ndarray:
    """A seeded random value per grid cell (looked up in ``table`` by a hash of the indexes)."""
    idx = np.mod(iu.astype(np.int64) * 7919 + iv.astype(np.int64) * 104729, table.shape[-1])
    return table[..., idx]


def shift(mask: np.ndarray, dr: int, dc: int) -> np.ndarray:
    """``mask`` moved by (dr, dc) pixels, zero-filled."""
    out = np.zeros_like(mask)
    h, w = mask.shape
    if abs(dr) >= h or abs(dc) >= w:
        return out
    src = mask[max(-dr, 0): h - max(dr, 0), max(-dc, 0): w - max(dc, 0)]
    out[max(dr, 0): h - max(-dr, 0), max(dc, 0): w - max(-dc, 0)] = src
    return out


def cast(mask: np.ndarray, dr: float, dc: float) -> np.ndarray:
    """The shadow swept by ``mask`` moving up to (dr, dc) pixels (mask itself excluded)."""
    steps = int(max(abs(dr), abs(dc), 1))
    out = np.zeros_like(mask)
    for k in range(1, steps + 1):
        out |= shift(mask, int(round(dr * k / steps)), int(round(dc * k / steps)))
    return out & ~mask
