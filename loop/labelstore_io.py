"""GeoJSON in and out of the label store.

Import reads polygons of any CRS (a file without a CRS is taken as RFC 7946 lon/lat), maps their
class by the rules ``create-masks`` uses too (:mod:`model.footprints`: a ``class`` name,
``datacemter`` read as ``datacenter``; a 0/1 or true/false ``class`` or ``label``: 1/true =
``datacenter``, 0/false = ``other``; other numeric codes refused; none = ``datacenter``), reprojects them to
the scene CRS, clips them to the scene bounds and adds them with source ``imported`` in one
transaction (one undo step). Export writes RFC 7946 (EPSG:4326, right-hand rule), atomically.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import shapely
from rasterio.warp import transform_bounds
from rasterio.windows import bounds as window_bounds

from loop import labelstore_gpkg as gp
from loop.project import CLASSES
from model.atomic import atomic_path, check_outputs, write_json_atomic
from model.errors import ConfigError, LabelError
from model.footprints import class_name, read_vector_layer, resolve_classes, with_lonlat_default
from model.scene import SceneInfo, chip_windows

if TYPE_CHECKING:
    import geopandas

    from loop.labelstore import LabelStore



def _fmt(b) -> str:
    return f"lon {b[0]:.4f}..{b[2]:.4f}, lat {b[1]:.4f}..{b[3]:.4f}"


def label_classes(gdf, path: Path) -> list[str]:
    """One class per row from ``class`` (or ``label``) properties by the rules ``create-masks`` uses
    too (:func:`model.footprints.resolve_classes`: rows with neither are data centers, with a
    warning); a class dclabel does not know is refused."""
    out = resolve_classes(gdf, path)
    raw = gdf["class"] if "class" in gdf.columns else out
    unknown = sorted({str(v) for v, c in zip(raw, out, strict=True) if c not in CLASSES})
    if unknown:
        raise LabelError(
            f"{path}: unknown class value(s) {unknown}; expected one of {', '.join(CLASSES)} "
            "(or a boolean 'label' property). Fix the 'class' property and import again."
        )
    return out


def normalize_classes(values) -> list:
    """Class values as stored (e.g. typed in QGIS) read by the import rules
    (:func:`model.footprints.class_name`: ``Warehouse`` -> ``warehouse``, ``datacemter`` ->
    ``datacenter``); values those rules cannot read (null, numbers) are returned unchanged."""
    return [c if (c := class_name(v)) is not None else v for v in values]


def unknown_class_text(unknown: dict[int, object]) -> str:
    """``fid 6 'building', fid 9 'shed'`` (the first 10)."""
    shown = ", ".join(f"fid {fid} {cls!r}" for fid, cls in list(unknown.items())[:10])
    return shown + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")


def footprint_frame(parts: list[tuple], target) -> geopandas.GeoDataFrame:
    """GeoDataFrame of footprint rows ``(fid, *FOOTPRINT_COLUMNS, geom blob)`` grouped by CRS.

    Args:
        parts: ``(crs, rows)`` per feature table.
        target: CRS of the result (parts in another CRS are reprojected).
    """
    import geopandas
    import pandas

    columns = ["fid", *gp.FOOTPRINT_COLUMNS]
    frames = []
    for crs, rows in parts:
        geoms = gp.decode_many([r[-1] for r in rows])
        gdf = geopandas.GeoDataFrame([r[:-1] for r in rows], columns=columns, geometry=geoms, crs=crs)
        gdf["class"] = normalize_classes(gdf["class"])
        frames.append(gdf if gdf.crs == target else gdf.to_crs(target))
    if not frames:
        return geopandas.GeoDataFrame(columns=columns, geometry=[], crs=target)
    if len(frames) == 1:
        return frames[0]
    out = pandas.concat(frames, ignore_index=True).sort_values("fid", ignore_index=True)
    return geopandas.GeoDataFrame(out, geometry="geometry", crs=target)


@dataclass(frozen=True)
class ImportResult:
    """What :func:`import_labels` did in one scene.

    Attributes:
        added: Footprints added.
        reclassified: Footprints already in the store with the same geometry (within 1 cm) whose
            class the file changed.
        unchanged: Polygons already in the store with the same geometry and class (not added again).
        outside: Polygons that do not overlap the scene.
        chips_marked: Chips newly marked reviewed.
        dropped: What could not be imported, by reason (``"null geometry"``, ``"empty geometry"``,
            ``"Point"``, ``"LineString"``, ... feature types, ``"line/point part of a repaired
            polygon"``, ``"polygon without area"``).
        unreviewed_chips: Chips left unmarked because a polygon there could not be imported.
    """

    added: int = 0
    reclassified: int = 0
    unchanged: int = 0
    outside: int = 0
    chips_marked: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    unreviewed_chips: int = 0

    def dropped_text(self) -> str:
        """``"2 Point, 1 null geometry"`` (empty when nothing was dropped)."""
        return ", ".join(f"{n} {why}" for why, n in sorted(self.dropped.items()) if n)


def _polygonal_rows(gdf, dropped: dict[str, int]):
    """Rows whose geometry can hold polygons (Polygon, MultiPolygon, GeometryCollection); the others
    are counted in ``dropped`` by reason."""
    geoms = np.asarray(gdf.geometry.array, dtype=object)
    missing = shapely.is_missing(geoms)
    empty = ~missing & shapely.is_empty(geoms)
    keep = ~missing & ~empty & np.isin(shapely.get_type_id(geoms), (3, 6, 7))
    for why, n in (("null geometry", int(missing.sum())), ("empty geometry", int(empty.sum()))):
        if n:
            dropped[why] = dropped.get(why, 0) + n
    for geom in geoms[~missing & ~empty & ~keep]:
        dropped[geom.geom_type] = dropped.get(geom.geom_type, 0) + 1
    return gdf[keep]


@dataclass(frozen=True)
class LabelFile:
    """A footprints file read and checked once (:func:`read_label_file`), ready to import into any
    number of scenes.

    Attributes:
        path: The file.
        frame: Its polygonal rows (GeoDataFrame with a CRS).
        classes: One class of :data:`loop.project.CLASSES` per row of ``frame``.
        dropped: Rows that cannot be imported anywhere, by reason (null, empty, point, line).
    """

    path: Path
    frame: geopandas.GeoDataFrame
    classes: tuple[str, ...]
    dropped: dict[str, int] = field(default_factory=dict)

    def dropped_text(self) -> str:
        """``"2 Point, 1 null geometry"`` (empty when nothing was dropped)."""
        return ", ".join(f"{n} {why}" for why, n in sorted(self.dropped.items()) if n)


def read_label_file(path: str | os.PathLike, layer: str | None = None) -> LabelFile:
    """Read and check a footprints file once: layer, geometry types, CRS and classes.

    Args:
        path: Vector file (GeoJSON, GeoPackage, ...); any CRS (none = EPSG:4326).
        layer: Layer of a multi-layer file (required when several layers have geometry).

    Raises:
        LabelError: Missing/unreadable file, several layers and none chosen, no polygons,
            coordinates that are not lon/lat in a file without a CRS, numeric class codes or an
            unknown class.
    """
    import geopandas

    path = Path(path)
    if not path.exists():
        raise LabelError(f"{path}: no such file. Expected a GeoJSON of footprint polygons; check the path.")
    gdf = read_vector_layer(path, layer)
    if not isinstance(gdf, geopandas.GeoDataFrame) or gdf.geometry.name not in gdf.columns:
        raise LabelError(f"{path}: a table without geometry (columns {', '.join(map(str, gdf.columns))}). "
                         "Expected footprint polygons, e.g. a GeoJSON or GeoPackage.")
    dropped: dict[str, int] = {}
    gdf = _polygonal_rows(gdf, dropped)
    if gdf.empty:
        found = f" (found {', '.join(f'{n} {k}' for k, n in sorted(dropped.items()))})" if dropped else ""
        raise LabelError(
            f"{path}: holds no polygons{found}. Expected footprint Polygons/MultiPolygons with a 'class' "
            "(datacenter/warehouse/retail/other) or boolean 'label' property."
        )
    gdf = with_lonlat_default(gdf, path)
    classes = label_classes(gdf, path)
    return LabelFile(path, gdf, tuple(classes), dropped)


def outside_scenes(labels: LabelFile, scenes: list[SceneInfo]) -> np.ndarray:
    """Which polygons of a file overlap none of ``scenes`` (boolean per row of ``labels.frame``):
    :func:`import_labels` leaves them out of every scene."""
    outside = np.ones(len(labels.frame), dtype=bool)
    for scene in scenes:
        outside &= ~labels.frame.to_crs(scene.crs).intersects(shapely.box(*scene.bounds)).to_numpy()
    return outside


def import_geojson(
    store: LabelStore, path: str | os.PathLike, scene: SceneInfo, reviewed: bool = True, chip_size: int = 256
) -> int:
    """:func:`import_labels` returning the number of footprints added (a warning says what was dropped)."""
    result = import_labels(store, path, scene, reviewed=reviewed, chip_size=chip_size)
    if result.dropped:
        warnings.warn(f"{path}: not imported into {scene.scene_id}: {result.dropped_text()}.", UserWarning,
                      stacklevel=3)
    return result.added


def import_labels(
    store: LabelStore,
    path: str | os.PathLike | LabelFile,
    scene: SceneInfo,
    reviewed: bool = True,
    chip_size: int = 256,
    layer: str | None = None,
) -> ImportResult:
    """Import the polygons of a vector file (GeoJSON, GeoPackage, ...) that overlap a scene.

    A polygon already in the store with the same geometry (within 1 cm) is not added again: with
    the same class it is left alone (importing a file twice, or re-importing an export, adds
    nothing); with another class that footprint is reclassified (a corrected file wins). Invalid
    polygons are repaired (``make_valid``) and their polygons kept at every nesting level; points,
    lines and null/empty geometries are counted in :attr:`ImportResult.dropped`. A chip where a
    polygon could not be imported is not marked reviewed.

    Args:
        store: The label store (the scene is registered if needed).
        path: Vector file; any CRS (none = EPSG:4326). Or a :class:`LabelFile` already read by
            :func:`read_label_file` (importing one file into several scenes reads and checks it once).
        scene: Scene to attach the footprints to; they are reprojected to its CRS and clipped to it.
        reviewed: Also mark every chip (``chip_windows(width, height, chip_size)``) touched by an
            imported footprint as reviewed.
        chip_size: Chip side for ``reviewed``.
        layer: Layer of a multi-layer file (required when several layers have geometry); not
            used with a :class:`LabelFile`.

    Returns:
        The counts, see :class:`ImportResult` (``dropped`` includes the file's own, see
        :attr:`LabelFile.dropped`).

    Raises:
        LabelError: As :func:`read_label_file`, or nothing overlaps the scene.
    """
    labels = path if isinstance(path, LabelFile) else read_label_file(path, layer)
    path, gdf, classes = labels.path, labels.frame, labels.classes
    dropped = dict(labels.dropped)
    file_ll = gdf.to_crs("EPSG:4326").total_bounds
    geoms = gdf.to_crs(scene.crs).geometry.to_numpy()
    scene_box = shapely.box(*scene.bounds)
    shapes: list[tuple] = []
    lost: list = []  # inside the scene, but nothing polygonal survived: do not mark its chips reviewed
    outside = 0
    for geom, cls in zip(geoms, classes, strict=True):
        if not geom.intersects(scene_box):
            outside += 1
            continue
        polys, parts = gp.polygon_parts(geom if geom.is_valid else shapely.make_valid(geom))
        if parts:
            dropped["line/point part of a repaired polygon"] = dropped.get("line/point part of a repaired polygon",
                                                                           0) + parts
        whole = shapely.MultiPolygon(polys) if polys else None
        clipped = None
        if whole is not None:
            clipped = whole if scene_box.contains(whole) else shapely.intersection(whole, scene_box)
            kept, _ = gp.polygon_parts(clipped)  # lines along the scene edge are clipping artefacts
            clipped = (kept[0] if len(kept) == 1 else shapely.MultiPolygon(kept)) if kept else None
        if clipped is None:
            if whole is None:
                dropped["polygon without area"] = dropped.get("polygon without area", 0) + 1
                lost.append(geom)
            else:
                outside += 1
            continue
        shapes.append((clipped, cls))
    if not shapes:
        scene_ll = transform_bounds(scene.crs, "EPSG:4326", *scene.bounds)
        raise LabelError(
            f"{path}: none of its {len(gdf)} polygons overlaps scene {scene.scene_id!r} ({scene.path}). "
            f"File covers {_fmt(file_ll)}; scene covers {_fmt(scene_ll)}. "
            "Choose the scene these labels belong to (--scene) or the matching labels file."
        )
    store.register_scene(scene.scene_id, scene.crs)
    existing = store.footprints(scene.scene_id)
    ex_geoms = shapely.normalize(existing.geometry.to_numpy()) if len(existing) else None
    tree = shapely.STRtree(ex_geoms) if ex_geoms is not None else None
    # the same footprint within 1 cm: a re-import of an export (reprojection and re-clipping at
    # the scene edge move vertices by nanometres to millimetres, and can add one)
    same_within = 0.01 if scene.crs.is_projected else 1e-7
    added = reclassified = unchanged = 0
    touched = []
    with store.transaction():
        for geom, cls in shapes:
            norm = shapely.normalize(geom)
            same = [] if tree is None else [
                int(i) for i in tree.query(norm) if shapely.hausdorff_distance(ex_geoms[i], norm) <= same_within
            ]
            if not same:
                store.add_footprint(scene.scene_id, geom, cls=cls, source="imported")
                touched.append(geom)
                added += 1
                continue
            other = [i for i in same if existing["class"].iloc[i] != cls]
            for i in other:
                store.update_footprint(int(existing["fid"].iloc[i]), cls=cls)
                existing.iloc[i, existing.columns.get_loc("class")] = cls
            reclassified += len(other)
            unchanged += not other
            if other:
                touched.append(geom)
        marked = unreviewed = 0
        if reviewed and touched:
            windows = chip_windows(scene.width, scene.height, chip_size)
            boxes = [shapely.box(*window_bounds(w, scene.transform)) for w in windows]
            index = shapely.STRtree(boxes)
            hits = set(index.query(touched, predicate="intersects")[1].tolist())
            skip = set(index.query(lost, predicate="intersects")[1].tolist()) if lost else set()
            unreviewed = len(hits & skip)
            done = {(c.window.col_off, c.window.row_off, c.window.width, c.window.height): c.empty
                    for c in store.reviewed_chips(scene.scene_id)}
            for i in sorted(hits - skip):
                w = windows[i]
                was_empty = done.get((w.col_off, w.row_off, w.width, w.height))
                if was_empty is None or was_empty:  # new, or marked empty before this footprint came
                    store.mark_reviewed(scene.scene_id, w, empty=False)
                    marked += was_empty is None
    return ImportResult(added, reclassified, unchanged, outside, marked, dropped, unreviewed)


def export_geojson(store: LabelStore, path: str | os.PathLike, scene_id: str | None = None) -> Path:
    """Write active footprints as RFC 7946 GeoJSON (EPSG:4326, counter-clockwise shells), atomically.

    Properties: ``fid, scene_id, class, label`` (true for datacenter)``, status, source,
    model_version, created, updated``; the file re-imports with :func:`import_geojson`. Classes are
    read by the import rules (``Warehouse`` typed in QGIS is written ``warehouse``); footprints whose
    class is still unknown (e.g. ``building``) are left out, with a warning naming their fids.

    Args:
        store: The label store.
        path: Output ``.geojson`` (or ``.gpkg``: a GeoPackage layer ``footprints`` in EPSG:4326).
        scene_id: Only this scene; default every scene.

    Returns:
        ``path``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".geojson", ".json", ".gpkg"):
        raise ConfigError(f"{path}: expected a .geojson (or .gpkg) output, found {suffix or 'no suffix'}.")
    # folder, under a file, unwritable, another GeoPackage's layers (only an earlier export is replaced)
    check_outputs({"labels export": path}, {"label store": store.path}, gpkg_layer="footprints")
    gdf = store.footprints(scene_id)
    unknown = ~gdf["class"].isin(CLASSES)
    if unknown.any():
        bad = dict(zip(gdf.loc[unknown, "fid"].astype(int), gdf.loc[unknown, "class"], strict=True))
        warnings.warn(
            f"{store.path}: {len(bad)} footprint(s) with a class dclabel does not know left out of {path.name} "
            f"({unknown_class_text(bad)}); set their class to one of {', '.join(CLASSES)} (e.g. in QGIS) "
            "and export again.", UserWarning, stacklevel=3)
        gdf = gdf[~unknown]
    if len(gdf):
        gdf = gdf.to_crs("EPSG:4326")
    if suffix == ".gpkg":  # one layer in EPSG:4326, the same columns as the GeoJSON
        out = gdf.assign(label=gdf["class"] == "datacenter").rename(columns={"fid": "footprint_id"})
        with atomic_path(path) as tmp:
            out.to_file(tmp, driver="GPKG", layer="footprints")
        return path
    features = []
    for row, geom in zip(gdf.drop(columns="geometry").to_dict("records"), gdf.geometry, strict=True):
        props = {k: (None if v is None or v != v else v) for k, v in row.items()}
        props["fid"] = int(props["fid"])
        props["label"] = props["class"] == "datacenter"
        features.append({"type": "Feature", "id": props["fid"], "properties": props,
                         "geometry": shapely.geometry.mapping(shapely.orient_polygons(geom))})
    collection = {"type": "FeatureCollection", "name": path.stem, "features": features}
    return write_json_atomic(path, collection, indent=None)
