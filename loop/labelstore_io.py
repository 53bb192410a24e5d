"""GeoJSON in and out of the label store.

Import reads polygons of any CRS (a file without a CRS is taken as RFC 7946 lon/lat), maps their
class (``class`` property, ``datacemter`` read as ``datacenter``; or a boolean ``label`` property:
true = ``datacenter``, false = ``other``; no property at all = ``datacenter``), reprojects them to
the scene CRS, clips them to the scene bounds and adds them with source ``imported`` in one
transaction (one undo step). Export writes RFC 7946 (EPSG:4326, right-hand rule), atomically.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import shapely
from rasterio.warp import transform_bounds
from rasterio.windows import bounds as window_bounds

from loop import labelstore_gpkg as gp
from loop.project import CLASSES
from model.atomic import atomic_path, check_outputs, write_json_atomic
from model.errors import ConfigError, LabelError
from model.masks import footprint_classes
from model.scene import SceneInfo, chip_windows

if TYPE_CHECKING:
    import geopandas

    from loop.labelstore import LabelStore



def _fmt(b) -> str:
    return f"lon {b[0]:.4f}..{b[2]:.4f}, lat {b[1]:.4f}..{b[3]:.4f}"


def label_classes(gdf, path: Path) -> list[str]:
    """One class per row from ``class`` (or ``label``) properties (:func:`model.masks.footprint_classes`,
    the rules ``create-masks`` uses too); rows with neither are data centers."""
    classes, _ = footprint_classes(gdf, path)
    has_class, has_label = "class" in gdf.columns, "label" in gdf.columns
    out = [c or "datacenter" for c in classes]
    unknown = {str(gdf["class"].iloc[i]) for i, c in enumerate(classes) if c is not None and c not in CLASSES}
    if unknown:
        raise LabelError(
            f"{path}: unknown class value(s) {sorted(unknown)}; expected one of {', '.join(CLASSES)} "
            "(or a boolean 'label' property). Fix the 'class' property and import again."
        )
    if not has_class and not has_label:
        warnings.warn(f"{path}: no 'class' or 'label' property: its {len(out)} polygon(s) are imported as "
                      "data centers.", UserWarning, stacklevel=3)
    return out


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
        frames.append(gdf if gdf.crs == target else gdf.to_crs(target))
    if not frames:
        return geopandas.GeoDataFrame(columns=columns, geometry=[], crs=target)
    if len(frames) == 1:
        return frames[0]
    out = pandas.concat(frames, ignore_index=True).sort_values("fid", ignore_index=True)
    return geopandas.GeoDataFrame(out, geometry="geometry", crs=target)


def import_geojson(
    store: LabelStore, path: str | os.PathLike, scene: SceneInfo, reviewed: bool = True, chip_size: int = 256
) -> int:
    """Import the polygons of a vector file (GeoJSON, GeoPackage, ...) that overlap a scene.

    Footprints already in the store with the same class and geometry (within 1 cm) are skipped, so
    importing a file twice, or re-importing an export, adds nothing.

    Args:
        store: The label store (the scene is registered if needed).
        path: Vector file; any CRS (none = EPSG:4326).
        scene: Scene to attach the footprints to; they are reprojected to its CRS and clipped to it.
        reviewed: Also mark every chip (``chip_windows(width, height, chip_size)``) touched by an
            imported footprint as reviewed.
        chip_size: Chip side for ``reviewed``.

    Returns:
        Number of footprints added.

    Raises:
        LabelError: Missing/unreadable file, no polygons, unknown class, or nothing overlaps the scene.
    """
    import geopandas

    path = Path(path)
    if not path.exists():
        raise LabelError(f"{path}: no such file. Expected a GeoJSON of footprint polygons; check the path.")
    try:
        gdf = geopandas.read_file(path)
    except Exception as exc:  # GDAL/pyogrio raise several types for unreadable files
        raise LabelError(f"{path}: not a vector file GDAL can read ({exc}). Expected GeoJSON polygons.") from exc
    if not isinstance(gdf, geopandas.GeoDataFrame) or gdf.geometry.name not in gdf.columns:
        raise LabelError(f"{path}: a table without geometry (columns {', '.join(map(str, gdf.columns))}). "
                         "Expected footprint polygons, e.g. a GeoJSON or GeoPackage.")
    gdf = gdf[gdf.geometry.notna() & ~gdf.geometry.is_empty]
    gdf = gdf[gdf.geom_type.isin(["Polygon", "MultiPolygon"])]
    if gdf.empty:
        raise LabelError(
            f"{path}: holds no polygons. Expected footprint Polygons/MultiPolygons with a 'class' "
            "(datacenter/warehouse/retail/other) or boolean 'label' property."
        )
    if gdf.crs is None:
        gdf = gdf.set_crs("EPSG:4326")  # GeoJSON's own convention
    x0, y0, x1, y1 = gdf.total_bounds
    if gdf.crs.is_geographic and not (-180 <= x0 <= x1 <= 180 and -90 <= y0 <= y1 <= 90):
        raise LabelError(
            f"{path}: coordinates {x0:.0f}..{x1:.0f}, {y0:.0f}..{y1:.0f} are not longitude/latitude, but the "
            "file gives no other CRS (GeoJSON without one means degrees). Set its CRS first, e.g. "
            f"`ogr2ogr -a_srs EPSG:32618 fixed.geojson {path.name}` with the right UTM zone."
        )
    classes = label_classes(gdf, path)
    file_ll = gdf.to_crs("EPSG:4326").total_bounds
    geoms = gdf.to_crs(scene.crs).geometry.to_numpy()
    scene_box = shapely.box(*scene.bounds)
    shapes: list[tuple] = []
    for geom, cls in zip(geoms, classes, strict=True):
        geom = geom if geom.is_valid else shapely.make_valid(geom)
        clipped = geom if scene_box.contains(geom) else shapely.intersection(geom, scene_box)
        polys = [p for p in shapely.get_parts(clipped) if p.geom_type == "Polygon" and p.area > 0]
        if polys:
            shapes.append((polys[0] if len(polys) == 1 else shapely.MultiPolygon(polys), cls))
    if not shapes:
        scene_ll = transform_bounds(scene.crs, "EPSG:4326", *scene.bounds)
        raise LabelError(
            f"{path}: none of its {len(gdf)} polygons overlaps scene {scene.scene_id!r} ({scene.path}). "
            f"File covers {_fmt(file_ll)}; scene covers {_fmt(scene_ll)}. "
            "Choose the scene these labels belong to (--scene) or the matching labels file."
        )
    store.register_scene(scene.scene_id, scene.crs)
    existing = store.footprints(scene.scene_id)
    tree = shapely.STRtree(existing.geometry.to_numpy()) if len(existing) else None
    # the same footprint within 1 cm: a re-import of an export (reprojection and re-clipping at
    # the scene edge move vertices by nanometres to millimetres, and can add one)
    same_within = 0.01 if scene.crs.is_projected else 1e-7
    added = 0
    touched = []
    with store.transaction():
        for geom, cls in shapes:
            if tree is not None and any(
                existing["class"].iloc[i] == cls
                and shapely.hausdorff_distance(existing.geometry.iloc[i], geom) <= same_within
                for i in tree.query(geom)
            ):
                continue
            store.add_footprint(scene.scene_id, geom, cls=cls, source="imported")
            touched.append(geom)
            added += 1
        if reviewed and touched:
            windows = chip_windows(scene.width, scene.height, chip_size)
            boxes = [shapely.box(*window_bounds(w, scene.transform)) for w in windows]
            hits = sorted(set(shapely.STRtree(boxes).query(touched, predicate="intersects")[1].tolist()))
            for i in hits:
                store.mark_reviewed(scene.scene_id, windows[i], empty=False)
    return added


def export_geojson(store: LabelStore, path: str | os.PathLike, scene_id: str | None = None) -> Path:
    """Write active footprints as RFC 7946 GeoJSON (EPSG:4326, counter-clockwise shells), atomically.

    Properties: ``fid, scene_id, class, label`` (true for datacenter)``, status, source,
    model_version, created, updated``; the file re-imports with :func:`import_geojson`.

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
    check_outputs({"labels export": path}, {"label store": store.path})  # folder, under a file, unwritable
    gdf = store.footprints(scene_id)
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
