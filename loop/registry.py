"""Model versions of a project: ``checkpoints/vN.pt`` plus ``checkpoints/registry.json``.

A new version becomes *current* only when it validates at least as well as the current model on
the same validation chips (within a tolerance); otherwise it is kept as a *candidate* with the
reason, and the user may promote it by hand. Two processes share the registry (the GUI reads while
a retraining job publishes): every write is a temporary file plus ``os.replace``, publishing holds
a lock file, and every read re-reads ``registry.json`` and checks every entry (a hand-edited file
with a bad entry is one clear error, before any training starts). A new version never takes the
name of a ``vN.pt`` file already in the folder, listed or not.

One retraining round per project runs at a time: the process that trains holds
:class:`RetrainLock` (an OS lock on ``checkpoints/.retrain.lock``, released by the OS when that
process ends, however it ends), so a second round is refused at once instead of publishing a model
compared with a stale current one.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock

from loop.errors import LoopError, ProjectError
from model.atomic import write_json_atomic
from model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from model.errors import CheckpointError

try:  # POSIX; where it is missing (Windows) rounds are not serialised
    import fcntl
except ImportError:  # pragma: no cover - not on the platforms dclabel is tested on
    fcntl = None

REGISTRY_FILE = "registry.json"
RETRAIN_LOCK_FILE = ".retrain.lock"
FORMAT = "dclabel-registry/1"
STATUSES = ("current", "previous", "candidate")
_VERSION_NAME = re.compile(r"v([1-9][0-9]*)")
_VERSION_FILE = re.compile(r"v([1-9][0-9]*)\.pt")


class RetrainBusyError(LoopError, RuntimeError):
    """Another process is retraining the same project."""


@dataclass(frozen=True)
class ModelVersion:
    """One published model version.

    Attributes:
        version: ``v1``, ``v2``, ...
        path: Checkpoint file.
        parent: The current version it was trained against (warm-started from, unless the round
            started over from a blind model: ``train["restart"]`` of its checkpoint), or None.
        metrics: Validation metrics of the checkpoint (``iou``, ...), plus ``baseline_<metric>``
            when the current model was re-evaluated on the same chips.
        data_version: Label-store version it was trained on.
        created: ISO 8601 UTC time of publishing.
        status: ``current``, ``previous`` (was current once) or ``candidate`` (never promoted).
        reason: Why it was promoted or kept as a candidate.
    """

    version: str
    path: Path
    parent: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    data_version: str | None = None
    created: str = ""
    status: str = "candidate"
    reason: str = ""

    @property
    def number(self) -> int:
        """The N of ``vN``."""
        return int(self.version.lstrip("v"))


@dataclass(frozen=True)
class PublishResult:
    """Outcome of :meth:`CheckpointRegistry.publish`."""

    version: str
    promoted: bool
    reason: str
    path: Path


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class CheckpointRegistry:
    """Versions, current model and candidates of one project.

    Args:
        root: The ``checkpoints/`` folder (created if missing).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(self.root / ".registry.lock"), timeout=60)
        self._valid_cache: dict[str, tuple[float, int]] = {}
        self._warned: set[tuple] = set()  # unloadable-current warnings already given

    @property
    def path(self) -> Path:
        """The ``registry.json`` file."""
        return self.root / REGISTRY_FILE

    # ----- reading ------------------------------------------------------------------------------
    def _read(self) -> dict:
        if not self.path.exists():
            return {"format": FORMAT, "versions": [], "promotions": []}
        try:
            payload = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(payload, dict) or not isinstance(payload.get("versions"), list):
                raise ValueError("no 'versions' list")
        except (OSError, ValueError) as exc:
            raise ProjectError(
                f"{self.path}: expected the checkpoint registry (JSON with a 'versions' list), found "
                f"something unreadable ({exc}). Restore it or move it aside; the vN.pt files are intact."
            ) from exc
        payload.setdefault("promotions", [])
        self._check(payload)
        return payload

    def _check(self, payload: dict) -> None:
        """Raise one clear error for the first entry a hand edit broke (before anything trusts it)."""
        def bad(where: str, expected: str, found) -> ProjectError:
            return ProjectError(f"{self.path}: {where}: expected {expected}, found {found!r}. Fix or remove "
                                "it (the vN.pt files are intact).")

        seen: set[str] = set()
        for i, row in enumerate(payload["versions"], start=1):
            if not isinstance(row, dict):
                raise bad(f"entry {i} of 'versions'", "an object with 'version' and 'path'", row)
            name = row.get("version")
            where = f"entry {i} of 'versions' ({name!r})" if isinstance(name, str) else f"entry {i} of 'versions'"
            if not isinstance(name, str) or not _VERSION_NAME.fullmatch(name):
                raise bad(where, "'version' like 'v1', 'v2', ...", name)
            if name in seen:
                raise bad(where, "each version listed once", f"{name} again")
            seen.add(name)
            path = row.get("path")
            if not isinstance(path, str) or not path.strip():
                raise bad(where, "'path' naming its checkpoint file (e.g. 'v1.pt')", path)
            for key in ("parent", "data_version"):
                if row.get(key) is not None and not isinstance(row[key], str):
                    raise bad(where, f"'{key}' as text or null", row[key])
            status = row.get("status", "candidate")
            if status not in STATUSES:
                raise bad(where, f"'status' one of {', '.join(STATUSES)}", status)
            for key in ("created", "reason"):
                if not isinstance(row.get(key, ""), str):
                    raise bad(where, f"'{key}' as text", row[key])
            metrics = row.get("metrics", {})
            if not isinstance(metrics, dict):
                raise bad(where, "'metrics' as an object of numbers", metrics)
            for key, value in metrics.items():
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise bad(f"{where}, metric {key!r}", "a number", value)
        promotions = payload["promotions"]
        if not isinstance(promotions, list) or not all(isinstance(v, str) for v in promotions):
            raise bad("'promotions'", "a list of version names", promotions)

    def _version(self, row: dict) -> ModelVersion:
        path = Path(row["path"])
        return ModelVersion(
            version=row["version"],
            path=path if path.is_absolute() else self.root / path,
            parent=row.get("parent"),
            metrics=dict(row.get("metrics", {})),
            data_version=row.get("data_version"),
            created=row.get("created", ""),
            status=row.get("status", "candidate"),
            reason=row.get("reason", ""),
        )

    def versions(self) -> list[ModelVersion]:
        """Every published version, oldest first (re-read from disk)."""
        return [self._version(r) for r in self._read()["versions"]]

    def get(self, version: str) -> ModelVersion:
        """One version by name.

        Raises:
            ProjectError: No such version.
        """
        for v in self.versions():
            if v.version == version:
                return v
        names = ", ".join(v.version for v in self.versions()) or "none"
        raise ProjectError(f"{self.path}: no model version {version!r} (have: {names}).")

    def candidates(self) -> list[ModelVersion]:
        """Versions kept as candidates (never promoted), newest first."""
        return [v for v in reversed(self.versions()) if v.status == "candidate"]

    def _loads(self, mv: ModelVersion) -> bool:
        """True when the checkpoint file loads (cached by modification time and size)."""
        try:
            st = mv.path.stat()
        except OSError:
            return False
        key = (st.st_mtime, st.st_size)
        if self._valid_cache.get(str(mv.path)) == key:
            return True
        try:
            load_checkpoint(mv.path)
        except CheckpointError:
            return False
        self._valid_cache[str(mv.path)] = key
        return True

    def current(self) -> ModelVersion | None:
        """The current model version, or None before the first publish.

        A current version whose checkpoint is missing or corrupt is skipped with a warning and the
        most recent earlier current version that loads is returned instead (without changing the
        registry file, so a repaired file is picked up again).
        """
        payload = self._read()
        by_name = {r["version"]: self._version(r) for r in payload["versions"]}
        history = [v for v in payload["promotions"] if v in by_name]
        if not history:  # a registry written without a promotion log: fall back to statuses
            history = [n for n, v in by_name.items() if v.status in ("current", "previous")]
        skipped: list[ModelVersion] = []
        for name in reversed(history):
            mv = by_name[name]
            if self._loads(mv):
                if skipped:
                    self._warn_skipped(skipped, f"using {name}, the latest earlier current version that loads")
                return replace(mv, status="current")
            skipped.append(mv)
        if skipped:
            self._warn_skipped(skipped, "no earlier version loads either, so there is no model (cold start)")
        return None

    def _warn_skipped(self, skipped: list[ModelVersion], outcome: str) -> None:
        """Warn once (per state of the files) that current versions were skipped as unloadable."""
        def state(mv: ModelVersion):
            try:
                st = mv.path.stat()
            except OSError:
                return (str(mv.path), None)
            return (str(mv.path), st.st_mtime, st.st_size)

        key = tuple(state(mv) for mv in skipped)
        if key in self._warned:
            return
        self._warned.add(key)
        names = ", ".join(f"{mv.version} ({mv.path})" for mv in skipped)
        warnings.warn(f"checkpoint of current model {names} is missing or corrupt; {outcome}. Retrain or "
                      "promote another version (`dclabel models PROJECT --promote VERSION`).", RuntimeWarning, stacklevel=3)

    def load_current(self) -> Checkpoint | None:
        """The current checkpoint, loaded, or None."""
        mv = self.current()
        return load_checkpoint(mv.path) if mv is not None else None

    # ----- writing ------------------------------------------------------------------------------
    def _write(self, payload: dict) -> None:
        write_json_atomic(self.path, payload)

    @contextmanager
    def _locked(self):
        with self._lock:
            yield self._read()

    def _next_number(self, rows: list[dict]) -> int:
        """The next version number: above every listed version and every ``vN.pt`` in the folder.

        A file the registry does not list (a registry moved aside, a checkpoint dropped in by hand)
        is never overwritten.
        """
        listed = (int(r["version"].lstrip("v")) for r in rows)
        on_disk = (int(m.group(1)) for p in self.root.iterdir() if (m := _VERSION_FILE.fullmatch(p.name)))
        number = max((*listed, *on_disk), default=0) + 1
        while (self.root / f"v{number}.pt").exists():  # a file that appeared since the listing
            number += 1
        return number

    def publish(
        self,
        ckpt: Checkpoint,
        tolerance: float = 0.02,
        metric: str = "iou",
        baseline: float | None = None,
        trained_from: str | None = None,
        unmeasured: str | None = None,
    ) -> PublishResult:
        """Save a checkpoint as the next version; promote it if it does not regress.

        Args:
            ckpt: The trained checkpoint; its ``version`` and ``parent`` are set here.
            tolerance: Allowed drop of ``metric`` below the current model before refusing.
            metric: Validation metric compared (key of ``ckpt.metrics``; higher is better).
            baseline: The current model's ``metric`` on the same validation chips; default the
                metric recorded when the current model was published.
            trained_from: The version ``ckpt`` was warm-started from and ``baseline`` was measured
                on (recorded as its parent). When another version is current by now (promoted by
                hand meanwhile), the comparison is stale and the new version is kept as a candidate.
                Default: the current version.
            unmeasured: Why ``metric`` could not be measured on the validation chips (e.g. they hold
                no data-center pixel). A first model is still promoted; a later one is kept as a
                candidate with this reason, since it cannot be shown to be no worse.

        Returns:
            The version name, whether it became current, and why.
        """
        label = f"val {'IoU' if metric == 'iou' else metric}"
        with self._locked() as payload:
            rows = payload["versions"]
            name = f"v{self._next_number(rows)}"
            cur = self.current()
            parent = trained_from if trained_from is not None else (cur.version if cur is not None else None)
            ckpt.version = name
            ckpt.parent = parent
            new = ckpt.metrics.get(metric)
            ref = baseline if baseline is not None else (cur.metrics.get(metric) if cur else None)
            new = None if new is None or math.isnan(new) else float(new)
            ref = None if ref is None or math.isnan(ref) else float(ref)
            if cur is None:
                promoted, reason = True, "first model" + (f" ({label} not measured: {unmeasured})" if unmeasured else "")
            elif trained_from is not None and trained_from != cur.version:
                promoted, reason = False, (f"trained from {trained_from}, but {cur.version} became current "
                                           "meanwhile; compare them (`dclabel models`) and promote by hand")
            elif unmeasured:
                promoted, reason = False, (f"{label} not measured: {unmeasured}, so it cannot be compared with "
                                           f"current {cur.version}; review a chip with a data center, or promote "
                                           "it by hand (`dclabel models PROJECT --promote VERSION`)")
            elif new is None:
                promoted, reason = False, f"no {label} to compare with current {cur.version}"
            elif ref is None:
                promoted, reason = True, f"{label} {new:.2f}; current {cur.version} has no {metric}"
            elif new >= ref - tolerance:
                promoted, reason = True, f"{label} {new:.2f} >= current {ref:.2f} - {tolerance:g}"
            else:
                promoted, reason = False, f"{label} {new:.2f} < current {ref:.2f} - {tolerance:g}"
            metrics = {k: float(v) for k, v in ckpt.metrics.items()}
            if baseline is not None:
                metrics[f"baseline_{metric}"] = float(baseline)
            path = save_checkpoint(ckpt, self.root / f"{name}.pt")
            row = asdict(
                ModelVersion(
                    version=name,
                    path=Path(path.name),
                    parent=parent,
                    metrics=metrics,
                    data_version=ckpt.data_version,
                    created=_now(),
                    status="candidate",
                    reason=reason,
                )
            )
            row["path"] = path.name
            rows.append(row)
            if promoted:
                self._set_current(payload, name)
            self._write(payload)
        return PublishResult(version=name, promoted=promoted, reason=reason, path=path)

    @staticmethod
    def _set_current(payload: dict, name: str) -> None:
        for r in payload["versions"]:
            if r["version"] == name:
                r["status"] = "current"
            elif r["status"] == "current":
                r["status"] = "previous"
        payload["promotions"] = [v for v in payload["promotions"] if v != name] + [name]

    def promote(self, version: str, reason: str = "promoted by hand") -> ModelVersion:
        """Make a version current (e.g. a candidate the user prefers, or a rollback).

        Raises:
            ProjectError: No such version.
            CheckpointError: Its checkpoint does not load.
        """
        mv = self.get(version)
        load_checkpoint(mv.path)
        with self._locked() as payload:
            self._set_current(payload, version)
            for r in payload["versions"]:
                if r["version"] == version:
                    r["reason"] = reason
            self._write(payload)
        return self.get(version)


class RetrainLock:
    """One retraining round per project at a time: an OS lock held by the process that trains.

    ``fcntl.flock`` on ``checkpoints/.retrain.lock``: the OS releases it when the holder exits,
    however it exits (``kill -9`` included), so a crashed round never blocks the next one. The file
    holds the holder's pid, for the refusal message.

    Args:
        root: The ``checkpoints/`` folder.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.path = Path(root) / RETRAIN_LOCK_FILE
        self._fd: int | None = None

    def _try_lock(self) -> int | None:
        """A locked descriptor of the lock file, or None when another holder has it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is None:  # pragma: no cover
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def holder(self) -> int | None:
        """The pid of the process retraining this project now (0 when unknown), or None."""
        if self._fd is not None:
            return os.getpid()
        fd = self._try_lock()
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the lock
            return None
        try:
            return int(self.path.read_text(encoding="utf-8").split()[0])
        except (OSError, ValueError, IndexError):
            return 0

    def _busy(self, pid: int) -> RetrainBusyError:
        who = f"pid {pid}" if pid else "another process"
        project = self.path.parent.parent
        return RetrainBusyError(f"{project} is already being retrained ({who}, holding {self.path}); wait for "
                                "that round to finish or stop it, then retry.")

    def check(self) -> None:
        """Raise at once if another process is retraining the project (without taking the lock).

        Raises:
            RetrainBusyError: Another round holds the lock.
        """
        pid = self.holder()
        if pid is not None and self._fd is None:
            raise self._busy(pid)

    def acquire(self) -> None:
        """Take the lock and record this process's pid in the file.

        Raises:
            RetrainBusyError: Another round holds the lock (refused at once, never waits).
        """
        if self._fd is not None:
            return
        fd = self._try_lock()
        if fd is None:
            raise self._busy(self.holder() or 0)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Drop the lock (also dropped by the OS when the process ends)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RetrainLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
