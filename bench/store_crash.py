"""Kill-safety benchmark of the label store: SIGKILL a writer at random moments, then audit the file.

A child process opens ``labels.gpkg`` and writes edits (adds, updates, deletes, marks, unmarks)
as fast as it can, printing each edit as one JSON line *after* its method returned. The parent
kills it with SIGKILL after a random delay, re-opens the same store and checks:

* ``PRAGMA integrity_check`` is ``ok`` and GDAL (pyogrio) reads every layer with the right counts
  (else the store counts as corrupted);
* every edit the child reported is in the edit log under its version, and the footprint or chip
  it touched still holds the reported state unless a later, unreported edit changed it (else the
  edit counts as lost).

Usage::

    python bench/store_crash.py [--kills 100] [--seed 0] [--max-delay 0.6] [--store PATH]

Prints ``kills: N, edits lost: L, stores corrupted: C`` (and the edit count and rate).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import closing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SCENE_ID = "crash-scene"
EPSG = 32618
X0, Y0 = 300000.0, 4320000.0  # scene origin (UTM 18N, northern Virginia)


def _state_hex(geom) -> str:
    import shapely

    return shapely.to_wkb(shapely.normalize(geom), hex=True, output_dimension=2)


def child(store_path: Path, seed: int) -> None:
    """Write edits forever, reporting each one (as JSON) after its method returned."""
    import shapely
    from rasterio.crs import CRS
    from rasterio.windows import Window

    from loop.labelstore import LabelStore

    store = LabelStore(store_path)
    store.register_scene(SCENE_ID, CRS.from_epsg(EPSG))
    rng = random.Random(seed)
    active = [int(f) for f in store.footprints(SCENE_ID)["fid"]]
    print("ready", flush=True)
    classes = ("datacenter", "warehouse", "retail", "other")

    def box():
        x, y = X0 + rng.uniform(0, 900), Y0 - rng.uniform(0, 900)
        return shapely.box(x, y - rng.uniform(5, 80), x + rng.uniform(5, 80), y)

    while True:
        r = rng.random()
        if r < 0.4 or not active:
            cls = rng.choice(classes)
            geom = box()
            fid = store.add_footprint(SCENE_ID, geom, cls=cls)
            active.append(fid)
            rec = {"op": "add", "fid": fid, "cls": cls, "status": "active", "geom": _state_hex(geom)}
        elif r < 0.6:
            fid, cls, geom = rng.choice(active), rng.choice(classes), box()
            store.update_footprint(fid, geometry=geom, cls=cls)
            rec = {"op": "update", "fid": fid, "cls": cls, "status": "active", "geom": _state_hex(geom)}
        elif r < 0.75:
            fid = active.pop(rng.randrange(len(active)))
            store.delete_footprint(fid)
            rec = {"op": "delete", "fid": fid, "status": "deleted"}
        else:
            window = Window(256 * rng.randrange(8), 256 * rng.randrange(8), 256, 256)
            if r < 0.93:
                empty = rng.random() < 0.5
                store.mark_reviewed(SCENE_ID, window, empty=empty)
                rec = {"op": "mark", "empty": empty}
            else:
                if not store.unmark_reviewed(SCENE_ID, window):
                    continue
                rec = {"op": "unmark"}
            rec["chip"] = [int(window.col_off), int(window.row_off)]
        rec["v"] = store.version
        print(json.dumps(rec), flush=True)


def _target(rec: dict) -> tuple:
    return ("fid", rec["fid"]) if "fid" in rec else ("chip", tuple(rec["chip"]))


def audit(store_path: Path, reported: list[dict]) -> tuple[int, bool, str]:
    """Check a store after a kill.

    Returns:
        (edits lost, corrupted?, detail).
    """
    import pyogrio

    from loop.labelstore import LabelStore

    # Close every sqlite3 connection before GDAL opens the file: GDAL links its own copy of SQLite,
    # and two copies in one process break each other's POSIX locks (sqlite.org/howtocorrupt.html).
    try:
        with closing(sqlite3.connect(store_path)) as conn:
            check = conn.execute("PRAGMA integrity_check").fetchone()[0]
            log = conn.execute("SELECT txn, op, fid, after_attrs, before_attrs FROM dclabel_edit_log").fetchall()
    except sqlite3.DatabaseError as exc:
        return 0, True, f"sqlite: {exc}"
    if check != "ok":
        return 0, True, f"integrity_check: {check}"
    try:
        with LabelStore(store_path, read_only=True) as store:
            all_fp = store.footprints(SCENE_ID, include_deleted=True)
            chips = {(int(c.window.col_off), int(c.window.row_off)): c for c in store.reviewed_chips(SCENE_ID)}
        layers = {name for name, _ in pyogrio.list_layers(store_path)}
        gdal_counts = {name: len(pyogrio.read_dataframe(store_path, layer=name)) for name in layers}
    except Exception as exc:  # any failure to read means the file is unusable
        return 0, True, f"unreadable: {exc!r}"
    table = f"footprints_{EPSG}"
    if gdal_counts.get(table, 0) != len(all_fp) or gdal_counts.get("reviewed_chips", 0) != len(chips):
        return 0, True, f"GDAL counts {gdal_counts} != store ({len(all_fp)} footprints, {len(chips)} chips)"
    by_txn = {txn: (op, fid, json.loads(aa or ba)) for txn, op, fid, aa, ba in log}
    last_reported = max((rec["v"] for rec in reported), default=0)
    later = set()
    for txn, (_op, fid, attrs) in by_txn.items():
        if txn > last_reported:
            later.add(("fid", fid) if fid is not None else ("chip", (attrs["col_off"], attrs["row_off"])))
    lost = 0
    final: dict[tuple, dict] = {}
    for rec in reported:
        entry = by_txn.get(rec["v"])
        if entry is None or entry[0] != rec["op"] or entry[1] != rec.get("fid"):
            lost += 1
            continue
        final[_target(rec)] = rec
    import shapely

    rows = {int(r["fid"]): r for r in all_fp.to_dict("records")}
    for target, rec in final.items():
        if target in later:
            continue
        if target[0] == "chip":
            chip = chips.get(target[1])
            ok = chip is None if rec["op"] == "unmark" else chip is not None and chip.empty == rec["empty"]
        else:
            row = rows.get(target[1])
            ok = row is not None and row["status"] == rec["status"]
            if ok and "geom" in rec:
                ok = row["class"] == rec["cls"] and shapely.equals_exact(
                    shapely.normalize(row["geometry"]), shapely.from_wkb(rec["geom"]), 1e-9
                )
        lost += 0 if ok else 1
    return lost, False, ""


def run(kills: int = 100, seed: int = 0, max_delay: float = 0.6, store_path: Path | None = None,
        verbose: bool = True) -> dict:
    """Kill a writing child ``kills`` times and audit the store after each kill.

    Returns:
        ``{"kills", "edits", "lost", "corrupted", "details", "seconds"}``.
    """
    tmp = None
    if store_path is None:
        tmp = tempfile.TemporaryDirectory(prefix="store_crash_")
        store_path = Path(tmp.name) / "labels.gpkg"
    rng = random.Random(seed)
    total_edits = lost = corrupted = 0
    details: list[str] = []
    writing = 0.0
    start = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    for k in range(kills):
        proc = subprocess.Popen(
            [sys.executable, __file__, "--child", str(store_path), "--seed", str(seed * 100003 + k)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )
        lines: list[str] = []
        ready = threading.Event()

        def pump(p=proc, out=lines, ev=ready):
            for line in p.stdout:
                if line.startswith("ready"):
                    ev.set()
                elif line.endswith("\n"):
                    out.append(line)
            ev.set()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        ready.wait(timeout=120)
        delay = rng.uniform(0.0, max_delay)
        time.sleep(delay)
        writing += delay
        if proc.poll() is not None:
            details.append(f"kill {k}: child exited early: {proc.stderr.read()[-500:]}")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        reader.join(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
        reported = []
        for line in lines:
            try:
                reported.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a line cut by the kill was never a complete report
        n_lost, bad, detail = audit(store_path, reported)
        total_edits += len(reported)
        lost += n_lost
        corrupted += int(bad)
        if bad or n_lost:
            details.append(f"kill {k}: lost {n_lost}, corrupted {bad} {detail}")
        if verbose and (k + 1) % 10 == 0:
            print(f"  {k + 1} kills, {total_edits} edits reported so far", flush=True)
    if tmp is not None:
        tmp.cleanup()
    return {"kills": kills, "edits": total_edits, "lost": lost, "corrupted": corrupted,
            "details": details, "seconds": time.perf_counter() - start, "writing_s": writing}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-delay", type=float, default=0.6, help="longest run before a kill (s)")
    parser.add_argument("--store", type=Path, default=None, help="store to hammer (default: a temp file)")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        child(args.child, args.seed)
        return 0
    res = run(args.kills, args.seed, args.max_delay, args.store)
    for line in res["details"]:
        print(line)
    rate = res["edits"] / res["writing_s"] if res["writing_s"] else 0.0
    print(f"edits reported: {res['edits']} ({rate:.0f} edits/s while writing), wall time {res['seconds']:.1f} s")
    print(f"kills: {res['kills']}, edits lost: {res['lost']}, stores corrupted: {res['corrupted']}")
    return 0 if res["lost"] == 0 and res["corrupted"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
