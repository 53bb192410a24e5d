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
from loop.labelstore_chips import CHIP_KEY, write_chip

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
    """
    txn = _next_txn(cur, undo)
    if txn is None:
        return False
    state = "before" if undo else "after"
    other = "after" if undo else "before"
    entries = cur.execute(
        f"SELECT id, op, fid, {state}_wkb, {state}_attrs, {other}_attrs FROM dclabel_edit_log "
        f"WHERE txn=? ORDER BY id {'DESC' if undo else 'ASC'}",
        (txn,),
    ).fetchall()
    begin()
    for eid, op, fid, wkb, attrs, other_attrs in entries:
        _apply(cur, op, fid, wkb, attrs, other_attrs)
        cur.execute("UPDATE dclabel_edit_log SET undone=? WHERE id=?", (int(undo), eid))
    return True
