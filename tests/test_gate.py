"""The fast path's trained tile gate (model/gate.py): distilled from the U-Net, stored in the checkpoint."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import torch
from geodata import make_scene
from test_scale import ROOFS, bright_roof_checkpoint

from model.blend import tile_grid
from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import DetectConfig
from model.detect import detect_scene
from model.errors import CheckpointError
from model.fastpath import FastModel, predict_scene_fast
from model.gate import CELL, detection_cells, fit_gate
from model.scene import open_scene

torch.set_num_threads(1)


def _chips(n: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """64 px chips: a third with a bright roof (the U-Net fires), a third with a grey roof of the
    same size (it does not), a third bare; returns the chips and which hold a bright roof."""
    rng = np.random.default_rng(seed)
    chips, bright = [], []
    for i in range(n):
        img = rng.normal(90, 20, (4, 64, 64))
        img[3] += 40
        kind = i % 3
        if kind < 2:
            s = int(rng.integers(14, 30))
            r, c = (int(v) for v in rng.integers(0, 64 - s, 2))
            img[:, r : r + s, c : c + s] = (220 if kind == 0 else 150) + rng.normal(0, 4, (4, s, s))
        chips.append(np.clip(img, 0, 255).astype(np.uint8))
        bright.append(kind == 0)
    return chips, np.array(bright)


def test_detection_cells_mark_the_cells_a_kept_component_covers():
    probs = np.zeros((1, 64, 64), np.float32)
    probs[0, 20:40, 5:15] = 0.9  # 200 px component: cells rows 1-2, cols 0
    probs[0, 60, 60] = 0.9  # a 1 px speck under min_area
    cells = detection_cells(probs, 0.5, min_area=25)
    assert cells.shape == (1, 64 // CELL, 64 // CELL)
    assert [tuple(a.tolist()) for a in cells[0].nonzero()] == [(1, 2), (0, 0)]


def test_gate_learns_where_the_unet_detects_and_skips_the_rest():
    ckpt = bright_roof_checkpoint()
    chips, _ = _chips(150, seed=0)
    fit = fit_gate(ckpt, chips, min_area=50, max_seconds=120, epochs=25, device="cpu")
    assert fit is not None and fit.positive_chips >= 45
    assert fit.recall == 1.0  # the threshold keeps every held-out chip the U-Net detects on
    ckpt.gate = fit.payload
    gate = FastModel(ckpt, "cpu", "fp32", coarse_factor=4, gate="trained")
    new, bright = _chips(90, seed=1)
    keep = gate.gate(np.stack(new))
    assert keep[bright].all()
    assert keep[~bright].mean() < 0.5  # grey roofs of the same size and bare chips mostly skipped


def test_gate_is_none_when_the_unet_never_detects():
    chips, bright = _chips(12, seed=2)
    assert fit_gate(bright_roof_checkpoint(cut=0.99), [c for c, b in zip(chips, bright, strict=True) if not b],
                    device="cpu") is None


def test_fast_path_with_the_trained_gate_keeps_the_exact_detections(tmp_path):
    ckpt = bright_roof_checkpoint()
    ckpt.gate = fit_gate(ckpt, _chips(150, seed=0)[0], min_area=50, max_seconds=120, epochs=25,
                         device="cpu").payload
    path = save_checkpoint(ckpt, tmp_path / "gated.pt")
    ckpt = load_checkpoint(path)  # the gate survives a weights-only round trip
    assert ckpt.gate is not None and 0 < ckpt.gate["threshold"] <= 0.5
    scene_path, _ = make_scene(tmp_path / "s.tif", (300, 350), ROOFS, seed=3)
    scene = open_scene(scene_path)
    cfg = DetectConfig(tile_size=64, overlap=16, batch_size=4, device="cpu", min_area=50, simplify=0.0)
    exact = detect_scene(ckpt, scene, cfg)
    stats = predict_scene_fast(ckpt, scene, tmp_path / "f.tif", 64, 16, 4, "cpu", gate="trained")
    fast = detect_scene(ckpt, scene, DetectConfig(**{**cfg.__dict__, "mode": "fast", "gate": "trained"}))
    rows, cols = tile_grid(scene, 64, 16)
    roofed = sum(any(r < r1 and r + 64 > r0 and c < c1 and c + 64 > c0 for r0, c0, r1, c1 in ROOFS)
                 for r in rows for c in cols)
    assert stats.gate == "trained"
    assert roofed <= stats.full_res <= roofed + 2 < stats.with_data  # the roofed tiles, hardly more
    assert len(fast) == len(exact) == len(ROOFS)
    for a, b in zip(sorted(exact.geometry, key=lambda g: g.area), sorted(fast.geometry, key=lambda g: g.area),
                    strict=True):
        assert a.intersection(b).area / a.union(b).area > 0.98


def test_asking_for_a_trained_gate_the_checkpoint_lacks_says_how_to_get_one():
    with pytest.raises(CheckpointError, match="train-gate"):
        FastModel(bright_roof_checkpoint(), "cpu", "fp32", gate="trained")
    assert FastModel(bright_roof_checkpoint(), "cpu", "fp32").gate_kind == "coarse"


def test_train_gate_cli_adds_a_gate_that_detect_fast_uses(tmp_path, capsys):
    from loop.cli import main as cli_main

    roofs = [(30, 30, 110, 130), (300, 320, 420, 470), (600, 100, 700, 190)]
    scene, _ = make_scene(tmp_path / "s.tif", (768, 768), roofs, seed=5)
    plain = save_checkpoint(bright_roof_checkpoint(), tmp_path / "m.pt")
    assert cli_main(["train-gate", "--checkpoint", str(plain), "--image", str(scene), "--max-chips", "120",
                    "--max-time", "15"]) == 0
    assert "wrote" in capsys.readouterr().out
    gated = load_checkpoint(tmp_path / "m_gated.pt")
    assert load_checkpoint(plain).gate is None and gated.gate is not None  # the input is left as it was
    assert gated.gate["positive_chips"] >= 3 and gated.gate["recall"] == 1.0
    args = ["detect", "--image", str(scene), "--tile-size", "128", "--overlap", "16", "--min-area", "50"]
    assert cli_main([*args, "--checkpoint", str(plain), "--output-geojson", str(tmp_path / "e.geojson")]) == 0
    assert cli_main([*args, "--checkpoint", str(tmp_path / "m_gated.pt"), "--fast", "--gate", "trained",
                     "--output-geojson", str(tmp_path / "f.geojson")]) == 0
    e = gpd.read_file(tmp_path / "e.geojson")
    f = gpd.read_file(tmp_path / "f.geojson")
    assert len(e) == len(f) == len(roofs)
    assert abs(e.to_crs(32618).area.sum() - f.to_crs(32618).area.sum()) < 1.0


def test_train_gate_cli_says_when_the_model_finds_nothing_to_learn_from(tmp_path, capsys):
    from loop.cli import main as cli_main

    scene, _ = make_scene(tmp_path / "s.tif", (256, 256), seed=6)  # no roofs: the U-Net never fires
    plain = save_checkpoint(bright_roof_checkpoint(), tmp_path / "m.pt")
    rc = cli_main(["train-gate", "--checkpoint", str(plain), "--image", str(scene), "--max-chips", "32"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("dclabel train-gate: error: ") and "detects nothing" in err
    assert not (tmp_path / "m_gated.pt").exists()
    rc = cli_main(["train-gate", "--checkpoint", str(plain), "--image", str(scene), "--max-chips", "0"])
    assert rc == 2 and "--max-chips" in capsys.readouterr().err


def test_fast_detection_without_a_gate_warns_and_names_the_remedy(tmp_path):
    scene_path, _ = make_scene(tmp_path / "s.tif", (128, 128), [(20, 20, 90, 90)], seed=7)
    cfg = DetectConfig(tile_size=64, overlap=16, device="cpu", min_area=50, mode="fast")
    with pytest.warns(UserWarning, match="train-gate"):
        found = detect_scene(bright_roof_checkpoint(), open_scene(scene_path), cfg)
    assert len(found) == 1


def test_a_damaged_gate_is_a_checkpoint_error_not_a_traceback():
    ckpt = bright_roof_checkpoint()
    ckpt.gate = {"state_dict": {"mean": torch.zeros(4)}, "width": 16, "threshold": 0.3}
    with pytest.raises(CheckpointError, match="tile gate is damaged"):
        FastModel(ckpt, "cpu", "fp32")


def _one_tile_gate(monkeypatch, strip_call: int, index: int) -> list:
    """Make the fast path's gate keep one tile: ``index`` in the ``strip_call``-th strip (1-based).
    Returns the list of gate calls (clear it to start counting again)."""
    calls: list = []

    def gate(self, tiles):
        calls.append(len(tiles))
        keep = np.zeros(len(tiles), bool)
        keep[index] = len(calls) == strip_call
        return keep

    monkeypatch.setattr(FastModel, "gate", gate)
    return calls


def _read(path) -> np.ndarray:
    import rasterio

    with rasterio.open(path) as src:
        return src.read(1).astype(int)


def test_growing_runs_the_skipped_tiles_a_detection_runs_into(tmp_path, monkeypatch):
    from model.predict_scene import predict_scene

    path, _ = make_scene(tmp_path / "s.tif", (200, 400), [(30, 30, 150, 170)], seed=8)  # right half: no roof
    ckpt, scene = bright_roof_checkpoint(), open_scene(path)
    calls = _one_tile_gate(monkeypatch, 1, 0)  # a gate that sees the roof only in the top-left tile
    exact = predict_scene(ckpt, scene, tmp_path / "e.tif", 64, 16, 4, "cpu")
    grown = predict_scene_fast(ckpt, scene, tmp_path / "g.tif", 64, 16, 4, "cpu", precision="fp32",
                               grow_threshold=0.5)
    calls.clear()
    cut = predict_scene_fast(ckpt, scene, tmp_path / "c.tif", 64, 16, 4, "cpu", precision="fp32")

    roof = _read(exact) >= 128
    assert cut.full_res == 1 and _read(tmp_path / "c.tif")[roof].mean() < 128  # most of the roof lost
    assert 1 < grown.full_res < grown.with_data and grown.grown == grown.full_res - 1
    assert np.abs(_read(tmp_path / "g.tif") - _read(exact)).max() <= 1  # the whole roof, as the exact path


def test_growing_reaches_up_into_the_strip_above(tmp_path, monkeypatch):
    """A gate that sees the roof only in the second strip, at its right end: growing runs the
    tiles above (the strip above stays open), left, right and below, and recovers the roof."""
    from model.predict_scene import predict_scene

    path, _ = make_scene(tmp_path / "s.tif", (200, 220), [(30, 30, 150, 170)], seed=8)
    ckpt, scene = bright_roof_checkpoint(), open_scene(path)
    _one_tile_gate(monkeypatch, 2, 3)  # strips hold the tiles at columns 0, 48, 96, 144, 156
    exact = predict_scene(ckpt, scene, tmp_path / "e.tif", 64, 16, 4, "cpu")
    grown = predict_scene_fast(ckpt, scene, tmp_path / "g.tif", 64, 16, 4, "cpu", precision="fp32",
                               grow_threshold=0.5)

    roof = _read(exact) >= 128
    got = _read(tmp_path / "g.tif")
    assert got[:48][roof[:48]].min() >= 128  # the roof's top, in the first strip, was run after all
    assert np.abs(got - _read(exact)).max() <= 1 and grown.grown == grown.full_res - 1


def test_specks_at_tile_corners_do_not_grow(tmp_path, monkeypatch):
    """A U-Net's padding lights a pixel or two at a tile's corners: growing from them would run
    every tile of the scene in a chain. A real roof still grows (the tests above)."""
    path, _ = make_scene(tmp_path / "s.tif", (200, 400), seed=9)
    ckpt, scene = bright_roof_checkpoint(), open_scene(path)
    _one_tile_gate(monkeypatch, 1, 0)

    def predict(self, tiles):
        prob = np.zeros((len(tiles), tiles.shape[-2], tiles.shape[-1]), np.float32)
        prob[:, -1, 0] = prob[:, -1, -1] = prob[:, -2, -1] = 0.53  # two corner specks
        return prob

    monkeypatch.setattr(FastModel, "predict", predict)
    stats = predict_scene_fast(ckpt, scene, tmp_path / "g.tif", 64, 16, 4, "cpu", precision="fp32",
                               grow_threshold=0.5)
    assert stats.full_res == 1 and stats.grown == 0
