"""What a shape drawn in a napari Shapes layer becomes as a footprint, and the rules it must meet.

GUI-free (no napari import: it works on a shape's napari vertices and type name), shared by the
footprints layer (:mod:`labeler.footprint_editor`) and shapes drawn into the proposals layer
(:mod:`labeler.review_widget`). It stays in ``labeler/`` because it speaks napari's coordinates and
shape types through :mod:`labeler.geo`, which ``loop/`` may not import.

An ellipse is stored as its outline (:data:`ELLIPSE_VERTICES` points); lines and paths are open
and refused; a footprint wholly off the scene or under :data:`MIN_FOOTPRINT_M2` is refused too.
"""

from __future__ import annotations

import numpy as np
from rasterio.windows import Window
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from labeler.geo import ellipse_outline, napari_to_crs, napari_to_geometry, window_to_napari
from model.scene import SceneInfo

#: Smallest footprint stored, in square metres on the ground: anything smaller is a slip of the
#: mouse (a click and a twitch), not a building.
MIN_FOOTPRINT_M2 = 1.0
#: Vertices of the polygon an ellipse is stored as (its area 0.3 % under the ellipse's).
ELLIPSE_VERTICES = 48


def drawn_outline(vertices: np.ndarray, shape_type: str) -> np.ndarray:
    """The outline of a shape drawn in a napari Shapes layer, as polygon vertices.

    Args:
        vertices: The shape's napari vertices (for an ellipse, the corners of its box).
        shape_type: napari's shape type.

    Returns:
        ``(N, 2)`` napari vertices of the polygon: an ellipse's outline
        (:data:`ELLIPSE_VERTICES` points), other shapes' own vertices.

    Raises:
        ValueError: A line or path: open, it outlines no footprint.
    """
    if shape_type == "ellipse":
        return ellipse_outline(vertices, ELLIPSE_VERTICES)
    if shape_type in ("line", "path"):
        raise ValueError(f"a {shape_type} is open and outlines no footprint; "
                         "draw a polygon (P) or, from the layer's toolbar, a rectangle or an ellipse")
    return np.asarray(vertices)


def footprint_area_m2(geom: BaseGeometry, scene: SceneInfo) -> float:
    """Ground area of a footprint (scene CRS) in square metres, measured as ``area_m2`` of
    detections is (:func:`loop.proposals.pixel_area_m2`: projection scale and degrees count)."""
    from loop.proposals import pixel_area_m2

    t = scene.transform
    pixels = geom.area / abs(t.a * t.e - t.b * t.d)
    return float(pixels * pixel_area_m2(t, scene.crs, (scene.height, scene.width)))


def drawn_footprint(vertices: np.ndarray, shape_type: str, scene: SceneInfo) -> BaseGeometry:
    """A shape drawn in napari as the footprint to store, or why it is none.

    A footprint partly outside the scene is kept whole (a building at the scene's edge is real).

    Args:
        vertices: The shape's napari vertices.
        shape_type: napari's shape type (an ellipse is stored as its outline).
        scene: The scene drawn on.

    Returns:
        A valid Polygon or MultiPolygon in the scene CRS.

    Raises:
        ValueError: A line or path, fewer than 3 distinct vertices, no area, a shape wholly
            outside the scene, or one under :data:`MIN_FOOTPRINT_M2`; the message says which.
    """
    geom = napari_to_geometry(drawn_outline(vertices, shape_type), scene.transform)
    check_footprint(geom, scene)
    return geom


def check_footprint(geom: BaseGeometry, scene: SceneInfo) -> None:
    """Refuse a footprint drawn or edited wholly off the scene or under :data:`MIN_FOOTPRINT_M2`.

    Args:
        geom: The footprint in the scene CRS.
        scene: The scene it is drawn on.

    Raises:
        ValueError: It lies wholly outside the scene, or its area is under
            :data:`MIN_FOOTPRINT_M2`; the message says which.
    """
    extent = Polygon(napari_to_crs(window_to_napari(Window(0, 0, scene.width, scene.height)), scene.transform))
    if geom.intersection(extent).area <= 0:
        raise ValueError(f"it lies wholly outside the scene ({scene.width}×{scene.height} px)")
    area = footprint_area_m2(geom, scene)
    if area < MIN_FOOTPRINT_M2:
        raise ValueError(f"its area is {area:.2g} m², under the {MIN_FOOTPRINT_M2:g} m² of the smallest "
                         "footprint stored (a slip of the mouse?)")
