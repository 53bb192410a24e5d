"""Checkpoint registry: versions, promotion, regression guard, corrupt checkpoints, two processes."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
import warnings

import numpy as np
import pytest
import torch

from loop.errors import ProjectError
from loop.registry import CheckpointRegistry
from model.checkpoint import Checkpoint, Normalization, load_checkpoint
from model.unet import UNet, UNetConfig

TINY = UNetConfig(base_channels=4, depth=2)


def make_ckpt(iou: float | None, seed: int = 0) -> Checkpoint:
    torch.manual_seed(seed)
    model = UNet(TINY)
    return Checkpoint(
        state_dict=model.state_dict(),
        unet=TINY,
        normalization=Normalization((100.0,) * 4, (50.0,) * 4),
        metrics={} if iou is None else {"iou": iou},
        data_version="7",
    )


def test_first_version_is_current_and_files_written(tmp_path):
    reg = CheckpointRegistry(tmp_path / "checkpoints")
    assert reg.current() is None and reg.versions() == []
    res = reg.publish(make_ckpt(0.10))
    assert res.version == "v1" and res.promoted
    cur = reg.current()
    assert cur.version == "v1" and cur.parent is None and cur.status == "current"
    assert cur.path == tmp_path / "checkpoints" / "v1.pt"
    assert load_checkpoint(cur.path).version == "v1"
    payload = json.loads((tmp_path / "checkpoints" / "registry.json").read_text())
    assert payload["versions"][0]["data_version"] == "7"
    assert not list((tmp_path / "checkpoints").glob("*.part"))


def test_regression_guard_keeps_worse_model_as_candidate(tmp_path):
    reg = CheckpointRegistry(tmp_path)
    reg.publish(make_ckpt(0.52))
    worse = reg.publish(make_ckpt(0.41, seed=1), tolerance=0.02)
    assert worse.version == "v2" and not worse.promoted
    assert "0.41 < current 0.52 - 0.02" in worse.reason
    assert reg.current().version == "v1"
    assert [c.version for c in reg.candidates()] == ["v2"]
    assert reg.get("v2").parent == "v1"
    within = reg.publish(make_ckpt(0.51, seed=2), tolerance=0.02)
    assert within.promoted and reg.current().version == "v3"
    assert reg.get("v1").status == "previous"


def test_baseline_from_job_overrides_recorded_metric(tmp_path):
    reg = CheckpointRegistry(tmp_path)
    reg.publish(make_ckpt(0.90))  # recorded on other val chips
    res = reg.publish(make_ckpt(0.60, seed=1), baseline=0.55)
    assert res.promoted, res.reason
    assert reg.get("v2").metrics["baseline_iou"] == pytest.approx(0.55)
    res = reg.publish(make_ckpt(0.50, seed=2), baseline=0.70)
    assert not res.promoted


def test_promote_candidate_by_hand(tmp_path):
    reg = CheckpointRegistry(tmp_path)
    reg.publish(make_ckpt(0.5))
    reg.publish(make_ckpt(0.1, seed=1))
    assert reg.current().version == "v1"
    reg.promote("v2")
    assert reg.current().version == "v2"
    with pytest.raises(ProjectError, match="v9"):
        reg.promote("v9")


def test_corrupt_current_falls_back_with_warning(tmp_path):
    reg = CheckpointRegistry(tmp_path)
    reg.publish(make_ckpt(0.3))
    reg.publish(make_ckpt(0.4, seed=1))
    assert reg.current().version == "v2"
    (tmp_path / "v2.pt").write_bytes(b"not a checkpoint")
    with pytest.warns(RuntimeWarning, match="v2 .* missing or corrupt; using v1"):
        cur = reg.current()
    assert cur.version == "v1"
    # the next publish warm-starts from (and compares with) the good version; warned once only
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = reg.publish(make_ckpt(0.35, seed=2))
    assert reg.get(res.version).parent == "v1"
    for name in ("v1.pt", "v3.pt"):
        (tmp_path / name).write_bytes(b"not a checkpoint either")
    with pytest.warns(RuntimeWarning, match="no earlier version loads either, so there is no model"):
        assert reg.current() is None


def test_corrupt_registry_json_is_a_clear_error(tmp_path):
    reg = CheckpointRegistry(tmp_path)
    (tmp_path / "registry.json").write_text("{ truncated")
    with pytest.raises(ProjectError, match="registry.json"):
        reg.versions()


def _publish_in_child(root: str, seed: int) -> None:
    torch.set_num_threads(1)
    CheckpointRegistry(root).publish(make_ckpt(0.5 + seed / 100, seed=seed))


def test_two_processes_publish_distinct_versions(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_publish_in_child, args=(str(tmp_path), s)) for s in (1, 2)]
    for p in procs:
        p.start()
    reader = CheckpointRegistry(tmp_path)
    seen = set()
    while any(p.is_alive() for p in procs):  # the GUI side keeps reading while jobs write
        seen.update(v.version for v in reader.versions())
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    names = sorted(v.version for v in reader.versions())
    assert names == ["v1", "v2"]
    ious = sorted(np.round([v.metrics["iou"] for v in reader.versions()], 2))
    assert ious == [0.51, 0.52]


def test_failed_publish_leaves_registry_and_files_untouched(tmp_path, monkeypatch):
    reg = CheckpointRegistry(tmp_path)
    reg.publish(make_ckpt(0.3))
    before = (tmp_path / "registry.json").read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        reg.publish(make_ckpt(0.9, seed=1))
    assert (tmp_path / "registry.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["registry.json", "v1.pt"]
    assert reg.current().version == "v1"


def test_publish_never_overwrites_a_checkpoint_it_does_not_list(tmp_path):
    reg = CheckpointRegistry(tmp_path)
    reg.publish(make_ckpt(0.3))
    good = (tmp_path / "v1.pt").read_bytes()
    # the registry's own advice for an unreadable registry.json: move it aside
    (tmp_path / "registry.json").rename(tmp_path.parent / "registry_aside.json")
    res = reg.publish(make_ckpt(0.4, seed=1))
    assert res.version == "v2" and res.path == tmp_path / "v2.pt"
    assert (tmp_path / "v1.pt").read_bytes() == good
    # a user's own checkpoint dropped in under the next name is left alone too
    (tmp_path / "v3.pt").write_bytes(b"the user's own file")
    res = reg.publish(make_ckpt(0.5, seed=2))
    assert res.version == "v4"
    assert (tmp_path / "v3.pt").read_bytes() == b"the user's own file"
    assert [v.version for v in reg.versions()] == ["v2", "v4"]


def _edit(tmp_path, mutate) -> CheckpointRegistry:
    reg = CheckpointRegistry(tmp_path)
    reg.publish(make_ckpt(0.3))
    reg.publish(make_ckpt(0.4, seed=1))
    payload = json.loads((tmp_path / "registry.json").read_text())
    mutate(payload)
    (tmp_path / "registry.json").write_text(json.dumps(payload))
    return reg


@pytest.mark.parametrize(("mutate", "expected"), [
    (lambda p: p["versions"][1].pop("path"), r"entry 2 of 'versions' \('v2'\): expected 'path'"),
    (lambda p: p["versions"].append("v3"), r"entry 3 of 'versions': expected an object"),
    (lambda p: p["versions"][1].update(version="V2"), r"entry 2 of 'versions' \('V2'\): expected 'version' like"),
    (lambda p: p["versions"][1]["metrics"].update(iou="0.9"), r"\('v2'\), metric 'iou': expected a number"),
    (lambda p: p["versions"][1].update(metrics=[0.9]), r"expected 'metrics' as an object"),
    (lambda p: p["versions"][1].update(status="best"), r"expected 'status' one of"),
    (lambda p: p["versions"][1].update(version="v1"), r"expected each version listed once"),
    (lambda p: p.update(promotions="v2"), r"'promotions': expected a list"),
])
def test_hand_edited_registry_entry_is_one_clear_error(tmp_path, mutate, expected):
    reg = _edit(tmp_path, mutate)
    for call in (reg.versions, reg.current, lambda: reg.publish(make_ckpt(0.9, seed=3))):
        with pytest.raises(ProjectError, match=expected) as info:
            call()
        message = str(info.value)
        assert "\n" not in message and str(tmp_path / "registry.json") in message
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["v1.pt", "v2.pt"]  # publish refused before saving


def test_stale_comparison_is_kept_as_a_candidate(tmp_path):
    """A round that warm-started from v1 and measured v1 must not replace v2, made current meanwhile."""
    reg = CheckpointRegistry(tmp_path)
    reg.publish(make_ckpt(0.3))
    reg.publish(make_ckpt(0.9, seed=1))
    res = reg.publish(make_ckpt(0.5, seed=2), baseline=0.3, trained_from="v1")
    assert not res.promoted and "trained from v1, but v2 became current" in res.reason
    assert reg.current().version == "v2" and reg.get("v3").parent == "v1"
    res = reg.publish(make_ckpt(0.9, seed=3), baseline=0.9, trained_from="v2")
    assert res.promoted and reg.get("v4").parent == "v2"


def test_unmeasured_metric_promotes_only_a_first_model(tmp_path):
    reg = CheckpointRegistry(tmp_path)
    why = "the 1 validation chip(s) hold no data-center pixel"
    first = reg.publish(make_ckpt(None), unmeasured=why)
    assert first.promoted and first.reason == f"first model (val IoU not measured: {why})"
    later = reg.publish(make_ckpt(None, seed=1), unmeasured=why)
    assert not later.promoted and why in later.reason and "current v1" in later.reason
    assert reg.current().version == "v1"


def _hold_lock(root: str, ready) -> None:
    from loop.registry import RetrainLock

    with RetrainLock(root):
        ready.set()
        time.sleep(60)  # until killed


def test_retrain_lock_refuses_a_second_holder_and_dies_with_its_process(tmp_path):
    from loop.registry import RetrainBusyError, RetrainLock

    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    holder = ctx.Process(target=_hold_lock, args=(str(tmp_path), ready))
    holder.start()
    try:
        assert ready.wait(60)
        lock = RetrainLock(tmp_path)
        assert lock.holder() == holder.pid
        with pytest.raises(RetrainBusyError, match=f"already being retrained \\(pid {holder.pid}"):
            lock.check()
        with pytest.raises(RetrainBusyError, match=f"pid {holder.pid}"):
            lock.acquire()
        holder.kill()  # kill -9: the OS drops the lock
        holder.join(30)
        assert lock.holder() is None
        with lock:
            assert lock.holder() == os.getpid()
    finally:
        if holder.is_alive():
            holder.kill()
        holder.join(5)


def test_models_command_lists_versions_and_promotes_a_candidate(tmp_path, capsys):
    from loop.cli import main
    from loop.project import Project

    project = Project.create(tmp_path / "p")
    assert main(["models", str(project.root)]) == 0
    assert "no model yet" in capsys.readouterr().out
    project.registry.publish(make_ckpt(0.5))
    project.registry.publish(make_ckpt(0.1, seed=1))  # regresses: kept as a candidate
    assert main(["models", str(project.root)]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows["v1"][1] == "current" and rows["v2"][1] == "candidate"
    assert rows["v2"][3] == "v1" and rows["v2"][4] == "0.100"  # parent, validation IoU
    assert main(["models", str(project.root), "--promote", "v2"]) == 0
    out = capsys.readouterr().out
    assert "v2 is the current model (was v1)" in out
    assert Project.open(project.root).registry.current().version == "v2"
    reason = Project.open(project.root).registry.get("v2").reason
    assert main(["models", str(project.root), "--promote", "v2"]) == 0  # already current: nothing rewritten
    assert "already the current model" in capsys.readouterr().out
    assert Project.open(project.root).registry.get("v2").reason == reason
    assert main(["models", str(project.root), "--promote", "v9"]) == 2
    assert "v9" in capsys.readouterr().err
