"""Everything in a synthetic scene that is not a labelled building, and the sensor.

Land cover (field parcels, lawns, bare construction ground, forest blobs, ponds), a road network
with driveways to every lot, rows of houses along residential streets, and finally the sensor:
per-band gain/offset, haze, Gaussian blur and noise.
"""

from __future__ import annotations

import numpy as np
import shapely
from rasterio import features
from scipy import ndimage
from scipy.spatial import cKDTree
from shapely import affinity
from shapely.geometry import LineString, Point, Polygon, box
from shapely.ops import nearest_points

from model.synth_paint import ASPHALT, GRASS, PAINT, TREE, Canvas

COVER = {  # (R, G, B, NIR) of parcel covers
    "lawn": (86, 106, 74, 178), "crop": (74, 100, 64, 196), "dry": (150, 140, 108, 152),
    "soil": (142, 124, 102, 128), "meadow": (104, 116, 82, 168),
}
COVER_P = {
    "ashburn": {"lawn": 0.3, "crop": 0.05, "dry": 0.15, "soil": 0.3, "meadow": 0.2},
    "santa_clara": {"lawn": 0.25, "crop": 0.05, "dry": 0.4, "soil": 0.25, "meadow": 0.05},
}
FOREST_SHARE = {"ashburn": 0.22, "santa_clara": 0.05}


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std Gaussian-filtered noise."""
    n = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return (n - n.mean()) / (n.std() + 1e-6)


def _upsample(low: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling of a low-resolution (h, w) field to ``shape``."""
    zoom = (shape[0] / low.shape[0], shape[1] / low.shape[1])
    return ndimage.zoom(low, zoom, order=1, mode="nearest", grid_mode=True)[: shape[0], : shape[1]]


def land_cover(cv: Canvas, site: str, rng: np.random.Generator, f: int = 8) -> np.ndarray:
    """Paint parcels, forest and ponds over the whole canvas.

    Returns:
        Boolean (H, W) forest mask (trees), for later use.
    """
    H, W = cv.height, cv.width
    hl, wl = -(-H // f), -(-W // f)
    cell = cv.res * f
    n_parcels = max(4, int(hl * wl * cell * cell / 180.0**2))
    seeds = rng.uniform(0, 1, (n_parcels, 2)) * (hl, wl)
    yy, xx = np.mgrid[0:hl, 0:wl]
    parcel = cKDTree(seeds).query(np.c_[yy.ravel(), xx.ravel()])[1].reshape(hl, wl)
    probs = COVER_P.get(site, COVER_P["ashburn"])
    kinds = rng.choice(list(probs), n_parcels, p=list(probs.values()))
    lut = np.array([COVER[k] for k in kinds], np.float32) * rng.uniform(0.88, 1.12, (n_parcels, 1)).astype(np.float32)
    low_tone = 1.0 + 0.06 * _smooth_noise(rng, (hl, wl), 30.0 / cell)
    base = np.stack([lut[parcel, band] * low_tone for band in range(4)])  # (4, hl, wl)
    crop = np.isin(kinds, ["crop", "soil"])
    ang = rng.uniform(0, np.pi, n_parcels).astype(np.float32)
    share = FOREST_SHARE.get(site, 0.15)
    field = _smooth_noise(rng, (hl, wl), 60.0 / cell)
    level = np.quantile(field, 1.0 - share)
    forest = np.zeros((H, W), bool)
    cols = np.arange(W)
    k = np.float32(2 * np.pi * cv.res / 3.0)
    for r0 in range(0, H, BLOCK):  # row blocks keep temporaries small on big scenes
        r1 = min(r0 + BLOCK, H)
        rows = np.arange(r0, r1)
        block = cv.img[:, r0:r1]
        for band in range(4):
            block[band] = _bilinear(base[band], rows, cols, f)
        block *= 1.0 + 0.05 * _block_noise(rng, r1 - r0, W, 0.8)
        pid = parcel[np.ix_(np.minimum(rows // f, hl - 1), np.minimum(cols // f, wl - 1))]
        on = crop[pid]
        if on.any():  # crop rows / grading tracks: stripes with a per-parcel direction
            ys, xs = np.nonzero(on)
            a = ang[pid[ys, xs]]
            stripe = np.sin((xs * np.cos(a) + (ys + r0) * np.sin(a)) * k).astype(np.float32)
            block[:, ys, xs] *= 1.0 + 0.07 * stripe
        # forest: thresholded smooth noise; crowns as dark/bright blobs, NIR very bright
        fb = _bilinear(field, rows, cols, f) > level
        forest[r0:r1] = fb
        if fb.any():
            crowns = _block_noise(rng, r1 - r0, W, 2.2) + 0.5 * _block_noise(rng, r1 - r0, W, 0.8)
            crowns = np.where(crowns < -1.1, crowns * 1.6, crowns)[fb]  # gaps between crowns
            for band in range(4):
                block[band][fb] = TREE[band] * (1.0 + (0.28 if band < 3 else 0.12) * crowns)
    _pads(cv, rng)
    if rng.random() < 0.5:  # a stormwater pond
        r = rng.uniform(25, 70)
        x0, y0 = cv.transform @ (rng.uniform(0.1, 0.9) * W, rng.uniform(0.1, 0.9) * H)
        pond = Point(x0, y0).buffer(r).simplify(r / 4)
        pond = affinity.scale(pond, rng.uniform(0.6, 1.4), 1.0)
        win = cv.window(pond.bounds, 8)
        if win is not None:
            edge = cv.mask(pond.buffer(5), win)
            cv.paint(win, edge, GRASS * 1.1)
            cv.paint(win, cv.mask(pond, win), (36, 52, 56, 16))
    return forest


PADS = np.array([[176, 175, 170, 160], [192, 178, 152, 162], [204, 202, 194, 186],
                 [232, 230, 226, 214], [84, 87, 92, 78], [128, 126, 122, 116]], np.float32)


def _pads(cv: Canvas, rng: np.random.Generator) -> None:
    """Construction sites and open lots: bare graded ground, slabs, gravel and asphalt, no roof."""
    left, top = cv.transform.c, cv.transform.f
    w_m, h_m = cv.width * cv.res, cv.height * cv.res
    for _ in range(int(rng.poisson(9.0 * w_m * h_m / 1.5e6))):
        pw, ph = rng.uniform(50, 240), rng.uniform(40, 160)
        geom = _place(box(-pw / 2, -ph / 2, pw / 2, ph / 2), left + rng.uniform(0, w_m),
                      top - rng.uniform(0, h_m), rng.uniform(0, np.pi))
        win = cv.window(geom.bounds, 2)
        if win is None:
            continue
        m = cv.mask(geom, win)
        col = PADS[int(rng.integers(len(PADS)))] * rng.uniform(0.9, 1.08)
        cv.paint(win, m, col)
        if rng.random() < 0.5:  # tyre tracks / patches on graded ground
            tex = _smooth_noise(rng, m.shape, 3.0)
            cv.scale(win, m & (tex > 0.8), 0.88)


BLOCK = 512


def _bilinear(low: np.ndarray, rows: np.ndarray, cols: np.ndarray, f: int) -> np.ndarray:
    """Bilinear sample of a field stored at 1/f resolution, at full-resolution rows x cols."""
    def axis(idx: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((idx + 0.5) / f - 0.5, 0, n - 1)
        i0 = np.floor(pos).astype(np.intp)
        i1 = np.minimum(i0 + 1, n - 1)
        return i0, i1, (pos - i0).astype(np.float32)

    y0, y1, wy = axis(rows, low.shape[0])
    x0, x1, wx = axis(cols, low.shape[1])
    top = low[y0][:, x0] * (1 - wx) + low[y0][:, x1] * wx
    bot = low[y1][:, x0] * (1 - wx) + low[y1][:, x1] * wx
    return (top * (1 - wy)[:, None] + bot * wy[:, None]).astype(np.float32)


def _block_noise(rng: np.random.Generator, h: int, w: int, sigma: float) -> np.ndarray:
    """Unit-std smooth noise for one row block (filtered with a halo so blocks join smoothly)."""
    halo = int(4 * sigma) + 1
    n = rng.standard_normal((h + 2 * halo, w), dtype=np.float32)
    n = ndimage.gaussian_filter(n, sigma, mode="reflect")[halo: halo + h]
    return n / (n.std() + 1e-6)


def road_network(cv: Canvas, lots: list[Polygon], angles: list[float], rng: np.random.Generator) -> list[Polygon]:
    """Major roads that avoid the building lots, and a driveway from every lot.

    Returns:
        Road surface polygons (scene CRS).
    """
    left, top = cv.transform.c, cv.transform.f
    right, bottom = left + cv.width * cv.res, top - cv.height * cv.res
    scene = box(left, bottom, right, top)
    diag = float(np.hypot(right - left, top - bottom))
    blocked = shapely.union_all(lots) if lots else Polygon()
    n_roads = 1 + int(round(cv.width * cv.height * cv.res**2 / 0.6e6))
    base_angles = angles or [0.0]
    roads: list[LineString] = []
    for _ in range(n_roads):
        best, best_cost = None, np.inf
        for _ in range(24):
            a = float(rng.choice(base_angles)) + float(rng.choice([0.0, np.pi / 2])) + rng.normal(0, 0.05)
            p = (rng.uniform(left, right), rng.uniform(bottom, top))
            d = (np.cos(a) * diag, np.sin(a) * diag)
            line = LineString([(p[0] - d[0], p[1] - d[1]), (p[0] + d[0], p[1] + d[1])]).intersection(scene)
            if line.is_empty or line.length < 0.3 * diag:
                continue
            cost = line.intersection(blocked).length + sum(200.0 for r in roads if line.distance(r) < 60 and not line.crosses(r))
            if cost < best_cost:
                best, best_cost = line, cost
        if best is not None:
            roads.append(best)
    surfaces = []
    for line in roads:
        width = rng.uniform(12, 24)
        surf = line.buffer(width / 2, cap_style="flat")
        surfaces.append(surf)
        win = cv.window(surf.bounds, 2)
        if win is None:
            continue
        cv.paint(win, cv.mask(surf, win), ASPHALT * rng.uniform(0.9, 1.15))
        edge = line.buffer(width / 2 - 1.0, cap_style="flat").difference(line.buffer(width / 2 - 1.6, cap_style="flat"))
        cv.paint(win, cv.mask(edge, win), PAINT, alpha=0.5)
        if width > 16:
            cv.paint(win, cv.mask(line.buffer(0.35), win, all_touched=True), (200, 180, 90, 150), alpha=0.45)
    if roads:
        net = shapely.union_all(roads)
        for lot in lots:
            a, bpt = nearest_points(lot.centroid, net)
            if a.distance(bpt) > 400.0:
                continue
            drive = LineString([a, bpt]).buffer(rng.uniform(3.5, 5.0), cap_style="flat")
            win = cv.window(drive.bounds, 2)
            if win is not None:
                cv.paint(win, cv.mask(drive, win), ASPHALT * rng.uniform(0.95, 1.2))
            surfaces.append(drive)
    return surfaces


def houses(cv: Canvas, keep_out: Polygon, angles: list[float], site: str, rng: np.random.Generator) -> int:
    """Residential patches: streets with rows of small gabled houses and yard trees.

    Returns:
        Number of houses drawn.
    """
    left, top = cv.transform.c, cv.transform.f
    w_m, h_m = cv.width * cv.res, cv.height * cv.res
    n_patches = int(rng.poisson(1.2 * w_m * h_m / 1.5e6))
    halves: list[tuple[Polygon, int]] = []
    colors: list[np.ndarray] = [np.zeros(4, np.float32)]
    streets: list[Polygon] = []
    trees: list[Polygon] = []
    for _ in range(n_patches):
        cx, cy = left + rng.uniform(0, w_m), top - rng.uniform(0, h_m)
        ang = float(rng.choice(angles or [0.0])) + rng.normal(0, 0.1)
        pw, ph = rng.uniform(150, 420), rng.uniform(120, 320)
        spacing = rng.uniform(55, 75)
        for j in range(int(ph // spacing) + 1):
            sv = -ph / 2 + j * spacing
            street = LineString([(-pw / 2, sv), (pw / 2, sv)])
            streets.append(_place(street.buffer(4.0, cap_style="flat"), cx, cy, ang))
            for side in (-1, 1):
                lot_w = rng.uniform(18, 26)
                for i in range(int(pw // lot_w)):
                    if rng.random() < 0.12:
                        continue
                    hw, hd = rng.uniform(9, 15), rng.uniform(8, 12)
                    u0 = -pw / 2 + i * lot_w + rng.uniform(1, lot_w - hw)
                    v0 = sv + side * (4 + rng.uniform(6, 10))
                    v1 = v0 + side * hd
                    tone = (np.array([rng.uniform(70, 150)] * 3 + [0], np.float32)
                            * np.array([1.0, rng.uniform(0.85, 1.0), rng.uniform(0.75, 0.95), 0], np.float32))
                    tone[3] = tone[0] * rng.uniform(0.8, 1.1)
                    vm = (v0 + v1) / 2
                    for k, (a, b) in enumerate(((v0, vm), (vm, v1))):
                        geom = _place(box(u0, min(a, b), u0 + hw, max(a, b)), cx, cy, ang)
                        halves.append((geom, len(colors)))
                        colors.append(tone * (1.12 if k == 0 else 0.82))
                    if rng.random() < 0.6:
                        t = Point(u0 + rng.uniform(0, hw), v1 + side * rng.uniform(4, 9)).buffer(rng.uniform(2.5, 5))
                        trees.append(_place(t, cx, cy, ang))
    if not halves:
        return 0
    keep_out = keep_out.buffer(5)
    shapes_ok = [(g, i) for g, i in halves if not g.intersects(keep_out)]
    streets = [s.difference(keep_out) for s in streets]
    trees = [t for t in trees if not t.intersects(keep_out)]
    shape = (cv.height, cv.width)
    st = features.rasterize([(s, 1) for s in streets if not s.is_empty], out_shape=shape,
                            transform=cv.transform, dtype="uint8") if streets else None
    if st is not None and st.any():
        cv.img[:, st.astype(bool)] = (ASPHALT * 1.1)[:, None]
    del st
    if trees:
        tm = features.rasterize([(t, 1) for t in trees], out_shape=shape, transform=cv.transform, dtype="uint8").astype(bool)
        cv.img[:, tm] = (TREE * 1.05)[:, None]
        del tm
    if shapes_ok:
        idx = features.rasterize(shapes_ok, out_shape=shape, transform=cv.transform, dtype="int32")
        on = idx > 0
        cv.img[:, on] = np.asarray(colors, np.float32)[idx[on]].T
    return len(shapes_ok) // 2


def _place(geom, cx: float, cy: float, ang: float):
    return affinity.translate(affinity.rotate(geom, ang, origin=(0, 0), use_radians=True), cx, cy)


def sensor(img: np.ndarray, difficulty: float, rng: np.random.Generator) -> np.ndarray:
    """Illumination, haze, blur and noise applied in place; returns uint8 (4, H, W).

    Args:
        img: float32 (4, H, W) radiance-like canvas (0..255).
        difficulty: Raises haze, blur and noise.
        rng: Seeded generator.
    """
    d = max(difficulty, 0.0)
    _, H, W = img.shape
    haze_low = _smooth_noise(rng, (max(H // 64, 2), max(W // 64, 2)), 2.0)
    haze = np.clip(rng.uniform(0.0, 0.1) * (0.5 + 0.5 * d) + 0.04 * _upsample(haze_low, (H, W)), 0, 0.4)
    sigma = rng.uniform(0.5, 0.8) + 0.15 * d
    noise_sd = 1.5 + 2.0 * d
    out = np.empty(img.shape, np.uint8)
    for band in range(4):
        gain, offset = rng.uniform(0.88, 1.12), rng.uniform(-8, 8)
        x = img[band]
        x *= gain
        x += offset
        x += haze * (205.0 - x)
        ndimage.gaussian_filter(x, sigma, output=x)
        x += rng.standard_normal(x.shape, dtype=np.float32) * noise_sd
        np.clip(x, 0, 255, out=x)
        np.rint(x, out=x)
        out[band] = x.astype(np.uint8)
    return out
