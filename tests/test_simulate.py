"""Oracle simulation on a tiny scene: pool/holdout split, oracle labels, CSV + PNG, efficiency figures."""

from __future__ import annotations

import csv

import geopandas as gpd
import numpy as np
import pytest
import torch
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window
from shapely.geometry import box

from loop.project import Project
from loop.simulate import (
    Oracle,
    SimulationConfig,
    evaluate,
    label_efficiency,
    load_truth,
    run_simulation,
    split_scene,
)
from model.checkpoint import load_checkpoint
from model.errors import ConfigError
from model.scene import open_scene, write_geotiff

torch.set_num_threads(1)
UTM = CRS.from_epsg(32618)
RES = 0.6


def make_scene(tmp_path, width=128, height=96, seed=0):
    """Noise with bright 'data centers' (positives) and one dark 'warehouse'; truth as GeoJSON."""
    rng = np.random.default_rng(seed)
    img = rng.integers(30, 80, (4, height, width), dtype=np.uint8)
    transform = Affine(RES, 0, 300_000.0, 0, -RES, 4_100_000.0)
    rects = {"datacenter": [(6, 6, 22, 26), (50, 40, 70, 60), (40, 100, 60, 120)], "warehouse": [(70, 8, 90, 24)]}
    rows = []
    for cls, items in rects.items():
        for r0, c0, r1, c1 in items:
            img[:, r0:r1, c0:c1] = 220 if cls == "datacenter" else 150
            x0, y0 = transform @ (c0, r0)
            x1, y1 = transform @ (c1, r1)
            rows.append({"class": cls, "geometry": box(x0, y1, x1, y0)})
    tif = write_geotiff(tmp_path / "scene.tif", img, UTM, transform)
    truth = tmp_path / "truth.geojson"
    gpd.GeoDataFrame(rows, crs=UTM).to_crs(4326).to_file(truth, driver="GeoJSON")
    return tif, truth, gpd.GeoDataFrame(rows, crs=UTM)


def test_split_keeps_holdout_out_of_the_pool(tmp_path):
    tif, _, gt = make_scene(tmp_path)
    pool_tif, holdout = split_scene(open_scene(tif), gt, tmp_path, 0.25, 32)
    pool = open_scene(pool_tif)
    assert (pool.width, pool.height) == (96, 96) and holdout.image.shape == (4, 96, 32)
    # the data center at columns 100..120 is in the holdout only, as object 3
    assert holdout.labels.max() == 3 and holdout.mask.sum() == 20 * 20
    assert holdout.mask[40:60, 4:24].all()
    project = Project.create(tmp_path / "p", images=[pool_tif], chip_size=32)
    oracle = Oracle(project, gt)
    oracle.review([Window(0, 0, 32, 32), Window(64, 32, 32, 32)])  # holds dc 1 / nothing
    fp = project.labels.footprints()
    assert list(fp["class"]) == ["datacenter"] and len(project.labels.reviewed_chips()) == 2
    oracle.review([Window(32, 32, 32, 32), Window(0, 64, 32, 32)])  # dc 2, warehouse
    assert sorted(project.labels.footprints()["class"]) == ["datacenter", "datacenter", "warehouse"]


def test_label_efficiency_figures():
    rows = []
    for seed in (0, 1):
        for rnd, frac in enumerate((0.05, 0.1, 0.2), start=1):
            rows.append({"strategy": "random", "seed": seed, "round": rnd, "fraction": frac, "iou": 0.2 * rnd})
            rows.append({"strategy": "entropy", "seed": seed, "round": rnd, "fraction": frac,
                         "iou": 0.3 * rnd + 0.02 * seed})
    s = label_efficiency(rows, full_iou=0.6, n_pool=100)
    assert s["best"] == "entropy"
    assert s["best_fraction_to_95"] == pytest.approx(0.1)  # mean IoU 0.61 >= 0.95 * 0.6 first at 10%
    assert s["per_strategy"]["random"]["fraction_to_95"] == pytest.approx(0.2)  # 0.6 >= 0.57
    assert s["best_minus_random_at_budget"] == pytest.approx(0.61 - 0.4)


def test_summary_without_a_full_label_model_does_not_claim_95_percent_was_missed(capsys):
    from loop.cli_project import print_summary

    rows = [{"strategy": "random", "seed": 0, "round": r, "fraction": 0.1 * r, "iou": 0.2 * r} for r in (1, 2)]
    print_summary(label_efficiency(rows, full_iou=None, n_pool=20))
    out = capsys.readouterr().out
    assert "not reached" not in out and "no full-label model" in out


def test_tiny_simulation_writes_csv_and_png(tmp_path):
    tif, truth, _ = make_scene(tmp_path)
    config = SimulationConfig(strategies=("random", "entropy"), rounds=2, batch=2, seeds=1, chip_size=32,
                              epochs=1, train_passes=4, full_epochs=1, base_channels=4, depth=2, batch_size=4)
    stale = Project.create(tmp_path / "out" / "runs" / "random-s0", images=[tif], chip_size=32)
    stale.labels.mark_reviewed(stale.scenes[0].scene_id, Window(0, 0, 32, 32))  # left by an earlier run
    stale.labels.close()
    seen = []
    result = run_simulation(tif, truth, tmp_path / "out", config, progress=lambda d, t, i: seen.append((d, t)))
    assert seen[-1] == (5, 5)
    with result.csv_path.open() as fh:
        rows = list(csv.DictReader(fh))
    assert [r["strategy"] for r in rows] == ["full", "random", "random", "entropy", "entropy"]
    assert [int(r["n_reviewed"]) for r in rows[1:]] == [2, 4, 2, 4]
    assert int(rows[0]["n_reviewed"]) == 9  # the 96 x 96 pool in 32 px chips
    assert all(0.0 <= float(r["iou"]) <= 1.0 and 0.0 <= float(r["object_f1"]) <= 1.0 for r in rows)
    assert result.png_path.stat().st_size > 10_000
    assert result.png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.summary["n_pool"] == 9 and set(result.summary["per_strategy"]) == {"random", "entropy"}
    r0 = Project.open(tmp_path / "out" / "runs" / "random-s0").labels.reviewed_chips()
    e0 = Project.open(tmp_path / "out" / "runs" / "entropy-s0").labels.reviewed_chips()
    assert len(r0) == len(e0) == 4


def test_every_row_keeps_the_model_it_scored(tmp_path):
    tif, truth, _ = make_scene(tmp_path)
    config = SimulationConfig(strategies=("entropy",), rounds=2, batch=2, seeds=1, chip_size=32,
                              epochs=1, train_passes=4, full_epochs=1, base_channels=4, depth=2, batch_size=4)
    result = run_simulation(tif, truth, tmp_path / "out", config)
    scene = open_scene(tif)
    _, holdout = split_scene(scene, load_truth(truth, scene), tmp_path / "again", config.holdout_fraction, 32)
    runs = tmp_path / "out" / "runs"
    full, *rounds = result.rows
    for row, path in [(full, runs / "full-s0.pt"), *((r, runs / "entropy-s0" / "rounds" / f"round{r['round']}.pt")
                                                      for r in rounds)]:
        ckpt = load_checkpoint(path)
        trained = ckpt.train.get("train_chip_keys", ckpt.train["train_chips"])
        assert (len(trained) if isinstance(trained, list) else trained) == row["n_reviewed"]
        assert evaluate(ckpt, holdout, 32, config.min_object_px)["iou"] == pytest.approx(row["iou"], abs=1e-9)


def test_parallel_jobs_give_the_same_rows_as_one_job(tmp_path):
    tif, truth, _ = make_scene(tmp_path)
    kw = dict(strategies=("random", "entropy"), rounds=2, batch=2, seeds=1, chip_size=32, epochs=1, train_passes=4,
              full_epochs=1, base_channels=4, depth=2, batch_size=4, threads=1)
    # other output folders: the pool's scene id hashes its path, random's picks must not hang on it
    serial = run_simulation(tif, truth, tmp_path / "out", SimulationConfig(**kw, jobs=1))
    seen = []
    parallel = run_simulation(tif, truth, tmp_path / "elsewhere" / "out2", SimulationConfig(**kw, jobs=2),
                              progress=lambda d, t, i: seen.append((d, t, i.get("strategy"))))
    assert sorted(seen)[-1][:2] == (5, 5) and sorted(i for _, _, i in seen) == sorted(
        ["full", "random", "random", "entropy", "entropy"])
    drop = ("train_s", "rank_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in parallel.rows] == [
        {k: v for k, v in r.items() if k not in drop} for r in serial.rows]
    assert parallel.summary == serial.summary
    e0 = Project.open(tmp_path / "out" / "runs" / "entropy-s0").labels.reviewed_chips()
    assert len(e0) == 4
    picked = [
        sorted((c.window.col_off, c.window.row_off) for c in Project.open(d / "runs" / "random-s0").labels.reviewed_chips())
        for d in (tmp_path / "out", tmp_path / "elsewhere" / "out2")
    ]
    assert picked[0] == picked[1] and len(picked[0]) == 4


def test_random_rounds_take_the_next_chips_of_one_seeded_shuffle(tmp_path):
    from loop.simulate import _pool_shuffle, _pool_windows
    from model.scene import open_scene

    tif, _, _ = make_scene(tmp_path)
    pool = open_scene(tif)
    config = SimulationConfig(strategies=("random",), batch=2, chip_size=32)
    order = _pool_shuffle(pool, config, seed=0)
    grid = _pool_windows(pool, 32)
    assert sorted(map(_key, order)) == sorted(map(_key, grid))  # every chip once
    assert [_key(w) for w in order] != sorted(map(_key, grid), key=lambda k: (k[1], k[0]))  # shuffled
    assert [_key(w) for w in _pool_shuffle(pool, config, seed=0)] == [_key(w) for w in order]
    assert [_key(w) for w in _pool_shuffle(pool, config, seed=1)] != [_key(w) for w in order]


def _key(window) -> tuple[int, int]:
    return int(window.col_off), int(window.row_off)


def test_the_full_label_line_is_the_mean_of_one_model_per_seed(tmp_path):
    tif, truth, _ = make_scene(tmp_path)
    config = SimulationConfig(strategies=("random",), rounds=1, batch=2, seeds=2, chip_size=32, epochs=1,
                              train_passes=4, full_epochs=2, base_channels=4, depth=2, batch_size=4, jobs=2)
    result = run_simulation(tif, truth, tmp_path / "out", config)
    full = [r for r in result.rows if r["strategy"] == "full"]
    assert [r["seed"] for r in full] == [0, 1]
    ious = [r["iou"] for r in full]
    assert ious[0] != ious[1]  # trained with different seeds
    assert result.full_label["iou"] == pytest.approx(np.mean(ious))
    assert result.full_label["iou_std"] == pytest.approx(np.std(ious))
    assert result.summary["full_iou"] == pytest.approx(np.mean(ious))
    assert result.summary["full_iou_per_seed"] == pytest.approx(ious)


def test_a_failing_parallel_run_is_raised_and_stops_the_others(tmp_path):
    import time

    from model.errors import CheckpointError

    tif, truth, _ = make_scene(tmp_path)
    # bald fails when it ranks after round 1 (no dropout); the full-label run would train for many minutes
    config = SimulationConfig(strategies=("bald",), rounds=2, batch=2, seeds=1, chip_size=32, epochs=1,
                              train_passes=2, full_epochs=20_000, base_channels=4, depth=2, batch_size=4, dropout=0.0,
                              jobs=2)
    t0 = time.monotonic()
    with pytest.raises(CheckpointError, match="BALD"):
        run_simulation(tif, truth, tmp_path / "out", config)
    assert time.monotonic() - t0 < 120  # the full-label run was stopped, not waited for
    assert not (tmp_path / "out" / "simulation.csv").exists()


def test_unknown_strategy_is_refused_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match="nosuch"):
        SimulationConfig(strategies=("random", "nosuch"))


@pytest.mark.parametrize("first_pick", ["cold_start", "random"])
def test_first_round_is_the_cold_start_queue_or_shared_random_chips(tmp_path, first_pick):
    from loop.ranking import rank_chips

    tif, truth, _ = make_scene(tmp_path)
    config = SimulationConfig(strategies=("random", "entropy", "bald"), rounds=1, batch=3, seeds=1, chip_size=32,
                              epochs=1, train_passes=2, base_channels=4, depth=2, batch_size=4, full_label=False,
                              first_pick=first_pick)
    run_simulation(tif, truth, tmp_path / "out", config)
    picked = {s: {(r.window.col_off, r.window.row_off) for r in
                  Project.open(tmp_path / "out" / "runs" / f"{s}-s0").labels.reviewed_chips()}
              for s in config.strategies}
    fresh = Project.create(tmp_path / "fresh", images=[Project.open(tmp_path / "out" / "runs" / "random-s0").scenes[0].path],
                           chip_size=32)
    cold = {(q.window.col_off, q.window.row_off) for q in rank_chips(fresh, "cold_start", top=3, seed=0)}
    assert len(picked["random"]) == len(cold) == 3
    assert picked["entropy"] == picked["bald"]  # the uncertainty strategies start alike
    if first_pick == "cold_start":
        assert picked["entropy"] == cold  # as the app's queue of a project without a model
    else:
        assert picked["entropy"] == picked["random"]


def test_simulate_refuses_a_truth_that_misses_the_image_before_writing(tmp_path):
    import geopandas as gpd
    from shapely.geometry import box

    from model.errors import LabelError

    tif, _, _ = make_scene(tmp_path)
    far = tmp_path / "far.geojson"
    gpd.GeoDataFrame({"class": ["datacenter"]}, geometry=[box(-120.0, 36.0, -119.999, 36.001)], crs=4326).to_file(far)
    with pytest.raises(LabelError, match="no data-center footprint lies inside"):
        run_simulation(tif, far, tmp_path / "out", SimulationConfig(rounds=1, batch=1, seeds=1, chip_size=32))
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match="--rounds must be at least 1"):
        SimulationConfig(rounds=0)


def test_scores_pool_the_counts_of_every_held_out_region(tmp_path, monkeypatch):
    """Two regions are scored as one: pixel and object counts summed, not the two scores averaged."""
    import loop.simulate as sim
    from model.checkpoint import Checkpoint, Normalization
    from model.metrics import object_f1, pixel_metrics
    from model.unet import UNet, UNetConfig

    tif, truth, _ = make_scene(tmp_path)
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other_tif, other_truth, _ = make_scene(other_dir, width=64, height=96, seed=1)
    strip = sim.read_holdout_scene(tif, truth)
    other = sim.read_holdout_scene(other_tif, other_truth)
    assert strip.labels.max() == 3 and other.labels.max() == 2  # the data centers inside each, not the warehouse

    def bright_shifted(model, ckpt, image, chip_size):  # a "model": bright roofs, 4 px off to the right,
        pred = np.roll(image[0] > 200, 4, axis=1)
        if image.shape[2] > 100:  # and a false alarm in the wide scene only, so the regions score apart
            pred[:10, -10:] = True
        return pred.astype(np.float32)

    monkeypatch.setattr(sim, "_predict", bright_shifted)
    unet = UNetConfig(base_channels=4, depth=2, dropout=0.0)
    ckpt = Checkpoint(state_dict=UNet(unet).state_dict(), unet=unet, normalization=Normalization((0.0,) * 4, (1.0,) * 4))
    both = sim.evaluate(ckpt, [strip, other], chip_size=32, min_object_px=0)

    pred = np.concatenate([bright_shifted(None, None, r.image, 32) >= 0.5 for r in (strip, other)], axis=1)
    labels = np.concatenate([strip.labels, np.where(other.labels > 0, other.labels + 3, 0)], axis=1)
    expected = pixel_metrics(pred, labels > 0)
    assert {k: both[k] for k in expected} == pytest.approx(expected)
    assert both["object_f1"] == pytest.approx(object_f1(pred, labels)["f1"])
    one, two = sim.evaluate(ckpt, strip, 32, 0), sim.evaluate(ckpt, other, 32, 0)
    assert both["iou"] != pytest.approx((one["iou"] + two["iou"]) / 2)  # pooled, not averaged


def test_a_held_out_scene_must_hold_data_centers(tmp_path):
    from loop.simulate import read_holdout_scene
    from model.errors import LabelError

    tif, _, _ = make_scene(tmp_path)
    far = tmp_path / "far.geojson"
    gpd.GeoDataFrame({"class": ["datacenter"]}, geometry=[box(-120.0, 36.0, -119.999, 36.001)], crs=4326).to_file(far)
    with pytest.raises(LabelError, match="far.geojson: no data-center footprint lies inside the held-out scene"):
        read_holdout_scene(tif, far)


def test_cli_scores_over_a_held_out_scene_and_refuses_one_without_data_centers(tmp_path, capsys):
    from loop.cli import main as cli_main

    tif, truth, _ = make_scene(tmp_path)
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other_tif, other_truth, _ = make_scene(other_dir, width=64, height=96, seed=1)
    far = tmp_path / "far.geojson"
    gpd.GeoDataFrame({"class": ["datacenter"]}, geometry=[box(-120.0, 36.0, -119.999, 36.001)], crs=4326).to_file(far)
    tiny = ["--strategies", "random", "--rounds", "1", "--batch", "2", "--seeds", "1", "--chip-size", "32",
            "--epochs", "1", "--train-passes", "2", "--base-channels", "4", "--depth", "2", "--no-full-label"]
    argv = ["simulate", "--image", str(tif), "--truth", str(truth), "--output-dir", str(tmp_path / "out"), *tiny]
    assert cli_main([*argv, "--holdout-scene", str(other_tif), str(far)]) == 2
    err = capsys.readouterr().err
    assert "far.geojson: no data-center footprint lies inside the held-out scene" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    assert cli_main([*argv, "--holdout-scene", str(other_tif), str(other_truth)]) == 0
    assert (tmp_path / "out" / "simulation.csv").exists()


@pytest.mark.parametrize("blind_restart", [True, False])
def test_a_round_does_not_fine_tune_a_model_blind_on_its_new_chips(tmp_path, blind_restart):
    """As the retraining job: a previous model that finds nothing on the chips reviewed since it
    was trained is dropped, the round trains from scratch; the CSV says which rounds did."""
    from loop.simulate import _train
    from model.checkpoint import Checkpoint, Normalization
    from model.unet import UNet, UNetConfig

    tif, _, gt = make_scene(tmp_path)
    pool_tif, _ = split_scene(open_scene(tif), gt, tmp_path, 0.25, 32)
    project = Project.create(tmp_path / "p", images=[pool_tif], chip_size=32)
    Oracle(project, gt).review([Window(0, 0, 32, 32), Window(32, 32, 32, 32), Window(64, 64, 32, 32)])  # 2 dcs
    unet = UNetConfig(base_channels=4, depth=2)
    state = UNet(unet).state_dict()
    state["head.weight"].zero_()
    state["head.bias"].fill_(-20.0)  # finds nothing
    blind = Checkpoint(state, unet, Normalization((60.0,) * 4, (40.0,) * 4), train={"train_chip_keys": ["x:0:0:32:32"]})
    config = SimulationConfig(strategies=("random",), chip_size=32, epochs=1, train_passes=1, base_channels=4,
                              depth=2, batch_size=4, blind_restart=blind_restart)
    ckpt = _train(project, config, 0, blind, None)
    assert ckpt.train["restarted"] is blind_restart
    assert ckpt.train["lr"] == pytest.approx(config.lr if blind_restart else config.lr * config.finetune_lr_factor)
    assert len(ckpt.train["train_chip_keys"]) == 3
    again = _train(project, config, 0, ckpt, None)  # every chip seen by now: nothing new to judge on
    assert again.train["restarted"] is False
