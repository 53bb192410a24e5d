"""The label store: footprints and reviewed chips in one GeoPackage (``labels.gpkg``).

Every edit (add, update, delete, mark, unmark, undo, redo) is one SQLite transaction committed
before the method returns (WAL journal, ``synchronous=FULL``), so a ``kill -9`` at any moment
leaves a valid file holding every edit whose method had returned. An edit log inside the file backs
:meth:`LabelStore.undo` / :meth:`LabelStore.redo`; ``version`` counts committed edits and is
stored in the file, so a reader in another process (the retraining job) sees it too.

Geometries are stored in their scene's CRS, one feature table per CRS (``footprints_32618``);
QGIS and GDAL open the file directly. Deleting a footprint sets ``status='deleted'`` (the row and
its fid stay, so undo restores it with the same fid).

Do not read ``labels.gpkg`` with GDAL (geopandas/pyogrio/rasterio) in a process that holds a
``LabelStore`` open: GDAL links its own copy of SQLite, and two copies in one process release each
other's POSIX locks (sqlite.org/howtocorrupt.html, 2.2.1). Use :meth:`LabelStore.footprints`.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from pyproj import CRS as ProjCRS
from rasterio.windows import Window
from shapely.geometry.base import BaseGeometry

from loop import labelstore_gpkg as gp
from loop import labelstore_history as history
from loop.errors import StoreError
from loop.labelstore_chips import (
    CHIP_KEY,
    ReviewedChip,
    chip_key,
    read_chip,
    select_chips,
    write_chip,
)
from loop.project import CLASSES
from model.errors import LabelError

if TYPE_CHECKING:
    import geopandas

    from model.scene import SceneInfo

SOURCES: tuple[str, ...] = ("manual", "proposal-accepted", "proposal-edited", "imported")
STATUSES: tuple[str, ...] = ("active", "deleted")


class LabelStore:
    """Footprints and reviewed chips of a project, in a GeoPackage written through ``sqlite3``.

    Safe to open from several processes (WAL, ``busy_timeout``); writes are serialised by SQLite.
    Methods are thread-safe within a process.

    Args:
        path: The ``.gpkg`` file; created when missing (unless ``read_only``).
        read_only: Open without write access (for readers such as the retraining job).

    Raises:
        StoreError: The file is not a dclabel label store or cannot be opened.
    """

    def __init__(self, path: str | Path, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._lock = threading.RLock()
        self._depth = 0
        self._txn: int | None = None
        self._crs_cache: dict[int, ProjCRS] = {}
        if read_only and not self.path.exists():
            raise StoreError(f"{self.path}: no label store here; open it once for writing to create it.")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            uri = f"file:{self.path.resolve()}?mode=ro" if read_only else f"file:{self.path.resolve()}"
            self._conn = sqlite3.connect(uri, uri=True, timeout=60, isolation_level=None, check_same_thread=False)
            gp.register_functions(self._conn)  # the SQL a QGIS/GDAL spatial index's triggers call
            self._conn.execute("PRAGMA busy_timeout = 60000")
            self._conn.execute("PRAGMA synchronous = FULL")
            self._init_schema()
        except sqlite3.DatabaseError as exc:
            if not all(os.access(f, os.W_OK) for f in (self.path.parent, self.path) if f.exists()):
                raise StoreError(
                    f"{self.path}: cannot open the label store ({exc}): the file or its folder is read-only, and "
                    "SQLite writes beside the store even to read it. Make the project folder writable (e.g. "
                    f"`chmod -R u+w {self.path.parent}`), or copy the project to a folder you can write to."
                ) from exc
            raise StoreError(
                f"{self.path}: cannot open as a label store ({exc}). Expected a GeoPackage written by "
                "dclabel; move the file away to start a new store."
            ) from exc

    def _init_schema(self) -> None:
        tables = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "dclabel_meta" in tables:
            if not self.read_only:
                self._conn.execute("PRAGMA journal_mode = WAL")
            self._repair_fids()
            return
        if tables or self.read_only:
            raise StoreError(
                f"{self.path}: this SQLite/GeoPackage file is not a dclabel label store (no dclabel_meta "
                "table). Choose another path, or import its polygons with `dclabel labels import`."
            )
        # The header fields go straight into the file (GDAL reads them from disk, not from the WAL).
        self._conn.execute("PRAGMA journal_mode = DELETE")
        self._conn.execute(f"PRAGMA application_id = {gp.APPLICATION_ID}")
        self._conn.execute(f"PRAGMA user_version = {gp.USER_VERSION}")
        self._conn.execute("PRAGMA journal_mode = WAL")
        with self.transaction() as cur:
            gp.create_schema(cur)

    def _repair_fids(self) -> None:
        """Keep fids unique across the footprint tables after edits made outside dclabel.

        A feature QGIS/GDAL added to one table before this version of dclabel synchronised the
        sequences can share its fid with a footprint of another table. Writable: the row the edit
        log does not know is given a new fid (the log stays true; nothing else refers to it) and a
        warning names both. Read-only: a warning only (such a fid is then refused as ambiguous).
        """
        with self._lock:
            cur = self._conn.cursor()
            clashes = gp.fid_clashes(cur)
            if self.read_only:
                if clashes:
                    warnings.warn(f"{self.path}: footprint fid(s) used in two tables: {_clash_text(clashes)}; "
                                  "open the store for writing once to renumber them.", UserWarning, stacklevel=4)
                return
            if not clashes and gp.fids_in_sync(cur):
                return  # nothing to write: opening takes no write lock
            with self.transaction() as cur:
                for table, _ in gp.feature_tables(cur):
                    gp.ensure_fid_trigger(cur, table)
                gp.sync_fid_sequences(cur)
                moved, left = [], {}
                for fid, tables in clashes.items():
                    logged = history.logged_srs_ids(cur, fid)
                    keep = [t for t in tables if int(t.removeprefix(gp.FEATURE_PREFIX)) in logged] or tables[:1]
                    if len(keep) > 1:
                        left[fid] = tables
                        continue
                    for table in tables:
                        if table != keep[0]:
                            new = gp.sync_fid_sequences(cur) + 1
                            cur.execute(f'UPDATE "{table}" SET fid=? WHERE fid=?', (new, fid))
                            moved.append(f"fid {fid} of {table} -> fid {new} (fid {fid} stays in {keep[0]})")
                if moved:
                    gp.sync_fid_sequences(cur)
                    self._edit_txn(cur, clear_redo=False)  # readers see a new version
                    warnings.warn(
                        f"{self.path}: features added outside dclabel (QGIS/GDAL) had fids another footprint "
                        f"table already used; renumbered the ones dclabel's edit history does not know: "
                        f"{'; '.join(moved)}. Reload the layers in QGIS.", UserWarning, stacklevel=4)
                if left:
                    warnings.warn(f"{self.path}: footprint fid(s) used in two tables that both appear in the "
                                  f"edit history: {_clash_text(left)}; they are refused as ambiguous.",
                                  UserWarning, stacklevel=4)

    # ----- transactions ---------------------------------------------------------------------------
    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Cursor]:
        """One write transaction; edits made inside it commit together and undo as one step.

        Nested uses join the outer transaction. Used by every editing method; callers may wrap
        several edits (e.g. accepting all proposals of a chip) in one ``with store.transaction():``.
        """
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self._conn.cursor()
                finally:
                    self._depth -= 1
                return
            if self.read_only:
                raise StoreError(f"{self.path}: the label store was opened read-only; it cannot be edited.")
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            self._depth, self._txn = 1, None
            try:
                yield cur
                cur.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            finally:
                self._depth, self._txn = 0, None

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Cursor]:
        """A consistent snapshot for multi-statement reads."""
        with self._lock:
            cur = self._conn.cursor()
            if self._depth:
                yield cur
                return
            cur.execute("BEGIN")
            try:
                yield cur
            finally:
                cur.execute("COMMIT")

    def _edit_txn(self, cur: sqlite3.Cursor, clear_redo: bool = True) -> int:
        """Version number of the current transaction (bumped once per transaction)."""
        if self._txn is None:
            self._txn = int(cur.execute("SELECT value FROM dclabel_meta WHERE key='version'").fetchone()[0]) + 1
            cur.execute("UPDATE dclabel_meta SET value=? WHERE key='version'", (str(self._txn),))
            if clear_redo:
                history.clear_redo(cur)
        return self._txn

    def _log(self, cur, op: str, fid: int | None, before: history.State, after: history.State) -> None:
        history.log_edit(cur, self._edit_txn(cur), op, fid, before, after)

    # ----- scenes ---------------------------------------------------------------------------------
    def register_scene(self, scene_id: str, crs) -> None:
        """Record a scene and its CRS (idempotent; not an edit, so ``version`` does not change).

        Raises:
            StoreError: The scene is registered with another CRS and already has footprints.
        """
        with self._lock:
            row = self._conn.execute("SELECT srs_id FROM dclabel_scenes WHERE scene_id=?", (scene_id,)).fetchone()
            if row and gp.srs_for(crs)[0] == row[0]:
                return
            with self.transaction() as cur:
                gp.register_scene(cur, scene_id, crs, self.path)

    def scene_ids(self) -> list[str]:
        """Registered scene ids, sorted."""
        with self._lock:
            return [r[0] for r in self._conn.execute("SELECT scene_id FROM dclabel_scenes ORDER BY scene_id")]

    def scene_crs(self, scene_id: str) -> ProjCRS:
        """The CRS a scene's footprints are stored in."""
        return self._crs(self._scene_srs(scene_id))

    def _scene_srs(self, scene_id: str) -> int:
        with self._lock:
            row = self._conn.execute("SELECT srs_id FROM dclabel_scenes WHERE scene_id=?", (scene_id,)).fetchone()
        if row is None:
            raise LabelError(
                f"{self.path}: scene {scene_id!r} is not registered in the label store; "
                "call register_scene(scene_id, crs) (Project.labels does it for every scene)."
            )
        return int(row[0])

    def _crs(self, srs_id: int) -> ProjCRS:
        if srs_id not in self._crs_cache:
            with self._lock:
                self._crs_cache[srs_id] = gp.crs_of(self._conn.cursor(), srs_id)
        return self._crs_cache[srs_id]

    # ----- footprints -----------------------------------------------------------------------------
    def _find(self, cur, fid: int) -> tuple[str, int, bytes, dict]:
        found = gp.find_footprint(cur, fid)
        if found is None:
            raise LabelError(f"{self.path}: no footprint with fid {fid}; it may have been undone. Refresh the layer.")
        return found

    @staticmethod
    def _check_class_source(cls: str | None, source: str | None) -> None:
        if cls is not None and cls not in CLASSES:
            raise LabelError(f"footprint class {cls!r} is unknown; expected one of {', '.join(CLASSES)}.")
        if source is not None and source not in SOURCES:
            raise LabelError(f"footprint source {source!r} is unknown; expected one of {', '.join(SOURCES)}.")

    def add_footprint(
        self,
        scene_id: str,
        geometry: BaseGeometry,
        cls: str = "datacenter",
        source: str = "manual",
        model_version: str | None = None,
    ) -> int:
        """Add a footprint (one committed transaction).

        Args:
            scene_id: A registered scene.
            geometry: Polygon in the scene CRS; invalid shapes are repaired (polygonal parts kept).
            cls: One of :data:`loop.project.CLASSES`.
            source: One of :data:`SOURCES`.
            model_version: Model that proposed it, if any.

        Returns:
            The new footprint's fid (unique across the store, never reused).

        Raises:
            LabelError: Empty or non-polygonal geometry, unknown class/source, unregistered scene.
        """
        self._check_class_source(cls, source)
        geom = gp.clean_polygon(geometry, f"footprint for scene {scene_id!r}")
        srs_id = self._scene_srs(scene_id)
        with self.transaction() as cur:
            table = gp.ensure_feature_table(cur, srs_id)
            seq = cur.execute(
                "SELECT max(seq) FROM sqlite_sequence WHERE name LIKE 'footprints!_%' ESCAPE '!'"
            ).fetchone()[0]
            fid = int(seq or 0) + 1
            now = gp.utc_now()
            attrs = {"scene_id": scene_id, "class": cls, "status": "active", "source": source,
                     "model_version": model_version, "created": now, "updated": now}
            gp.write_footprint(cur, table, srs_id, fid, geom, attrs)
            self._log(cur, "add", fid, None, (gp.to_wkb(geom), {**attrs, "srs_id": srs_id}))
        return fid

    def update_footprint(
        self,
        fid: int,
        geometry: BaseGeometry | None = None,
        cls: str | None = None,
        source: str | None = None,
        model_version: str | None = None,
    ) -> None:
        """Change a footprint's shape and/or attributes (one committed transaction).

        Raises:
            LabelError: Unknown or deleted fid, bad geometry, unknown class or source.
        """
        self._check_class_source(cls, source)
        geom = gp.clean_polygon(geometry, f"footprint {fid}") if geometry is not None else None
        with self.transaction() as cur:
            table, srs_id, blob, attrs = self._find(cur, fid)
            if attrs["status"] != "active":
                raise LabelError(f"{self.path}: footprint {fid} is deleted; undo the delete before editing it.")
            old_geom = gp.from_multipolygon(gp.decode_geometry(blob))
            new = dict(attrs)
            for key, value in (("class", cls), ("source", source), ("model_version", model_version)):
                if value is not None:
                    new[key] = value
            new_geom = geom if geom is not None else old_geom
            if new == attrs and new_geom.equals_exact(old_geom, 0.0):
                return
            new["updated"] = gp.utc_now()
            gp.write_footprint(cur, table, srs_id, fid, new_geom, new)
            self._log(cur, "update", fid, (gp.to_wkb(old_geom), {**attrs, "srs_id": srs_id}),
                      (gp.to_wkb(new_geom), {**new, "srs_id": srs_id}))

    def delete_footprint(self, fid: int) -> None:
        """Delete a footprint (its row stays with ``status='deleted'``; undo restores it).

        Raises:
            LabelError: Unknown fid, or already deleted.
        """
        with self.transaction() as cur:
            table, srs_id, blob, attrs = self._find(cur, fid)
            if attrs["status"] != "active":
                raise LabelError(f"{self.path}: footprint {fid} is already deleted.")
            geom = gp.decode_geometry(blob)
            new = {**attrs, "status": "deleted", "updated": gp.utc_now()}
            gp.write_footprint(cur, table, srs_id, fid, geom, new)
            self._log(cur, "delete", fid, (gp.to_wkb(geom), {**attrs, "srs_id": srs_id}),
                      (gp.to_wkb(geom), {**new, "srs_id": srs_id}))

    def footprint(self, fid: int) -> tuple[BaseGeometry, dict]:
        """One footprint (geometry in its scene CRS, attributes), deleted ones included.

        The class is read by the import rules (``Warehouse`` typed in QGIS -> ``warehouse``).
        """
        from loop.labelstore_io import normalize_classes

        with self._read() as cur:
            _, _, blob, attrs = self._find(cur, fid)
        attrs["class"] = normalize_classes([attrs["class"]])[0]
        return gp.from_multipolygon(gp.decode_geometry(blob)), {"fid": int(fid), **attrs}

    def unknown_classes(self, scene_id: str | None = None) -> dict[int, object]:
        """Active footprints whose class (read by the import rules) is not one of
        :data:`loop.project.CLASSES`, e.g. ``building`` typed in QGIS: fid -> stored value."""
        gdf = self.footprints(scene_id)
        bad = gdf[~gdf["class"].isin(CLASSES)]
        return dict(zip(bad["fid"].astype(int), bad["class"], strict=True))

    def footprints(self, scene_id: str | None = None, include_deleted: bool = False) -> geopandas.GeoDataFrame:
        """Footprints as a GeoDataFrame with a stable ``fid`` column.

        Args:
            scene_id: One scene: geometries in that scene's CRS. ``None``: every scene, in their
                common CRS when all registered scenes share one, otherwise reprojected to EPSG:4326.
            include_deleted: Also return rows with ``status='deleted'``.

        Returns:
            Columns ``fid, scene_id, class, status, source, model_version, created, updated,
            geometry``, sorted by fid. One-part shapes are Polygons. Classes are read by the import
            rules (:func:`loop.labelstore_io.normalize_classes`); unknown ones are returned as stored
            (:meth:`unknown_classes` lists them).
        """
        frames = []
        with self._read() as cur:
            if scene_id is not None:
                srs_ids = [self._scene_srs(scene_id)]
            else:
                srs_ids = [r[0] for r in cur.execute("SELECT DISTINCT srs_id FROM dclabel_scenes ORDER BY srs_id")]
            tables = {s: t for t, s in gp.feature_tables(cur)}
            where = "1=1" if include_deleted else "status='active'"
            args: tuple = ()
            if scene_id is not None:
                where, args = where + " AND scene_id=?", (scene_id,)
            for srs_id in srs_ids:
                if srs_id not in tables:
                    continue
                rows = cur.execute(
                    f'SELECT fid, {", ".join(map(_q, gp.FOOTPRINT_COLUMNS))}, geom FROM "{tables[srs_id]}" '
                    f"WHERE {where} ORDER BY fid", args,
                ).fetchall()
                if rows:
                    frames.append((srs_id, rows))
        from loop.labelstore_io import footprint_frame

        target = self._crs(srs_ids[0]) if len(srs_ids) == 1 else ProjCRS.from_epsg(4326)
        return footprint_frame([(self._crs(srs_id), rows) for srs_id, rows in frames], target)

    # ----- reviewed chips -------------------------------------------------------------------------
    def mark_reviewed(self, scene_id: str, window: Window, empty: bool = False) -> None:
        """Record that a chip was reviewed (upsert; one committed transaction; undoable)."""
        self._scene_srs(scene_id)
        key = chip_key(scene_id, window)
        with self.transaction() as cur:
            before = read_chip(cur, key)
            after = {**dict(zip(CHIP_KEY, key, strict=True)), "empty": bool(empty), "time": gp.utc_now()}
            write_chip(cur, key, after)
            self._log(cur, "mark", None, (None, before) if before else None, (None, after))

    def unmark_reviewed(self, scene_id: str, window: Window) -> bool:
        """Forget that a chip was reviewed. Returns False when it was not marked."""
        key = chip_key(scene_id, window)
        with self.transaction() as cur:
            before = read_chip(cur, key)
            if before is None:
                return False
            write_chip(cur, key, None)
            self._log(cur, "unmark", None, (None, before), None)
        return True

    def reviewed_chips(self, scene_id: str | None = None) -> list[ReviewedChip]:
        """Reviewed chips (of one scene or all), ordered by scene, row, column."""
        with self._lock:
            return select_chips(self._conn.cursor(), scene_id)

    # ----- undo / redo ----------------------------------------------------------------------------
    def undo(self) -> bool:
        """Undo the last committed edit (a whole transaction, e.g. one import). False if none."""
        with self.transaction() as cur:
            return history.step(cur, True, lambda: self._edit_txn(cur, clear_redo=False))

    def redo(self) -> bool:
        """Redo the last undone edit. False if there is nothing to redo."""
        with self.transaction() as cur:
            return history.step(cur, False, lambda: self._edit_txn(cur, clear_redo=False))

    def history_scenes(self, undo: bool = True) -> set[str]:
        """Scene ids that the next :meth:`undo` (``undo=False``: :meth:`redo`) would change."""
        with self._lock:
            return history.next_scenes(self._conn.cursor(), undo)

    @property
    def can_undo(self) -> bool:
        """True when :meth:`undo` has something to undo."""
        with self._lock:
            return self._conn.execute("SELECT 1 FROM dclabel_edit_log WHERE undone=0 LIMIT 1").fetchone() is not None

    @property
    def can_redo(self) -> bool:
        """True when :meth:`redo` has something to redo."""
        with self._lock:
            return self._conn.execute("SELECT 1 FROM dclabel_edit_log WHERE undone=1 LIMIT 1").fetchone() is not None

    @property
    def version(self) -> int:
        """Number of committed edits (undo and redo count too); stored in the file."""
        with self._lock:
            return int(self._conn.execute("SELECT value FROM dclabel_meta WHERE key='version'").fetchone()[0])

    # ----- GeoJSON --------------------------------------------------------------------------------
    def import_geojson(self, path: str | Path, scene: SceneInfo, reviewed: bool = True, chip_size: int = 256) -> int:
        """Import polygons of any CRS into a scene; see :func:`loop.labelstore_io.import_geojson`."""
        from loop.labelstore_io import import_geojson

        return import_geojson(self, path, scene, reviewed=reviewed, chip_size=chip_size)

    def import_labels(self, path: str | Path, scene: SceneInfo, reviewed: bool = True, chip_size: int = 256,
                      layer: str | None = None):
        """Import polygons with counts of what was added, reclassified and dropped; see
        :func:`loop.labelstore_io.import_labels`."""
        from loop.labelstore_io import import_labels

        return import_labels(self, path, scene, reviewed=reviewed, chip_size=chip_size, layer=layer)

    def export_geojson(self, path: str | Path, scene_id: str | None = None) -> Path:
        """Write active footprints as RFC 7946 GeoJSON; see :func:`loop.labelstore_io.export_geojson`."""
        from loop.labelstore_io import export_geojson

        return export_geojson(self, path, scene_id=scene_id)

    # ----- lifetime -------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the connection, first folding the WAL into ``labels.gpkg`` (so a copy of the
        .gpkg alone holds every edit even while readers stay open)."""
        with self._lock:
            if not self.read_only:
                try:
                    self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    pass  # busy readers: the WAL stays and is folded in by a later checkpoint
            self._conn.close()

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LabelStore({str(self.path)!r})"


def _q(name: str) -> str:
    return f'"{name}"'


def _clash_text(clashes: dict[int, list[str]]) -> str:
    return "; ".join(f"fid {fid} in {' and '.join(tables)}" for fid, tables in clashes.items())
