"""The pixel grid a project recorded for a scene file, to notice when the file is replaced.

Reviewed chips and proposals are pixel windows, so they only mean something on the grid they were
made on: a file of the same name with another size, transform, CRS or band count is another scene.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import rasterio
from affine import Affine
from rasterio.crs import CRS

#: Transform terms closer than this (CRS units) are the same grid (a rewrite of the file may round).
TRANSFORM_TOLERANCE = 1e-6


@dataclass(frozen=True)
class SceneGrid:
    """Width, height, band count, CRS and transform of a raster file.

    Attributes:
        width: Columns.
        height: Rows.
        count: Bands in the file.
        crs: CRS as text (``EPSG:32618`` or WKT).
        transform: The six affine terms ``(a, b, c, d, e, f)``.
    """

    width: int
    height: int
    count: int
    crs: str
    transform: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.transform) != 6:
            raise ValueError(f"a grid transform has 6 terms (a, b, c, d, e, f), got {list(self.transform)}")

    @classmethod
    def of_file(cls, path: str | os.PathLike) -> SceneGrid:
        """The grid of a raster file.

        Raises:
            rasterio.errors.RasterioIOError: The file cannot be opened.
        """
        with rasterio.open(path) as src:
            return cls(width=src.width, height=src.height, count=src.count,
                       crs=src.crs.to_string() if src.crs else "", transform=tuple(src.transform)[:6])

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> SceneGrid:
        """Read the form :meth:`to_json` writes (raises KeyError, TypeError, ValueError when malformed)."""
        return cls(width=int(payload["width"]), height=int(payload["height"]), count=int(payload["count"]),
                   crs=str(payload["crs"]), transform=tuple(float(v) for v in payload["transform"]))

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (project.json)."""
        return {"width": self.width, "height": self.height, "count": self.count, "crs": self.crs,
                "transform": list(self.transform)}

    def same_as(self, other: SceneGrid) -> bool:
        """Whether both grids put every pixel at the same place with the same bands."""
        if (self.width, self.height, self.count) != (other.width, other.height, other.count):
            return False
        if not all(math.isclose(a, b, rel_tol=1e-12, abs_tol=TRANSFORM_TOLERANCE)
                   for a, b in zip(self.transform, other.transform, strict=True)):
            return False
        if self.crs == other.crs:
            return True
        try:
            return CRS.from_user_input(self.crs) == CRS.from_user_input(other.crs)
        except Exception:  # noqa: BLE001 - an unparsable CRS text is simply not the same CRS
            return False

    def describe(self) -> str:
        """One readable line: size, bands, CRS, origin and pixel size (rotation when there is one)."""
        a, b, c, d, e, f = self.transform
        text = (f"{self.width} x {self.height} px, {self.count} band(s), {self.crs or 'no CRS'}, "
                f"origin ({c:.10g}, {f:.10g}), pixel {a:.6g} x {e:.6g}")
        if b or d:
            text += f", rotation ({b:.6g}, {d:.6g})"
        return text

    @property
    def affine(self) -> Affine:
        """The transform as an :class:`~affine.Affine`."""
        return Affine(*self.transform)
