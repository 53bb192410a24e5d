"""Drawing buildings by class: grounds (yards, docks, car parks), roofs with rooftop plant, shadows.

All classes share one distribution of roof tones and sizes, so brightness does not tell them
apart; the cues are spatial: data centers carry regular rooftop HVAC/chiller grids, generator
yards and substations; warehouses carry truck-dock rows, trailers and big aprons; retail carries
car parks with stall lines and cars; other buildings carry skylight grids or solar rows.
:class:`Knobs` turns the scene difficulty into cue contrast and confuser rates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from shapely.geometry import Polygon

from model.synth_paint import (
    ASPHALT,
    CONCRETE,
    GRAVEL,
    OLD_ASPHALT,
    PAINT,
    Canvas,
    Frame,
    Win,
    cast,
    cell_random,
    grid,
    rect,
)

CARS = np.array([[222, 222, 222, 205], [34, 34, 38, 34], [160, 162, 166, 150], [108, 110, 114, 100],
                 [150, 42, 40, 72], [42, 62, 122, 60], [190, 185, 170, 170]], np.float32).T
TRAILERS = np.array([[218, 218, 214, 200], [196, 198, 198, 182], [225, 225, 222, 208],
                     [150, 60, 45, 80], [60, 80, 140, 70], [170, 170, 172, 158]], np.float32).T
HEIGHT_M = {"datacenter": (12.0, 20.0), "warehouse": (9.0, 14.0), "retail": (6.0, 10.0), "other": (6.0, 16.0)}


@dataclass(frozen=True)
class Knobs:
    """How distinct the data-center cues are and how often confusers appear."""

    cue: float          # contrast of rooftop units on data centers (1 = crisp)
    p_yard: float       # data centers with a generator yard
    p_dc_docks: float   # data centers with a short truck-dock row
    p_dc_nogrid: float  # data centers without a visible rooftop grid
    p_skylights: float  # "other" roofs with a skylight grid
    p_neg_grid: float   # warehouse/retail roofs with a block of gridded rooftop units
    p_neg_yard: float   # hard negatives with a row of generator-like boxes
    units: float        # multiplier of scattered rooftop units on hard negatives

    @classmethod
    def from_difficulty(cls, d: float) -> Knobs:
        """Knobs for difficulty ``d`` (0 = easy, 1 = default, 2 = hard)."""
        d = max(float(d), 0.0)
        return cls(
            cue=1.0 / (1.0 + 0.6 * d), p_yard=float(np.clip(0.92 - 0.15 * d, 0.4, 0.95)),
            p_dc_docks=min(0.05 + 0.12 * d, 0.5), p_dc_nogrid=min(0.06 * d, 0.3),
            p_skylights=min(0.25 + 0.25 * d, 0.9), p_neg_grid=min(0.12 * d, 0.5),
            p_neg_yard=min(0.1 * d, 0.45), units=1.0 + d,
        )


@dataclass
class _Building:
    geom: Polygon
    cls: str
    frame: Frame
    side: float
    rng: np.random.Generator
    kind: int
    win: Win | None = None
    u: np.ndarray | None = None
    v: np.ndarray | None = None


ROOF_GREYS = ((212, 232), (170, 190), (125, 145), (66, 86))  # white, light, mid, dark


def roof_color(rng: np.random.Generator, cls: str, kind: int | None = None) -> np.ndarray:
    """A roof tone drawn from one distribution shared by every class (metal tints for 'other').

    Args:
        rng: Generator.
        cls: Building class (only 'other' may get a painted-metal tint).
        kind: Index into :data:`ROOF_GREYS`; random (shared weights) when None.
    """
    if kind is None:
        kind = int(rng.choice(4, p=[0.33, 0.3, 0.22, 0.15]))
    g = rng.uniform(*ROOF_GREYS[kind])
    col = np.array([g, g, g * rng.uniform(0.98, 1.03), g * rng.uniform(0.86, 0.94)], np.float32)
    col[:3] += rng.normal(0, 3, 3).astype(np.float32)
    if cls == "other" and rng.random() < 0.15:  # painted metal roofs
        col[:3] *= np.array([[1.15, 0.9, 0.8], [0.8, 0.95, 1.15], [1.05, 1.0, 0.85]][int(rng.integers(3))], np.float32)
    return np.clip(col, 20, 250)


def roof_kinds(areas: list[float], positive: list[bool], rng: np.random.Generator) -> list[int]:
    """Roof tone classes chosen so hard negatives spread their roof area like the data centers.

    Data centers draw tones at random (shared weights); then hard negatives, largest first, take
    the tone whose area lags the data centers' tone mix most. Within every tone the data-center
    share of roof area is then about the scene's overall share, so no tone singles them out.
    """
    weights = np.array([0.33, 0.3, 0.22, 0.15])
    kinds = [0] * len(areas)
    dc_area = np.zeros(len(weights))
    for i, p in enumerate(positive):
        if p:
            kinds[i] = int(rng.choice(len(weights), p=weights))
            dc_area[kinds[i]] += areas[i]
    target = dc_area / dc_area.sum() if dc_area.sum() > 0 else weights
    idx = sorted((i for i, p in enumerate(positive) if not p), key=lambda i: -areas[i])
    total = sum(areas[i] for i in idx)
    got = np.zeros(len(weights))
    for i in idx:
        k = int(np.argmax(target * total - got + rng.uniform(0, 0.02 * total, len(weights))))
        kinds[i] = k
        got[k] += areas[i]
    return kinds


def draw_buildings(cv: Canvas, footprints: list[tuple[Polygon, str]], knobs: Knobs,
                   sun: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """Draw grounds, roofs and shadows of every building.

    Args:
        cv: Canvas holding the background already.
        footprints: (polygon in scene CRS, class) pairs.
        knobs: Difficulty knobs.
        sun: Shadow direction (drow, dcol) per metre of building height, in pixels.
        rng: Seeded generator.

    Returns:
        Boolean (H, W) mask of all roofs.
    """
    tables = rng.random((3, 4096)).astype(np.float32)
    kinds = roof_kinds([g.area for g, _ in footprints], [c == "datacenter" for _, c in footprints], rng)
    items = []
    for (geom, cls), kind in zip(footprints, kinds, strict=True):
        b = _Building(geom, cls, Frame.of(geom), float(rng.choice([-1.0, 1.0])),
                      np.random.default_rng(int(rng.integers(2**63))), kind)
        b.win = cv.window(geom.bounds, pad_m=110.0)
        if b.win is not None:
            b.u, b.v = cv.local(b.win, b.frame)
            items.append(b)
    for b in items:
        _grounds(cv, b, knobs, tables)
    roofs = np.zeros((cv.height, cv.width), bool)
    for b in items:
        fp = cv.mask(b.geom, b.win)
        roofs[b.win.rows, b.win.cols] |= fp
        _roof(cv, b, fp, knobs, sun)
    for b in items:
        h = b.rng.uniform(*HEIGHT_M[b.cls])
        fp = cv.mask(b.geom, b.win)
        shade = cast(fp, sun[0] * h, sun[1] * h) & ~roofs[b.win.rows, b.win.cols]
        cv.scale(b.win, shade, (0.45, 0.48, 0.56, 0.42))
    return roofs


# ---------------------------------------------------------------- grounds (outside the roof)

def _grounds(cv: Canvas, b: _Building, k: Knobs, tables: np.ndarray) -> None:
    r, u, v, s = b.rng, b.u, b.v, b.side
    L, W = b.frame.half_len, b.frame.half_wid
    yard = cv.mask(b.geom.buffer(r.uniform(10, 30)), b.win)  # paved surround: service roads, lots
    cv.paint(b.win, yard, [CONCRETE, CONCRETE, OLD_ASPHALT, ASPHALT][int(r.integers(4))] * r.uniform(0.9, 1.12))
    walk = cv.mask(b.geom.buffer(r.uniform(3, 9)), b.win)
    cv.paint(b.win, walk, CONCRETE * r.uniform(0.85, 1.05), alpha=0.9)
    if b.cls == "datacenter":
        depth = 0.0
        if r.random() < k.p_yard:
            depth = _generator_yard(cv, b, s, min(k.cue * 1.3, 1.0))
        if r.random() < 0.4:
            span = r.uniform(28, 55)
            u0 = (L - span) * float(r.choice([-1, 1]))
            _substation(cv, b, u0, u0 + span, s * (W + depth + 6), s * (W + depth + 6 + span))
        if r.random() < 0.7:
            lim = L * r.uniform(0.3, 0.7)
            _parking(cv, b, rect(u, v, -lim, lim, -s * (W + 4), -s * (W + r.uniform(16, 30))), r.uniform(0.2, 0.6), tables)
        if r.random() < k.p_dc_docks:
            _docks(cv, b, -s, L * r.uniform(0.1, 0.3), r.uniform(18, 30), tables)
    elif b.cls == "warehouse":
        depth = r.uniform(38, 56)
        _docks(cv, b, s, L * r.uniform(0.7, 0.95), depth, tables)
        if r.random() < 0.3:
            _docks(cv, b, -s, L * r.uniform(0.5, 0.9), r.uniform(36, 50), tables)
        elif r.random() < 0.6:
            _parking(cv, b, rect(u, v, -L * 0.6, L * 0.6, -s * (W + 4), -s * (W + r.uniform(16, 30))), r.uniform(0.2, 0.7), tables)
    elif b.cls == "retail":
        ext = L + r.uniform(5, 35)
        _parking(cv, b, rect(u, v, -ext, ext, s * (W + 3), s * (W + r.uniform(45, 95))), r.uniform(0.15, 0.75), tables)
        if r.random() < 0.4:
            end = float(r.choice([-1, 1]))
            _parking(cv, b, rect(u, v, end * (L + 3), end * (L + r.uniform(25, 50)), -W, W), r.uniform(0.1, 0.6), tables)
        if r.random() < 0.6:
            _docks(cv, b, -s, L * r.uniform(0.08, 0.2), r.uniform(15, 25), tables)
    else:
        if r.random() < 0.6:
            _parking(cv, b, rect(u, v, -L * 0.8, L * 0.8, s * (W + 3), s * (W + r.uniform(20, 50))), r.uniform(0.2, 0.8), tables)
        if r.random() < 0.25:
            _docks(cv, b, -s, L * r.uniform(0.2, 0.6), r.uniform(25, 45), tables)
    if b.cls != "datacenter" and r.random() < k.p_neg_yard:
        _generator_yard(cv, b, -s, 1.0)


def _parking(cv: Canvas, b: _Building, region: np.ndarray, occupancy: float, tables: np.ndarray) -> None:
    r, u, v = b.rng, b.u, b.v
    cv.paint(b.win, region, (ASPHALT if r.random() < 0.7 else OLD_ASPHALT) * r.uniform(0.9, 1.1))
    pu, pv = 2.7, 18.0
    ph_u, ph_v = r.uniform(0, pu), r.uniform(0, pv)
    vm = np.mod(v - ph_v, pv)
    stall = region & (vm < 11.0)
    cv.paint(b.win, stall & (np.mod(u - ph_u, pu) < 0.45), PAINT, alpha=0.55)
    iu = np.floor((u - ph_u) / pu)
    iv = np.floor((v - ph_v) / pv) * 2 + (vm >= 5.5)
    fu, fv = np.mod(u - ph_u, pu), np.mod(vm, 5.5)
    car = stall & (fu > 0.6) & (fu < 2.4) & (fv > 0.5) & (fv < 5.0)
    car &= cell_random(iu, iv, tables[0]) < occupancy
    if car.any():
        idx = (cell_random(iu[car], iv[car], tables[1]) * CARS.shape[1]).astype(int)
        cv.paint(b.win, car, CARS[:, idx])
    poles = region & (np.mod(u - ph_u, 30.0) < 0.6) & (np.abs(vm - 14.5) < 0.6)
    cv.paint(b.win, poles, (40, 40, 40, 40), alpha=0.7)


def _docks(cv: Canvas, b: _Building, side: float, half_span: float, depth: float, tables: np.ndarray) -> None:
    r, u, v, W = b.rng, b.u, b.v, b.frame.half_wid
    uc = r.uniform(-(b.frame.half_len - half_span), b.frame.half_len - half_span) if b.frame.half_len > half_span else 0.0
    apron = rect(u, v, uc - half_span - 8, uc + half_span + 8, side * W, side * (W + depth))
    cv.paint(b.win, apron, (ASPHALT if r.random() < 0.65 else CONCRETE) * r.uniform(0.9, 1.08))
    pitch = r.uniform(3.8, 4.6)
    band = rect(u, v, uc - half_span, uc + half_span, side * W, side * (W + 1.3))
    cv.paint(b.win, band & (np.mod(u, pitch) < 2.9), (42, 42, 48, 44))
    iu, fu = np.floor(u / pitch), np.mod(u, pitch)
    occ = r.uniform(0.3, 0.85)
    trailer = rect(u, v, uc - half_span, uc + half_span, side * (W + 1.3), side * (W + 17.0))
    trailer &= (fu > 0.15) & (fu < 2.75) & (cell_random(iu, 0 * iu, tables[0]) < occ)
    if trailer.any():
        idx = (cell_random(iu[trailer], 0 * iu[trailer], tables[2]) * TRAILERS.shape[1]).astype(int)
        cv.paint(b.win, trailer, TRAILERS[:, idx])
    if depth > 34:  # a second row of parked trailers at the far edge of the apron
        p2 = r.uniform(3.4, 3.9)
        iu2, fu2 = np.floor(u / p2), np.mod(u, p2)
        row = rect(u, v, uc - half_span, uc + half_span, side * (W + depth - 17), side * (W + depth - 1))
        row &= (fu2 > 0.2) & (fu2 < 2.8) & (cell_random(iu2, iu2 * 0 + 1, tables[0]) < r.uniform(0.2, 0.7))
        if row.any():
            idx = (cell_random(iu2[row], iu2[row] * 0 + 1, tables[2]) * TRAILERS.shape[1]).astype(int)
            cv.paint(b.win, row, TRAILERS[:, idx])


def _generator_yard(cv: Canvas, b: _Building, side: float, contrast: float) -> float:
    """Rows of generator enclosures on a concrete pad along one long side; returns its depth (m)."""
    r, u, v, W, L = b.rng, b.u, b.v, b.frame.half_wid, b.frame.half_len
    gw, gl, gap = r.uniform(2.6, 3.8), r.uniform(8, 13), r.uniform(1.2, 3.0)
    rows = int(r.integers(1, 3))
    depth = 3 + rows * (gl + 3)
    span = L * r.uniform(0.45, 0.95)
    uc = r.uniform(-(L - span), L - span)
    pad = rect(u, v, uc - span, uc + span, side * (W + 1), side * (W + 1 + depth))
    cv.paint(b.win, pad, CONCRETE * r.uniform(0.9, 1.05))
    col = np.array([[192, 182, 160, 172], [214, 214, 210, 196], [80, 82, 86, 76], [112, 122, 106, 118]],
                   np.float32)[int(r.integers(4))]
    col = CONCRETE + (col - CONCRETE) * contrast
    units = np.zeros_like(pad)
    for i in range(rows):
        v0 = W + 3 + i * (gl + 3)
        units |= rect(u, v, uc - span + 1, uc + span - 1, side * v0, side * (v0 + gl)) & (np.mod(u - uc, gw + gap) < gw)
    cv.scale(b.win, cast(units, 1.5, -1.5), 0.75)
    cv.paint(b.win, units, col)
    return depth


def _substation(cv: Canvas, b: _Building, u0: float, u1: float, v0: float, v1: float) -> None:
    u, v = b.u, b.v
    area = rect(u, v, u0, u1, v0, v1)
    cv.paint(b.win, area, GRAVEL * b.rng.uniform(0.9, 1.08))
    pitch = b.rng.uniform(4.0, 6.5)
    lattice = area & ((np.mod(u - u0, pitch) < 0.7) | (np.mod(v - v0, pitch) < 0.7))
    cv.paint(b.win, lattice, (70, 70, 74, 68), alpha=0.65)
    cv.paint(b.win, area & grid(u, v, 12.0, 12.0, 3.5, 4.5, u0 + 3, v0 + 3), (58, 60, 62, 56))
    fence = area & ~rect(u, v, u0 + 0.7, u1 - 0.7, v0 + 0.7 * np.sign(v1 - v0), v1 - 0.7 * np.sign(v1 - v0))
    cv.paint(b.win, fence, (90, 90, 92, 88), alpha=0.8)


# ---------------------------------------------------------------- roofs

def _roof(cv: Canvas, b: _Building, fp: np.ndarray, k: Knobs, sun: tuple[float, float]) -> None:
    r, u, v = b.rng, b.u, b.v
    base = roof_color(r, b.cls, b.kind)
    seam = r.uniform(1.2, 3.0)
    amp = r.uniform(1.5, 5.0)
    shade = amp * (np.mod(v[fp], seam) < 0.6) + r.uniform(-6, 6) * u[fp] / max(b.frame.half_len, 1.0)
    cv.paint(b.win, fp, base[:, None] + shade[None, :])
    if b.frame.half_len > 50:  # roof sections of other ages/membranes, any class alike
        L = b.frame.half_len
        for _ in range(int((r.random() < 0.6) + (r.random() < 0.35))):
            u0 = r.uniform(-L, L)
            sec = fp & rect(u, v, u0, u0 + float(r.choice([-1, 1])) * r.uniform(0.25, 0.6) * 2 * L, -1e9, 1e9)
            cv.paint(b.win, sec, roof_color(r, b.cls)[:, None] + amp * (np.mod(v[sec], seam) < 0.6)[None, :])
    inner = cv.mask(b.geom.buffer(-1.2), b.win)
    cv.scale(b.win, fp & ~inner, r.uniform(0.82, 1.12))
    core = cv.mask(b.geom.buffer(-r.uniform(3.5, 6.5)), b.win)
    if b.cls == "datacenter" and r.random() >= k.p_dc_nogrid:
        _unit_grid(cv, b, core, base, k.cue, sun, coverage=str(r.choice(["full", "bands", "blocks"], p=[0.45, 0.4, 0.15])))
    elif b.cls in ("warehouse", "retail") and r.random() < k.p_neg_grid:
        _unit_grid(cv, b, core, base, 1.0, sun, coverage="blocks")
    if b.cls == "other" and r.random() < k.p_skylights:
        size = r.uniform(1.2, 2.4)
        sky = core & grid(u, v, size + r.uniform(3, 8), size + r.uniform(3, 8), size, size * r.uniform(1, 2))
        tone = np.array([205, 212, 222, 175], np.float32) if r.random() < 0.7 else base * 0.55
        cv.paint(b.win, sky, tone)
    if b.cls == "other" and r.random() < 0.12:
        rows = core & (np.mod(v, r.uniform(2.4, 3.2)) < 1.8)
        cv.paint(b.win, rows, (42, 52, 76, 46))
    if b.cls == "warehouse" and r.random() < 0.35:
        cv.paint(b.win, core & grid(u, v, r.uniform(8, 14), r.uniform(12, 22), 1.2, 2.4), (200, 208, 216, 170))
    n = {"datacenter": 2, "warehouse": 6, "retail": 8, "other": 5}[b.cls]
    _scattered_units(cv, b, core, base, int(r.integers(0, n + 1) * (k.units if b.cls != "datacenter" else 1)), sun)
    if b.cls == "retail" and r.random() < 0.7:
        canopy = rect(u, v, -b.frame.half_len * 0.15, b.frame.half_len * 0.15, b.side * (b.frame.half_wid - 8), b.side * b.frame.half_wid) & fp
        cv.paint(b.win, canopy, roof_color(r, "other"))


def _unit_grid(cv: Canvas, b: _Building, core: np.ndarray, base: np.ndarray, cue: float,
               sun: tuple[float, float], coverage: str) -> None:
    r, u, v = b.rng, b.u, b.v
    su, sv = r.uniform(2.2, 3.6), r.uniform(2.4, 5.0)
    pu, pv = su + r.uniform(0.8, 2.6), sv + r.uniform(1.5, 4.0)
    region = core
    W, L = b.frame.half_wid, b.frame.half_len
    if coverage == "bands":
        region = np.zeros_like(core)
        for _ in range(int(r.integers(1, 4))):
            vc, half = r.uniform(-W * 0.7, W * 0.7), r.uniform(5, 14)
            region |= rect(u, v, -L, L, vc - half, vc + half)
        region &= core
    elif coverage == "blocks":
        region = np.zeros_like(core)
        for _ in range(int(r.integers(1, 4))):
            uc, vc = r.uniform(-L * 0.7, L * 0.7), r.uniform(-W * 0.6, W * 0.6)
            region |= rect(u, v, uc - r.uniform(8, 30), uc + r.uniform(8, 30), vc - r.uniform(5, 15), vc + r.uniform(5, 15))
        region &= core
    units = region & grid(u, v, pu, pv, su, sv, r.uniform(0, pu), r.uniform(0, pv))
    drop = r.uniform(0.0, 0.15)
    if drop > 0:
        units &= r.random(units.shape) >= drop
    bright = r.random() < 0.5 if base[0] < 190 else r.random() < 0.15
    delta = r.uniform(50, 90) * cue * (1 if bright else -1)
    col = np.clip(base + delta, 15, 250)
    cv.scale(b.win, cast(units, sun[0] * 2.0, sun[1] * 2.0) & core, 1.0 - 0.3 * cue)
    cv.paint(b.win, units, col)


def _scattered_units(cv: Canvas, b: _Building, core: np.ndarray, base: np.ndarray, n: int,
                     sun: tuple[float, float]) -> None:
    rows, cols = np.nonzero(core)
    if n <= 0 or rows.size == 0:
        return
    units = np.zeros_like(core)
    pick = b.rng.integers(0, rows.size, n)
    for rr, cc in zip(rows[pick], cols[pick], strict=True):
        h, w = (int(x) for x in b.rng.integers(2, 7, 2))
        units[rr: rr + h, cc: cc + w] = True
    units &= core
    delta = b.rng.uniform(40, 80) * (1 if b.rng.random() < 0.5 else -1)
    cv.scale(b.win, cast(units, sun[0] * 2.0, sun[1] * 2.0) & core, 0.75)
    cv.paint(b.win, units, np.clip(base + delta, 15, 250))
