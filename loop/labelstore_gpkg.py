"""GeoPackage plumbing for the label store: schema, spatial reference rows, geometry blobs.

Written for Python's ``sqlite3`` (a GeoPackage is a SQLite file) following OGC GeoPackage 1.3:
``application_id`` 'GPKG', ``user_version`` 10300, the required ``gpkg_spatial_ref_sys``,
``gpkg_contents`` and ``gpkg_geometry_columns`` tables, and geometries stored as GeoPackage binary
(``GP`` header with srs_id and xy envelope, then ISO WKB). GDAL and QGIS read the result.

Footprints live in one feature table per CRS, ``footprints_<srs_id>`` (srs_id = the EPSG code, or
a custom id >= 100000 for CRSs without one), declared ``MULTIPOLYGON``; single polygons are stored
promoted to one-part multipolygons (spec requirement: a row's type matches its column type).

Files edited by QGIS/GDAL may carry their SQL: the R-tree spatial index triggers call
``ST_IsEmpty``/``ST_MinX``/``ST_MaxX``/``ST_MinY``/``ST_MaxY``, which :func:`register_functions` provides
on every connection. Footprint fids are unique across the per-CRS tables: every footprint table's
``sqlite_sequence`` is kept at the highest fid of any of them (:func:`sync_fid_sequences`, and a
trigger per table, ``dclabel_fid_<table>``, for features that QGIS or GDAL insert).
"""

from __future__ import annotations

import sqlite3
import struct
from datetime import UTC, datetime

import shapely
from pyproj import CRS as ProjCRS
from pyproj.enums import WktVersion
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from loop.errors import StoreError
from model.errors import LabelError

APPLICATION_ID = 0x47504B47  # 'GPKG'
USER_VERSION = 10300  # GeoPackage 1.3.0
SCHEMA_VERSION = "1"
CUSTOM_SRS_BASE = 100000
FEATURE_PREFIX = "footprints_"
CHIPS_TABLE = "reviewed_chips"
FOOTPRINT_COLUMNS = ("scene_id", "class", "status", "source", "model_version", "created", "updated")

_ENVELOPE_BYTES = {0: 0, 1: 32, 2: 48, 3: 48, 4: 64}

CORE_DDL = [
    """CREATE TABLE IF NOT EXISTS gpkg_spatial_ref_sys (
        srs_name TEXT NOT NULL, srs_id INTEGER PRIMARY KEY, organization TEXT NOT NULL,
        organization_coordsys_id INTEGER NOT NULL, definition TEXT NOT NULL, description TEXT)""",
    """CREATE TABLE IF NOT EXISTS gpkg_contents (
        table_name TEXT NOT NULL PRIMARY KEY, data_type TEXT NOT NULL, identifier TEXT UNIQUE,
        description TEXT DEFAULT '',
        last_change DATETIME NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')),
        min_x DOUBLE, min_y DOUBLE, max_x DOUBLE, max_y DOUBLE, srs_id INTEGER,
        CONSTRAINT fk_gc_r_srs_id FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys(srs_id))""",
    """CREATE TABLE IF NOT EXISTS gpkg_geometry_columns (
        table_name TEXT NOT NULL, column_name TEXT NOT NULL, geometry_type_name TEXT NOT NULL,
        srs_id INTEGER NOT NULL, z TINYINT NOT NULL, m TINYINT NOT NULL,
        CONSTRAINT pk_geom_cols PRIMARY KEY (table_name, column_name),
        CONSTRAINT uk_gc_table_name UNIQUE (table_name),
        CONSTRAINT fk_gc_tn FOREIGN KEY (table_name) REFERENCES gpkg_contents(table_name),
        CONSTRAINT fk_gc_srs FOREIGN KEY (srs_id) REFERENCES gpkg_spatial_ref_sys (srs_id))""",
    # dclabel's own tables (not listed in gpkg_contents, so GIS tools ignore them)
    "CREATE TABLE IF NOT EXISTS dclabel_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE IF NOT EXISTS dclabel_scenes (
        scene_id TEXT PRIMARY KEY, srs_id INTEGER NOT NULL, registered TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS dclabel_edit_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT, txn INTEGER NOT NULL, op TEXT NOT NULL,
        fid INTEGER, before_wkb BLOB, before_attrs TEXT, after_wkb BLOB, after_attrs TEXT,
        time TEXT NOT NULL, undone INTEGER NOT NULL DEFAULT 0)""",
    "CREATE INDEX IF NOT EXISTS dclabel_edit_log_txn ON dclabel_edit_log (txn)",
    f"""CREATE TABLE IF NOT EXISTS {CHIPS_TABLE} (
        fid INTEGER PRIMARY KEY AUTOINCREMENT, scene_id TEXT NOT NULL, col_off INTEGER NOT NULL,
        row_off INTEGER NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL,
        empty BOOLEAN NOT NULL, time DATETIME NOT NULL)""",
    f"""CREATE UNIQUE INDEX IF NOT EXISTS {CHIPS_TABLE}_key
        ON {CHIPS_TABLE} (scene_id, col_off, row_off, width, height)""",
]

_DEFAULT_SRS = [
    ("WGS 84 geodetic", 4326, "EPSG", 4326, ProjCRS.from_epsg(4326).to_wkt(WktVersion.WKT1_GDAL),
     "longitude/latitude coordinates in decimal degrees on the WGS 84 spheroid"),
    ("Undefined cartesian SRS", -1, "NONE", -1, "undefined", "undefined cartesian coordinate reference system"),
    ("Undefined geographic SRS", 0, "NONE", 0, "undefined", "undefined geographic coordinate reference system"),
]


def _envelope(blob) -> tuple[float, float, float, float] | None:
    """(minx, maxx, miny, maxy) of a GeoPackage geometry blob; None for NULL, empty or not a blob.

    The header envelope when it has one (what GDAL writes), else the bounds of the parsed WKB.
    """
    if blob is None or len(blob) < 8 or bytes(blob[:2]) != b"GP":
        return None
    flags = blob[3]
    if flags & 0b00010000:  # the empty-geometry flag
        return None
    env = _ENVELOPE_BYTES.get((flags >> 1) & 0b111)
    if env is None:
        return None
    if env:
        minx, maxx, miny, maxy = struct.unpack("<4d" if flags & 1 else ">4d", bytes(blob[8:40]))
        if minx == minx and maxx == maxx and miny == miny and maxy == maxy:  # NaN = empty (GDAL's way)
            return minx, maxx, miny, maxy
        return None
    try:
        geom = shapely.from_wkb(bytes(blob[8:]))
    except shapely.errors.ShapelyError:
        return None
    if geom is None or geom.is_empty:
        return None
    minx, miny, maxx, maxy = geom.bounds
    return minx, maxx, miny, maxy


def _st_is_empty(blob) -> int | None:
    if blob is None:
        return None
    return int(_envelope(blob) is None)


def _st_bound(index: int):
    def bound(blob) -> float | None:
        env = _envelope(blob)
        return None if env is None else env[index]

    return bound


def register_functions(conn: sqlite3.Connection) -> None:
    """Register the SQL functions GDAL's GeoPackage triggers call (R-tree spatial index).

    ``ST_IsEmpty(geom)`` (1/0, NULL for NULL) and ``ST_MinX/ST_MaxX/ST_MinY/ST_MaxY(geom)`` (NULL
    for an empty geometry), computed from the GeoPackage blob, so an index made by QGIS ("Create
    spatial index") or ``ogrinfo -sql "SELECT CreateSpatialIndex(...)"`` stays correct under dclabel's
    edits.
    """
    conn.create_function("ST_IsEmpty", 1, _st_is_empty, deterministic=True)
    for index, name in enumerate(("ST_MinX", "ST_MaxX", "ST_MinY", "ST_MaxY")):
        conn.create_function(name, 1, _st_bound(index), deterministic=True)


def utc_now() -> str:
    """Current UTC time as GeoPackage DATETIME text (``YYYY-MM-DDTHH:MM:SS.sssZ``)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def create_schema(cur: sqlite3.Cursor) -> None:
    """Create the GeoPackage core tables and dclabel's tables (inside the caller's transaction).

    The header fields (``application_id``, ``user_version``) are set by the caller beforehand.
    """
    for ddl in CORE_DDL:
        cur.execute(ddl)
    cur.executemany("INSERT OR IGNORE INTO gpkg_spatial_ref_sys VALUES (?,?,?,?,?,?)", _DEFAULT_SRS)
    cur.execute(
        "INSERT OR IGNORE INTO gpkg_contents (table_name, data_type, identifier, description, "
        "last_change) VALUES (?, 'attributes', ?, ?, ?)",
        (CHIPS_TABLE, CHIPS_TABLE, "dclabel: chips a person has reviewed (empty = no footprint)", utc_now()),
    )
    for key, value in (("schema", SCHEMA_VERSION), ("version", "0"), ("next_fid", "1")):
        cur.execute("INSERT OR IGNORE INTO dclabel_meta VALUES (?, ?)", (key, value))


def srs_for(crs) -> tuple[int, str, int, str, str]:
    """GeoPackage srs row parts for a CRS: (srs_id, organization, org_id, name, WKT1 definition).

    Args:
        crs: Anything pyproj understands (rasterio ``CRS``, ``"EPSG:32618"``, WKT, pyproj ``CRS``).

    Raises:
        StoreError: The CRS cannot be interpreted.
    """
    try:
        pcrs = ProjCRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
    except Exception as exc:  # pyproj raises its own CRSError; report it as ours
        raise StoreError(f"label store: cannot interpret the scene CRS {crs!r} ({exc}).") from exc
    epsg = pcrs.to_epsg()
    wkt = pcrs.to_wkt(WktVersion.WKT1_GDAL) or pcrs.to_wkt()
    if epsg is not None:
        return epsg, "EPSG", epsg, pcrs.name, wkt
    return -2, "NONE", -2, pcrs.name, wkt  # -2: caller allocates a custom id


def ensure_srs(cur: sqlite3.Cursor, crs) -> int:
    """Insert the CRS into ``gpkg_spatial_ref_sys`` if missing and return its srs_id."""
    srs_id, org, org_id, name, wkt = srs_for(crs)
    if srs_id == -2:
        row = cur.execute(
            "SELECT srs_id FROM gpkg_spatial_ref_sys WHERE definition = ? AND srs_id >= ?",
            (wkt, CUSTOM_SRS_BASE),
        ).fetchone()
        if row:
            return int(row[0])
        srs_id = max(
            CUSTOM_SRS_BASE,
            1 + (cur.execute("SELECT max(srs_id) FROM gpkg_spatial_ref_sys").fetchone()[0] or 0),
        )
        org_id = srs_id
    cur.execute(
        "INSERT OR IGNORE INTO gpkg_spatial_ref_sys VALUES (?,?,?,?,?,?)",
        (name, srs_id, org, org_id, wkt, f"dclabel scene CRS {name}"),
    )
    return srs_id


def feature_table(srs_id: int) -> str:
    """Name of the footprint feature table for a srs_id."""
    return f"{FEATURE_PREFIX}{srs_id}"


def ensure_feature_table(cur: sqlite3.Cursor, srs_id: int) -> str:
    """Create the footprint table of a srs_id and register it in the GeoPackage tables."""
    table = feature_table(srs_id)
    cur.execute(
        f"""CREATE TABLE IF NOT EXISTS "{table}" (
            fid INTEGER PRIMARY KEY AUTOINCREMENT, geom MULTIPOLYGON NOT NULL,
            scene_id TEXT NOT NULL, class TEXT NOT NULL, status TEXT NOT NULL, source TEXT NOT NULL,
            model_version TEXT, created DATETIME NOT NULL, updated DATETIME NOT NULL)"""
    )
    cur.execute(f'CREATE INDEX IF NOT EXISTS "{table}_scene" ON "{table}" (scene_id, status)')
    cur.execute(
        "INSERT OR IGNORE INTO gpkg_contents (table_name, data_type, identifier, description, "
        "last_change, srs_id) VALUES (?, 'features', ?, ?, ?, ?)",
        (table, table, f"dclabel footprints, CRS srs_id {srs_id}", utc_now(), srs_id),
    )
    cur.execute(
        "INSERT OR IGNORE INTO gpkg_geometry_columns VALUES (?, 'geom', 'MULTIPOLYGON', ?, 0, 0)",
        (table, srs_id),
    )
    ensure_fid_trigger(cur, table)
    sync_fid_sequences(cur)
    return table


def ensure_fid_trigger(cur: sqlite3.Cursor, table: str) -> None:
    """A trigger raising every footprint table's sequence to a new fid inserted into ``table``.

    It is plain SQL, so it also runs when QGIS or GDAL add a feature: the next feature added to any
    footprint table then gets a fid above it, and fids stay unique across tables.
    """
    cur.execute(
        f'CREATE TRIGGER IF NOT EXISTS "dclabel_fid_{table}" AFTER INSERT ON "{table}" BEGIN '
        "UPDATE sqlite_sequence SET seq = NEW.fid WHERE seq < NEW.fid AND name IN (SELECT table_name "
        "FROM gpkg_geometry_columns WHERE table_name LIKE 'footprints!_%' ESCAPE '!'); END"
    )


def sync_fid_sequences(cur: sqlite3.Cursor) -> int:
    """Raise every footprint table's ``sqlite_sequence`` to the highest fid of any; returns it."""
    tables = [t for t, _ in feature_tables(cur)]
    if not tables:
        return 0
    marks = ",".join("?" * len(tables))
    top = cur.execute(f"SELECT max(seq) FROM sqlite_sequence WHERE name IN ({marks})", tables).fetchone()[0] or 0
    for table in tables:
        top = max(top, cur.execute(f'SELECT max(fid) FROM "{table}"').fetchone()[0] or 0)
    for table in tables:
        if cur.execute("UPDATE sqlite_sequence SET seq=? WHERE name=?", (top, table)).rowcount == 0:
            cur.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (table, top))
    return int(top)


def fids_in_sync(cur: sqlite3.Cursor) -> bool:
    """True when every footprint table has its fid trigger and a sequence at the highest fid."""
    tables = [t for t, _ in feature_tables(cur)]
    if not tables:
        return True
    marks = ",".join("?" * len(tables))
    triggers = {r[0] for r in cur.execute("SELECT name FROM sqlite_master WHERE type='trigger'")}
    if any(f"dclabel_fid_{t}" not in triggers for t in tables):
        return False
    seqs = dict(cur.execute(f"SELECT name, seq FROM sqlite_sequence WHERE name IN ({marks})", tables).fetchall())
    top = max([*seqs.values(), *(cur.execute(f'SELECT max(fid) FROM "{t}"').fetchone()[0] or 0 for t in tables)])
    return len(seqs) == len(tables) and all(seqs[t] == top for t in tables)


def fid_clashes(cur: sqlite3.Cursor) -> dict[int, list[str]]:
    """Fids used in more than one footprint table (features added outside dclabel): fid -> tables."""
    tables = [t for t, _ in feature_tables(cur)]
    if len(tables) < 2:
        return {}
    union = " UNION ALL ".join(f"SELECT fid, '{t}' AS t FROM \"{t}\"" for t in tables)
    rows = cur.execute(
        f"SELECT fid, group_concat(t, ' ') FROM ({union}) GROUP BY fid HAVING count(*) > 1 ORDER BY fid"
    ).fetchall()
    return {int(fid): sorted(names.split()) for fid, names in rows}


def touch_contents(cur: sqlite3.Cursor, table: str, bounds: tuple[float, ...] | None = None) -> None:
    """Update ``gpkg_contents.last_change`` of a table and grow its extent to cover ``bounds``."""
    if bounds is None:
        cur.execute("UPDATE gpkg_contents SET last_change = ? WHERE table_name = ?", (utc_now(), table))
        return
    minx, miny, maxx, maxy = bounds
    cur.execute(
        "UPDATE gpkg_contents SET last_change = ?, min_x = min(coalesce(min_x, ?), ?), "
        "min_y = min(coalesce(min_y, ?), ?), max_x = max(coalesce(max_x, ?), ?), "
        "max_y = max(coalesce(max_y, ?), ?) WHERE table_name = ?",
        (utc_now(), minx, minx, miny, miny, maxx, maxx, maxy, maxy, table),
    )


def to_multipolygon(geom: BaseGeometry) -> MultiPolygon:
    """Promote a Polygon to a one-part MultiPolygon (MultiPolygons pass through)."""
    return MultiPolygon([geom]) if isinstance(geom, Polygon) else geom


def from_multipolygon(geom: BaseGeometry) -> BaseGeometry:
    """A one-part MultiPolygon back to its Polygon (what editors expect); others unchanged."""
    if isinstance(geom, MultiPolygon) and len(geom.geoms) == 1:
        return geom.geoms[0]
    return geom


def encode_geometry(geom: BaseGeometry, srs_id: int) -> bytes:
    """GeoPackage binary: ``GP``, version 0, flags (little endian, xy envelope), srs_id, envelope, WKB."""
    wkb = shapely.to_wkb(geom, byte_order=1, flavor="iso", output_dimension=2)
    if geom.is_empty:
        return b"GP" + struct.pack("<BBi", 0, 0b00010001, srs_id) + wkb
    minx, miny, maxx, maxy = geom.bounds
    return b"GP" + struct.pack("<BBi4d", 0, 0b00000011, srs_id, minx, maxx, miny, maxy) + wkb


def decode_geometry(blob: bytes) -> BaseGeometry:
    """Shapely geometry from GeoPackage binary (any envelope kind, either byte order).

    Raises:
        StoreError: The blob is not GeoPackage binary.
    """
    if blob is None or len(blob) < 8 or blob[:2] != b"GP":
        raise StoreError("label store: a geometry is not GeoPackage binary (no 'GP' header); the file is damaged.")
    flags = blob[3]
    env = _ENVELOPE_BYTES.get((flags >> 1) & 0b111)
    if env is None:
        raise StoreError(f"label store: unknown GeoPackage envelope code in flags {flags:#04x}.")
    return shapely.from_wkb(bytes(blob[8 + env :]))


def to_wkb(geom: BaseGeometry) -> bytes:
    """2D little-endian ISO WKB (what the edit log stores)."""
    return shapely.to_wkb(geom, byte_order=1, flavor="iso", output_dimension=2)


def polygon_parts(geom: BaseGeometry) -> tuple[list[Polygon], int]:
    """The Polygons (with an area) of a geometry at every nesting level, and the other parts' count.

    ``make_valid`` of a self-intersecting ring can return ``GEOMETRYCOLLECTION(MULTIPOLYGON(...),
    LINESTRING(...))``: the polygons inside the multipolygon are kept, the line is counted.
    """
    polys: list[Polygon] = []
    dropped = 0
    stack = [geom]
    while stack:
        part = stack.pop()
        if part is None or part.is_empty:
            continue
        if isinstance(part, Polygon):
            if part.area > 0:
                polys.append(part)
            else:
                dropped += 1
        elif hasattr(part, "geoms"):
            stack.extend(reversed(list(part.geoms)))
        else:
            dropped += 1
    return polys, dropped


def clean_polygon(geometry: BaseGeometry, what: str = "footprint") -> BaseGeometry:
    """Repair a footprint geometry: 2D, ``make_valid``, polygonal parts only.

    Returns:
        A valid Polygon or MultiPolygon.

    Raises:
        LabelError: The geometry is missing, empty or has no polygonal part.
    """
    if geometry is None or not isinstance(geometry, BaseGeometry):
        raise LabelError(f"{what}: expected a shapely Polygon, found {type(geometry).__name__}.")
    if geometry.is_empty:
        raise LabelError(f"{what}: the geometry is empty; draw a polygon with at least 3 corners.")
    geom = shapely.force_2d(geometry)
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    polys, _ = polygon_parts(geom)
    if not polys:
        raise LabelError(
            f"{what}: expected a polygon with an area, found {geometry.geom_type} "
            f"{geometry.wkt[:80]}; draw a polygon with at least 3 corners."
        )
    return polys[0] if len(polys) == 1 else shapely.MultiPolygon(polys)


def write_footprint(cur: sqlite3.Cursor, table: str, srs_id: int, fid: int, geom: BaseGeometry, attrs: dict) -> None:
    """Insert or overwrite footprint ``fid`` of a feature table (geometry in that table's CRS)."""
    blob = encode_geometry(to_multipolygon(geom), srs_id)
    values = (blob, *(attrs[c] for c in FOOTPRINT_COLUMNS))
    # a plain UPDATE, then INSERT: an upsert's conflict clause would override the `INSERT OR REPLACE`
    # of a GDAL R-tree trigger and fail on the index row
    sets = ", ".join(f'"{c}"=?' for c in ("geom", *FOOTPRINT_COLUMNS))
    if cur.execute(f'UPDATE "{table}" SET {sets} WHERE fid=?', (*values, int(fid))).rowcount == 0:
        cols = ", ".join(f'"{c}"' for c in ("fid", "geom", *FOOTPRINT_COLUMNS))
        cur.execute(f'INSERT INTO "{table}" ({cols}) VALUES ({", ".join("?" * (2 + len(FOOTPRINT_COLUMNS)))})',
                    (int(fid), *values))
    touch_contents(cur, table, geom.bounds)


def find_footprint(cur: sqlite3.Cursor, fid: int) -> tuple[str, int, bytes, dict] | None:
    """(table, srs_id, geometry blob, attributes) of footprint ``fid`` in any feature table, or None.

    Raises:
        LabelError: Two tables hold this fid (features added outside dclabel); it is ambiguous.
    """
    cols = ", ".join(f'"{c}"' for c in FOOTPRINT_COLUMNS)
    found = []
    for table, srs_id in feature_tables(cur):
        row = cur.execute(f'SELECT geom, {cols} FROM "{table}" WHERE fid=?', (int(fid),)).fetchone()
        if row:
            found.append((table, int(srs_id), row[0], dict(zip(FOOTPRINT_COLUMNS, row[1:], strict=True))))
    if len(found) > 1:
        raise LabelError(
            f"footprint fid {fid} is used in {' and '.join(f[0] for f in found)} (a feature added outside "
            "dclabel reused it); open the label store for writing once (dclabel renumbers the feature "
            "its edit history does not know), then try again."
        )
    return found[0] if found else None


def feature_tables(cur: sqlite3.Cursor) -> list[tuple[str, int]]:
    """(table name, srs_id) of every footprint feature table."""
    rows = cur.execute(
        "SELECT table_name, srs_id FROM gpkg_geometry_columns WHERE table_name LIKE 'footprints!_%' "
        "ESCAPE '!' ORDER BY table_name"
    )
    return [(r[0], int(r[1])) for r in rows]


def crs_of(cur: sqlite3.Cursor, srs_id: int) -> ProjCRS:
    """The pyproj CRS of a ``gpkg_spatial_ref_sys`` row."""
    org, code, wkt = cur.execute(
        "SELECT organization, organization_coordsys_id, definition FROM gpkg_spatial_ref_sys WHERE srs_id=?",
        (srs_id,),
    ).fetchone()
    return ProjCRS.from_epsg(code) if org.upper() == "EPSG" else ProjCRS.from_wkt(wkt)


def register_scene(cur: sqlite3.Cursor, scene_id: str, crs, path) -> int:
    """Record a scene's CRS (creating its srs row and feature table); returns the srs_id.

    Raises:
        StoreError: The scene has footprints stored under another CRS.
    """
    srs_id = ensure_srs(cur, crs)
    ensure_feature_table(cur, srs_id)
    row = cur.execute("SELECT srs_id FROM dclabel_scenes WHERE scene_id=?", (scene_id,)).fetchone()
    if row and row[0] != srs_id:
        old = feature_table(row[0])
        if cur.execute(f'SELECT count(*) FROM "{old}" WHERE scene_id=?', (scene_id,)).fetchone()[0]:
            raise StoreError(
                f"{path}: scene {scene_id!r} has footprints in CRS srs_id {row[0]} but was registered "
                f"again with srs_id {srs_id}; give the re-projected scene a new id."
            )
    cur.execute("INSERT OR REPLACE INTO dclabel_scenes VALUES (?,?,?)", (scene_id, srs_id, utc_now()))
    return srs_id


def decode_many(blobs: list[bytes]):
    """Vectorised :func:`decode_geometry` + :func:`from_multipolygon` (numpy array of geometries)."""
    import numpy as np

    wkbs = []
    for blob in blobs:
        if blob is None or len(blob) < 8 or blob[:2] != b"GP":
            raise StoreError("label store: a geometry is not GeoPackage binary (no 'GP' header); the file is damaged.")
        wkbs.append(bytes(blob[8 + _ENVELOPE_BYTES.get((blob[3] >> 1) & 0b111, 0) :]))
    geoms = shapely.from_wkb(np.array(wkbs, dtype=object))
    single = (shapely.get_type_id(geoms) == 6) & (shapely.get_num_geometries(geoms) == 1)
    geoms[single] = shapely.get_geometry(geoms[single], 0)
    return geoms
