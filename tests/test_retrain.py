"""Background retraining in a real subprocess: events, coalesced requests, cancel, kill, no data."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window
from shapely.geometry import box

from loop.errors import NoTrainingDataError
from loop.project import Project
from loop.retrain import RetrainJob
from loop.retrain_worker import (
    FINETUNE_LR_FACTOR,
    RetrainSettings,
    chip_hash,
    run_round,
    split_train_val,
)
from model.checkpoint import Checkpoint, Normalization, load_checkpoint
from model.scene import Chip, write_geotiff
from model.unet import UNet, UNetConfig

torch.set_num_threads(1)
UTM = CRS.from_epsg(32617)
TINY = UNetConfig(base_channels=4, depth=2)
CHIP = 32


def make_project(tmp_path, positives=True, review=True):
    """A 64x96 scene, 6 chips of 32 px; two bright 'data centers', everything reviewed."""
    rng = np.random.default_rng(3)
    img = rng.integers(40, 90, (4, 64, 96), dtype=np.uint8)
    transform = Affine(0.6, 0, 600_000.0, 0, -0.6, 4_000_000.0)
    rects = [(4, 4, 20, 16), (40, 60, 56, 80)]  # (row0, col0, row1, col1)
    for r0, c0, r1, c1 in rects:
        img[:, r0:r1, c0:c1] = 220
    write_geotiff(tmp_path / "scene.tif", img, UTM, transform)
    project = Project.create(tmp_path / "proj", images=[tmp_path / "scene.tif"], chip_size=CHIP)
    sid = project.scene_ids[0]
    x0, y0 = transform @ (0, 0)
    for r0, c0, r1, c1 in rects:
        cls = "datacenter" if positives else "warehouse"
        project.labels.add_footprint(sid, box(x0 + c0 * 0.6, y0 - r1 * 0.6, x0 + c1 * 0.6, y0 - r0 * 0.6), cls)
    if review:
        for w in project.chip_windows(sid):
            project.labels.mark_reviewed(sid, w)
    return project


def tiny_job(project, **kw):
    kw = {"epochs": 1, "batch_size": 4, "unet": TINY, "threads": 1, "val_fraction": 0.3, **kw}
    return RetrainJob(project.root, **kw)


def publish_stand_in(project, iou=0.2) -> str:
    ckpt = Checkpoint(UNet(TINY).state_dict(), TINY, Normalization((60.0,) * 4, (40.0,) * 4), metrics={"iou": iou})
    return project.registry.publish(ckpt).version


def test_split_is_stable_and_nonempty():
    chips = [Chip("s", Window(c, r, 32, 32), UTM, Affine.identity(), None)
             for r in range(0, 320, 32) for c in range(0, 320, 32)]
    train, val = split_train_val(chips, 0.2)
    assert len(train) + len(val) == 100 and 8 <= len(val) <= 35
    # a chip's side does not depend on the other chips (rounds keep validating on the same chips)
    _, val_half = split_train_val(chips[:50], 0.2)
    assert {id(c) for c in val_half} <= {id(c) for c in val}
    assert all(chip_hash(c) < 0.2 for c in val)
    one = chips[:1]
    assert split_train_val(one, 0.2) == (one, one)


def test_no_reviewed_chips_is_refused_before_starting(tmp_path):
    project = make_project(tmp_path, review=False)
    job = tiny_job(project)
    with pytest.raises(NoTrainingDataError, match="no reviewed chips in .*review some chips first"):
        job.start()
    assert not job.is_running and job.poll() == []


def test_only_negative_chips_is_refused(tmp_path):
    project = make_project(tmp_path, positives=False)
    with pytest.raises(NoTrainingDataError, match="empty or hard negatives"):
        tiny_job(project).request()


def test_round_in_subprocess_publishes_and_coalesces_requests(tmp_path):
    project = make_project(tmp_path)
    job = tiny_job(project)
    assert job.request() is True and job.is_running
    assert job.request() is False and job.request() is False  # one follow-up, not two
    assert job.pending
    events = job.wait(timeout=240)
    assert not job.is_running
    types = [e["type"] for e in events]
    assert types.count("started") == 2 and types.count("done") == 2, types
    assert "step" in types and "epoch" in types
    first = next(e for e in events if e["type"] == "started")
    assert first["n_train"] + first["n_val"] == 6 and first["n_val"] >= 1 and first["parent"] is None
    epoch = next(e for e in events if e["type"] == "epoch")
    assert {"epoch", "loss"} <= set(epoch)
    first_round = events[: types.index("done")]
    step_epochs = {e["epoch"] for e in first_round if e["type"] == "step"}
    epoch_numbers = [e["epoch"] for e in first_round if e["type"] == "epoch"]
    assert epoch_numbers[0] == 1 and step_epochs == set(epoch_numbers)  # one count, from 1, in both events
    results = [e for e in events if e["type"] in ("published", "rejected")]
    assert [r["version"] for r in results] == ["v1", "v2"]
    assert results[0]["promoted"] and results[0]["reason"] == "first model"
    v2 = project.registry.get("v2")
    assert v2.parent == "v1" and "baseline_iou" in v2.metrics  # warm start, compared on the same chips
    ckpt = load_checkpoint(v2.path)
    assert ckpt.unet == TINY and ckpt.train["n_train"] == first["n_train"]
    started = [e for e in events if e["type"] == "started"]
    assert started[0]["lr"] == pytest.approx(1e-3)  # a first model trains at the set rate
    assert started[1]["lr"] == pytest.approx(1e-3 * FINETUNE_LR_FACTOR) == ckpt.train["lr"]  # a warm start fine-tunes
    assert load_checkpoint(project.registry.get("v1").path).train["lr"] == pytest.approx(1e-3)
    assert ckpt.data_version == str(project.labels.version)
    assert not list((project.root / "checkpoints").glob("*.part"))
    assert (project.root / "logs" / "retrain.jsonl").exists()


def test_cancel_keeps_current_model(tmp_path):
    project = make_project(tmp_path)
    publish_stand_in(project)
    before = (project.root / "checkpoints" / "registry.json").read_bytes()
    job = tiny_job(project, epochs=500)
    job.start()
    if hasattr(os, "getpriority"):  # training yields the CPU to the window's process
        assert os.getpriority(os.PRIO_PROCESS, job._process.pid) >= 10
    events: list[dict] = []
    deadline = time.monotonic() + 120
    while not any(e["type"] == "step" for e in events) and time.monotonic() < deadline:
        events += job.poll()
        time.sleep(0.05)
    assert any(e["type"] == "step" for e in events), events
    job.cancel()
    events += job.wait(timeout=60)
    types = [e["type"] for e in events]
    assert "cancelled" in types and types[-1] == "done", types
    assert "published" not in types and "rejected" not in types
    assert project.registry.current().version == "v1"
    assert (project.root / "checkpoints" / "registry.json").read_bytes() == before
    assert sorted(p.name for p in (project.root / "checkpoints").glob("*.pt")) == ["v1.pt"]


@pytest.mark.slow
def test_killed_child_reports_error_and_leaves_state(tmp_path):
    project = make_project(tmp_path)
    publish_stand_in(project)
    version_before = project.labels.version
    job = tiny_job(project, epochs=500)
    job.start()
    if hasattr(os, "getpriority"):  # training yields the CPU to the window's process
        assert os.getpriority(os.PRIO_PROCESS, job._process.pid) >= 10
    events: list[dict] = []
    deadline = time.monotonic() + 120
    while not any(e["type"] == "step" for e in events) and time.monotonic() < deadline:
        events += job.poll()
        time.sleep(0.05)
    job._process.kill()  # a crash mid-training
    events += job.wait(timeout=30)
    err = [e for e in events if e["type"] == "error"]
    assert err and "exited unexpectedly" in err[0]["message"] and events[-1]["type"] == "done"
    assert [v.version for v in project.registry.versions()] == ["v1"]
    assert project.registry.current().version == "v1"
    assert project.labels.version == version_before
    assert not list((project.root / "checkpoints").glob("*.part"))


def test_run_round_in_process_rejects_a_regression(tmp_path):
    """The regression guard end to end: the job re-evaluates the current model and keeps a candidate."""
    project = make_project(tmp_path)
    publish_stand_in(project)
    events: list[dict] = []
    # a negative tolerance demands beating the re-evaluated current model by 2 IoU: impossible
    final = run_round(project.root, RetrainSettings(epochs=1, batch_size=4, unet=TINY, tolerance=-2.0),
                      events.append)
    assert final["type"] == "rejected" and not final["promoted"]
    assert "< current" in final["reason"]
    assert project.registry.current().version == "v1"
    assert project.registry.get("v2").status == "candidate"


def test_ctrl_c_in_the_terminal_cancels_the_round_cleanly(tmp_path):
    """A terminal's Ctrl+C signals the whole process group: the training child must leave it to
    the command, which cancels the round (exit 130, no traceback, nothing published)."""
    import signal
    import subprocess
    import sys

    project = make_project(tmp_path)
    publish_stand_in(project)
    before = (project.root / "checkpoints" / "registry.json").read_bytes()
    log = project.root / "logs" / "retrain.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "labeler.cli", "retrain", str(project.root), "--epochs", "500", "--batch-size", "4",
         "--base-channels", "4", "--depth", "2", "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not (log.exists() and '"started"' in log.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # into the training steps
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal does
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "cancelled" in err and "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert (project.root / "checkpoints" / "registry.json").read_bytes() == before
