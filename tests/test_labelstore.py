"""Label store: GeoPackage validity (GDAL reads it), transactions, undo/redo, persistence, import/export."""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import warnings
from contextlib import closing
from pathlib import Path

import geopandas
import numpy as np
import pyogrio
import pytest
import shapely
from affine import Affine
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from loop.errors import StoreError
from loop.labelstore import LabelStore, ReviewedChip
from model.errors import LabelError
from model.scene import open_scene, write_geotiff

ROOT = Path(__file__).resolve().parents[1]
UTM18 = CRS.from_epsg(32618)
UTM17 = CRS.from_epsg(32617)
X0, Y0, RES = 300000.0, 4320000.0, 0.6  # scene origin in UTM 18N (northern Virginia)


def _scene_tif(path: Path, width: int = 600, height: int = 500, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, size=(4, height, width), dtype=np.uint8)
    return write_geotiff(path, img, UTM18, Affine(RES, 0, X0, 0, -RES, Y0))


@pytest.fixture
def scene(tmp_path):
    return open_scene(_scene_tif(tmp_path / "scene.tif"))


@pytest.fixture
def store(tmp_path):
    s = LabelStore(tmp_path / "labels.gpkg")
    s.register_scene("a", UTM18)
    yield s
    s.close()


def _box(dx: float, dy: float, w: float = 40.0, h: float = 30.0):
    return shapely.box(X0 + dx, Y0 - dy - h, X0 + dx + w, Y0 - dy)


def _to_multi(g):
    return shapely.MultiPolygon([g]) if g.geom_type == "Polygon" else g


def _write_geojson(path: Path, features: list[tuple], crs: str | None = "EPSG:4326") -> Path:
    """features: (geometry in lon/lat or ``crs``, properties)."""
    doc = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": props, "geometry": shapely.geometry.mapping(geom)}
        for geom, props in features
    ]}
    if crs and crs != "EPSG:4326":
        doc["crs"] = {"type": "name", "properties": {"name": crs}}
    path.write_text(json.dumps(doc))
    return path


def _lonlat(x: float, y: float) -> tuple[float, float]:
    return Transformer.from_crs(UTM18, "EPSG:4326", always_xy=True).transform(x, y)


def _ll_box(x0, y0, x1, y1):
    """A box given in UTM 18N corners, written as a lon/lat polygon (densified corners only)."""
    pts = [_lonlat(x, y) for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))]
    return shapely.Polygon(pts)


# ----- GeoPackage format ---------------------------------------------------------------------------
def test_gdal_reads_store_exactly(tmp_path):
    path = tmp_path / "labels.gpkg"
    store = LabelStore(path)
    store.register_scene("a", UTM18)
    store.register_scene("b", UTM17)
    rng = np.random.default_rng(1)
    shapes = {}
    for i in range(5):
        g = shapely.Polygon(X0 + rng.uniform(0, 300, (6, 2)) * [1, -1] + [0, 0]).convex_hull
        g = shapely.affinity.translate(g, 0, Y0 - X0)  # second column becomes northing
        shapes[store.add_footprint("a", g, cls=("datacenter", "warehouse")[i % 2])] = g
    far = shapely.box(700000, 4100000, 700100, 4100080)
    fb = store.add_footprint("b", far, cls="retail", source="imported", model_version="v3")
    store.mark_reviewed("a", Window(256, 0, 256, 256), empty=True)
    store.close()  # GDAL links its own SQLite: never read with it while a connection is open

    with open(path, "rb") as fh:
        header = fh.read(100)
    assert header[68:72] == b"GPKG"
    assert int.from_bytes(header[60:64], "big") == 10300
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. GDAL's "GPKG: bad application_id" RuntimeWarning
        layers = dict(pyogrio.list_layers(path))
        pyogrio.read_info(path, layer="reviewed_chips")
    assert layers == {"footprints_32618": "MultiPolygon", "footprints_32617": "MultiPolygon",
                      "reviewed_chips": None}
    gdf = pyogrio.read_dataframe(path, layer="footprints_32618", fid_as_index=True)
    assert gdf.crs.to_epsg() == 32618
    assert sorted(gdf.index) == sorted(shapes)
    for fid, geom in shapes.items():
        assert shapely.equals_exact(gdf.geometry.loc[fid], _to_multi(geom), 0.0)
        assert gdf.loc[fid, "status"] == "active" and gdf.loc[fid, "source"] == "manual"
    other = geopandas.read_file(path, layer="footprints_32617", fid_as_index=True)
    assert other.crs.to_epsg() == 32617 and list(other.index) == [fb]
    assert shapely.equals_exact(other.geometry.iloc[0], _to_multi(far), 0.0)
    assert other["model_version"].iloc[0] == "v3" and other["class"].iloc[0] == "retail"
    chips = pyogrio.read_dataframe(path, layer="reviewed_chips", read_geometry=False)
    assert chips[["col_off", "row_off", "width", "height"]].values.tolist() == [[256, 0, 256, 256]]
    assert bool(chips["empty"].iloc[0]) is True
    info = pyogrio.read_info(path, layer="footprints_32618")
    assert info["features"] == 5 and info["geometry_type"] == "MultiPolygon"


def test_invalid_polygon_repaired_and_bad_input_rejected(store):
    bowtie = shapely.Polygon([(X0, Y0), (X0 + 10, Y0 - 10), (X0 + 10, Y0), (X0, Y0 - 10)])
    assert not bowtie.is_valid
    fid = store.add_footprint("a", bowtie)
    geom = store.footprints("a").set_index("fid").geometry.loc[fid]
    assert geom.is_valid and geom.geom_type == "MultiPolygon" and len(geom.geoms) == 2
    assert geom.area == pytest.approx(50.0)
    with pytest.raises(LabelError, match="empty"):
        store.add_footprint("a", shapely.Polygon())
    with pytest.raises(LabelError, match="polygon"):
        store.add_footprint("a", shapely.LineString([(X0, Y0), (X0 + 5, Y0)]))
    with pytest.raises(LabelError, match="datacenter, warehouse"):
        store.add_footprint("a", _box(0, 0), cls="parking")
    with pytest.raises(LabelError, match="not registered"):
        store.add_footprint("nope", _box(0, 0))
    with pytest.raises(LabelError, match="no footprint with fid 999"):
        store.update_footprint(999, cls="retail")
    assert store.version == 1


def test_not_a_store_is_refused(tmp_path):
    other = tmp_path / "other.gpkg"
    with closing(sqlite3.connect(other)) as conn:
        conn.execute("CREATE TABLE t (x)")
        conn.commit()
    with pytest.raises(StoreError, match="not a dclabel label store"):
        LabelStore(other)
    with pytest.raises(StoreError, match="no label store here"):
        LabelStore(tmp_path / "missing.gpkg", read_only=True)


# ----- transactions, persistence -------------------------------------------------------------------
def test_each_edit_committed_before_return_and_failed_batch_rolls_back(store, tmp_path):
    fid = store.add_footprint("a", _box(0, 0))
    # A second connection (as a reader process would) sees the edit at once.
    with closing(sqlite3.connect(tmp_path / "labels.gpkg")) as conn:
        assert conn.execute("SELECT fid, status FROM footprints_32618").fetchall() == [(fid, "active")]
        assert conn.execute("SELECT value FROM dclabel_meta WHERE key='version'").fetchone()[0] == "1"
    with pytest.raises(RuntimeError, match="boom"), store.transaction():
        store.add_footprint("a", _box(100, 0))
        store.mark_reviewed("a", Window(0, 0, 256, 256))
        raise RuntimeError("boom")
    assert list(store.footprints("a")["fid"]) == [fid]
    assert store.reviewed_chips() == [] and store.version == 1
    with store.transaction():  # a batch is one version step and one undo step
        store.add_footprint("a", _box(100, 0))
        store.add_footprint("a", _box(200, 0))
    assert store.version == 2 and len(store.footprints("a")) == 3
    assert store.undo() and len(store.footprints("a")) == 1


def test_reopen_keeps_everything(tmp_path):
    path = tmp_path / "labels.gpkg"
    with LabelStore(path) as s:
        s.register_scene("a", UTM18)
        f1 = s.add_footprint("a", _box(0, 0), cls="warehouse")
        f2 = s.add_footprint("a", _box(100, 0))
        s.delete_footprint(f2)
        s.mark_reviewed("a", Window(0, 0, 256, 256), empty=True)
        version = s.version
    with LabelStore(path) as s:
        assert s.version == version == 4
        fp = s.footprints("a")
        assert list(fp["fid"]) == [f1] and fp["class"].iloc[0] == "warehouse"
        assert fp.crs.to_epsg() == 32618
        assert [(c.window, c.empty) for c in s.reviewed_chips("a")] == [(Window(0, 0, 256, 256), True)]
        assert s.undo() and s.undo()  # undo history survives a restart
        assert set(s.footprints("a")["fid"]) == {f1, f2} and s.reviewed_chips() == []
    with LabelStore(path, read_only=True) as reader:
        assert set(reader.footprints("a")["fid"]) == {f1, f2}
        with pytest.raises(StoreError, match="read-only"):
            reader.add_footprint("a", _box(0, 0))


# ----- undo / redo -----------------------------------------------------------------------------------
def test_undo_redo_add_update_delete(store):
    assert not store.undo() and not store.redo()
    a = _box(0, 0)
    fid = store.add_footprint("a", a)
    b = _box(10, 10, 60, 50)
    store.update_footprint(fid, geometry=b, cls="retail", source="proposal-edited")
    store.delete_footprint(fid)
    assert store.footprints("a").empty
    assert store.footprints("a", include_deleted=True)["status"].tolist() == ["deleted"]
    v = store.version

    assert store.undo()  # undo delete: same fid, same shape
    row = store.footprints("a").iloc[0]
    assert row["fid"] == fid and row["class"] == "retail" and row.geometry.equals_exact(b, 0)
    assert store.undo()  # undo update
    row = store.footprints("a").iloc[0]
    assert row["class"] == "datacenter" and row["source"] == "manual" and row.geometry.equals_exact(a, 0)
    assert store.undo()  # undo add: gone entirely
    assert store.footprints("a", include_deleted=True).empty and not store.undo()
    assert store.version == v + 3

    assert store.redo() and store.redo()
    row = store.footprints("a").iloc[0]
    assert row["fid"] == fid and row.geometry.equals_exact(b, 0) and row["class"] == "retail"
    # A new edit clears the redo stack; fids are never reused.
    new = store.add_footprint("a", _box(200, 0))
    assert new > fid and not store.redo() and store.can_undo and not store.can_redo
    assert len(store.footprints("a")) == 2


def test_undo_redo_mark_reviewed(store):
    w = Window(0, 0, 256, 256)
    store.mark_reviewed("a", w)
    store.mark_reviewed("a", w, empty=True)  # upsert
    chips = store.reviewed_chips("a")
    assert len(chips) == 1 and isinstance(chips[0], ReviewedChip) and chips[0].empty
    assert store.undo()
    assert [c.empty for c in store.reviewed_chips("a")] == [False]
    assert store.undo() and store.reviewed_chips("a") == []
    assert store.redo() and [c.empty for c in store.reviewed_chips("a")] == [False]
    assert store.unmark_reviewed("a", w) and not store.unmark_reviewed("a", w)
    assert store.reviewed_chips() == []
    assert store.undo() and store.reviewed_chips("a")[0].window == w


def test_footprints_across_crs_are_lonlat(store):
    store.register_scene("b", UTM17)
    store.add_footprint("a", _box(0, 0))
    store.add_footprint("b", shapely.box(700000, 4320000, 700050, 4320040))
    both = store.footprints()
    assert both.crs.to_epsg() == 4326 and list(both["scene_id"]) == ["a", "b"]
    lon, lat = both.geometry.iloc[0].centroid.coords[0]
    assert -78 < lon < -76 and 38 < lat < 40
    assert store.footprints("b").crs.to_epsg() == 32617


# ----- GeoJSON import / export -------------------------------------------------------------------
def test_import_reprojects_clips_maps_classes_and_marks_chips(store, scene, tmp_path):
    left, bottom, right, top = scene.bounds
    inside = (X0 + 20, Y0 - 60, X0 + 80, Y0 - 20)  # chip (0, 0)
    straddle = (right - 30, Y0 - 100, right + 50, Y0 - 40)  # crosses the east edge
    far = (X0 + 50000, Y0 - 50000, X0 + 50100, Y0 - 49900)
    src = _write_geojson(tmp_path / "labels.geojson", [
        (_ll_box(*inside), {"class": "datacemter", "label": True}),
        (_ll_box(*straddle), {"class": "warehouse", "label": False}),
        (_ll_box(*far), {"class": "datacenter", "label": True}),
        (shapely.Point(_lonlat(X0 + 5, Y0 - 5)), {"class": "datacenter"}),
    ])
    v0 = store.version
    with pytest.warns(UserWarning, match="not imported into .*: 1 Point"):
        assert store.import_geojson(src, scene) == 2
    fp = store.footprints(scene.scene_id)
    assert fp.crs == scene.crs
    assert fp["class"].tolist() == ["datacenter", "warehouse"] and set(fp["source"]) == {"imported"}
    # reprojection: the lon/lat corners come back to the UTM corners
    assert fp.geometry.iloc[0].bounds == pytest.approx(inside, abs=1e-3)
    # clipping: nothing east of the scene
    assert fp.geometry.iloc[1].bounds[2] == pytest.approx(right, abs=1e-6)
    assert fp.geometry.iloc[1].bounds[0] == pytest.approx(straddle[0], abs=1e-3)
    chips = {(c.window.col_off, c.window.row_off) for c in store.reviewed_chips(scene.scene_id)}
    # 600 x 500 px scene, 256 px chips: columns 0, 256, 344; rows 0, 244. The straddling
    # box spans rows 66..166 and the last 50 px of columns.
    assert chips == {(0, 0), (344, 0)}
    assert store.version == v0 + 1
    assert store.import_geojson(src, scene) == 0  # same file again adds nothing
    assert store.undo() and store.footprints(scene.scene_id).empty and not store.reviewed_chips()


def test_import_label_only_and_projected_file(store, scene, tmp_path):
    utm = _write_geojson(tmp_path / "utm.geojson", [
        (_box(10, 10), {"label": True}), (_box(100, 100), {"label": False}),
    ], crs="EPSG:32618")
    assert store.import_geojson(utm, scene, reviewed=False) == 2
    fp = store.footprints(scene.scene_id)
    assert fp["class"].tolist() == ["datacenter", "other"] and not store.reviewed_chips()
    assert fp.geometry.iloc[0].equals_exact(_box(10, 10), 1e-6)


def test_import_errors_are_clear(store, scene, tmp_path):
    far = _write_geojson(tmp_path / "far.geojson", [(shapely.box(-120.1, 36.0, -120.0, 36.1), {"class": "datacenter"})])
    with pytest.raises(LabelError) as err:
        store.import_geojson(far, scene)
    msg = str(err.value)
    assert "far.geojson" in msg and scene.scene_id in msg and "lon -120.1000..-120.0000" in msg
    b = transform_bounds(scene.crs, "EPSG:4326", *scene.bounds)
    assert f"scene covers lon {b[0]:.4f}..{b[2]:.4f}, lat {b[1]:.4f}..{b[3]:.4f}" in msg
    pts = _write_geojson(tmp_path / "points.geojson", [(shapely.Point(-77.3, 39.0), {"class": "datacenter"})])
    with pytest.raises(LabelError, match="holds no polygons"):
        store.import_geojson(pts, scene)
    bad = _write_geojson(tmp_path / "bad.geojson", [(_ll_box(X0, Y0 - 9, X0 + 9, Y0), {"class": "parking"})])
    with pytest.raises(LabelError, match="unknown class"):
        store.import_geojson(bad, scene)
    with pytest.raises(LabelError, match="no such file"):
        store.import_geojson(tmp_path / "missing.geojson", scene)
    assert store.footprints().empty and store.version == 0


def test_seed_labels_import_where_they_overlap(tmp_path):
    """The seed's datacenters.geojson imports onto a scene placed over its first polygon."""
    seed = ROOT / "data" / "datacenters.geojson"
    first = geopandas.read_file(seed).iloc[[0]].to_crs(UTM18).geometry.iloc[0]
    cx, cy = first.centroid.coords[0]
    tif = write_geotiff(tmp_path / "s.tif", np.zeros((4, 400, 400), np.uint8), UTM18,
                        Affine(RES, 0, cx - 120, 0, -RES, cy + 120))
    sc = open_scene(tif)
    with LabelStore(tmp_path / "labels.gpkg") as s:
        n = s.import_geojson(seed, sc)
        fp = s.footprints(sc.scene_id)
        assert n == len(fp) >= 1 and set(fp["class"]) <= {"datacenter", "warehouse", "retail", "other"}
        assert fp.geometry.intersects(first).any()


def test_export_is_rfc7946_and_reimports(store, scene, tmp_path):
    f1 = store.add_footprint(scene_id="a", geometry=_box(0, 0), cls="datacenter")
    f2 = store.add_footprint("a", _box(100, 50), cls="warehouse")
    store.delete_footprint(store.add_footprint("a", _box(300, 0)))
    out = store.export_geojson(tmp_path / "out" / "labels.geojson")
    doc = json.loads(out.read_text())
    assert "crs" not in doc and [f["id"] for f in doc["features"]] == [f1, f2]
    props = doc["features"][0]["properties"]
    assert props["class"] == "datacenter" and props["label"] is True and props["scene_id"] == "a"
    ring = shapely.LinearRing(doc["features"][0]["geometry"]["coordinates"][0])
    assert ring.is_ccw  # RFC 7946 right-hand rule
    assert list(out.parent.iterdir()) == [out]  # no temporary file left behind
    back = geopandas.read_file(out)
    assert back.crs.to_epsg() == 4326
    assert back.to_crs(UTM18).geometry.iloc[1].equals_exact(_box(100, 50), 1e-3)
    with LabelStore(tmp_path / "fresh.gpkg") as fresh:
        assert fresh.import_geojson(out, scene, reviewed=False) == 2
        assert fresh.footprints(scene.scene_id)["class"].tolist() == ["datacenter", "warehouse"]


# ----- kill safety ---------------------------------------------------------------------------------
def test_kill_9_loses_nothing_small_scale(tmp_path):
    spec = importlib.util.spec_from_file_location("store_crash", ROOT / "bench" / "store_crash.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    res = bench.run(kills=4, seed=7, max_delay=0.4, store_path=tmp_path / "labels.gpkg", verbose=False)
    assert res["edits"] > 0, res["details"]
    assert (res["lost"], res["corrupted"]) == (0, 0), res["details"]


READER = r"""
import sys, time
from loop.labelstore import LabelStore
store = LabelStore(sys.argv[1], read_only=True)
print("ready", flush=True)
last_n = last_v = reads = 0
deadline = time.time() + 60
while time.time() < deadline:
    n, v = len(store.footprints("a")), store.version
    assert n >= last_n and v >= last_v, (n, last_n, v, last_v)
    last_n, last_v, reads = n, v, reads + 1
    if n == int(sys.argv[2]):
        break
print(last_n, last_v, reads, flush=True)
"""


def test_reader_process_sees_edits_while_writer_writes(store, tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    n = 40
    proc = subprocess.Popen([sys.executable, "-c", READER, str(tmp_path / "labels.gpkg"), str(n)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "ready"
        for i in range(n):
            store.add_footprint("a", _box(10 * i, 0, 8, 8))
        out, err = proc.communicate(timeout=90)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    seen, version, reads = map(int, out.split())
    assert (seen, version) == (n, n) and reads >= 1


def test_closed_store_file_alone_holds_every_edit_while_a_reader_stays_open(tmp_path):
    import shutil

    path = tmp_path / "labels.gpkg"
    with LabelStore(path) as writer:
        writer.register_scene("a", UTM18)
    reader = LabelStore(path, read_only=True)
    try:
        assert reader.footprints("a").empty
        with LabelStore(path) as writer:
            fids = [writer.add_footprint("a", _box(50 * i, 0)) for i in range(3)]
        shutil.copy(path, tmp_path / "copy.gpkg")  # the .gpkg without its -wal
        with closing(sqlite3.connect(tmp_path / "copy.gpkg")) as conn:
            assert [r[0] for r in conn.execute("SELECT fid FROM footprints_32618 ORDER BY fid")] == fids
        assert list(reader.footprints("a")["fid"]) == fids
    finally:
        reader.close()


def test_two_writers_share_fids_version_and_history(store, tmp_path):
    other = LabelStore(tmp_path / "labels.gpkg")  # e.g. `dclabel labels import` while the GUI runs
    try:
        fids = []
        for i in range(6):
            writer = (store, other)[i % 2]
            fids.append(writer.add_footprint("a", _box(50 * i, 0)))
        assert len(set(fids)) == 6 and store.version == other.version == 6
        assert other.undo()  # the history lives in the file: the last edit (by `other`) is undone
        assert list(store.footprints("a")["fid"]) == fids[:-1]
    finally:
        other.close()


def test_reimporting_an_export_adds_nothing_even_at_the_scene_edge(tmp_path, scene):
    left, bottom, right, top = scene.bounds
    across = shapely.box(right - 30.0, bottom + 20.0, right + 25.0, bottom + 60.0)  # crosses the right edge
    inside = shapely.box(left + 10.0, bottom + 10.0, left + 50.0, bottom + 40.0)
    src = geopandas.GeoDataFrame({"class": ["datacenter", "warehouse"]}, geometry=[across, inside], crs=scene.crs)
    src.to_crs(4326).to_file(tmp_path / "in.geojson")
    with LabelStore(tmp_path / "rt.gpkg") as s:
        assert s.import_geojson(tmp_path / "in.geojson", scene) == 2
        clipped = s.footprints(scene.scene_id).geometry.iloc[0]
        assert clipped.bounds[2] == pytest.approx(right)  # clipped to the scene
        out = s.export_geojson(tmp_path / "out.geojson")
        assert s.import_geojson(out, scene) == 0  # same footprints within 1 cm: nothing added
        assert s.import_geojson(tmp_path / "in.geojson", scene) == 0
        moved = src.copy()
        moved.geometry = moved.geometry.translate(0.5, 0.0)  # half a metre away: a different footprint
        moved.to_crs(4326).to_file(tmp_path / "moved.geojson")
        assert s.import_geojson(tmp_path / "moved.geojson", scene) == 2


def test_importing_a_table_without_geometry_is_a_clear_error(store, scene, tmp_path):
    (tmp_path / "table.csv").write_text("name,class\nA,datacenter\n")
    with pytest.raises(LabelError, match="table.csv: a table without geometry"):
        store.import_geojson(tmp_path / "table.csv", scene)


def test_import_without_class_warns_and_without_crs_needs_degrees(store, scene, tmp_path):
    left, bottom, right, top = scene.bounds
    poly = shapely.box(left + 10.0, bottom + 10.0, left + 50.0, bottom + 40.0)
    geopandas.GeoDataFrame(geometry=[poly], crs=scene.crs).to_crs(4326).to_file(tmp_path / "plain.geojson")
    with pytest.warns(UserWarning, match="no 'class' or 'label' property: its 1 polygon"):
        assert store.import_geojson(tmp_path / "plain.geojson", scene) == 1
    doc = {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {"class": "datacenter"},
                                                      "geometry": shapely.geometry.mapping(poly)}]}
    (tmp_path / "utm_no_crs.json").write_text(json.dumps(doc))  # UTM metres, no CRS member
    with pytest.raises(LabelError, match="are not longitude/latitude, but the file gives no other CRS"):
        store.import_geojson(tmp_path / "utm_no_crs.json", scene)


# ----- files edited by QGIS / GDAL ---------------------------------------------------------------
_RTREE_SQL = """
CREATE VIRTUAL TABLE "rtree_{t}_geom" USING rtree(id, minx, maxx, miny, maxy);
INSERT OR REPLACE INTO "rtree_{t}_geom" SELECT fid, ST_MinX(geom), ST_MaxX(geom), ST_MinY(geom), ST_MaxY(geom)
  FROM "{t}" WHERE geom NOT NULL AND NOT ST_IsEmpty(geom);
CREATE TRIGGER "rtree_{t}_geom_insert" AFTER INSERT ON "{t}" WHEN (new."geom" NOT NULL AND NOT ST_IsEmpty(NEW."geom"))
  BEGIN INSERT OR REPLACE INTO "rtree_{t}_geom" VALUES (NEW."fid",ST_MinX(NEW."geom"), ST_MaxX(NEW."geom"),
  ST_MinY(NEW."geom"), ST_MaxY(NEW."geom")); END;
CREATE TRIGGER "rtree_{t}_geom_update1" AFTER UPDATE OF "geom" ON "{t}" WHEN OLD."fid" = NEW."fid" AND
  (NEW."geom" NOTNULL AND NOT ST_IsEmpty(NEW."geom")) BEGIN INSERT OR REPLACE INTO "rtree_{t}_geom" VALUES
  (NEW."fid",ST_MinX(NEW."geom"), ST_MaxX(NEW."geom"),ST_MinY(NEW."geom"), ST_MaxY(NEW."geom")); END;
CREATE TRIGGER "rtree_{t}_geom_update2" AFTER UPDATE OF "geom" ON "{t}" WHEN OLD."fid" = NEW."fid" AND
  (NEW."geom" ISNULL OR ST_IsEmpty(NEW."geom")) BEGIN DELETE FROM "rtree_{t}_geom" WHERE id = OLD."fid"; END;
CREATE TRIGGER "rtree_{t}_geom_update3" AFTER UPDATE ON "{t}" WHEN OLD."fid" != NEW."fid" AND
  (NEW."geom" NOTNULL AND NOT ST_IsEmpty(NEW."geom")) BEGIN DELETE FROM "rtree_{t}_geom" WHERE id = OLD."fid";
  INSERT OR REPLACE INTO "rtree_{t}_geom" VALUES (NEW."fid",ST_MinX(NEW."geom"), ST_MaxX(NEW."geom"),
  ST_MinY(NEW."geom"), ST_MaxY(NEW."geom")); END;
CREATE TRIGGER "rtree_{t}_geom_update4" AFTER UPDATE ON "{t}" WHEN OLD."fid" != NEW."fid" AND
  (NEW."geom" ISNULL OR ST_IsEmpty(NEW."geom")) BEGIN DELETE FROM "rtree_{t}_geom" WHERE id IN (OLD."fid", NEW."fid"); END;
CREATE TRIGGER "rtree_{t}_geom_delete" AFTER DELETE ON "{t}" WHEN old."geom" NOT NULL
  BEGIN DELETE FROM "rtree_{t}_geom" WHERE id = OLD."fid"; END;
"""


def _gdal_spatial_index(path: Path, table: str, how: str) -> None:
    """What QGIS "Create spatial index" does: GDAL's CreateSpatialIndex through ``ogrinfo``, or the
    same R-tree extension SQL (GDAL 3.6's triggers, GeoPackage 1.2 annex) written here, with the
    ST_* functions GDAL provides read from the blob's header envelope."""
    import shutil
    import subprocess

    if how == "ogrinfo":
        if not shutil.which("ogrinfo"):
            pytest.skip("ogrinfo (gdal-bin) is not installed")
        subprocess.run(["ogrinfo", str(path), "-q", "-sql", f"SELECT CreateSpatialIndex('{table}','geom')"],
                       check=True, capture_output=True)
        return
    import struct

    def bound(i):
        return lambda b: struct.unpack("<4d", b[8:40])[i] if b is not None else None

    with closing(sqlite3.connect(path)) as con:
        con.create_function("ST_IsEmpty", 1, lambda b: int(b is None or bool(b[3] & 0x10)))
        for i, name in enumerate(("ST_MinX", "ST_MaxX", "ST_MinY", "ST_MaxY")):
            con.create_function(name, 1, bound(i))
        con.executescript(_RTREE_SQL.format(t=table))
        con.commit()


def _rtree_matches_geometries(path: Path, table: str) -> None:
    with closing(sqlite3.connect(path)) as con:
        rtree = {r[0]: r[1:] for r in con.execute(f'SELECT id, minx, maxx, miny, maxy FROM "rtree_{table}_geom"')}
        rows = con.execute(f'SELECT fid, geom FROM "{table}"').fetchall()
    from loop import labelstore_gpkg as gp

    want = {}
    for fid, blob in rows:
        x0, y0, x1, y1 = gp.decode_geometry(blob).bounds
        want[fid] = (x0, x1, y0, y1)
    assert set(rtree) == set(want)
    for fid, box in want.items():  # an R-tree stores float32 boxes rounded outwards
        assert rtree[fid] == pytest.approx(box, abs=0.01)


@pytest.mark.parametrize("how", ["ogrinfo", "sql"])
def test_spatial_index_made_by_gdal_keeps_working_and_correct(tmp_path, scene, how):
    path = tmp_path / "labels.gpkg"
    with LabelStore(path) as store:
        store.register_scene(scene.scene_id, scene.crs)
        fids = [store.add_footprint(scene.scene_id, _box(10 + 60 * i, 10)) for i in range(3)]
    _gdal_spatial_index(path, "footprints_32618", how)
    with closing(sqlite3.connect(path)) as con:
        assert con.execute("SELECT count(*) FROM sqlite_master WHERE name LIKE 'rtree_footprints_32618_geom%' "
                           "AND type='trigger'").fetchone()[0] >= 5
    with LabelStore(path) as store:
        store.update_footprint(fids[0], geometry=_box(200, 200, 50, 50), cls="warehouse")
        new = store.add_footprint(scene.scene_id, _box(300, 100))
        store.delete_footprint(fids[1])
        assert store.undo() and store.undo() and store.redo()
        src = _write_geojson(tmp_path / "more.geojson", [(_box(20, 200), {"class": "retail"})], crs="EPSG:32618")
        assert store.import_geojson(src, scene) == 1
    _rtree_matches_geometries(path, "footprints_32618")
    gdf = pyogrio.read_dataframe(path, layer="footprints_32618", fid_as_index=True, bbox=_box(300, 100).bounds)
    assert new in gdf.index  # GDAL answers a spatial filter from the index dclabel kept up to date


def test_fids_stay_unique_when_gdal_adds_features(tmp_path):
    path = tmp_path / "labels.gpkg"
    with LabelStore(path) as store:
        store.register_scene("a", UTM18)
        store.register_scene("b", UTM17)
        store.add_footprint("b", shapely.box(700000, 4100000, 700050, 4100050))  # fid 1 in footprints_32617
        for i in range(3):
            store.add_footprint("a", _box(10 + 50 * i, 10))  # fids 2..4 in footprints_32618
    # QGIS adding a feature = GDAL appending without a fid: it gets the table's AUTOINCREMENT value
    ext = geopandas.GeoDataFrame(
        {"scene_id": ["b"], "class": ["warehouse"], "status": ["active"], "source": ["manual"],
         "model_version": [None], "created": ["2025-01-01T00:00:00Z"], "updated": ["2025-01-01T00:00:00Z"]},
        geometry=[shapely.MultiPolygon([shapely.box(700100, 4100000, 700150, 4100050)])], crs=UTM17)
    pyogrio.write_dataframe(ext, path, layer="footprints_32617", append=True)
    with LabelStore(path) as store:
        fp = store.footprints(include_deleted=True)
        assert sorted(fp["fid"]) == [1, 2, 3, 4, 5]  # not a second fid 2
        assert store.footprint(5)[1]["class"] == "warehouse"
        store.delete_footprint(2)
        assert store.footprint(2)[1]["status"] == "deleted" and store.footprint(5)[1]["status"] == "active"


def test_fid_clash_made_by_an_older_version_is_renumbered_on_open(tmp_path):
    path = tmp_path / "labels.gpkg"
    with LabelStore(path) as store:
        store.register_scene("a", UTM18)
        store.register_scene("b", UTM17)
        store.add_footprint("b", shapely.box(700000, 4100000, 700050, 4100050))  # fid 1
        fa = store.add_footprint("a", _box(10, 10), cls="retail")  # fid 2
    with closing(sqlite3.connect(path)) as con:  # the file as dclabel left it before the fix, then a QGIS add
        con.execute("DROP TRIGGER dclabel_fid_footprints_32617")
        con.execute("DROP TRIGGER dclabel_fid_footprints_32618")
        con.execute("UPDATE sqlite_sequence SET seq=1 WHERE name='footprints_32617'")
        con.commit()
    ext = geopandas.GeoDataFrame(
        {"scene_id": ["b"], "class": ["warehouse"], "status": ["active"], "source": ["manual"],
         "model_version": [None], "created": ["2025-01-01T00:00:00Z"], "updated": ["2025-01-01T00:00:00Z"]},
        geometry=[shapely.MultiPolygon([shapely.box(700100, 4100000, 700150, 4100050)])], crs=UTM17)
    pyogrio.write_dataframe(ext, path, layer="footprints_32617", append=True)
    assert pyogrio.read_dataframe(path, layer="footprints_32617", fid_as_index=True).index.tolist() == [1, fa]
    with pytest.warns(UserWarning, match=rf"fid {fa} of footprints_32617 -> fid 3"):
        store = LabelStore(path)
    with store:
        assert store.footprint(fa)[1]["class"] == "retail"  # the footprint dclabel's history knows
        assert store.footprint(3)[1]["class"] == "warehouse"
        store.delete_footprint(fa)
        assert store.undo() and store.footprint(fa)[1]["status"] == "active"
        assert store.add_footprint("b", shapely.box(700200, 4100000, 700250, 4100050)) == 4


def test_undo_refuses_to_overwrite_an_edit_made_outside(store, tmp_path):
    fid = store.add_footprint("a", _box(10, 10))
    store.update_footprint(fid, cls="warehouse")
    v = store.version
    moved = shapely.MultiPolygon([_box(60, 10)])
    from loop import labelstore_gpkg as gp

    with closing(sqlite3.connect(store.path)) as con:  # QGIS moves it and retypes the class
        con.execute("UPDATE footprints_32618 SET geom=?, class='Warehouse' WHERE fid=?",
                    (gp.encode_geometry(moved, 32618), fid))
        con.commit()
    with pytest.raises(LabelError, match=rf"cannot undo: footprint {fid} \(class 'warehouse' -> 'Warehouse', "
                                         r"geometry changed\)"):
        store.undo()
    geom, attrs = store.footprint(fid)
    assert geom.equals_exact(moved.geoms[0], 0.0) and attrs["class"] == "warehouse" and store.version == v
    # an undone step whose row changed since is not redone over the change either
    other = store.add_footprint("a", _box(200, 10))
    assert store.undo()
    with closing(sqlite3.connect(store.path)) as con:
        con.execute("INSERT INTO footprints_32618 (fid, geom, scene_id, class, status, source, created, updated) "
                    "VALUES (?, ?, 'a', 'retail', 'active', 'manual', 'x', 'x')",
                    (other, gp.encode_geometry(moved, 32618)))
        con.commit()
    with pytest.raises(LabelError, match=rf"cannot redo: footprint {other} \(it exists again\)"):
        store.redo()
    assert store.footprint(other)[1]["class"] == "retail"


def test_classes_typed_in_qgis_are_read_by_the_import_rules(store, scene, tmp_path):
    store.register_scene(scene.scene_id, scene.crs)
    fids = [store.add_footprint(scene.scene_id, _box(10 + 60 * i, 10)) for i in range(3)]
    with closing(sqlite3.connect(store.path)) as con:
        con.execute("UPDATE footprints_32618 SET class='Warehouse ' WHERE fid=?", (fids[0],))
        con.execute("UPDATE footprints_32618 SET class='building' WHERE fid=?", (fids[1],))
        con.commit()
    assert store.footprints(scene.scene_id)["class"].tolist() == ["warehouse", "building", "datacenter"]
    assert store.footprint(fids[0])[1]["class"] == "warehouse"
    assert store.unknown_classes() == {fids[1]: "building"}
    out = tmp_path / "out.geojson"
    with pytest.warns(UserWarning, match=rf"left out of out.geojson \(fid {fids[1]} 'building'\)"):
        store.export_geojson(out)
    doc = json.loads(out.read_text())
    assert [f["properties"]["class"] for f in doc["features"]] == ["warehouse", "datacenter"]
    with LabelStore(tmp_path / "other.gpkg") as other:
        assert other.import_geojson(out, scene) == 2  # the export re-imports


def test_import_keeps_polygons_nested_in_repaired_collections(store, scene, tmp_path):
    x, y = X0 + 200, Y0 - 200
    spike = shapely.Polygon([(x, y), (x + 60, y + 60), (x + 60, y), (x, y + 60), (x, y), (x - 5, y), (x, y)])
    assert shapely.make_valid(spike).geom_type == "GeometryCollection"
    src = _write_geojson(tmp_path / "invalid.geojson", [(spike, {"class": "datacenter"})], crs="EPSG:32618")
    result = store.import_labels(src, scene)
    assert result.added == 1 and result.dropped == {"line/point part of a repaired polygon": 1}
    fp = store.footprints(scene.scene_id)
    assert fp["class"].tolist() == ["datacenter"] and fp.geometry.iloc[0].area == pytest.approx(1800)
    assert store.reviewed_chips(scene.scene_id)  # marked, and it holds the footprint


def test_reimporting_a_corrected_class_reclassifies(store, scene, tmp_path):
    first = _write_geojson(tmp_path / "a.geojson", [(_ll_box(X0 + 20, Y0 - 60, X0 + 80, Y0 - 20), {"class": "retail"}),
                                                     (_ll_box(X0 + 120, Y0 - 60, X0 + 180, Y0 - 20), {"class": "other"})])
    assert store.import_geojson(first, scene) == 2
    fixed = _write_geojson(tmp_path / "b.geojson", [(_ll_box(X0 + 20, Y0 - 60, X0 + 80, Y0 - 20), {"class": "Datacenter"}),
                                                     (_ll_box(X0 + 120, Y0 - 60, X0 + 180, Y0 - 20), {"class": "other"})])
    result = store.import_labels(fixed, scene)
    assert (result.added, result.reclassified, result.unchanged) == (0, 1, 1)
    assert store.footprints(scene.scene_id)["class"].tolist() == ["datacenter", "other"]
    assert store.undo() and store.footprints(scene.scene_id)["class"].tolist() == ["retail", "other"]


def test_import_counts_what_it_drops_and_picks_a_layer(store, scene, tmp_path):
    from shapely import Point

    src = tmp_path / "mixed.geojson"
    src.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"class": "datacenter"}, "geometry": shapely.geometry.mapping(_box(10, 10))},
        {"type": "Feature", "properties": {"class": "datacenter"}, "geometry": shapely.geometry.mapping(Point(X0, Y0))},
        {"type": "Feature", "properties": {"class": "datacenter"}, "geometry": None},
        {"type": "Feature", "properties": {"class": "datacenter"},
         "geometry": {"type": "Polygon", "coordinates": []}},
    ], "crs": {"type": "name", "properties": {"name": "EPSG:32618"}}}))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = store.import_labels(src, scene)
    assert not [str(w.message) for w in caught if "GeoSeries" in str(w.message)]  # e.g. GeoSeries.notna
    assert result.added == 1
    assert result.dropped == {"Point": 1, "null geometry": 1, "empty geometry": 1}
    gpkg = tmp_path / "two.gpkg"
    for name, dx in (("A", 100), ("B", 200)):
        geopandas.GeoDataFrame({"class": ["retail"]}, geometry=[_box(dx, 100)], crs=UTM18).to_file(gpkg, layer=name)
    with pytest.raises(LabelError, match=r"2 layers with geometry: A \(Polygon\), B \(Polygon\); choose one with --layer"):
        store.import_labels(gpkg, scene)
    with pytest.raises(LabelError, match=r"no layer 'C'; its layers are A \(Polygon\), B \(Polygon\)"):
        store.import_labels(gpkg, scene, layer="C")
    assert store.import_labels(gpkg, scene, layer="B").added == 1
    assert store.footprints(scene.scene_id).geometry.iloc[-1].equals_exact(_box(200, 100), 1e-6)
