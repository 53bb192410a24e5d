"""Reviewed chips in the label store: the ``reviewed_chips`` attribute table of ``labels.gpkg``.

A chip is keyed by (scene_id, col_off, row_off, width, height); ``empty`` records that a person
confirmed it holds no footprint. These helpers run inside the store's transactions.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from rasterio.windows import Window

from loop import labelstore_gpkg as gp
from model.errors import LabelError

CHIP_KEY: tuple[str, ...] = ("scene_id", "col_off", "row_off", "width", "height")
_WHERE = "scene_id=? AND col_off=? AND row_off=? AND width=? AND height=?"


@dataclass(frozen=True)
class ReviewedChip:
    """A chip a person has looked at.

    Attributes:
        scene_id: Scene of the chip.
        window: Chip window in scene pixels.
        empty: True when the person confirmed the chip holds no footprint.
        time: When it was marked (ISO 8601 UTC).
    """

    scene_id: str
    window: Window
    empty: bool
    time: str


def chip_key(scene_id: str, window: Window) -> tuple:
    """(scene_id, col_off, row_off, width, height) with integer pixels.

    Raises:
        LabelError: The window has no area.
    """
    vals = [int(round(v)) for v in (window.col_off, window.row_off, window.width, window.height)]
    if vals[2] <= 0 or vals[3] <= 0:
        raise LabelError(f"reviewed chip of scene {scene_id!r}: window {window} has no area.")
    return (scene_id, *vals)


def read_chip(cur: sqlite3.Cursor, key: tuple) -> dict | None:
    """The stored chip record of a key (``CHIP_KEY`` fields + ``empty``, ``time``), or None."""
    row = cur.execute(f"SELECT empty, time FROM {gp.CHIPS_TABLE} WHERE {_WHERE}", key).fetchone()
    if row is None:
        return None
    return {**dict(zip(CHIP_KEY, key, strict=True)), "empty": bool(row[0]), "time": row[1]}


def write_chip(cur: sqlite3.Cursor, key: tuple, chip: dict | None) -> None:
    """Upsert a chip record, or delete it when ``chip`` is None."""
    if chip is None:
        cur.execute(f"DELETE FROM {gp.CHIPS_TABLE} WHERE {_WHERE}", key)
    elif cur.execute(
        f"UPDATE {gp.CHIPS_TABLE} SET empty=?, time=? WHERE {_WHERE}", (int(chip["empty"]), chip["time"], *key)
    ).rowcount == 0:
        cur.execute(
            f"INSERT INTO {gp.CHIPS_TABLE} (scene_id, col_off, row_off, width, height, empty, time) "
            "VALUES (?,?,?,?,?,?,?)",
            (*key, int(chip["empty"]), chip["time"]),
        )
    gp.touch_contents(cur, gp.CHIPS_TABLE)


def select_chips(cur: sqlite3.Cursor, scene_id: str | None = None) -> list[ReviewedChip]:
    """Reviewed chips of one scene (or all), ordered by scene, row, column."""
    sql = f"SELECT scene_id, col_off, row_off, width, height, empty, time FROM {gp.CHIPS_TABLE}"
    args: tuple = ()
    if scene_id is not None:
        sql, args = sql + " WHERE scene_id=?", (scene_id,)
    rows = cur.execute(sql + " ORDER BY scene_id, row_off, col_off, width, height", args).fetchall()
    return [ReviewedChip(r[0], Window(r[1], r[2], r[3], r[4]), bool(r[5]), r[6]) for r in rows]
