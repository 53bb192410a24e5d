"""``dclabel labels import/export/info`` on a real project folder."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import shapely
from affine import Affine
from pyproj import Transformer
from rasterio.crs import CRS

import loop.cli
from loop.project import Project
from model.scene import write_geotiff

UTM18 = CRS.from_epsg(32618)
X0, Y0, RES = 300000.0, 4320000.0, 0.6


def _ll(x0, y0, x1, y1):
    t = Transformer.from_crs(UTM18, "EPSG:4326", always_xy=True)
    return shapely.Polygon([t.transform(x, y) for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))])


def main(argv: list[str]) -> int:
    """``dclabel`` with only the labels commands (other modules may be mid-construction)."""
    saved = loop.cli.COMMAND_MODULES
    loop.cli.COMMAND_MODULES = ["loop.cli_labels"]
    try:
        return loop.cli.main(argv)
    finally:
        loop.cli.COMMAND_MODULES = saved


def test_labels_module_is_registered():
    assert "loop.cli_labels" in loop.cli.COMMAND_MODULES


@pytest.fixture
def project(tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (4, 300, 400), dtype=np.uint8)
    tif = write_geotiff(tmp_path / "scene.tif", img, UTM18, Affine(RES, 0, X0, 0, -RES, Y0))
    return Project.create(tmp_path / "proj", images=[tif])


def _geojson(path, polys):
    feats = [{"type": "Feature", "properties": props, "geometry": shapely.geometry.mapping(g)} for g, props in polys]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return path


def test_labels_import_export_info(project, tmp_path, capsys):
    src = _geojson(tmp_path / "in.geojson", [
        (_ll(X0 + 10, Y0 - 50, X0 + 60, Y0 - 10), {"class": "datacenter"}),
        (_ll(X0 + 100, Y0 - 90, X0 + 150, Y0 - 60), {"class": "retail"}),
    ])
    assert main(["labels", "import", str(project.root), "--geojson", str(src)]) == 0
    out = capsys.readouterr().out
    scene_id = project.scene_ids[0]
    # 400 x 300 px, 256 px chips at columns 0/144 and rows 0/44: the retail box (px 166..250,
    # rows 100..150) lies in all four, the datacenter box (px 16..100, rows 16..83) in two of them.
    assert f"{scene_id}: 2 footprint(s) imported, 4 chip(s) marked reviewed" in out
    reopened = Project.open(project.root)
    fp = reopened.labels.footprints(scene_id)
    assert sorted(fp["class"]) == ["datacenter", "retail"] and set(fp["source"]) == {"imported"}

    dst = tmp_path / "out.geojson"
    assert main(["labels", "export", str(project.root), "--output", str(dst)]) == 0
    doc = json.loads(dst.read_text())
    assert sorted(f["properties"]["class"] for f in doc["features"]) == ["datacenter", "retail"]
    assert main(["labels", "info", str(project.root)]) == 0
    assert "datacenter 1, retail 1; 4 reviewed chip(s) (0 empty)" in capsys.readouterr().out
    # a GeoPackage is a GeoPackage (it used to be GeoJSON text in a .gpkg file) and re-imports to nothing new
    import geopandas as gpd

    gpkg = tmp_path / "out.gpkg"
    assert main(["labels", "export", str(project.root), "--output", str(gpkg)]) == 0
    back = gpd.read_file(gpkg)
    assert back.crs.to_epsg() == 4326 and sorted(back["class"]) == ["datacenter", "retail"]
    assert sorted(back["label"]) == [False, True]
    assert main(["labels", "import", str(project.root), "--geojson", str(gpkg)]) == 0
    assert len(Project.open(project.root).labels.footprints(scene_id)) == 2
    # a folder, an unknown suffix: one clear line each, exit 2
    capsys.readouterr()
    assert main(["labels", "export", str(project.root), "--output", str(tmp_path)]) == 2
    assert main(["labels", "export", str(project.root), "--output", str(tmp_path / "o.txt")]) == 2
    assert "expected a .geojson (or .gpkg)" in capsys.readouterr().err


def test_labels_import_nothing_overlaps_exits_2(project, tmp_path, capsys):
    src = _geojson(tmp_path / "far.geojson", [(shapely.box(-120.1, 36.0, -120.0, 36.1), {"class": "datacenter"})])
    assert main(["labels", "import", str(project.root), "--geojson", str(src)]) == 2
    err = capsys.readouterr().err
    assert "far.geojson" in err and "overlaps" in err and "lon -120.1000..-120.0000" in err


def test_labels_import_names_polygons_outside_every_scene(project, tmp_path, capsys):
    # one of three lies beyond the scene: it used to be left out without a word
    src = _geojson(tmp_path / "part.geojson", [
        (_ll(X0 + 10, Y0 - 50, X0 + 60, Y0 - 10), {"class": "datacenter"}),
        (_ll(X0 + 100, Y0 - 90, X0 + 150, Y0 - 60), {"class": "warehouse"}),
        (shapely.box(-120.1, 36.0, -120.0, 36.1), {"class": "datacenter"}),
    ])
    with pytest.warns(UserWarning, match=r"part\.geojson: not imported: 1 of its 3 polygon\(s\) lie outside any scene "
                      r"of .*lon -120\.1000\.\.-120\.0000, lat 36\.0000\.\.36\.1000.*--image FILE"):
        assert main(["labels", "import", str(project.root), "--geojson", str(src)]) == 0
    assert "2 footprint(s) imported into" in capsys.readouterr().out
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # all inside: no warning
        assert main(["labels", "import", str(project.root), "--geojson",
                     str(_geojson(tmp_path / "in.geojson", [(_ll(X0 + 10, Y0 - 50, X0 + 60, Y0 - 10),
                                                             {"class": "datacenter"})]))]) == 0


def test_labels_import_reads_a_capitalised_class_column(project, tmp_path, capsys):
    # shapefile and GIS exports often write CLASS or Class: its warehouses used to become data centers
    import geopandas as gpd

    a, b = _ll(X0 + 10, Y0 - 50, X0 + 60, Y0 - 10), _ll(X0 + 100, Y0 - 90, X0 + 150, Y0 - 60)
    gpkg = tmp_path / "caps.gpkg"
    gpd.GeoDataFrame({"CLASS": ["Warehouse", "Data Center"]}, geometry=[a, b], crs=4326).to_file(gpkg)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # not "no 'class' or 'label' property"
        assert main(["labels", "import", str(project.root), "--geojson", str(gpkg)]) == 0
    fp = Project.open(project.root).labels.footprints(project.scene_ids[0])
    assert sorted(fp["class"]) == ["datacenter", "warehouse"]
    both = _geojson(tmp_path / "both.geojson", [(a, {"Class": "retail", "CLASS": "other"})])
    assert main(["labels", "import", str(project.root), "--geojson", str(both)]) == 2
    assert "'Class', 'CLASS' could each be the 'class' column" in capsys.readouterr().err


def test_labels_import_counts_layer_and_unknown_classes(project, tmp_path, capsys):
    import sqlite3
    from contextlib import closing

    import geopandas as gpd

    scene_id = project.scene_ids[0]
    a, b = _ll(X0 + 10, Y0 - 50, X0 + 60, Y0 - 10), _ll(X0 + 100, Y0 - 90, X0 + 150, Y0 - 60)
    gpkg = tmp_path / "two.gpkg"
    gpd.GeoDataFrame({"class": ["retail", "other"]}, geometry=[a, b], crs=4326).to_file(gpkg, layer="first")
    gpd.GeoDataFrame({"class": ["datacenter"]}, geometry=[a], crs=4326).to_file(gpkg, layer="fixed")
    assert main(["labels", "import", str(project.root), "--geojson", str(gpkg)]) == 2
    assert "first (Polygon), fixed (Polygon); choose one with --layer" in capsys.readouterr().err
    assert main(["labels", "import", str(project.root), "--geojson", str(gpkg), "--layer", "first"]) == 0
    assert main(["labels", "import", str(project.root), "--geojson", str(gpkg), "--layer", "fixed"]) == 0
    out = capsys.readouterr().out
    assert f"{scene_id}: 0 footprint(s) imported, 1 reclassified, 0 chip(s) marked reviewed" in out
    fp = Project.open(project.root).labels.footprints(scene_id)
    assert sorted(fp["class"]) == ["datacenter", "other"]
    bad = int(fp["fid"][fp["class"] == "other"].iloc[0])
    with closing(sqlite3.connect(project.root / "labels.gpkg")) as con:  # typed in QGIS
        con.execute("UPDATE footprints_32618 SET class='building' WHERE fid=?", (bad,))
        con.commit()
    with pytest.warns(UserWarning, match=rf"1 footprint\(s\) with a class dclabel does not know \(fid {bad} 'building'\)"):
        assert main(["labels", "info", str(project.root)]) == 0
    dst = tmp_path / "out.geojson"
    with pytest.warns(UserWarning, match=rf"left out of out.geojson \(fid {bad} 'building'\)"):
        assert main(["labels", "export", str(project.root), "--output", str(dst)]) == 0
    assert "1 footprint(s) ->" in capsys.readouterr().out
    assert [f["properties"]["class"] for f in json.loads(dst.read_text())["features"]] == ["datacenter"]


def test_labels_import_reads_a_0_1_class_column_as_create_masks_does(project, tmp_path, capsys):
    """A ``class`` of 1/0 means data center / not (like ``label``): re-importing the same labels
    coded 1/0 changes nothing (it used to reclassify the negatives as data centers), and codes
    beyond 0/1 are refused with what to do, not guessed."""
    scene_id = project.scene_ids[0]
    a, b = _ll(X0 + 10, Y0 - 50, X0 + 60, Y0 - 10), _ll(X0 + 100, Y0 - 90, X0 + 150, Y0 - 60)
    named = _geojson(tmp_path / "named.geojson", [(a, {"class": "datacenter"}), (b, {"class": "other"})])
    coded = _geojson(tmp_path / "coded.geojson", [(a, {"class": 1}), (b, {"class": 0})])
    codes = _geojson(tmp_path / "codes.geojson", [(a, {"class": 3}), (b, {"class": 0})])
    assert main(["labels", "import", str(project.root), "--geojson", str(named)]) == 0
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["labels", "import", str(project.root), "--geojson", str(coded)]) == 0
    assert not [w for w in caught if "without a class" in str(w.message)]
    assert f"{scene_id}: 0 footprint(s) imported, 2 already present" in capsys.readouterr().out
    fp = Project.open(project.root).labels.footprints(scene_id)
    assert sorted(fp["class"]) == ["datacenter", "other"]
    assert main(["labels", "import", str(project.root), "--geojson", str(codes)]) == 2
    err = capsys.readouterr().err
    assert "numeric code(s) 0, 3" in err and "Map the codes to names" in err


@pytest.fixture
def two_scene_project(tmp_path):
    tifs = []
    for i in range(2):
        img = np.random.default_rng(i).integers(0, 255, (4, 300, 400), dtype=np.uint8)
        tifs.append(write_geotiff(tmp_path / f"scene{i}.tif", img, UTM18, Affine(RES, 0, X0 + i * 240, 0, -RES, Y0)))
    return Project.create(tmp_path / "proj2", images=tifs)


def test_labels_import_reports_a_file_problem_once_not_per_scene(two_scene_project, tmp_path, capsys):
    import geopandas as gpd

    root = str(two_scene_project.root)
    a = _ll(X0 + 10, Y0 - 50, X0 + 60, Y0 - 10)
    gpkg = tmp_path / "two.gpkg"
    for layer in ("first", "second"):
        gpd.GeoDataFrame({"class": ["retail"]}, geometry=[a], crs=4326).to_file(gpkg, layer=layer)
    assert main(["labels", "import", root, "--geojson", str(gpkg)]) == 2
    assert capsys.readouterr().err.count("layers with geometry") == 1
    utm = _geojson(tmp_path / "utm.geojson", [(shapely.box(X0 + 10, Y0 - 50, X0 + 60, Y0 - 10), {"class": "other"})])
    assert main(["labels", "import", root, "--geojson", str(utm)]) == 2
    assert capsys.readouterr().err.count("are not longitude/latitude") == 1
    mixed = _geojson(tmp_path / "mixed.geojson", [(a, {"class": "datacenter"}),
                                                  (shapely.Point(-77.0, 39.0), {"class": "datacenter"})])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["labels", "import", root, "--geojson", str(mixed)]) == 0
    said = [str(w.message) for w in caught if "1 Point" in str(w.message)]
    assert len(said) == 1 and "not imported: 1 Point" in said[0]


def _two_scene_project(tmp_path):
    """Scenes a and b side by side (b 1 km east of a); b's file is then moved away."""
    rng = np.random.default_rng(1)
    a = write_geotiff(tmp_path / "a.tif", rng.integers(0, 255, (4, 300, 400), dtype=np.uint8), UTM18,
                      Affine(RES, 0, X0, 0, -RES, Y0))
    b = write_geotiff(tmp_path / "b.tif", rng.integers(0, 255, (4, 300, 400), dtype=np.uint8), UTM18,
                      Affine(RES, 0, X0 + 1000, 0, -RES, Y0))
    project = Project.create(tmp_path / "proj", images=[a, b])
    b.rename(tmp_path / "b_moved.tif")
    src = _geojson(tmp_path / "in.geojson", [
        (_ll(X0 + 10, Y0 - 50, X0 + 60, Y0 - 10), {"class": "datacenter"}),       # on a
        (_ll(X0 + 1010, Y0 - 50, X0 + 1060, Y0 - 10), {"class": "warehouse"}),    # on b, whose file is gone
    ])
    return project, src


def test_labels_import_places_polygons_of_a_scene_whose_file_is_missing(tmp_path, capsys):
    # one scene's file moved away: the whole import used to fail on it, though project.json records its grid
    project, src = _two_scene_project(tmp_path)
    id_a, id_b = project.scene_ids
    with pytest.warns(UserWarning, match=r"b\.tif: no such file.*--relink.*placed on the grid project\.json "
                      r"records for it"):
        assert main(["labels", "import", str(project.root), "--geojson", str(src)]) == 0
    out = capsys.readouterr().out
    assert f"{id_a}: 1 footprint(s) imported" in out and f"{id_b}: 1 footprint(s) imported" in out
    assert "2 footprint(s) imported into" in out
    labels = Project.open(project.root).labels
    assert list(labels.footprints(id_a)["class"]) == ["datacenter"]
    fp_b = labels.footprints(id_b)
    assert list(fp_b["class"]) == ["warehouse"]
    x0, y0, x1, y1 = fp_b.total_bounds
    assert abs(x0 - (X0 + 1010)) < 0.01 and abs(y1 - (Y0 - 10)) < 0.01  # where the polygon is, on b's grid
    assert len(labels.reviewed_chips(id_b)) == len(labels.reviewed_chips(id_a)) == 2  # chips of the recorded grid
    # --scene of the missing scene works the same way
    with pytest.warns(UserWarning, match=r"b\.tif: no such file"):
        assert main(["labels", "import", str(project.root), "--geojson", str(src), "--scene", id_b]) == 0
    assert f"{id_b}: 0 footprint(s) imported, 1 already present" in capsys.readouterr().out


def test_labels_import_names_a_missing_scene_without_a_recorded_grid(tmp_path, capsys):
    # a project made before grids were recorded: b's polygons cannot be placed without its file
    project, src = _two_scene_project(tmp_path)
    id_a, id_b = project.scene_ids
    doc = json.loads(project.file.read_text())
    for entry in doc["scenes"]:
        entry.pop("grid", None)
    project.file.write_text(json.dumps(doc))
    with pytest.warns(UserWarning) as record:
        assert main(["labels", "import", str(project.root), "--geojson", str(src)]) == 0
    text = "\n".join(str(w.message) for w in record)
    assert f"not imported into scene {id_b}" in text and "b.tif: no such file" in text
    assert "grid is not recorded" in text and f"Once the scene opens, import {src} again" in text
    assert (f"1 of its 2 polygon(s) lie outside any scene of {project.root} whose grid is known, so they may lie "
            f"on {id_b}") in text
    out = capsys.readouterr().out
    assert f"{id_a}: 1 footprint(s) imported" in out and "1 footprint(s) imported into" in out
    assert list(Project.open(project.root).labels.footprints(id_a)["class"]) == ["datacenter"]
