"""The review queue as a value and as ``queue.json`` in the project folder.

:class:`QueueItem` is one ranked chip with the model's proposals; :func:`save_queue` writes a
queue atomically (geometries as WKT, windows as col_off/row_off/width/height) and
:func:`load_queue` reads it back, dropping chips reviewed since it was ranked.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import shapely.wkt
from rasterio.windows import Window

from loop.errors import ProjectError
from loop.proposals import Proposal
from model.atomic import write_json_atomic
from model.errors import DclabelError

QUEUE_FILE = "queue.json"
QUEUE_FORMAT = "dclabel-queue/1"


@dataclass(frozen=True)
class QueueItem:
    """One chip of the review queue.

    Attributes:
        rank: 1-based position, 1 = most informative.
        scene_id: Scene of the chip.
        window: Chip window in scene pixels.
        score: Chip score of the strategy (higher = more informative; cold start: a priority).
        proposals: The model's proposals on the chip (empty without a model).
    """

    rank: int
    scene_id: str
    window: Window
    score: float
    proposals: tuple[Proposal, ...] = ()


def window_key(scene_id: str, window: Window) -> tuple[str, int, int, int, int]:
    """Hashable identity of a chip: (scene_id, col_off, row_off, width, height)."""
    return (
        scene_id,
        int(window.col_off),
        int(window.row_off),
        int(window.width),
        int(window.height),
    )


def _window_json(window: Window) -> dict[str, int]:
    return {
        "col_off": int(window.col_off),
        "row_off": int(window.row_off),
        "width": int(window.width),
        "height": int(window.height),
    }


def _window_from(d: dict) -> Window:
    return Window(int(d["col_off"]), int(d["row_off"]), int(d["width"]), int(d["height"]))


def save_queue(project, items: list[QueueItem], strategy: str | None = None,
               model_version: str | None = None) -> Path:
    """Store a queue as ``queue.json`` in the project folder (atomic write).

    Args:
        project: Object with a ``root`` folder.
        items: The queue from :func:`rank_chips`.
        strategy: Strategy name recorded with the queue (informative only).
        model_version: Version of the model that scored it (None: no model, a cold start); the
            app re-ranks a saved queue that another model scored (:func:`queue_model_version`).

    Returns:
        Path of the written file.
    """
    path = Path(project.root) / QUEUE_FILE
    payload = {
        "format": QUEUE_FORMAT,
        "strategy": strategy,
        "model_version": model_version,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "items": [
            {
                "rank": it.rank,
                "scene_id": it.scene_id,
                "window": _window_json(it.window),
                "score": it.score,
                "proposals": [
                    {
                        "geometry": p.geometry.wkt,
                        "score": p.score,
                        "uncertainty": p.uncertainty,
                        "area_m2": p.area_m2,
                    }
                    for p in it.proposals
                ],
            }
            for it in items
        ],
    }
    return write_json_atomic(path, payload, indent=None)


def queue_model_version(project) -> tuple[bool, str | None]:
    """``(known, version)``: the model version that scored the saved queue.

    ``known`` is False when there is no queue or it predates the field (or cannot be read): the
    caller cannot tell which model scored it.
    """
    path = Path(project.root) / QUEUE_FILE
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False, None
    if not isinstance(payload, dict) or "model_version" not in payload:
        return False, None
    return True, payload["model_version"]


def queue_is_stale(project) -> bool:
    """Whether the saved queue was scored by another model than the registry's current one (or by
    an unknown one: saved before queues recorded it), so it should be ranked again."""
    known, version = queue_model_version(project)
    try:
        current = project.registry.current()
    except DclabelError:
        return False
    return not known or version != (current.version if current is not None else None)


def unqueued_scenes(project, items: list[QueueItem]) -> list[str]:
    """Scenes with unreviewed chips of which no chip is in ``items`` (e.g. added after the queue
    was ranked): the queue should be ranked again to include them."""
    queued = {it.scene_id for it in items}
    reviewed: dict[str, int] = {}
    for r in project.labels.reviewed_chips():
        reviewed[r.scene_id] = reviewed.get(r.scene_id, 0) + 1
    return [s.scene_id for s in project.readable_scenes() if s.scene_id not in queued
            and len(project.chip_windows(s.scene_id)) > reviewed.get(s.scene_id, 0)]


def load_queue(project, skip_reviewed: bool = True) -> list[QueueItem]:
    """Read the queue saved by :func:`save_queue`.

    Args:
        project: Object with ``root`` (and ``labels.reviewed_chips()`` if ``skip_reviewed``).
        skip_reviewed: Drop chips reviewed since the queue was ranked (ranks are kept).

    Returns:
        The queue, or an empty list when none was saved yet.

    Raises:
        ProjectError: The file exists but is not a dclabel queue.
    """
    path = Path(project.root) / QUEUE_FILE
    if not path.exists():
        return []
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        if payload.get("format") != QUEUE_FORMAT:
            raise ValueError(f"format {payload.get('format')!r}")
        items = []
        for d in payload["items"]:
            window = _window_from(d["window"])
            props = tuple(
                Proposal(
                    d["scene_id"],
                    window,
                    shapely.wkt.loads(p["geometry"]),
                    float(p["score"]),
                    float(p["uncertainty"]),
                    float(p["area_m2"]),
                )
                for p in d["proposals"]
            )
            items.append(QueueItem(int(d["rank"]), d["scene_id"], window, float(d["score"]), props))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ProjectError(
            f"{path}: expected a {QUEUE_FORMAT} review queue, found something else ({exc}). "
            "Delete it and run `dclabel rank` again."
        ) from exc
    if skip_reviewed:
        reviewed = {window_key(r.scene_id, r.window) for r in project.labels.reviewed_chips()}
        items = [it for it in items if window_key(it.scene_id, it.window) not in reviewed]
    return items
