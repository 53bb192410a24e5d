"""Probability rasters to footprint polygons: vectorize, stitch across blocks, merge, clean, simplify."""

from __future__ import annotations

import os
from collections.abc import Sequence

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from affine import Affine
from rasterio.features import geometry_mask, geometry_window, shapes
from rasterio.windows import Window
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from shapely.geometry import MultiPolygon, Polygon, shape

from model.tiling import PROB_SCALE

BLOCK_PIXELS = 4 * 1024 * 1024  # pixels per vectorizing block: bounds memory for any scene size


def mask_to_polygons(mask: np.ndarray, transform: Affine) -> list[Polygon]:
    """Polygons of the True regions of a boolean mask (8-connected), in the transform's CRS."""
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    return [shape(geom) for geom, val in shapes(m, mask=m > 0, transform=transform, connectivity=8) if val]


def drop_specks(mask: np.ndarray, min_px: int, keep_top: bool = False, keep_bottom: bool = False) -> np.ndarray:
    """Remove 8-connected components under ``min_px`` pixels before vectorizing.

    A weak model can leave hundreds of thousands of one-pixel specks; polygonizing and merging
    them costs minutes and they would be dropped by the area filter anyway. Components touching
    the top or bottom row are kept when ``keep_top``/``keep_bottom`` says the row is a block edge
    inside the scene (the component may continue in the next block).
    """
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    small = sizes < min_px
    small[0] = False
    for keep, row in ((keep_top, labels[0]), (keep_bottom, labels[-1])):
        if keep:
            small[np.unique(row)] = False
    return mask & ~small[labels]


def _groups(polys: Sequence[Polygon], predicate: str, distance: float | None = None) -> list[np.ndarray]:
    """Connected groups of polygons under ``predicate`` (``intersects`` or ``dwithin``)."""
    n = len(polys)
    if n == 0:
        return []
    arr = np.asarray(polys, dtype=object)
    tree = shapely.STRtree(arr)
    if predicate == "dwithin":
        a, b = tree.query(arr, predicate="dwithin", distance=distance)
    else:
        a, b = tree.query(arr, predicate=predicate)
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    order = np.argsort(labels, kind="stable")
    splits = np.flatnonzero(np.diff(labels[order])) + 1
    return np.split(order, splits)


def stitch(polys: Sequence[Polygon]) -> list[Polygon]:
    """Union polygons that share boundary (pieces of one footprint cut by block edges)."""
    out = []
    for g in _groups(polys, "intersects"):
        out.append(polys[g[0]] if len(g) == 1 else shapely.union_all([polys[i] for i in g]))
    return out


def merge_nearby(polys: Sequence[Polygon], distance: float) -> list[Polygon]:
    """Merge polygons closer than ``distance`` (CRS units) by a closing (buffer out, union, buffer in).

    This is the seed's "merge polygons within 10 m": a building split by a dark roof seam becomes
    one footprint, while polygons further apart stay separate and untouched.
    """
    if distance <= 0:
        return list(polys)
    out = []
    for g in _groups(polys, "dwithin", distance):
        if len(g) == 1:
            out.append(polys[g[0]])
            continue
        half = distance / 2
        merged = shapely.union_all([shapely.buffer(polys[i], half, join_style="mitre") for i in g])
        out.append(shapely.buffer(merged, -half, join_style="mitre"))
    return out


def clean(geom, min_area: float, simplify: float) -> Polygon | MultiPolygon | None:
    """Drop parts and holes smaller than ``min_area``, simplify by ``simplify``; None if nothing is left.

    The result is always valid (OGC): 8-connected pixel outlines touch themselves at a corner
    (a ring self-intersection) whether or not they are simplified, so they are made valid too.
    """
    parts = []
    for p in getattr(geom, "geoms", [geom]):
        if p.geom_type != "Polygon" or p.area < min_area:
            continue
        holes = [h for h in p.interiors if Polygon(h).area >= min_area]
        parts.append(Polygon(p.exterior, holes))
    if not parts:
        return None
    g = parts[0] if len(parts) == 1 else MultiPolygon(parts)
    if simplify > 0:
        g = g.simplify(simplify, preserve_topology=True)
    if not g.is_valid:
        g = shapely.make_valid(g)
        if g.geom_type not in ("Polygon", "MultiPolygon"):  # a collection: keep its areas
            g = shapely.union_all([p for p in getattr(g, "geoms", []) if p.geom_type in ("Polygon", "MultiPolygon")])
    return g if not g.is_empty and g.area >= min_area else None


def polygonal(geom) -> Polygon | MultiPolygon:
    """The areas of a geometry (``make_valid`` can return a collection with lines and points)."""
    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom
    parts = [p for p in getattr(geom, "geoms", []) if p.geom_type in ("Polygon", "MultiPolygon")]
    return shapely.union_all(parts) if parts else Polygon()


def valid_at_precision(geoms: Sequence, grid_size: float = 0.0) -> np.ndarray:
    """Footprints made valid as they will be stored: coordinates rounded to ``grid_size`` (a
    writer's precision, e.g. 1e-7 degrees in RFC 7946 GeoJSON; 0 keeps full precision), and
    repaired where the rounding or a reprojection made parts overlap or rings cross.

    Parts of a footprint that touch at a pixel corner are valid in the scene's grid, but a corner
    lying on the other part's edge moves off it by a reprojection (edges curve, vertices do not
    follow them) or by rounding, and the parts then overlap. A footprint still valid once rounded
    keeps its vertices (rounded); the others are snap-rounded (``shapely.set_precision``, valid at
    that precision) or mended by ``make_valid``. Only polygonal parts are kept.

    Args:
        geoms: Polygons and multipolygons (None and empty ones pass through).
        grid_size: The precision the coordinates are written at (CRS units); 0: as they are.

    Returns:
        An object array of valid geometries, one per input.
    """
    arr = np.asarray(list(geoms), dtype=object)
    present = np.array([g is not None and not g.is_empty for g in arr], dtype=bool)
    if not present.any():
        return arr
    original = arr[present]
    out = original.copy()
    if grid_size > 0:  # as the writer rounds (writing the rounded values again changes nothing)
        out = shapely.transform(out, lambda xy: np.round(xy / grid_size) * grid_size)
    bad = ~shapely.is_valid(out)
    if bad.any():
        fixed = original[bad]
        for _ in range(3):
            if grid_size > 0:  # snap rounding: valid at that precision
                fixed = shapely.set_precision(fixed, grid_size)
            invalid = ~shapely.is_valid(fixed)
            if not invalid.any():
                break
            # make_valid can add vertices off the grid (where rings cross): snapped on the next turn
            fixed[invalid] = [polygonal(g) for g in shapely.make_valid(fixed[invalid])]
        out[bad] = fixed
    arr[present] = [polygonal(g) for g in out]
    return arr


def mean_probability(src: rasterio.DatasetReader, geom) -> float:
    """Mean probability (0..1) of a probability raster inside a polygon."""
    # the window of the polygon's pixels whatever the grid's orientation (from_bounds refuses a
    # bottom-up grid, whose y pixel size is positive)
    win = geometry_window(src, [geom])
    block = src.read(1, window=win)
    inside = geometry_mask([geom], out_shape=block.shape, transform=src.window_transform(win), invert=True)
    if not inside.any():
        inside = geometry_mask([geom], out_shape=block.shape, transform=src.window_transform(win),
                               invert=True, all_touched=True)
    return float(block[inside].mean() / PROB_SCALE) if inside.any() else 0.0


def vectorize_probability(
    prob_path: str | os.PathLike,
    threshold: float = 0.5,
    min_area_px: float = 100,
    merge_distance: float = 10.0,
    simplify: float = 0.6,
    block_rows: int | None = None,
) -> gpd.GeoDataFrame:
    """Footprint polygons from a probability GeoTIFF written by :func:`predict_scene`.

    Reads ``block_rows`` rows at a time (memory does not grow with scene height), vectorizes each
    block with ``rasterio.features.shapes``, stitches pieces cut by block edges, merges footprints
    closer than ``merge_distance``, removes parts under ``min_area_px`` and simplifies. Detections
    touching the scene edge are kept.

    Args:
        prob_path: uint8 probability raster (p * 255).
        threshold: Probability above which a pixel is a data center.
        min_area_px: Minimum footprint (and part, and hole) size in pixels.
        merge_distance: Merge footprints within this distance (CRS units, metres for UTM).
        simplify: Douglas-Peucker tolerance in CRS units (0 keeps the pixel staircase).
        block_rows: Rows read per block (default: about 4 Mpx per block, whatever the width).

    Returns:
        GeoDataFrame in the raster's CRS with ``geometry`` and ``mean_confidence``.
    """
    cut = int(np.ceil(threshold * PROB_SCALE - 1e-9))
    with rasterio.open(prob_path) as src:
        block_rows = block_rows or int(np.clip(BLOCK_PIXELS // max(src.width, 1), 256, 4096))
        pixel_area = abs(src.transform.a * src.transform.e - src.transform.b * src.transform.d)
        pieces: list[Polygon] = []
        for r in range(0, src.height, block_rows):
            win = Window(0, r, src.width, min(block_rows, src.height - r))
            block = src.read(1, window=win) >= max(cut, 1)
            edges = {"keep_top": r > 0, "keep_bottom": r + block.shape[0] < src.height}
            block = drop_specks(block, int(min_area_px), **edges)
            # fill holes under the minimum area now: a weak model leaves thousands of pinholes,
            # which make polygonizing, buffering and merging orders of magnitude slower
            block = ~drop_specks(~block, int(min_area_px), **edges)
            pieces.extend(mask_to_polygons(block, src.window_transform(win)))
        polys = stitch(pieces)
        # Pixel staircases carry a vertex per pixel edge; dropping collinear/sub-pixel vertices
        # first (half a pixel, under the output simplification) makes merging cheaper.
        res = abs(src.transform.a)
        polys = list(shapely.simplify(np.asarray(polys, dtype=object), 0.5 * res, preserve_topology=True))
        polys = merge_nearby(polys, merge_distance)
        min_area = min_area_px * pixel_area
        geoms = [g for g in (clean(p, min_area, simplify) for p in polys) if g is not None]
        conf = [mean_probability(src, g) for g in geoms]
        return gpd.GeoDataFrame({"mean_confidence": conf}, geometry=geoms, crs=src.crs)
