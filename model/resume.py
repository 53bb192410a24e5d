"""What a ``batch-detect`` scene's outputs were made from, so that a rerun redoes only what changed.

Next to ``<stem>.geojson`` a scene's run leaves ``<stem>.detect.json``: the input file (path, size,
modification time), the checkpoint (SHA-256 of its file, version), the detection settings that
change the result (threshold resolved, so a checkpoint's own counts) and the outputs written. A
rerun skips the scene only when all of these are the same and every output asked for exists;
otherwise it says why and detects again. Outputs without a record (an older dclabel, a crash
between the outputs and the record) are redone.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from model.atomic import write_json_atomic
from model.config import DetectConfig

RECORD_SUFFIX = ".detect.json"
#: Settings that do not change the detections (where and how fast they run).
IGNORED_SETTINGS = ("device", "batch_size")


@dataclass(frozen=True)
class Decision:
    """Whether a scene's outputs are up to date.

    Attributes:
        skip: The outputs were made from the same input, checkpoint and settings, and all exist.
        reason: Why the scene is detected again (empty for a scene without earlier outputs).
    """

    skip: bool
    reason: str = ""


def record_path(out: Path, stem: str) -> Path:
    """The record of scene ``stem`` in the output folder."""
    return out / f"{stem}{RECORD_SUFFIX}"


def scene_outputs(stem: str, masks: bool) -> list[str]:
    """File names ``batch-detect`` writes for a scene."""
    return [f"{stem}.geojson"] + ([f"{stem}_mask.tif"] if masks else [])


def checkpoint_identity(path: str | os.PathLike, version: str) -> dict[str, str]:
    """The checkpoint file's SHA-256 and version."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return {"sha256": digest.hexdigest(), "version": str(version)}


def input_identity(path: str | os.PathLike) -> dict[str, Any]:
    """The input scene as a rerun recognises it: absolute path, size and modification time (None
    for a missing file: detecting it then raises the error that says so)."""
    try:
        st = Path(path).stat()
    except OSError:
        return {"path": str(Path(path).resolve()), "size": None, "mtime_ns": None}
    return {"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def detection_settings(config: DetectConfig) -> dict[str, Any]:
    """The settings that change a scene's detections, as JSON values (pass the config with its
    threshold resolved, see :func:`model.detect.with_threshold`)."""
    settings = {k: v for k, v in asdict(config).items() if k not in IGNORED_SETTINGS}
    return json.loads(json.dumps(settings))


def _read(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def decide(out: Path, stem: str, image: str | os.PathLike, checkpoint: dict, settings: dict,
           masks: bool) -> Decision:
    """Whether scene ``stem`` (file ``image``) needs detecting again in ``out``.

    Args:
        out: Output folder.
        stem: The scene's output name.
        image: The scene file.
        checkpoint: :func:`checkpoint_identity` of this run's checkpoint.
        settings: :func:`detection_settings` of this run.
        masks: Whether this run writes masks.

    Returns:
        A :class:`Decision`.
    """
    record = _read(record_path(out, stem))
    if record is None:
        if (out / f"{stem}.geojson").exists():
            return Decision(False, "earlier outputs without a record of how they were made")
        return Decision(False)
    reasons = []
    old_in, new_in = record.get("input", {}), input_identity(image)
    if old_in.get("path") != new_in["path"]:
        reasons.append(f"the input is another file (was {old_in.get('path')})")
    elif (old_in.get("size"), old_in.get("mtime_ns")) != (new_in["size"], new_in["mtime_ns"]):
        reasons.append("the input scene changed (size or modification time)")
    old_ck = record.get("checkpoint", {})
    if old_ck.get("sha256") != checkpoint["sha256"]:
        was, now = old_ck.get("version"), checkpoint["version"]
        reasons.append(f"another checkpoint ({was} -> {now})" if was != now else
                       f"the checkpoint file changed (version {now})")
    old_set = record.get("settings", {})
    changed = [f"{k} {old_set.get(k)} -> {v}" for k, v in settings.items() if old_set.get(k) != v]
    if changed:
        reasons.append("other settings (" + ", ".join(changed) + ")")
    missing = [name for name in scene_outputs(stem, masks) if not (out / name).exists()]
    if missing:
        reasons.append(f"{', '.join(missing)} missing")
    return Decision(not reasons, "; ".join(reasons))


def forget(out: Path, stem: str, masks: bool) -> None:
    """Before a scene is detected again: remove its record (so a crash before the new one is
    written cannot make stale outputs look current) and, when no mask is asked for now, the mask
    the record says an earlier run wrote (it would not match the new detections)."""
    path = record_path(out, stem)
    record = _read(path)
    path.unlink(missing_ok=True)
    mask = f"{stem}_mask.tif"
    if record is not None and not masks and mask in record.get("outputs", []):
        (out / mask).unlink(missing_ok=True)


def remember(out: Path, stem: str, image_identity: dict, checkpoint: dict, settings: dict, masks: bool) -> Path:
    """Write scene ``stem``'s record after its outputs (``image_identity`` taken before reading it)."""
    return write_json_atomic(record_path(out, stem), {
        "input": image_identity, "checkpoint": checkpoint, "settings": settings,
        "outputs": scene_outputs(stem, masks)})
