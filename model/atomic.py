"""Atomic file writes: write under a temporary name in the target folder, then ``os.replace``.

A crash, a kill or an exception never leaves a half-written file at the target path, and the
previous version (if any) stays intact until the new one is complete.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from model.errors import ConfigError, DclabelError, OutputError

#: What a failed write's errno says about the disk (GDAL and OGR only log it, or say it in words).
NO_ROOM = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
           errno.EFBIG: "file too large (a file size limit)"}
#: Below this many free bytes in the output's folder, a failed write is put down to a full disk.
LOW_SPACE = 1 << 20


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(path: str | os.PathLike, create: bool = False,
                check: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``.

    Args:
        path: Final file path (its folder is created if missing).
        create: Leave an empty temporary file in place (for writers that open an existing file);
            by default the temporary name does not exist yet (GDAL/OGR drivers refuse to overwrite).
        check: Called with the temporary path once written; raises :class:`IncompleteOutput` when
            the file is not whole (GDAL and OGR only log a failed write, e.g. on a full disk:
            :func:`check_raster`, :func:`check_features`).

    Yields:
        The temporary path, with the same suffix as ``path`` so drivers pick the right format.

    Raises:
        OutputError: The file could not be written completely (no space left on the device, a
            quota or a file size limit, or it did not read back); nothing is left at ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".part{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    if not create:
        tmp.unlink()
    try:
        yield tmp
        if check is not None:
            check(tmp)
        if tmp.exists():
            os.chmod(tmp, _default_mode())  # mkstemp makes 0600 files; give them the usual mode
        os.replace(tmp, path)
    except BaseException as exc:
        failure = write_failure(path, exc)  # measured while the partial file still takes its space
        tmp.unlink(missing_ok=True)
        if failure is not None:
            raise failure from exc
        raise


class IncompleteOutput(Exception):
    """A written file does not read back whole (raised by the ``check`` of :func:`atomic_path`)."""


def free_bytes(folder: str | os.PathLike) -> int | None:
    """Bytes an unprivileged process may still write in ``folder``'s file system (None: unknown)."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


def probe_write(folder: str | os.PathLike, size: int = LOW_SPACE) -> int | None:
    """The errno of writing ``size`` bytes to a scratch file in ``folder`` (None: it fits).

    GDAL and OGR report a full disk in a log line and then fail on something else ("Write
    failed", a file that does not read back); trying a write of our own says why."""
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".dclabel-space-check-") as fh:
            fh.write(b"\0" * size)
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        return exc.errno
    return None


def _messages(exc: BaseException) -> list[str]:
    """The messages of ``exc`` and the exceptions it came from."""
    out, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        out.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return out


def write_failure(path: Path, exc: BaseException) -> OutputError | None:
    """The one-line :class:`OutputError` for ``exc``, raised while writing ``path``, when it was a
    write that did not fit (full disk, quota, file size limit), another failed write, or a file
    that did not read back; None for anything else (a bug, a cancel, an unreadable input), which
    is raised as it is. Call it while the partial file still takes its space."""
    if isinstance(exc, DclabelError) or not isinstance(exc, Exception):
        return None
    texts = _messages(exc)
    code = getattr(exc, "errno", None)
    if code not in NO_ROOM:
        code = next((n for n in NO_ROOM for t in texts if os.strerror(n).lower() in t.lower()), None)
    failed_write = isinstance(exc, IncompleteOutput) or any(
        "write" in t.lower() and ("fail" in t.lower() or "error" in t.lower()) for t in texts)
    if code is None and (failed_write or isinstance(exc, OSError)):
        code = probe_write(path.parent)
        if code is None and (free_bytes(path.parent) or LOW_SPACE) < LOW_SPACE:
            code = errno.ENOSPC
    free = free_bytes(path.parent)
    room = f", {free // 1024} KiB free in {path.parent}" if free is not None else ""
    if code in NO_ROOM:
        fix = ("raise the limit (ulimit -f) or write a smaller output" if code == errno.EFBIG
               else "free some space or write to another disk")
        return OutputError(f"{NO_ROOM[code]} writing {path}{room}; {fix}, then run again. No partial file was left.")
    if failed_write:
        detail = next((t for t in reversed(texts) if t), type(exc).__name__)
        return OutputError(f"{path}: could not be written ({detail}); check the disk (space{room}, errors in the "
                           "system log), then run again. No partial file was left.")
    return None


def check_raster(path: str | os.PathLike) -> None:
    """Raise :class:`IncompleteOutput` unless a written GeoTIFF opens, every block of every band
    lies inside the file, and its last block (and mask) reads: a full disk leaves files that GDAL
    closed without an error, with a directory or blocks past the end."""
    import rasterio
    from rasterio.errors import RasterioError
    from rasterio.windows import Window

    size = os.path.getsize(path)
    try:
        with rasterio.open(path) as src:
            (bh, bw), (h, w) = src.block_shapes[0], (src.height, src.width)
            last = Window((w - 1) // bw * bw, (h - 1) // bh * bh, 0, 0)
            last = Window(last.col_off, last.row_off, w - last.col_off, h - last.row_off)
            for b in src.indexes:
                if src.driver == "GTiff":
                    for row in range((h + bh - 1) // bh):
                        for col in range((w + bw - 1) // bw):
                            offset = src.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=b)
                            nbytes = src.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=b)
                            if offset is None or int(offset) + int(nbytes or 0) > size:
                                raise IncompleteOutput(f"block {col},{row} of band {b} is past the end of the "
                                                       f"file ({size} bytes)")
                src.read(b, window=last)
            src.read_masks(1, window=last)
    except RasterioError as exc:
        raise IncompleteOutput(str(exc)) from exc


def check_features(path: str | os.PathLike, count: int, layer: str | None = None) -> None:
    """Raise :class:`IncompleteOutput` unless a written vector file reads back with ``count``
    features (the GeoJSON driver leaves a file cut short when the disk fills, without an error)."""
    import pyogrio

    try:
        found = pyogrio.read_info(path, layer=layer, force_feature_count=True)["features"]
    except Exception as exc:  # pyogrio's errors: DataSourceError, DataLayerError, ...
        raise IncompleteOutput(str(exc)) from exc
    if found != count:
        raise IncompleteOutput(f"{found} features read back of {count} written")


@contextmanager
def all_or_none() -> Iterator[list[Path]]:
    """Yield a list for the paths of a set of outputs; if the block fails, those written are removed.

    Each file is atomic by itself (:func:`atomic_path`); this makes a set of them (a detection's
    GeoJSON, GeoPackage, CSV and mask) complete or absent, never a mix.
    """
    written: list[Path] = []
    try:
        yield written
    except BaseException:
        for p in written:
            Path(p).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | os.PathLike, payload: Any, indent: int | None = 2) -> Path:
    """Write JSON atomically, flushed to disk (``fsync``) before it replaces ``path``."""
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=indent)
        fh.flush()
        os.fsync(fh.fileno())
    return Path(path)


def check_outputs(outputs: Mapping[str, str | os.PathLike | None],
                  inputs: Mapping[str, str | os.PathLike | None], gpkg_layer: str = "detections") -> None:
    """Refuse, before any work, output paths that would destroy an input, each other or other data.

    Args:
        outputs: ``{"GeoJSON output": path or None, ...}``.
        inputs: ``{"input scene": path, "checkpoint": path, ...}`` (None entries are ignored).
        gpkg_layer: The layer a GeoPackage output holds: an existing GeoPackage (any SQLite file)
            is replaced only when that layer is all it holds (an earlier output of ours).

    Raises:
        ConfigError: An output is an existing folder or sits under a file, names the same file as
            an input, or as another output, or is an existing GeoPackage that is a dclabel label
            store or holds other layers (writing replaces the whole file).
    """
    def key(path) -> Path:
        return Path(path).expanduser().resolve()

    taken = {key(p): label for label, p in inputs.items() if p is not None}
    for label, path in outputs.items():
        if path is None:
            continue
        p = key(path)
        if p.is_dir():
            raise ConfigError(f"{path}: is a folder; the {label} needs a file path, e.g. "
                              f"{Path(path) / ('detections' + Path(path).suffix)}. Nothing was written.")
        blocker = next((a for a in p.parents if a.exists() and not a.is_dir()), None)
        if blocker is not None:
            raise ConfigError(f"{path}: {blocker} is a file, not a folder, so the {label} cannot be written there. "
                              "Nothing was written.")
        if p in taken:
            what = taken[p]
            fix = "give each output its own path" if what.endswith("output") else "choose another path"
            raise ConfigError(f"{path}: given as the {label}, but it is also the {what}; {fix}. Nothing was written.")
        taken[p] = label
        _check_writable(path, p, label)
        _check_not_other_data(path, p, label, gpkg_layer if p.suffix.lower() == ".gpkg" else None)


#: Tables of a GeoPackage that are its own bookkeeping, not layers (metadata, spatial indexes).
_GPKG_INTERNAL = ("gpkg", "rtree_", "sqlite_")


def geopackage_tables(path: str | os.PathLike) -> list[str] | None:
    """The user tables (layers, attribute tables) of an SQLite file such as a GeoPackage, without
    its bookkeeping tables; None when ``path`` is not an SQLite file. Read with ``sqlite3``
    read-only (never GDAL: see loop/labelstore.py on label stores held open)."""
    try:
        with open(path, "rb") as fh:
            if fh.read(16) != b"SQLite format 3\x00":
                return None
    except OSError:
        return None
    con = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    try:
        names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")]
    finally:
        con.close()
    return sorted(n for n in names if not n.lower().startswith(_GPKG_INTERNAL))


def _check_not_other_data(path, resolved: Path, label: str, layer: str | None) -> None:
    """Refuse an output that would replace an existing GeoPackage (or other SQLite file) holding
    more than ``layer``: a project's label store, or a GeoPackage with other layers (the output
    is written whole, under a temporary name, so every other layer would be lost)."""
    if not resolved.is_file():
        return
    try:
        tables = geopackage_tables(resolved)
    except sqlite3.Error as exc:  # an SQLite file we cannot read: do not guess what it holds
        raise ConfigError(f"{path}: the {label} would replace this SQLite/GeoPackage file, whose layers could not "
                          f"be read ({exc}); choose another path, or move the file away first if it can go. "
                          "Nothing was written.") from exc
    if tables is None:
        return
    if "dclabel_meta" in tables:
        raise ConfigError(f"{path}: is a dclabel label store (a project's labels.gpkg: "
                          f"{', '.join(t for t in tables if not t.startswith('dclabel_'))}); the {label} would replace it and "
                          f"every label in it. Choose another path, e.g. {Path(path).with_name('detections.gpkg')}. "
                          "Nothing was written.")
    others = [t for t in tables if t != layer]
    if others:
        keeps = f" (only a file holding just the layer {layer} is replaced)" if layer else ""
        raise ConfigError(f"{path}: is a GeoPackage holding layer(s) {', '.join(tables)}; the {label} would replace "
                          f"the whole file and lose them{keeps}. Choose another path, or move the file away first "
                          "if those layers can go. Nothing was written.")


def _check_writable(path, resolved: Path, label: str) -> None:
    """Refuse an output whose folder cannot be written (read-only, no permission), by creating and
    removing a file in its nearest existing folder: found now, not after the whole detection."""
    folder = next(a for a in resolved.parents if a.exists())
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".dclabel-write-check-"):
            pass
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write the {label} in {folder} ({exc.strerror or exc}); choose a folder "
                          "you can write to. Nothing was written.") from exc
