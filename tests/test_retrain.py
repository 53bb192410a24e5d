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

from loop.errors import NoTrainingDataError, ProjectError
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
from model.errors import ConfigError
from model.scene import Chip, write_geotiff
from model.unet import UNet, UNetConfig

torch.set_num_threads(1)
UTM = CRS.from_epsg(32617)
TINY = UNetConfig(base_channels=4, depth=2)
CHIP = 32


def make_project(tmp_path, positives=True, review=True, rects=((4, 4, 20, 16), (40, 60, 56, 80))):
    """A 64x96 scene, 6 chips of 32 px; two bright 'data centers' (``rects``: row0, col0, row1, col1)
    over three chips, everything reviewed."""
    rng = np.random.default_rng(3)
    img = rng.integers(40, 90, (4, 64, 96), dtype=np.uint8)
    transform = Affine(0.6, 0, 600_000.0, 0, -0.6, 4_000_000.0)
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
    kw = {"epochs": 1, "min_passes": 0, "batch_size": 4, "unet": TINY, "threads": 1, "val_fraction": 0.3, **kw}
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
    final = run_round(project.root, RetrainSettings(min_passes=0, epochs=1, batch_size=4, unet=TINY, tolerance=-2.0),
                      events.append)
    assert final["type"] == "rejected" and not final["promoted"]
    assert "< current" in final["reason"]
    assert project.registry.current().version == "v1"
    assert project.registry.get("v2").status == "candidate"


def test_a_round_warm_starts_from_a_model_trained_outside_the_loop(tmp_path):
    """The demo's first model comes from model.train.fit, whose train record counts its chips
    ("train_chips": 12); a round must not read that count as the loop's list of chip keys."""
    project = make_project(tmp_path)
    ckpt = Checkpoint(UNet(TINY).state_dict(), TINY, Normalization((60.0,) * 4, (40.0,) * 4), metrics={"iou": 0.2},
                      train={"train_chips": 12, "val_chips": 3})
    project.registry.publish(ckpt)
    final = run_round(project.root, RetrainSettings(min_passes=0, epochs=1, batch_size=4, unet=TINY), lambda e: None)
    assert final["type"] in ("published", "rejected") and final["version"] == "v2"
    keys = load_checkpoint(project.registry.get("v2").path).train["train_chip_keys"]
    assert keys and all(isinstance(k, str) for k in keys)


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


def _chip(col: int, row: int, positive: bool) -> Chip:
    mask = np.zeros((32, 32), np.uint8)
    mask[4:12, 4:12] = positive
    return Chip("s", Window(col, row, 32, 32), UTM, Affine.identity(), np.zeros((4, 32, 32), np.uint8), mask)


def test_split_validates_on_a_data_center_chip_when_two_are_reviewed():
    grid = [(c, r) for r in range(0, 640, 32) for c in range(0, 640, 32)]
    # two data-center chips whose hashes alone would put both into training
    high = [w for w in grid if chip_hash(_chip(*w, True)) > 0.6][:2]
    chips = [_chip(*w, w in high) for w in grid[:10] if w not in high] + [_chip(*w, True) for w in high]
    train, val = split_train_val(chips, 0.2)
    assert any(c.mask.any() for c in val) and any(c.mask.any() for c in train)
    assert len(train) + len(val) == len(chips)
    again = split_train_val(list(reversed(chips)), 0.2)  # deterministic, whatever the order
    assert {id(c) for c in again[1]} == {id(c) for c in val}
    assert all(chip_hash(c) < 0.2 for c in val if not c.mask.any())  # negatives still split by hash alone
    # a single data-center chip is always trained on, even when its hash says validation
    low = next(w for w in grid if chip_hash(_chip(*w, True)) < 0.05)
    lone = [_chip(*low, True)] + [_chip(*w, False) for w in grid[:5] if w != low]
    train, val = split_train_val(lone, 0.2)
    assert any(c is lone[0] for c in train) and val and not any(c.mask.any() for c in val)


def test_split_does_not_validate_on_what_the_current_model_trained_on():
    from loop.retrain_worker import chip_key

    grid = [(c, r) for r in range(0, 640, 32) for c in range(0, 640, 32)]
    high = [w for w in grid if chip_hash(_chip(*w, True)) > 0.6]
    first, second, third = (_chip(*w, True) for w in high[:3])
    negatives = [_chip(*w, False) for w in grid[:10] if w not in high[:3]]
    round1, _ = split_train_val([first, second, *negatives], 0.2)
    trained = frozenset(chip_key(c) for c in round1)
    assert chip_key(first) in trained or chip_key(second) in trained
    # a third data-center chip is reviewed: a data-center chip the current model did not see is validated
    train, val = split_train_val([first, second, third, *negatives], 0.2, trained)
    assert not {chip_key(c) for c in val} & trained
    assert any(c.mask.any() for c in val) and any(c.mask.any() for c in train)
    # with nothing new, the rule falls back to the lowest hash (a leak there is unavoidable)
    _, val_again = split_train_val([first, second, *negatives], 0.2, trained)
    assert any(c.mask.any() for c in val_again)


def test_round_without_data_center_pixels_in_validation_says_so(tmp_path):
    """One data-center chip: it trains, validation holds none, so IoU says nothing; the guard says so."""
    project = make_project(tmp_path, rects=((4, 4, 20, 16),))
    settings = RetrainSettings(min_passes=0, epochs=1, batch_size=4, unet=TINY, val_fraction=0.3)
    first = run_round(project.root, settings, lambda e: None)
    assert first["type"] == "published" and first["reason"].startswith("first model (val IoU not measured: ")
    assert "hold no data-center pixel" in first["reason"] and first["val_iou"] is None
    assert "iou" not in project.registry.get("v1").metrics  # no made-up 1.0 or 0.0
    second = run_round(project.root, settings, lambda e: None)
    assert second["type"] == "rejected" and "not measured" in second["reason"] and "current v1" in second["reason"]
    assert project.registry.current().version == "v1"


def test_published_metrics_are_measured_together(tmp_path):
    """iou, dice, precision and recall in the registry come from one evaluation of the final weights."""
    from model.metrics import counts_to_metrics

    project = make_project(tmp_path)
    final = run_round(project.root, RetrainSettings(min_passes=0, epochs=2, batch_size=4, unet=TINY, val_fraction=0.3),
                      lambda e: None)
    mv = project.registry.get(final["version"])
    iou = mv.metrics["iou"]
    assert mv.metrics["dice"] == pytest.approx(2 * iou / (1 + iou))  # one confusion matrix, not two
    ckpt = load_checkpoint(mv.path)
    counts = ckpt.train["val_pixels"]
    expected = counts_to_metrics(counts["tp"], counts["fp"], counts["fn"])
    for key in ("iou", "dice", "precision", "recall"):
        assert mv.metrics[key] == pytest.approx(expected[key]) == pytest.approx(ckpt.metrics[key])
    assert mv.metrics["threshold"] == ckpt.threshold == final["threshold"]
    assert final["val_iou"] == pytest.approx(mv.metrics["iou"])
    assert "iou" in ckpt.train["best_epoch_metrics"]  # Lightning's training-time figures, kept apart
    # and they are what the evaluator measures for this checkpoint on the validation chips
    from loop.retrain_worker import evaluate
    from loop.training_chips import reviewed_training_chips

    _, val = split_train_val(reviewed_training_chips(project), 0.3)
    assert evaluate(ckpt, val).metrics["iou"] == pytest.approx(mv.metrics["iou"])


def test_log_dirs_of_rounds_started_in_one_second_differ(tmp_path):
    from loop.retrain_worker import unique_log_dir

    dirs = {unique_log_dir(tmp_path) for _ in range(3)}
    assert len(dirs) == 3 and all(d.is_dir() and d.name.startswith("train-") for d in dirs)


def test_second_round_on_the_same_project_is_refused_at_once(tmp_path):
    import subprocess
    import sys

    from loop.registry import RetrainBusyError, RetrainLock

    project = make_project(tmp_path)
    publish_stand_in(project)
    with RetrainLock(project.root / "checkpoints"):  # this process is "the other round"
        with pytest.raises(RetrainBusyError, match=f"pid {os.getpid()}"):
            tiny_job(project).request()
        with pytest.raises(RetrainBusyError, match=f"pid {os.getpid()}"):
            run_round(project.root, RetrainSettings(min_passes=0, epochs=1, unet=TINY), lambda e: None)
        proc = subprocess.run([sys.executable, "-m", "labeler.cli", "retrain", str(project.root), "--epochs", "1"],
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"already being retrained (pid {os.getpid()}" in lines[0], proc.stderr
    assert [v.version for v in project.registry.versions()] == ["v1"]
    assert not (project.root / "logs").exists() or not list((project.root / "logs").glob("train-*"))


def test_malformed_registry_is_refused_before_training(tmp_path):
    project = make_project(tmp_path)
    publish_stand_in(project)
    registry = project.root / "checkpoints" / "registry.json"
    registry.write_text(registry.read_text().replace('"path": "v1.pt"', '"file": "v1.pt"'))
    with pytest.raises(ProjectError, match="entry 1 of 'versions'.*expected 'path'"):
        tiny_job(project).start()
    events: list[dict] = []
    with pytest.raises(ProjectError, match="expected 'path'"):
        run_round(project.root, RetrainSettings(min_passes=0, epochs=1, unet=TINY), events.append)
    assert events == []  # nothing started


@pytest.mark.parametrize(("flag", "value"), [("--max-time", "-5"), ("--max-time", "0"), ("--tolerance", "nan"),
                                             ("--tolerance", "inf"), ("--lr", "nan"), ("--epochs", "0")])
def test_retrain_refuses_bad_flag_values(tmp_path, capsys, flag, value):
    from loop.cli import main

    project = make_project(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["retrain", str(project.root), flag, value])
    assert info.value.code == 2
    assert f"argument {flag}:" in capsys.readouterr().err
    assert project.registry.versions() == []
    with pytest.raises(ConfigError):
        RetrainSettings(**{{"--max-time": "max_time_s", "--tolerance": "tolerance", "--lr": "lr",
                            "--epochs": "epochs"}[flag]: float(value)})


def _wait_for(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
def test_killed_command_stops_its_training_process_without_publishing(tmp_path):
    """kill -9 of `dclabel retrain`: the training child (a forkserver's child, so not re-parented
    in a way it could see) notices its requester is gone and stops without publishing."""
    import json
    import signal
    import subprocess
    import sys

    from loop.registry import RetrainLock

    project = make_project(tmp_path)
    publish_stand_in(project)
    before = (project.root / "checkpoints" / "registry.json").read_bytes()
    log = project.root / "logs" / "retrain.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "labeler.cli", "retrain", str(project.root), "--epochs", "500", "--batch-size", "4",
         "--threads", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    lock = RetrainLock(project.root / "checkpoints")
    try:
        assert _wait_for(lambda: log.exists() and '"started"' in log.read_text(), 120)
        child = lock.holder()
        assert child and child != proc.pid
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert _wait_for(lambda: lock.holder() is None, 90), "the training process kept running"
    finally:
        os.killpg(proc.pid, signal.SIGKILL) if proc.poll() is None else None
    events = [json.loads(line) for line in log.read_text().splitlines()]
    cancelled = [e for e in events if e["type"] == "cancelled"]
    assert cancelled and f"(pid {proc.pid}) is gone" in cancelled[-1]["message"], events
    time.sleep(2)
    assert (project.root / "checkpoints" / "registry.json").read_bytes() == before
    assert sorted(p.name for p in (project.root / "checkpoints").glob("*.pt")) == ["v1.pt"]


CTRL_C_ON_A_LOADED_MACHINE = """
import sys
import loop.retrain
loop.retrain.CANCEL_GRACE_S = 0.0  # a step outlasts the grace period, as on a loaded machine
from labeler.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_ctrl_c_when_the_child_outstays_its_grace_period(tmp_path):
    """The job terminates a child that does not stop in time: one line, exit 130, cancel logged,
    no Lightning SIGTERM notice or child traceback."""
    import json
    import signal
    import subprocess
    import sys

    from loop.registry import RetrainLock

    project = make_project(tmp_path)
    publish_stand_in(project)
    before = (project.root / "checkpoints" / "registry.json").read_bytes()
    log = project.root / "logs" / "retrain.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-c", CTRL_C_ON_A_LOADED_MACHINE, "retrain", str(project.root), "--epochs", "500",
         "--batch-size", "4", "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    assert _wait_for(lambda: log.exists() and '"started"' in log.read_text(), 120)
    time.sleep(1.0)  # into the training steps
    child = RetrainLock(project.root / "checkpoints").holder()
    assert child and child != proc.pid
    os.kill(child, signal.SIGSTOP)  # a step that takes longer than the grace period
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(1.0)  # the command cancels, finds the grace period over and terminates the child
    os.kill(child, signal.SIGCONT)  # which gets the SIGTERM mid-step
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    for noise in ("Traceback", "KeyboardInterrupt", "SIGTERM"):
        assert noise not in err, err
    assert "cancelled: retraining stopped" in err
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert any(e["type"] == "cancelled" for e in events), events
    assert (project.root / "checkpoints" / "registry.json").read_bytes() == before
    assert _wait_for(lambda: RetrainLock(project.root / "checkpoints").holder() is None, 30)


def test_a_bug_in_the_round_is_reported_as_one_and_points_at_the_log():
    from loop.cli_project import format_event

    bug = format_event({"type": "error", "message": "TypeError: 'int' object is not iterable", "traceback": "..."})
    assert bug.startswith("internal error: TypeError") and "logs/retrain.jsonl" in bug and "unchanged" in bug
    user = format_event({"type": "error", "message": "no reviewed chips in P: review some chips first."})
    assert user == "error: no reviewed chips in P: review some chips first."


def test_a_round_on_few_chips_trains_its_minimum_of_chip_passes(tmp_path):
    from loop.cli_project import MIN_PASSES_DEFAULT
    from loop.retrain_worker import MIN_PASSES, round_epochs

    assert MIN_PASSES_DEFAULT == MIN_PASSES  # the CLI's help names the worker's default
    assert round_epochs(5, 256, 12) == 22 and round_epochs(5, 256, 100) == 5 and round_epochs(5, 0, 3) == 5
    project = make_project(tmp_path)
    events: list[dict] = []
    final = run_round(project.root, RetrainSettings(epochs=1, min_passes=20, batch_size=4, unet=TINY), events.append)
    started = next(e for e in events if e["type"] == "started")
    expected = max(1, -(-20 // started["n_train"]))
    assert expected > 1 and started["epochs"] == expected
    assert sum(e["type"] == "epoch" for e in events) == expected  # it trained them all
    ckpt = load_checkpoint(project.registry.get(final["version"]).path)
    assert ckpt.train["epochs"] == expected and ckpt.train["min_passes"] == 20


def constant_stand_in(logit: float, **kw) -> Checkpoint:
    """A model whose every pixel gets ``logit`` (head weights zeroed): -20 finds nothing, +20 everything."""
    state = UNet(TINY).state_dict()
    state["head.weight"].zero_()
    state["head.bias"].fill_(logit)
    return Checkpoint(state, TINY, Normalization((60.0,) * 4, (40.0,) * 4), metrics={"iou": 0.2}, **kw)


def mask_chip(n_positive: int, size: int = 32) -> Chip:
    mask = np.zeros((size, size), np.uint8)
    mask.flat[:n_positive] = 1
    image = np.full((4, size, size), 100, np.uint8)
    return Chip("s", Window(0, 0, size, size), UTM, Affine(0.6, 0, 0, 0, -0.6, 0), image, mask)


def test_a_model_that_finds_nothing_on_new_chips_is_judged_blind():
    from loop.retrain_worker import BLIND_MIN_PX, blind_parent

    nothing, everything = constant_stand_in(-20.0, version="v3"), constant_stand_in(20.0)
    chips = [mask_chip(700), mask_chip(0)]  # 700 data-center pixels of 2048
    reason = blind_parent(nothing, chips)
    assert reason and "v3 finds 0 of the 700 data-center pixels (recall 0.000)" in reason and "2 chip(s)" in reason
    assert blind_parent(everything, chips) is None  # finds them all (among false alarms): worth fine-tuning
    assert blind_parent(nothing, [mask_chip(BLIND_MIN_PX - 1)]) is None  # too few pixels to judge
    assert blind_parent(nothing, []) is None


@pytest.mark.parametrize("trained_elsewhere", [True, False])
def test_a_round_starts_over_from_a_blind_current_model(tmp_path, trained_elsewhere):
    """A current model that finds nothing on chips it never saw is not fine-tuned: the round trains
    from scratch at the full rate, says why, and still compares against (and descends from) it.
    Chips it was trained on do not count: there the round fine-tunes it as usual."""
    project = make_project(tmp_path, rects=((4, 4, 28, 28), (36, 60, 60, 84)))  # 1,152 data-center pixels
    chips = [f"{project.scene_ids[0]}:{c}:{r}:32:32" for r in (0, 32) for c in (0, 32, 64)]
    keys = ["elsewhere:0:0:32:32"] if trained_elsewhere else chips
    project.registry.publish(constant_stand_in(-20.0, train={"train_chip_keys": keys}))
    events: list[dict] = []
    settings = RetrainSettings(min_passes=0, epochs=1, batch_size=4, unet=TINY, lr=1e-3)
    final = run_round(project.root, settings, events.append)
    started = next(e for e in events if e["type"] == "started")
    assert started["parent"] == "v1" and final["version"] == "v2"
    assert project.registry.get("v2").parent == "v1"
    ckpt = load_checkpoint(project.registry.get("v2").path)
    if trained_elsewhere:
        assert "recall 0.000" in started["restart"] and "from scratch" in started["restart"]
        assert started["lr"] == pytest.approx(1e-3) and ckpt.train["restart"] == started["restart"]
        assert final["baseline_iou"] is not None  # judged against the blind model, on the same chips
        from loop.cli_project import format_event

        assert "(from scratch: the current model v1 finds 0 of the 1152 data-center pixels" in format_event(started)
    else:
        assert started["restart"] is None and started["lr"] == pytest.approx(1e-3 * FINETUNE_LR_FACTOR)
        assert ckpt.train["restart"] is None
