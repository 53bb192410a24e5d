"""Exact conversion between scene-CRS geometries and napari layer coordinates (GUI-free).

napari places the centre of image pixel ``(row, col)`` at layer coordinate ``(row, col)``, so a
pixel spans ``row - 0.5 .. row + 0.5``. Rasterio's affine maps pixel *corners*: ``transform *
(col, row)`` is the upper-left corner of pixel ``(row, col)``. The conversion therefore is::

    (x, y) --~transform--> (col, row) --minus 0.5--> napari (row - 0.5, col - 0.5)

and its exact inverse. napari shapes have no holes and no multi-part shapes, so a polygon is
shown as its exterior ring; :func:`polygon_parts` splits multi-part geometries, and
:func:`napari_to_geometry` takes the holes to keep back as an argument. When an outline was moved,
rotated or scaled as a whole, :func:`outline_motion` finds that map so its holes can follow
(:func:`move_rings`); :func:`split_holes` tells which holes still fit an edited outline. napari's
ellipses are kept as their box's corners: :func:`ellipse_outline` gives the curve drawn.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from affine import Affine
from rasterio.windows import Window
from shapely import make_valid
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

#: napari coordinate of a pixel's upper-left corner relative to its index.
PIXEL_CORNER_OFFSET = -0.5


def crs_to_napari(xy: np.ndarray, transform: Affine) -> np.ndarray:
    """CRS coordinates ``(N, 2)`` as ``(x, y)`` to napari ``(N, 2)`` as ``(row, col)``.

    Args:
        xy: Coordinates in the scene CRS.
        transform: The scene's pixel-to-CRS affine transform.

    Returns:
        float64 array of napari ``(row, col)`` coordinates.
    """
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    inv = ~transform
    col = inv.a * xy[:, 0] + inv.b * xy[:, 1] + inv.c
    row = inv.d * xy[:, 0] + inv.e * xy[:, 1] + inv.f
    return np.column_stack([row + PIXEL_CORNER_OFFSET, col + PIXEL_CORNER_OFFSET])


def napari_to_crs(rc: np.ndarray, transform: Affine) -> np.ndarray:
    """napari ``(row, col)`` coordinates ``(N, 2)`` (or ``(N, >2)``: last two used) to CRS ``(x, y)``.

    Args:
        rc: napari coordinates; extra leading dimensions (e.g. a z slice) are ignored.
        transform: The scene's pixel-to-CRS affine transform.

    Returns:
        float64 ``(N, 2)`` array of ``(x, y)``.
    """
    rc = np.asarray(rc, dtype=np.float64)
    rc = rc.reshape(-1, rc.shape[-1])[:, -2:]
    row = rc[:, 0] - PIXEL_CORNER_OFFSET
    col = rc[:, 1] - PIXEL_CORNER_OFFSET
    x = transform.a * col + transform.b * row + transform.c
    y = transform.d * col + transform.e * row + transform.f
    return np.column_stack([x, y])


def polygon_parts(geom: BaseGeometry | None) -> list[Polygon]:
    """The non-empty polygons of a geometry (Polygon, MultiPolygon or a collection)."""
    if geom is None or geom.is_empty:
        return []
    if isinstance(geom, Polygon):
        return [geom]
    if hasattr(geom, "geoms"):
        return [p for g in geom.geoms for p in polygon_parts(g)]
    return []


def geometry_to_napari(geom: BaseGeometry, transform: Affine) -> np.ndarray:
    """Exterior ring of a polygon as napari vertices ``(N, 2)`` (closing vertex dropped).

    A MultiPolygon gives its largest part (use :func:`polygon_parts` to show every part);
    holes are not representable in a napari shape and are left out.

    Args:
        geom: Polygon or MultiPolygon in the scene CRS.
        transform: The scene's affine transform.

    Returns:
        float64 ``(N, 2)`` array of ``(row, col)``.

    Raises:
        ValueError: The geometry has no polygonal part.
    """
    parts = polygon_parts(geom)
    if not parts:
        raise ValueError(f"cannot show a {geom.geom_type if geom is not None else None} as a polygon")
    poly = max(parts, key=lambda p: p.area)
    coords = np.asarray(poly.exterior.coords)[:-1, :2]
    return crs_to_napari(coords, transform)


def restore_exact(vertices: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Vertices read back from a napari Shapes layer, with each one that was not moved put back at
    its exact position.

    napari keeps shape vertices as float32: about 3e-5 px off at 1,000 px from the origin, 5e-4 px
    at 12,000. A vertex the user did not touch is still bit-for-bit ``float32(exact)``, so it is
    recognised and restored; moved or new vertices keep the layer's value.

    Args:
        vertices: ``(N, 2)`` from the layer.
        exact: ``(M, 2)`` float64 napari vertices of the same shape as stored (:func:`geometry_to_napari`).

    Returns:
        float64 ``(N, 2)``.
    """
    out = np.asarray(vertices, dtype=np.float64).copy()
    exact = np.asarray(exact, dtype=np.float64)
    lookup = {tuple(row): e for row, e in zip(exact.astype(np.float32).tolist(), exact, strict=True)}
    for i, row in enumerate(np.asarray(vertices).astype(np.float32).tolist()):
        hit = lookup.get(tuple(row))
        if hit is not None:
            out[i] = hit
    return out


def outline_motion(before: np.ndarray, after: np.ndarray, tol: float = 1e-3) -> np.ndarray | None:
    """The affine map that took an outline's vertices from ``before`` to ``after``, if one did.

    napari moves a selected shape (drag), and scales or rotates it (its selection box handles), by
    one affine map applied to every vertex; a vertex edit moves some vertices only. A triangle's
    vertices always fit an affine map: moving one of its corners shears it, and its holes with it.

    Args:
        before: ``(N, 2)`` napari vertices as stored.
        after: ``(N, 2)`` napari vertices as the layer has them now (float32 precision).
        tol: Largest residual in pixels, on top of float32 rounding.

    Returns:
        A ``(3, 2)`` matrix ``M`` with ``[row, col, 1] @ M`` the moved point, or None when the vertex
        count changed or the vertices did not move by one affine map (or did not move at all).
    """
    before = np.asarray(before, dtype=np.float64).reshape(-1, 2)
    after = np.asarray(after, dtype=np.float64)
    after = after.reshape(-1, after.shape[-1])[:, -2:]
    if before.shape != after.shape or len(before) < 3:
        return None
    slack = tol + 1e-6 * float(np.abs(np.concatenate([before, after])).max(initial=1.0))
    if np.abs(after - before).max() <= slack:
        return None  # not moved
    lhs = np.column_stack([before, np.ones(len(before))])
    matrix, _, rank, _ = np.linalg.lstsq(lhs, after, rcond=None)
    if rank < 3 or np.abs(lhs @ matrix - after).max() > slack:
        return None
    return matrix


def move_rings(rings: Iterable[np.ndarray], matrix: np.ndarray) -> list[np.ndarray]:
    """napari rings ``(K, 2)`` moved by an :func:`outline_motion` matrix."""
    return [np.column_stack([np.asarray(r, dtype=np.float64)[:, -2:], np.ones(len(r))]) @ matrix for r in rings]


def split_holes(
    vertices: np.ndarray, transform: Affine, holes: Iterable[Polygon | Sequence],
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Holes (CRS) that still fit inside an outline given as napari vertices, and those that do not.

    Args:
        vertices: The outline as napari ``(row, col)``.
        transform: The scene's affine transform.
        holes: Interior rings as CRS polygons or coordinate sequences.

    Returns:
        ``(inside, outside)``: lists of CRS ring coordinates ``(K, 2)``.
    """
    shell = Polygon(napari_to_crs(vertices, transform))
    if not shell.is_valid:
        shell = make_valid(shell)
    inside, outside = [], []
    for hole in holes:
        ring = hole if isinstance(hole, Polygon) else Polygon(hole)
        (inside if shell.contains(ring) else outside).append(np.asarray(ring.exterior.coords))
    return inside, outside


def napari_to_geometry(
    vertices: np.ndarray,
    transform: Affine,
    holes: Iterable[Polygon | Sequence] = (),
) -> Polygon | MultiPolygon:
    """napari vertices ``(N, 2)`` to a valid polygon in the scene CRS.

    Args:
        vertices: Polygon or rectangle vertices as napari ``(row, col)``.
        transform: The scene's affine transform.
        holes: Interior rings to keep, as CRS polygons or coordinate sequences; those not
            inside the new exterior are dropped (:func:`split_holes` tells which, to say so).

    Returns:
        A Polygon, or a MultiPolygon when a self-intersecting ring had to be split to be valid.

    Raises:
        ValueError: Fewer than 3 distinct vertices or zero area.
    """
    xy = napari_to_crs(vertices, transform)
    distinct = len(np.unique(xy, axis=0))
    if distinct < 3:
        raise ValueError(f"a polygon needs at least 3 distinct vertices, got {distinct}"
                         + (f" (of {len(xy)})" if distinct != len(xy) else ""))
    shell = Polygon(xy)
    rings = []
    for hole in holes:
        ring = hole if isinstance(hole, Polygon) else Polygon(hole)
        if shell.contains(ring):
            rings.append(np.asarray(ring.exterior.coords))
    poly = Polygon(xy, rings)
    if not poly.is_valid:
        fixed = MultiPolygon(polygon_parts(make_valid(poly)))
        poly = fixed.geoms[0] if len(fixed.geoms) == 1 else fixed
    if poly.is_empty or poly.area == 0:
        raise ValueError("the polygon has zero area")
    return poly


def ellipse_outline(corners: np.ndarray, n: int = 48) -> np.ndarray:
    """An ellipse of a napari Shapes layer as the polygon of its outline.

    napari keeps an ellipse as the four corners of its bounding box (rotated with it) and draws
    the ellipse inscribed in that box, touching the middle of each side; this is the same curve
    (napari's ``triangulate_ellipse``) sampled at ``n`` points. The polygon's area is
    ``n / (2 pi) * sin(2 pi / n)`` of the ellipse's: 0.3 % under it for ``n = 48``.

    Args:
        corners: ``(4, D)`` box corners in order around the box (napari ``(row, col)`` last).
        n: Number of vertices.

    Returns:
        float64 ``(n, 2)`` napari vertices.

    Raises:
        ValueError: Not four corners.
    """
    corners = np.asarray(corners, dtype=np.float64)
    corners = corners.reshape(-1, corners.shape[-1])[:, -2:]
    if len(corners) != 4:
        raise ValueError(f"an ellipse is given by the 4 corners of its box, got {len(corners)} vertices")
    centre = corners.mean(axis=0)
    half_1 = (corners[1] - corners[0]) / 2  # the two half axes: halves of two adjacent sides
    half_2 = (corners[2] - corners[1]) / 2
    theta = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return centre + np.outer(np.cos(theta), half_1) + np.outer(np.sin(theta), half_2)


def reshape_part(vertices: np.ndarray, part: Polygon, transform: Affine) -> tuple[Polygon | MultiPolygon, int]:
    """A stored polygon part as reshaped in napari, with its holes.

    Holes follow a move, scale or rotation of the outline (:func:`outline_motion`); after a vertex
    edit they stay where they were, and those no longer inside the outline are dropped. Vertices
    napari did not move keep their exact stored position (:func:`restore_exact`).

    Args:
        vertices: The outline as the layer has it, napari ``(row, col)``.
        part: The part as stored (scene CRS).
        transform: The scene's affine transform.

    Returns:
        ``(geometry, dropped)``: the reshaped part and the number of holes dropped (to say so).
    """
    exact = geometry_to_napari(part, transform)
    holes = [np.asarray(h.coords) for h in part.interiors]
    motion = outline_motion(exact, vertices) if holes else None
    if motion is not None:
        holes = [napari_to_crs(r, transform) for r in move_rings([crs_to_napari(h, transform) for h in holes], motion)]
    vertices = restore_exact(vertices, exact)
    holes, outside = split_holes(vertices, transform, holes)
    return napari_to_geometry(vertices, transform, holes), len(outside)


def join_parts(parts: Sequence[Polygon]) -> Polygon | MultiPolygon:
    """One geometry from polygon parts: the polygon itself, or a MultiPolygon."""
    flat = [p for part in parts for p in polygon_parts(part)]
    if not flat:
        raise ValueError("no polygon parts to join")
    return flat[0] if len(flat) == 1 else MultiPolygon(flat)


def window_to_napari(window: Window) -> np.ndarray:
    """A window's outline as a napari rectangle ``(4, 2)`` enclosing its pixels."""
    r0 = float(window.row_off) + PIXEL_CORNER_OFFSET
    c0 = float(window.col_off) + PIXEL_CORNER_OFFSET
    r1, c1 = r0 + float(window.height), c0 + float(window.width)
    return np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]])


def window_centre(window: Window) -> tuple[float, float]:
    """napari ``(row, col)`` of a window's centre."""
    return (
        float(window.row_off) + float(window.height) / 2 + PIXEL_CORNER_OFFSET,
        float(window.col_off) + float(window.width) / 2 + PIXEL_CORNER_OFFSET,
    )
