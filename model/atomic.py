"""Atomic file writes: write under a temporary name in the target folder, then ``os.replace``.

A crash, a kill or an exception never leaves a half-written file at the target path, and the
previous version (if any) stays intact until the new one is complete.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from model.errors import ConfigError


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(path: str | os.PathLike, create: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``.

    Args:
        path: Final file path (its folder is created if missing).
        create: Leave an empty temporary file in place (for writers that open an existing file);
            by default the temporary name does not exist yet (GDAL/OGR drivers refuse to overwrite).

    Yields:
        The temporary path, with the same suffix as ``path`` so drivers pick the right format.
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
        if tmp.exists():
            os.chmod(tmp, _default_mode())  # mkstemp makes 0600 files; give them the usual mode
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
                  inputs: Mapping[str, str | os.PathLike | None]) -> None:
    """Refuse, before any work, output paths that would destroy an input or each other.

    Args:
        outputs: ``{"GeoJSON output": path or None, ...}``.
        inputs: ``{"input scene": path, "checkpoint": path, ...}`` (None entries are ignored).

    Raises:
        ConfigError: An output is an existing folder or sits under a file, names the same file as
            an input, or as another output.
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
