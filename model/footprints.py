"""Reading footprint label files: which layer, which CRS, which class (shared by ``create-masks`` and
``labels import``, so a file means the same to both).

Class rules (:func:`footprint_classes`), per row:

* a ``class`` name: lower case, ``datacemter``/``data center``/``data-center``/``data_center`` read
  as ``datacenter``;
* a ``class`` column that is 0/1 or true/false throughout (``1``, ``1.0``, ``"1"``, ``true``,
  ``yes``): 1/true = ``datacenter``, 0/false = ``other``, the same reading as a ``label`` column;
  nulls among them count as rows without a class;
* other numbers in ``class`` (codes such as 0-5, or a ``1`` among class names) are refused: what a
  code means is the user's to say, so they are asked to map them to names;
* no class: a true/false ``label`` (``datacenter`` or ``other``);
* neither: a data center, with a warning.

Column names are read in any case (``Class``, ``CLASS``, ``Label``: shapefile and GIS exports often
capitalise them) when no lower-case ``class``/``label`` column is there.

A file without a CRS is taken as lon/lat (GeoJSON's own rule); if its coordinates cannot be
lon/lat, it is refused with the ``ogr2ogr -a_srs`` command that sets its CRS. A file with several
layers with geometry needs ``layer``.
"""

from __future__ import annotations

import math
import numbers
import os
import warnings
from pathlib import Path

import numpy as np

from model.errors import LabelError

CLASS_ALIASES = {"datacemter": "datacenter", "data_center": "datacenter", "data center": "datacenter",
                 "data-center": "datacenter"}
_TRUE = {"true", "1", "1.0", "yes", "t", "y"}
_FALSE = {"false", "0", "0.0", "no", "f", "n"}


def _is_null(value) -> bool:
    return value is None or (isinstance(value, float | np.floating) and math.isnan(value))


def _boolean(value) -> bool | None:
    """True/False for a boolean reading of ``value`` (bool, 0/1, ``"yes"``, ...), else None."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, numbers.Number):
        return bool(value) if float(value) in (0.0, 1.0) else None
    text = str(value).strip().lower()
    return True if text in _TRUE else False if text in _FALSE else None


def _numeric(value) -> bool:
    """A number, a boolean or a string holding a number: a code, not a class name."""
    if isinstance(value, bool | np.bool_ | numbers.Number):
        return True
    try:
        float(str(value).strip())
    except ValueError:
        return False
    return True


def class_name(value) -> str | None:
    """A class name by the naming rules (``Warehouse`` -> ``warehouse``, ``datacemter`` ->
    ``datacenter``); None for anything but a non-blank string."""
    if isinstance(value, str) and value.strip():
        key = value.strip().lower()
        return CLASS_ALIASES.get(key, key)
    return None


def footprint_classes(gdf, path: str | os.PathLike) -> tuple[list[str | None], int]:
    """One normalised class per row, by the rules of this module's docstring.

    Returns:
        The classes (None where a row has neither a class nor a label) and the number of such rows.

    Raises:
        LabelError: Numeric class codes other than a 0/1 column, or a ``label`` value that is not a
            boolean in a row without a class.
    """
    n = len(gdf)
    values = list(gdf["class"]) if "class" in gdf.columns else [None] * n
    present = [v for v in values if not _is_null(v) and not (isinstance(v, str) and not v.strip())]
    binary = bool(present) and all(_boolean(v) is not None for v in present)
    if not binary:
        codes = sorted({str(v).strip() for v in present if _numeric(v)})
        if codes:
            shown = ", ".join(codes[:8]) + (", ..." if len(codes) > 8 else "")
            raise LabelError(
                f"{path}: the 'class' column holds numeric code(s) {shown}, which dclabel cannot read as classes "
                "(a numeric class is read only when every value is 0 or 1: 1 = datacenter, 0 = not). Map the "
                "codes to names (datacenter, warehouse, retail, other), e.g. in QGIS's field calculator or with "
                "`ogr2ogr -sql \"SELECT *, CASE class WHEN 1 THEN 'datacenter' ELSE 'other' END AS class_name "
                "FROM layer\"`, and run again.")
    labels = list(gdf["label"]) if "label" in gdf.columns else None
    out: list[str | None] = []
    bad: list[str] = []
    missing = 0
    for i, value in enumerate(values):
        if binary and not _is_null(value) and _boolean(value) is not None:
            out.append("datacenter" if _boolean(value) else "other")
            continue
        name = None if binary else class_name(value)
        if name is not None:
            out.append(name)
            continue
        if labels is not None:
            flag = None if _is_null(labels[i]) else _boolean(labels[i])
            if flag is None:
                bad.append(repr(labels[i]))
            out.append(None if flag is None else "datacenter" if flag else "other")
            continue
        missing += 1
        out.append(None)
    if bad:
        shown = sorted(set(bad))[:5]
        raise LabelError(f"{path}: {len(bad)} polygon(s) have neither a 'class' nor a true/false 'label' "
                         f"(label values {', '.join(shown)}); give each a class (datacenter, warehouse, retail, "
                         "other) or label true/false, or drop them, and run again.")
    return out, missing


def resolve_classes(gdf, path: str | os.PathLike) -> list[str]:
    """:func:`footprint_classes` with rows that have no class taken as data centers, and warnings:
    rows without a class or label (or a file with neither column), and rows whose ``class`` and
    ``label`` disagree (the class is used)."""
    classes, missing = footprint_classes(gdf, path)
    has_class, has_label = "class" in gdf.columns, "label" in gdf.columns
    if not has_class and not has_label:
        warnings.warn(f"{path}: no 'class' or 'label' property: its {len(classes)} polygon(s) are taken as "
                      "data centers.", UserWarning, stacklevel=3)
    elif missing:
        warnings.warn(f"{path}: {missing} polygon(s) without a class or label are taken as data centers.",
                      UserWarning, stacklevel=3)
    if has_class and has_label:
        flags = [None if _is_null(v) else _boolean(v) for v in gdf["label"]]
        clash = [(c, f) for c, f in zip(classes, flags, strict=True)
                 if c is not None and f is not None and (c == "datacenter") != f]
        if clash:
            c, f = clash[0]
            warnings.warn(f"{path}: {len(clash)} polygon(s) have a 'class' that contradicts their 'label' (e.g. "
                          f"class {c!r} with label {str(f).lower()}); the class is used.", UserWarning, stacklevel=3)
    return [c or "datacenter" for c in classes]


def read_vector_layer(path: str | os.PathLike, layer: str | None = None):
    """The one layer with geometry of a vector file (``layer`` picks one of several).

    Raises:
        LabelError: No such file, unreadable, several layers with geometry and none chosen, or no
            layer ``layer``.
    """
    import geopandas
    import pyogrio

    path = Path(path)
    if not path.exists():
        raise LabelError(f"{path}: no such file. Expected footprint polygons (GeoJSON, GeoPackage, ...); check "
                         "the path.")
    try:
        layers = [(str(n), g) for n, g in pyogrio.list_layers(path)]
    except Exception as exc:  # GDAL/pyogrio raise several types for unreadable files
        raise LabelError(f"{path}: not a vector file GDAL can read ({exc}). Expected GeoJSON polygons.") from exc
    names = [n for n, _ in layers]
    listing = ", ".join(f"{n} ({g or 'no geometry'})" for n, g in layers)
    if layer is None:
        spatial = [n for n, g in layers if g]
        if len(spatial) > 1:
            raise LabelError(f"{path}: holds {len(spatial)} layers with geometry: {listing}; choose one with "
                             "--layer NAME (use the others in further runs).")
        layer = spatial[0] if spatial else (names[0] if names else None)
    elif layer not in names:
        raise LabelError(f"{path}: no layer {layer!r}; its layers are {listing}.")
    try:
        gdf = geopandas.read_file(path, layer=layer) if layer is not None else geopandas.read_file(path)
    except Exception as exc:  # GDAL/pyogrio raise several types for unreadable files
        raise LabelError(f"{path}: not a vector file GDAL can read ({exc}). Expected GeoJSON polygons.") from exc
    return _lower_case_class_columns(gdf, path)


def _lower_case_class_columns(gdf, path: Path):
    """``Class``/``CLASS`` (``Label``/``LABEL``) renamed ``class`` (``label``) when there is no lower-case one.

    Raises:
        LabelError: Several columns that differ only in case could be the one meant.
    """
    renames = {}
    for name in ("class", "label"):
        if name in gdf.columns:
            continue
        found = [c for c in gdf.columns if isinstance(c, str) and c.strip().lower() == name]
        if len(found) > 1:
            raise LabelError(f"{path}: columns {', '.join(map(repr, found))} could each be the {name!r} column; "
                             f"rename the one to read to {name!r} (e.g. in QGIS) and run again.")
        if found:
            renames[found[0]] = name
    return gdf.rename(columns=renames) if renames else gdf


def with_lonlat_default(gdf, path: str | os.PathLike):
    """``gdf`` with a missing CRS taken as EPSG:4326 (GeoJSON's rule).

    Raises:
        LabelError: The CRS is geographic but the coordinates are not lon/lat (a projected
            GeoJSON without a ``crs`` member, which GDAL reads as EPSG:4326).
    """
    if gdf.crs is None:
        gdf = gdf.set_crs("EPSG:4326")
    if len(gdf) and gdf.crs.is_geographic:
        x0, y0, x1, y1 = gdf.total_bounds
        if not (-180 <= x0 <= x1 <= 180 and -90 <= y0 <= y1 <= 90):
            raise LabelError(
                f"{path}: coordinates {x0:.0f}..{x1:.0f}, {y0:.0f}..{y1:.0f} are not longitude/latitude, but the "
                "file gives no other CRS (GeoJSON without one means degrees). Set its CRS first, e.g. "
                f"`ogr2ogr -a_srs EPSG:32618 fixed.geojson {Path(path).name}` with the right UTM zone."
            )
    return gdf
