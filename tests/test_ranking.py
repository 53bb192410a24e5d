"""Ranking strategies, diversity, cold start, the queue file and the full rank_chips path."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from affine import Affine
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.windows import Window
from torch import nn

from loop.errors import ProjectError
from loop.project import Project
from loop.ranking import load_queue, queue_model_version, rank_chips, save_queue, window_key
from loop.ranking_predict import dihedral, dihedral_inverse, forward_probabilities
from loop.ranking_scores import (
    AREA_WEIGHT,
    STRATEGIES,
    built_up_share,
    chip_features,
    chip_score,
    cold_start_order,
    diversify,
)
from model.checkpoint import Checkpoint, Normalization, save_checkpoint
from model.errors import Cancelled, CheckpointError
from model.scene import write_geotiff
from model.unet import UNet, UNetConfig

torch.set_num_threads(1)
UTM = CRS.from_epsg(32618)
CHIP = 32
NORM = Normalization((100.0,) * 4, (50.0,) * 4)


# ----- a real project on tiny GeoTIFFs ------------------------------------------------------------
def _scene(path: Path, seed: int, width: int = 96, height: int = 64) -> Path:
    rng = np.random.default_rng(seed)
    img = rng.integers(40, 120, size=(4, height, width), dtype=np.uint8)
    img[:3, 10:30, 40:70] = 230  # a bright roof
    return write_geotiff(
        path, img, UTM, Affine(0.6, 0, 500_000.0 + seed * 1000, 0, -0.6, 4_300_000.0)
    )


def _checkpoint(dropout: float = 0.2, head_bias: float | None = None) -> Checkpoint:
    torch.manual_seed(0)
    config = UNetConfig(base_channels=4, depth=2, dropout=dropout)
    model = UNet(config)
    if head_bias is not None:
        nn.init.zeros_(model.head.weight)
        nn.init.constant_(model.head.bias, head_bias)
    return Checkpoint(model.state_dict(), config, NORM)


def _checkpoint_file(tmp_path: Path, **kwargs) -> Path:
    return save_checkpoint(_checkpoint(**kwargs), tmp_path / "ckpt.pt")


@pytest.fixture
def project(tmp_path):
    images = [_scene(tmp_path / "a.tif", 1), _scene(tmp_path / "b.tif", 2, width=64)]
    return Project.create(tmp_path / "project", images=images, chip_size=CHIP)


def _n_chips(project) -> int:
    return sum(len(project.chip_windows(s.scene_id)) for s in project.scenes)


# ----- pure scoring -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["entropy", "margin"])
def test_half_probability_chip_outranks_confident_chips(name):
    strategy = STRATEGIES[name]
    scores = {
        p: chip_score(strategy.uncertainty(np.full((16, 16), p, np.float32)))
        for p in (0.5, 0.01, 0.99)
    }
    assert scores[0.5] > scores[0.01] and scores[0.5] > scores[0.99]
    assert scores[0.01] == pytest.approx(scores[0.99], abs=1e-5)


def test_one_uncertain_building_outranks_a_mildly_uncertain_field():
    building = np.full((64, 64), 0.01, np.float32)
    building[20:36, 20:36] = 0.5  # 6 % of the chip
    field_ = np.full((64, 64), 0.2, np.float32)
    ent = STRATEGIES["entropy"].uncertainty
    assert chip_score(ent(building)) > chip_score(ent(field_))
    assert chip_score(ent(building), top_fraction=1.0) < chip_score(ent(field_), top_fraction=1.0)


def test_chips_with_a_saturated_patch_are_ordered_by_how_much_is_in_doubt():
    # A young model: both chips hold a building-sized patch at p = 0.5 (top 5 % saturated);
    # the chip with three such buildings carries more to learn from than the one with one.
    one = np.full((64, 64), 0.02, np.float32)
    one[0:16, 0:16] = 0.5
    three = one.copy()
    three[30:46, 0:16] = three[0:16, 30:46] = 0.5
    ent = STRATEGIES["entropy"].uncertainty
    assert chip_score(ent(one), area_weight=0.0) == pytest.approx(chip_score(ent(three), area_weight=0.0))
    assert chip_score(ent(three)) > chip_score(ent(one))
    # ... while one ambiguous building still outranks a field mildly uncertain everywhere.
    assert chip_score(ent(one)) > chip_score(ent(np.full((64, 64), 0.25, np.float32)))
    with pytest.raises(ValueError, match="area_weight"):
        chip_score(ent(one), area_weight=1.5)


def test_tta_and_bald_strategies_score_disagreement_not_ambiguity():
    agree_half = np.full((8, 16, 16), 0.5, np.float32)
    disagree = np.where(np.arange(8)[:, None, None] % 2 == 0, 0.95, 0.05) * np.ones(
        (8, 16, 16), np.float32
    )
    for name in ("tta", "bald"):
        u = STRATEGIES[name].uncertainty
        assert chip_score(u(disagree)) > 0.5 > chip_score(u(agree_half)) + 0.4
    ent = STRATEGIES["entropy"].uncertainty
    # Entropy of the mean cannot tell them apart: the mean of the split samples is 0.5 too.
    assert (
        chip_score(ent(agree_half))
        == pytest.approx(chip_score(ent(disagree)), abs=1e-6)
        == pytest.approx(1.0)
    )


def test_diversity_spreads_the_top_of_the_queue():
    rng = np.random.default_rng(3)
    near = np.column_stack(
        [rng.uniform(0, 150, 8), rng.uniform(0, 150, 8)]
    )  # 8 chips, one building
    far = np.array([[5_000.0, 0.0], [0.0, 5_000.0], [5_000.0, 5_000.0]])
    centers = np.vstack([near, far])
    scores = np.concatenate([0.9 + 0.05 * rng.random(8), [0.7, 0.6, 0.5]])
    plain = np.argsort(-scores)[:4]
    spread = diversify(scores, centers, radius_m=300.0)
    assert set(plain) <= set(range(8))  # without diversity: four neighbours
    assert spread[0] == np.argmax(scores)
    assert set(spread[:4]) == {int(np.argmax(scores)), 8, 9, 10}
    assert sorted(spread.tolist()) == list(range(11))
    assert list(diversify(scores, centers, radius_m=0)) == list(np.argsort(-scores, kind="stable"))


def test_cold_start_covers_distinct_clusters():
    rng = np.random.default_rng(7)

    def chip(kind):
        img = rng.normal(0, 6, size=(4, 32, 32))
        if kind == "forest":
            img += np.array([40, 70, 40, 180])[:, None, None]
        elif kind == "water":
            img += np.array([20, 30, 50, 10])[:, None, None]
        else:  # built-up: bright roofs and pavement with sharp edges
            img += 150 + 80 * (rng.random((1, 32, 32)) > 0.5)
        return np.clip(img, 0, 255).astype(np.uint8)

    kinds = ["forest"] * 12 + ["water"] * 6 + ["roofs"] * 3
    feats = np.stack([chip_features(chip(k)) for k in kinds])
    order, labels = cold_start_order(feats, k=3, seed=0)
    assert sorted(order.tolist()) == list(range(len(kinds)))
    assert {kinds[i] for i in order[:3]} == {"forest", "water", "roofs"}
    assert len(set(labels.tolist())) == 3


def _land(roof_share: float, rng, size: int = 32, water: bool = False) -> np.ndarray:
    """A chip whose left ``roof_share`` of columns is bright roof, the rest forest (or water)."""
    img = np.empty((4, size, size))
    cover = [20, 30, 50, 10] if water else [40, 70, 40, 180]
    img[:] = np.array(cover)[:, None, None]
    img[:, :, : round(roof_share * size)] = np.array([170, 170, 165, 160])[:, None, None]
    return np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)


def test_built_up_share_is_high_on_roofs_low_on_vegetation_and_on_water():
    rng = np.random.default_rng(3)
    roofs, forest, water = _land(1.0, rng), _land(0.0, rng), _land(0.0, rng, water=True)
    half = _land(0.5, rng)
    assert built_up_share(roofs) > 0.9
    assert built_up_share(forest) < 0.5
    assert built_up_share(water) == 0.0  # NDVI < 0 but dark in NIR: not mistaken for pavement
    assert built_up_share(forest) < built_up_share(half) < built_up_share(roofs)
    assert built_up_share(np.zeros((4, 8, 8), np.uint8)) == 0.0  # no data


def test_cold_start_takes_each_clusters_most_built_up_chip_first():
    rng = np.random.default_rng(5)
    # one cluster of suburbs (30-50% roof; the typical one sits in the middle) and one of forest
    shares = [0.4, 0.38, 0.42, 0.4, 0.3, 0.5, 0.41, 0.39]
    chips = [_land(r, rng) for r in shares] + [_land(0.03 * i, rng) for i in range(6)]
    feats = np.stack([chip_features(c) for c in chips])
    built = np.array([built_up_share(c) for c in chips])
    typical, labels = cold_start_order(feats, k=2, seed=0)
    first, labels2 = cold_start_order(feats, k=2, seed=0, priority=built)
    assert np.array_equal(labels, labels2)  # the priority changes the order, not the clusters
    suburb = labels[0]
    assert set(np.flatnonzero(labels == suburb)) == set(range(len(shares)))
    picks = {labels[i]: i for i in first[:2]}
    assert picks[suburb] == int(np.argmax(shares))  # the 50% chip, not a typical 40% one
    assert typical[:2].tolist().count(5) == 0  # without priority the suburb pick is a typical one
    assert first[:2].tolist().count(len(shares) + 5) == 1  # forest: its most cleared chip
    assert sorted(first.tolist()) == list(range(len(chips)))
    with pytest.raises(ValueError, match="priority has shape"):
        cold_start_order(feats, k=2, priority=built[:3])


# ----- prediction helpers -----------------------------------------------------------------------
def test_dihedral_inverse_round_trips_and_transforms_are_distinct():
    x = torch.arange(16.0).view(1, 4, 4)
    outs = [dihedral(x, k) for k in range(8)]
    assert len({tuple(o.flatten().tolist()) for o in outs}) == 8
    for k in range(8):
        assert torch.equal(dihedral_inverse(outs[k], k), x)


class _FixedPattern(nn.Module):
    """Ignores its input and predicts a fixed, non-symmetric map: every TTA view disagrees."""

    def __init__(self):
        super().__init__()
        self.pattern = nn.Parameter(torch.linspace(-4, 4, 64).view(1, 1, 8, 8), requires_grad=False)

    def forward(self, x):
        return self.pattern.expand(x.shape[0], 1, -1, -1)


def test_tta_disagreement_zero_for_equivariant_model_and_high_for_fixed_pattern():
    images = np.random.default_rng(0).integers(0, 255, (2, 4, 8, 8), dtype=np.uint8)
    pointwise = nn.Conv2d(4, 1, 1)  # a 1x1 conv commutes with every dihedral transform
    probs = forward_probabilities(pointwise, NORM, images, tta=True)
    assert probs.shape == (2, 8, 8, 8)
    assert STRATEGIES["tta"].uncertainty(probs[0]).max() < 1e-5
    fixed = forward_probabilities(_FixedPattern(), NORM, images, tta=True)
    assert chip_score(STRATEGIES["tta"].uncertainty(fixed[0])) > 0.3


def test_mc_dropout_samples_differ_and_batchnorm_stays_frozen():
    torch.manual_seed(0)
    model = UNet(UNetConfig(base_channels=4, depth=2, dropout=0.5)).eval()
    stats = model.down[0][1].running_mean.clone()
    images = np.random.default_rng(1).integers(0, 255, (2, 4, 16, 16), dtype=np.uint8)
    probs = forward_probabilities(model, NORM, images, mc_samples=4)
    assert probs.shape == (2, 4, 16, 16)
    assert probs.std(axis=1).mean() > 1e-3
    assert torch.equal(model.down[0][1].running_mean, stats) and not model.training
    single = forward_probabilities(model, NORM, images)
    assert np.allclose(single, forward_probabilities(model, NORM, images))  # eval is deterministic


# ----- rank_chips end to end --------------------------------------------------------------------
@pytest.mark.parametrize("strategy", ["random", "entropy", "margin", "tta", "bald"])
def test_rank_chips_runs_every_strategy_with_a_real_unet(project, tmp_path, strategy):
    assert project.registry.publish(_checkpoint()).promoted
    reviewed = Window(32, 0, CHIP, CHIP)
    project.labels.mark_reviewed(project.scenes[0].scene_id, reviewed)
    calls = []
    queue = rank_chips(
        project,
        strategy,
        batch_size=4,
        mc_samples=3,
        diversity=False,
        progress=lambda d, t, info: calls.append((d, t, info)),
    )
    total = _n_chips(project) - 1
    assert len(queue) == total == calls[-1][0] == calls[-1][1]
    assert [c[0] for c in calls] == sorted(c[0] for c in calls) and calls[-1][2]["chips_per_s"] > 0
    assert [q.rank for q in queue] == list(range(1, total + 1))
    assert window_key(project.scenes[0].scene_id, reviewed) not in {
        window_key(q.scene_id, q.window) for q in queue
    }
    scores = [q.score for q in queue]
    assert scores == sorted(scores, reverse=True) and all(0 <= s <= 1 for s in scores)
    assert len(set(scores)) > 1


def test_random_is_seeded(project, tmp_path):
    keys = [
        [window_key(q.scene_id, q.window) for q in rank_chips(project, "random", seed=s)]
        for s in (1, 1, 2)
    ]
    assert keys[0] == keys[1] and keys[0] != keys[2] and sorted(keys[0]) == sorted(keys[2])


def test_proposals_of_a_confident_model_cover_their_chip_in_scene_crs(project, tmp_path):
    path = _checkpoint_file(tmp_path, dropout=0.0, head_bias=6.0)  # p = 0.998 everywhere
    queue = rank_chips(project, "entropy", checkpoint=path, top=3)
    assert len(queue) == 3
    scenes = {s.scene_id: s for s in project.scenes}
    for item in queue:
        assert len(item.proposals) == 1
        prop = item.proposals[0]
        w, t = item.window, scenes[item.scene_id].transform
        left, top = t @ (w.col_off, w.row_off)
        right, bottom = t @ (w.col_off + w.width, w.row_off + w.height)
        assert prop.geometry.bounds == pytest.approx((left, bottom, right, top))
        assert prop.score > 0.99 and prop.area_m2 == pytest.approx(CHIP * CHIP * 0.36)


def test_without_model_rank_chips_falls_back_to_cold_start(project):
    queue = rank_chips(project, "entropy", top=4)
    assert len(queue) == 4 and all(q.proposals == () for q in queue)
    assert len({window_key(q.scene_id, q.window) for q in queue}) == 4


def test_bald_without_dropout_is_refused(project, tmp_path):
    with pytest.raises(CheckpointError, match="dropout"):
        rank_chips(project, "bald", checkpoint=_checkpoint_file(tmp_path, dropout=0.0))


def test_cancel_between_batches_raises(project, tmp_path):
    seen = []
    with pytest.raises(Cancelled):
        rank_chips(
            project,
            "entropy",
            checkpoint=_checkpoint_file(tmp_path),
            batch_size=2,
            progress=lambda d, t, i: seen.append(d),
            cancel=lambda: len(seen) >= 2,
        )
    assert seen == [2, 4]


def test_queue_round_trips_through_json(project, tmp_path):
    path = _checkpoint_file(tmp_path, dropout=0.0, head_bias=6.0)
    queue = rank_chips(project, "margin", checkpoint=path)
    saved = save_queue(project, queue, strategy="margin")
    assert saved == project.root / "queue.json" and not list(project.root.glob("*.part"))
    loaded = load_queue(project)
    assert [(q.rank, q.scene_id, q.window, q.score) for q in loaded] == [
        (q.rank, q.scene_id, q.window, q.score) for q in queue
    ]
    assert all(
        a.geometry.equals(b.geometry)
        for x, y in zip(loaded, queue, strict=True)
        for a, b in zip(x.proposals, y.proposals, strict=True)
    )
    first = queue[0]
    project.labels.mark_reviewed(first.scene_id, first.window)
    assert len(load_queue(project)) == len(queue) - 1
    assert len(load_queue(project, skip_reviewed=False)) == len(queue)


def test_cli_rank_prints_and_stores_the_queue(project, capsys):
    from loop.cli import main

    assert main(["rank", str(project.root), "--strategy", "entropy", "--quiet"]) == 0
    assert "no model yet, so the queue is a cold start" in capsys.readouterr().err
    saved = (project.root / "queue.json").read_bytes()
    for top in ("0", "-3"):  # refused before anything is ranked or saved
        with pytest.raises(SystemExit):
            main(["rank", str(project.root), "--top", top])
        assert "--top: must be at least 1" in capsys.readouterr().err
    assert (project.root / "queue.json").read_bytes() == saved
    project.registry.publish(_checkpoint())
    argv = ["rank", str(project.root), "--strategy", "margin", "--top", "3", "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["rank", "score", "scene"]
    queue = load_queue(Project.open(project.root))
    assert [q.rank for q in queue] == [1, 2, 3] and "3 chip(s) queued" in out
    assert queue_model_version(project) == (True, project.registry.current().version)
    assert all(f"{q.score:.4f}" in out for q in queue)
    with pytest.raises(SystemExit):  # argparse refuses an unknown strategy
        main(["rank", str(project.root), "--strategy", "nonsense"])
    with pytest.raises(ProjectError, match="unknown ranking strategy"):
        rank_chips(project, "nonsense")


def test_cli_rank_records_the_model_it_scored_with_not_one_promoted_meanwhile(project, monkeypatch):
    """Another process promoting a model while ``rank`` runs (``models --promote``, a retraining
    round) leaves the queue named after the model that scored it, so the app sees it is stale."""
    from loop import cli_rank
    from loop.cli import main
    from loop.ranking import queue_is_stale

    project.registry.publish(_checkpoint())
    project.registry.publish(_checkpoint(head_bias=2.0))
    project.registry.promote("v2")
    promoted = []

    def promote_meanwhile(done, total, info):
        if not promoted:
            promoted.append(Project.open(project.root).registry.promote("v1").version)

    monkeypatch.setattr(cli_rank, "_progress", promote_meanwhile)
    assert main(["rank", str(project.root), "--strategy", "entropy"]) == 0
    assert promoted == ["v1"]
    assert queue_model_version(project) == (True, "v2")
    assert queue_is_stale(project)


def test_one_pass_mc_shortcut_draws_the_same_samples_as_full_passes():
    torch.manual_seed(0)
    model = UNet(UNetConfig(base_channels=4, depth=2, dropout=0.3)).eval()
    images = np.random.default_rng(2).integers(0, 255, (2, 4, 16, 16), dtype=np.uint8)
    torch.manual_seed(5)
    fast = forward_probabilities(model, NORM, images, mc_samples=3)
    torch.manual_seed(5)
    full = forward_probabilities(model, NORM, images, mc_samples=3, head_only_mc=False)
    assert np.allclose(fast, full, atol=1e-6)
    assert np.abs(fast[:, 0] - fast[:, 1]).max() > 1e-3


def test_no_data_pixels_are_neither_uncertain_nor_proposed(tmp_path):
    img = np.random.default_rng(4).integers(40, 120, size=(4, 32, 96), dtype=np.uint8)
    img[:, :, :40] = 0  # a black collar: the first chip entirely, the second one in part
    tif = write_geotiff(
        tmp_path / "collar.tif", img, UTM, Affine(0.6, 0, 500_000.0, 0, -0.6, 4_300_000.0)
    )
    project = Project.create(tmp_path / "p", images=[tif], chip_size=CHIP)
    path = _checkpoint_file(tmp_path, dropout=0.0, head_bias=0.0)  # p = 0.5 on every pixel
    queue = rank_chips(project, "entropy", checkpoint=path, min_area_px=1, diversity=False)
    by_col = {int(q.window.col_off): q for q in queue}
    assert int(queue[-1].window.col_off) == 0 and by_col[0].score == 0.0
    # A chip a quarter in the collar still has its top 5 % on real pixels: that term is not
    # diluted; only the area term sees that a quarter of the chip holds nothing to learn.
    assert by_col[64].score == pytest.approx(1.0)
    assert by_col[32].score == pytest.approx(1.0 - AREA_WEIGHT * 8 / 32)
    assert by_col[0].proposals == ()
    (prop,) = by_col[32].proposals
    assert prop.area_m2 == pytest.approx(24 * 32 * 0.36)  # columns 40..63 only
    assert prop.geometry.bounds[0] == pytest.approx(500_000.0 + 40 * 0.6)


def test_an_event_cancels_before_any_batch(project, tmp_path):
    event = threading.Event()
    event.set()
    with pytest.raises(Cancelled):
        rank_chips(project, "margin", checkpoint=_checkpoint_file(tmp_path), cancel=event)
    assert not (project.root / "queue.json").exists()


def test_chip_centres_share_one_metric_frame_across_utm_zones(tmp_path):
    from loop.ranking import _centers_m
    from model.scene import open_scene

    a = open_scene(_scene(tmp_path / "a.tif", 1))
    b_path = (
        tmp_path / "b.tif"
    )  # the same ground point as a's origin, written in the next UTM zone west
    x17, y17 = Transformer.from_crs(UTM, "EPSG:32617", always_xy=True).transform(
        501_000.0, 4_300_000.0
    )
    write_geotiff(
        b_path,
        np.ones((4, 64, 64), np.uint8),
        CRS.from_epsg(32617),
        Affine(0.6, 0, x17, 0, -0.6, y17),
    )
    b = open_scene(b_path)
    w = Window(0, 0, CHIP, CHIP)
    centers = _centers_m([(a, w), (a, Window(CHIP, 0, CHIP, CHIP)), (b, w)])
    assert np.hypot(*(centers[1] - centers[0])) == pytest.approx(CHIP * 0.6, rel=0.01)
    assert np.hypot(*(centers[2] - centers[0])) < 1.0


@pytest.mark.parametrize("strategy", ["entropy", "cold_start"])
def test_a_damaged_scene_leaves_the_others_ranked(tmp_path, strategy):
    # scene b's file is cut after the project was made: its readable chips are still ranked, the
    # others are left out with one warning; a file that no longer opens at all loses only its chips
    big = write_geotiff(tmp_path / "b.tif", np.random.default_rng(3).integers(40, 200, (4, 512, 512), dtype=np.uint8),
                        UTM, Affine(0.6, 0, 510_000.0, 0, -0.6, 4_300_000.0))
    project = Project.create(tmp_path / "project", images=[_scene(tmp_path / "a.tif", 1), big], chip_size=CHIP)
    a, b = (s.scene_id for s in project.scenes)
    n_a, n_b = (len(project.chip_windows(s)) for s in (a, b))
    if strategy != "cold_start":
        project.registry.publish(_checkpoint())
    data = big.read_bytes()
    big.write_bytes(data[: len(data) // 2])
    with pytest.warns(UserWarning, match="cannot be read") as caught:
        queue = rank_chips(project, strategy, batch_size=16)
    assert sum("cannot be read" in str(w.message) for w in caught) == 1  # once per scene
    per_scene = {sid: sum(q.scene_id == sid for q in queue) for sid in (a, b)}
    assert per_scene[a] == n_a and 0 < per_scene[b] < n_b
    assert [q.rank for q in queue] == list(range(1, len(queue) + 1))
    big.write_bytes(b"not a tiff any more")
    with pytest.warns(UserWarning, match="cannot be read"):
        queue = rank_chips(project, strategy, batch_size=16)
    assert {q.scene_id for q in queue} == {a} and len(queue) == n_a


def test_a_scene_added_after_ranking_makes_the_queue_incomplete(project):
    from loop.ranking_queue import unqueued_scenes

    a, b = project.scene_ids
    queue = [q for q in rank_chips(project, "random") if q.scene_id == a]  # ranked before b was added
    assert unqueued_scenes(project, queue) == [b]
    for w in project.chip_windows(b):
        project.labels.mark_reviewed(b, w)
    assert unqueued_scenes(project, queue) == []  # nothing of b left to review


def test_random_rounds_take_the_next_chips_of_one_fixed_shuffle(project):
    first = [window_key(q.scene_id, q.window) for q in rank_chips(project, "random", seed=3, diversity=False)]
    taken = first[:3]
    for key in taken:  # the oracle reviews the first three
        sid, window = next((q.scene_id, q.window) for q in rank_chips(project, "random", seed=3, diversity=False)
                           if window_key(q.scene_id, q.window) == key)
        project.labels.mark_reviewed(sid, window)
    second = [window_key(q.scene_id, q.window) for q in rank_chips(project, "random", seed=3, diversity=False)]
    # the remaining chips keep their order: a round does not favour the chips that follow the last
    # picks in raster order (one draw per list position did exactly that)
    assert second == [k for k in first if k not in taken]


@pytest.mark.parametrize("strategy, with_model", [("cold_start", False), ("entropy", True), ("margin", True)])
def test_chips_mostly_outside_the_scene_come_last(tmp_path, strategy, with_model):
    """A scene 2 px wide gives chips that are 94 % fill: whatever the strategy they follow every
    chip with data (MIN_VALID_FRACTION), instead of leading the queue as the cold start's most
    unusual cluster or, far from the other chips, by diversity."""
    images = [_scene(tmp_path / "a.tif", 1), _scene(tmp_path / "thin.tif", 3, width=2)]
    project = Project.create(tmp_path / "p", images=images, chip_size=CHIP)
    if with_model:
        assert project.registry.publish(_checkpoint()).promoted
    thin = project.scenes[1].scene_id
    queue = rank_chips(project, strategy)
    ranks = {True: [], False: []}
    for q in queue:
        ranks[q.scene_id == thin].append(q.rank)
    assert ranks[True] and ranks[False] and min(ranks[True]) > max(ranks[False]), ranks
