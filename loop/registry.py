"""Model versions of a project: ``checkpoints/vN.pt`` plus ``checkpoints/registry.json``.

A new version becomes *current* only when it validates at least as well as the current model on
the same validation chips (within a tolerance); otherwise it is kept as a *candidate* with the
reason, and the user may promote it by hand. Two processes share the registry (the GUI reads while
a retraining job publishes): every write is a temporary file plus ``os.replace``, publishing holds
a lock file, and every read re-reads ``registry.json``.
"""

from __future__ import annotations

import json
import os
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from filelock import FileLock

from loop.errors import ProjectError
from model.atomic import write_json_atomic
from model.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from model.errors import CheckpointError

REGISTRY_FILE = "registry.json"
FORMAT = "dclabel-registry/1"
STATUSES = ("current", "previous", "candidate")


@dataclass(frozen=True)
class ModelVersion:
    """One published model version.

    Attributes:
        version: ``v1``, ``v2``, ...
        path: Checkpoint file.
        parent: Version it was warm-started from (the current one when published), or None.
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
        return payload

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
                      "promote another version.", RuntimeWarning, stacklevel=3)

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

    def publish(
        self,
        ckpt: Checkpoint,
        tolerance: float = 0.02,
        metric: str = "iou",
        baseline: float | None = None,
    ) -> PublishResult:
        """Save a checkpoint as the next version; promote it if it does not regress.

        Args:
            ckpt: The trained checkpoint; its ``version`` and ``parent`` are set here.
            tolerance: Allowed drop of ``metric`` below the current model before refusing.
            metric: Validation metric compared (key of ``ckpt.metrics``; higher is better).
            baseline: The current model's ``metric`` on the same validation chips; default the
                metric recorded when the current model was published.

        Returns:
            The version name, whether it became current, and why.
        """
        with self._locked() as payload:
            rows = payload["versions"]
            number = max((int(r["version"].lstrip("v")) for r in rows), default=0) + 1
            name = f"v{number}"
            cur = self.current()
            ckpt.version = name
            ckpt.parent = cur.version if cur is not None else None
            new = ckpt.metrics.get(metric)
            ref = baseline if baseline is not None else (cur.metrics.get(metric) if cur else None)
            label = f"val {metric.upper() if metric == 'iou' else metric}"
            if cur is None:
                promoted, reason = True, "first model"
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
                    parent=ckpt.parent,
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
