"""``dclabel labels``: move footprint labels in and out of a project's label store.

* ``dclabel labels import PROJECT --geojson F [--scene ID] [--layer NAME] [--no-reviewed]``
* ``dclabel labels export PROJECT --output F [--scene ID]``
* ``dclabel labels info PROJECT``
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from model.errors import LabelError, SceneError, SceneNotFoundError


def _open_project(root: str):
    from loop.project import Project

    return Project.open(root)


def run_import(args: argparse.Namespace) -> int:
    """Import a GeoJSON into one scene, or into every scene of the project it overlaps."""
    from loop.labelstore_io import outside_scenes, read_label_file

    labels = read_label_file(args.geojson, args.layer)  # read and checked once: file errors are said once
    project = _open_project(args.project)
    # labels need no pixels: a scene whose file is missing is placed on its recorded grid; one that
    # cannot be placed is named, and the polygons on no other scene are counted below
    scenes, unplaced = ([project.scene_for_labels(args.scene)], []) if args.scene else _placeable_scenes(project)
    for scene_id, exc in unplaced:
        warnings.warn(f"{args.geojson}: not imported into scene {scene_id}: {exc}"
                      f"{_NO_GRID if isinstance(exc, SceneNotFoundError) else ''} Once the scene opens, import "
                      f"{args.geojson} again (polygons already imported are not added twice).", UserWarning,
                      stacklevel=1)
    store = project.labels
    if not scenes:
        if unplaced:
            raise LabelError(f"{args.geojson}: nothing imported: no scene of {args.project} could be placed "
                             f"({', '.join(sid for sid, _ in unplaced)}; see above).")
        raise LabelError(
            f"{args.project}: the project has no scenes to attach labels to; add one with "
            f"`dclabel init {args.project} --image FILE` first."
        )
    if labels.dropped:
        warnings.warn(f"{args.geojson}: not imported: {labels.dropped_text()}.", UserWarning, stacklevel=1)
    errors: list[LabelError] = []
    total = 0
    for scene in scenes:
        try:
            result = store.import_labels(labels, scene, reviewed=not args.no_reviewed,
                                         chip_size=project.settings.chip_size)
        except LabelError as exc:
            errors.append(exc)
            continue
        total += result.added
        parts = [f"{result.added} footprint(s) imported"]
        if result.reclassified:
            parts.append(f"{result.reclassified} reclassified")
        if result.unchanged:
            parts.append(f"{result.unchanged} already present")
        parts.append(f"{result.chips_marked} chip(s) marked reviewed")
        print(f"{scene.scene_id}: {', '.join(parts)}")
        here = {why: n - labels.dropped.get(why, 0) for why, n in result.dropped.items()}
        here = {why: n for why, n in here.items() if n}  # the file's own drops were said above, once
        if here:
            warnings.warn(f"{args.geojson}: not imported into {scene.scene_id}: "
                          f"{', '.join(f'{n} {why}' for why, n in sorted(here.items()))}.", UserWarning, stacklevel=1)
        if result.unreviewed_chips:
            warnings.warn(f"{scene.scene_id}: {result.unreviewed_chips} chip(s) not marked reviewed: a polygon "
                          "there could not be imported; review them in the app.", UserWarning, stacklevel=1)
    if len(errors) == len(scenes):
        if len(errors) == 1 and not unplaced:
            raise errors[0]
        detail = "\n  ".join(str(e) for e in errors)
        also = f" (and {len(unplaced)} scene(s) that could not be placed, see above)" if unplaced else ""
        raise LabelError(f"{args.geojson}: nothing imported into any of the {len(scenes)} scenes{also}:\n  {detail}")
    outside = outside_scenes(labels, scenes)
    if outside.any():  # each scene's own count is normal in a project of several; none at all is a loss
        where = f"scene {args.scene}" if args.scene else f"any scene of {args.project}"
        todo = f"add the scene they are on (`dclabel init {args.project} --image FILE`)"
        if unplaced:
            ids = ", ".join(sid for sid, _ in unplaced)
            where += f" whose grid is known, so they may lie on {ids} (see above)"
            todo = f"make {ids} open again (see above) or {todo}"
        lon0, lat0, lon1, lat1 = labels.frame[outside].to_crs("EPSG:4326").total_bounds
        warnings.warn(f"{args.geojson}: not imported: {int(outside.sum())} of its {len(outside)} polygon(s) lie "
                      f"outside {where} (lon {lon0:.4f}..{lon1:.4f}, lat {lat0:.4f}..{lat1:.4f}); {todo} and "
                      "import the file again.", UserWarning, stacklevel=1)
    print(f"{total} footprint(s) imported into {args.project} (label store version {store.version})")
    return 0


_NO_GRID = (" Its grid is not recorded in project.json (the scene was added by an older dclabel), so polygons "
            "cannot be placed on it without the file.")


def _placeable_scenes(project) -> tuple[list, list[tuple[str, SceneError]]]:
    """The project's scenes labels can be placed on (:meth:`Project.scene_for_labels`), and the
    (scene id, error) of those that cannot."""
    scenes, unplaced = [], []
    for scene_id in project.scene_ids:
        try:
            scenes.append(project.scene_for_labels(scene_id))
        except SceneError as exc:
            unplaced.append((scene_id, exc))
    return scenes, unplaced


def run_export(args: argparse.Namespace) -> int:
    """Export active footprints as RFC 7946 GeoJSON."""
    project = _open_project(args.project)
    store = project.labels
    if args.scene:
        project.scene(args.scene)  # unknown ids fail with the project's own message
    path = store.export_geojson(args.output, scene_id=args.scene)
    n = len(store.footprints(args.scene)) - len(store.unknown_classes(args.scene))
    print(f"{n} footprint(s) -> {path}")
    return 0


def run_info(args: argparse.Namespace) -> int:
    """Print footprint and reviewed-chip counts per scene."""
    project = _open_project(args.project)
    store = project.labels
    print(f"{store.path}  (version {store.version})")
    for scene_id in store.scene_ids():
        fp = store.footprints(scene_id)
        counts = fp["class"].value_counts().to_dict() if len(fp) else {}
        chips = store.reviewed_chips(scene_id)
        classes = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no footprints"
        print(f"  {scene_id}: {classes}; {len(chips)} reviewed chip(s) ({sum(c.empty for c in chips)} empty)")
    unknown = store.unknown_classes()
    if unknown:
        from loop.labelstore_io import unknown_class_text
        from loop.project import CLASSES

        warnings.warn(f"{store.path}: {len(unknown)} footprint(s) with a class dclabel does not know "
                      f"({unknown_class_text(unknown)}); `labels export` leaves them out. Set their class "
                      f"to one of {', '.join(CLASSES)} (e.g. in QGIS).", UserWarning, stacklevel=1)
    return 0


def register(subparsers) -> None:
    """Add the ``labels`` sub-command with ``import``, ``export`` and ``info``."""
    p = subparsers.add_parser(
        "labels",
        help="import, export or summarise footprint labels of a project",
        description="Move footprint labels in and out of PROJECT/labels.gpkg.",
    )
    sub = p.add_subparsers(dest="labels_command", metavar="ACTION", required=True)

    imp = sub.add_parser(
        "import",
        help="add the polygons of a GeoJSON (any CRS) that overlap the project's scenes",
        description="Read polygons (class datacenter/warehouse/retail/other, or a boolean 'label'), "
        "reproject them to each scene's CRS, clip them to the scene and add them with source "
        "'imported'. The chips they touch are marked reviewed unless --no-reviewed.",
    )
    imp.add_argument("project", help="project folder")
    imp.add_argument("--geojson", required=True, type=Path, help="footprint polygons (GeoJSON or any OGR vector file)")
    imp.add_argument("--scene", default=None, help="only this scene id (default: every scene it overlaps)")
    imp.add_argument("--layer", default=None, help="layer of a multi-layer file such as a GeoPackage "
                     "(required when several layers have geometry)")
    imp.add_argument("--no-reviewed", action="store_true", help="do not mark touched chips as reviewed")
    imp.set_defaults(func=run_import)

    exp = sub.add_parser(
        "export",
        help="write active footprints as RFC 7946 GeoJSON or a GeoPackage (EPSG:4326)",
        description="Write the project's active footprints with fid, scene_id, class, label, source, "
        "model_version, created and updated, atomically, in EPSG:4326. A .gpkg output is a GeoPackage "
        "(layer 'footprints'; fid is written as footprint_id, since a GeoPackage owns its fid column).",
    )
    exp.add_argument("project", help="project folder")
    exp.add_argument("--output", "-o", required=True, type=Path, help="output .geojson or .gpkg")
    exp.add_argument("--scene", default=None, help="only this scene id")
    exp.set_defaults(func=run_export)

    info = sub.add_parser("info", help="footprint and reviewed-chip counts per scene")
    info.add_argument("project", help="project folder")
    info.set_defaults(func=run_info)
