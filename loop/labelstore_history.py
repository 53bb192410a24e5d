"""The edit log of the label store (table ``dclabel_edit_log``), which backs undo and redo.

Each entry holds the state of one footprint or reviewed chip before and after an edit (geometry as
WKB, attributes as JSON; ``None`` = did not exist). Entries of one transaction share its ``txn``
number and undo as one step. Undone entries form the redo stack; a new edit clears it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable

import shapely

from loop import labelstore_gpkg as gp
from loop.labelstore_chips import CHIP_KEY, read_chip, write_chip
from model.errors import LabelError

State = tuple[bytes | None, dict] | None  # (WKB or None for chips, attributes) or None


def log_edit(cur: sqlite3.Cursor, txn: int, op: str, fid: int | None, before: State, after: State) -> None:
    """Append one entry to the edit log."""
    bw, ba = before if before else (None, None)
    aw, aa = after if after else (None, None)
    cur.execute(
        "INSERT INTO dclabel_edit_log (txn, op, fid, before_wkb, before_attrs, after_wkb, after_attrs, "
        "time) VALUES (?,?,?,?,?,?,?,?)",
        (txn, op, fid, bw, json.dumps(ba) if ba else None, aw, json.dumps(aa) if aa else None, gp.utc_now()),
    )


def clear_redo(cur: sqlite3.Cursor) -> None:
    """Forget undone entries (called by every new edit)."""
    cur.execute("DELETE FROM dclabel_edit_log WHERE undone = 1")


def _apply(cur: sqlite3.Cursor, op: str, fid: int | None, wkb, attrs: str | None, other: str | None) -> None:
    """Put a footprint or chip into the state ``(wkb, attrs)``; ``attrs`` None removes it."""
    ref = json.loads(attrs or other)
    if op in ("mark", "unmark"):
        write_chip(cur, tuple(ref[k] for k in CHIP_KEY), json.loads(attrs) if attrs else None)
        return
    srs_id = int(ref["srs_id"])
    table = gp.ensure_feature_table(cur, srs_id)
    if attrs is None:
        cur.execute(f'DELETE FROM "{table}" WHERE fid=?', (fid,))
        gp.touch_contents(cur, table)
    else:
        gp.write_footprint(cur, table, srs_id, fid, shapely.from_wkb(wkb), ref)


def logged_srs_ids(cur: sqlite3.Cursor, fid: int) -> set[int]:
    """srs_ids (feature tables) that the edit log records for footprint ``fid``."""
    rows = cur.execute("SELECT before_attrs, after_attrs FROM dclabel_edit_log WHERE fid=? AND op NOT IN "
                       "('mark', 'unmark')", (int(fid),)).fetchall()
    return {int(json.loads(a)["srs_id"]) for row in rows for a in row if a and "srs_id" in json.loads(a)}


def _current(cur: sqlite3.Cursor, op: str, fid: int | None, ref: dict) -> tuple[object, dict] | None:
    """The stored state of an entry's footprint or chip now (geometry, attributes), or None."""
    if op in ("mark", "unmark"):
        chip = read_chip(cur, tuple(ref[k] for k in CHIP_KEY))
        return None if chip is None else (None, chip)
    table = gp.feature_table(int(ref["srs_id"]))
    if not cur.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (table,)).fetchone():
        return None
    cols = ", ".join(f'"{c}"' for c in gp.FOOTPRINT_COLUMNS)
    row = cur.execute(f'SELECT geom, {cols} FROM "{table}" WHERE fid=?', (fid,)).fetchone()
    if row is None:
        return None
    return gp.decode_geometry(row[0]), dict(zip(gp.FOOTPRINT_COLUMNS, row[1:], strict=True))


def _differences(now: tuple | None, wkb, attrs: str | None, op: str) -> list[str]:
    """How the current state differs from the state an edit left (empty: unchanged since)."""
    if attrs is None:
        return [] if now is None else ["it exists again"]
    if now is None:
        return ["it no longer exists"]
    expected = json.loads(attrs)
    keys = ("empty", "time") if op in ("mark", "unmark") else gp.FOOTPRINT_COLUMNS
    diff = [f"{k} {expected.get(k)!r} -> {now[1].get(k)!r}" for k in keys if now[1].get(k) != expected.get(k)]
    if wkb is not None:
        logged = gp.to_multipolygon(shapely.from_wkb(wkb))
        if not gp.to_multipolygon(now[0]).equals_exact(logged, 0.0):
            diff.append("geometry changed")
    return diff


def _check_unchanged(cur: sqlite3.Cursor, entries: list, undo: bool) -> None:
    """Refuse the step when a row no longer holds the state its edit left (an edit made since by
    another tool, e.g. QGIS): applying the logged state would silently overwrite that edit."""
    problems = []
    seen = set()
    for _eid, op, fid, _wkb, attrs, other_attrs, other_wkb in entries:
        ref = json.loads(attrs or other_attrs)
        key = tuple(ref[k] for k in CHIP_KEY) if op in ("mark", "unmark") else fid
        if key in seen:  # a later entry of the same row in this step: the log chains them
            continue
        seen.add(key)
        diff = _differences(_current(cur, op, fid, ref), other_wkb, other_attrs, op)
        if diff:
            what = f"footprint {fid}" if fid is not None else f"reviewed chip {tuple(ref[k] for k in CHIP_KEY)}"
            problems.append(f"{what} ({', '.join(diff)})")
    if problems:
        raise LabelError(
            f"cannot {'undo' if undo else 'redo'}: {'; '.join(problems[:5])} changed outside this edit history "
            "since (e.g. in QGIS); nothing was changed. Edit it back by hand, or keep the current state "
            "and make new edits."
        )


def _next_txn(cur: sqlite3.Cursor, undo: bool) -> int | None:
    pick = "max(txn) FROM dclabel_edit_log WHERE undone=0" if undo else "min(txn) FROM dclabel_edit_log WHERE undone=1"
    return cur.execute(f"SELECT {pick}").fetchone()[0]


def next_scenes(cur: sqlite3.Cursor, undo: bool) -> set[str]:
    """Scene ids of what the next undo (or redo) would change; empty when there is nothing."""
    txn = _next_txn(cur, undo)
    if txn is None:
        return set()
    rows = cur.execute("SELECT before_attrs, after_attrs FROM dclabel_edit_log WHERE txn=?", (txn,)).fetchall()
    return {str(sid) for b, a in rows if (sid := json.loads(a or b or "{}").get("scene_id")) is not None}


def step(cur: sqlite3.Cursor, undo: bool, begin: Callable[[], int]) -> bool:
    """Undo the newest not-undone transaction, or redo the oldest undone one.

    Args:
        cur: Cursor inside the store's write transaction.
        undo: True to undo, False to redo.
        begin: Called once when there is something to do (bumps the store version).

    Returns:
        False when there was nothing to undo (redo).

    Raises:
        LabelError: A footprint or chip of that step was changed since by something outside the
            edit log (QGIS, GDAL); nothing is changed.
    """
    txn = _next_txn(cur, undo)
    if txn is None:
        return False
    state = "before" if undo else "after"
    other = "after" if undo else "before"
    entries = cur.execute(
        f"SELECT id, op, fid, {state}_wkb, {state}_attrs, {other}_attrs, {other}_wkb FROM dclabel_edit_log "
        f"WHERE txn=? ORDER BY id {'DESC' if undo else 'ASC'}",
        (txn,),
    ).fetchall()
    _check_unchanged(cur, entries, undo)
    begin()
    for eid, op, fid, wkb, attrs, other_attrs, _ in entries:
        _apply(cur, op, fid, wkb, attrs, other_attrs)
        cur.execute("UPDATE dclabel_edit_log SET undone=? WHERE id=?", (int(undo), eid))
    return True
