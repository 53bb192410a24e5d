"""Scale out: the fast detection path and batch detection on Lightning's engine (DDP on CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
import torch
from geodata import make_scene
from pyproj import Transformer
from shapely.geometry import shape

from model.checkpoint import Checkpoint, Normalization, save_checkpoint
from model.config import DetectConfig
from model.detect import batch_detect, detect_scene
from model.fastpath import FastModel, fuse_batch_norm, predict_scene_fast
from model.predict_scene import predict_scene
from model.scene import open_scene
from model.unet import UNet, UNetConfig

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]
ROOFS = [(20, 30, 90, 120), (150, 200, 260, 330), (230, 20, 290, 70)]


def bright_roof_checkpoint(cut: float = 0.7, gain: float = 40.0) -> Checkpoint:
    """A U-Net that says "data center" where the mean band brightness exceeds ``cut`` (0..1).

    All weights are zero except a path through the first level and its skip connection:
    brightness -> down[0] -> skip -> last up_conv -> head, so the output follows the roofs of
    :func:`geodata.make_scene` pixel by pixel (bright 220 vs ~90-130 background).
    """
    cfg = UNetConfig(base_channels=4, depth=2)
    net = UNet(cfg)
    c0 = cfg.base_channels
    with torch.no_grad():
        for prm in net.parameters():
            prm.zero_()
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.fill_(1.0)
        net.down[0][0].weight[0, :, 1, 1] = 0.25  # mean of the 4 bands
        net.down[0][3].weight[0, 0, 1, 1] = 1.0
        last = net.up_conv[-1]
        last[0].weight[0, c0, 1, 1] = 1.0  # the skip half of the concatenation
        last[3].weight[0, 0, 1, 1] = 1.0
        net.head.weight[0, 0] = gain
        net.head.bias.fill_(-gain * cut)
    return Checkpoint(net.state_dict(), cfg, Normalization((0.0,) * 4, (255.0,) * 4))


def _read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


def test_fused_batch_norm_keeps_the_output():
    torch.manual_seed(0)
    net = UNet(UNetConfig(base_channels=4, depth=2)).eval()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fuse_batch_norm(net)(x), net(x), atol=1e-5, rtol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fuse_batch_norm(net).modules())


def test_fast_path_without_gate_matches_exact_probabilities(tmp_path):
    path, _ = make_scene(tmp_path / "s.tif", (300, 350), ROOFS, seed=3)
    ckpt, scene = bright_roof_checkpoint(), open_scene(path)
    exact = _read(predict_scene(ckpt, scene, tmp_path / "e.tif", 64, 16, 3, "cpu"))
    stats = predict_scene_fast(ckpt, scene, tmp_path / "f.tif", 64, 16, 3, "cpu", coarse_factor=1, precision="fp32")
    fast = _read(tmp_path / "f.tif")
    assert stats.full_res == stats.with_data == stats.tiles
    assert np.abs(fast.astype(int) - exact).max() <= 1  # batch norm folded: float rounding only
    assert 0.05 < (exact >= 128).mean() < 0.6


def test_gate_skips_empty_tiles_and_keeps_every_footprint(tmp_path):
    path, _ = make_scene(tmp_path / "s.tif", (300, 350), ROOFS, seed=3)
    ckpt, scene = bright_roof_checkpoint(), open_scene(path)
    cfg = DetectConfig(tile_size=64, overlap=16, batch_size=4, device="cpu", min_area=50, simplify=0.0)
    exact = detect_scene(ckpt, scene, cfg)
    stats = predict_scene_fast(ckpt, scene, tmp_path / "f.tif", 64, 16, 4, "cpu", coarse_factor=4,
                               coarse_threshold=0.3)
    fast = detect_scene(ckpt, scene, DetectConfig(**{**cfg.__dict__, "mode": "fast", "coarse_threshold": 0.3}))
    assert stats.full_res < 0.8 * stats.with_data  # background tiles skipped
    assert len(fast) == len(exact) == len(ROOFS)
    for a, b in zip(sorted(exact.geometry, key=lambda g: g.area), sorted(fast.geometry, key=lambda g: g.area),
                    strict=True):
        assert a.intersection(b).area / a.union(b).area > 0.98


def test_gate_off_when_nothing_reaches_the_threshold(tmp_path):
    path, _ = make_scene(tmp_path / "s.tif", (128, 128), seed=1)  # no roofs
    model = FastModel(bright_roof_checkpoint(), "cpu", "fp32", coarse_factor=4, coarse_threshold=0.2)
    with rasterio.open(path) as src:
        tiles = src.read()[None, :, :64, :64]
    assert not model.gate(tiles).any()
    stats = predict_scene_fast(bright_roof_checkpoint(), open_scene(path), tmp_path / "p.tif", 64, 0, 2, "cpu",
                               coarse_threshold=0.2)
    assert stats.full_res == 0 and (_read(tmp_path / "p.tif") == 0).all()


def _coords(path: Path) -> list[np.ndarray]:
    """Vertices of a GeoJSON's polygons in UTM metres, sorted by centroid."""
    feats = json.loads(path.read_text())["features"]
    feats.sort(key=lambda f: (f["properties"]["centroid_lat"], f["properties"]["centroid_lon"]))
    to_utm = Transformer.from_crs("EPSG:4326", "EPSG:32618", always_xy=True)
    return [np.column_stack(to_utm.transform(*shapely.get_coordinates(shape(f["geometry"])).T)) for f in feats]


def test_batch_detect_on_two_ddp_processes_equals_one_process(tmp_path):
    scenes = [make_scene(tmp_path / "in" / "a.tif", (300, 350), ROOFS, seed=3)[0],
              make_scene(tmp_path / "in" / "b.tif", (400, 520), [(80, 80, 300, 400)], seed=4, res=0.3)[0]]
    # b is 0.3 m imagery: every rank reads it resampled to the checkpoint's 0.6 m
    ckpt = save_checkpoint(bright_roof_checkpoint(), tmp_path / "m.pt")
    cfg = DetectConfig(tile_size=64, overlap=16, batch_size=2, device="cpu", min_area=50)
    with pytest.warns(UserWarning, match=r"resampled to 0\.6 m"):
        one = batch_detect(ckpt, scenes, tmp_path / "one", cfg)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "labeler.cli", "batch-detect", "--checkpoint", str(ckpt),
           "--input-dir", str(tmp_path / "in"), "--output-dir", str(tmp_path / "ddp"), "--tile-size", "64",
           "--overlap", "16", "--batch-size", "2", "--min-area", "50",
           "--accelerator", "cpu", "--devices", "2", "--strategy", "ddp"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(one) == 4 and "4 footprints over 2 of 2 scenes" in res.stdout
    for name in ("a.geojson", "b.geojson", "all_detections.geojson"):
        a, b = _coords(tmp_path / "one" / name), _coords(tmp_path / "ddp" / name)
        assert len(a) == len(b) > 0
        for x, y in zip(a, b, strict=True):
            assert x.shape == y.shape and np.abs(x - y).max() < 1e-6  # metres
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


def test_detect_cli_fast_flag_writes_the_same_footprints(tmp_path):
    from loop.cli import main as cli_main

    path, _ = make_scene(tmp_path / "s.tif", (200, 260), [(40, 40, 150, 200)], seed=4)
    ckpt = save_checkpoint(bright_roof_checkpoint(), tmp_path / "m.pt")
    args = ["detect", "--checkpoint", str(ckpt), "--image", str(path), "--tile-size", "64", "--overlap", "16",
            "--min-area", "50"]
    assert cli_main([*args, "--output-geojson", str(tmp_path / "e.geojson")]) == 0
    assert cli_main([*args, "--fast", "--coarse-threshold", "0.3", "--output-geojson", str(tmp_path / "f.geojson")]) == 0
    e, f = _coords(tmp_path / "e.geojson"), _coords(tmp_path / "f.geojson")
    assert len(e) == len(f) == 1
    a, b = shapely.Polygon(e[0]), shapely.Polygon(f[0])
    assert a.intersection(b).area / a.union(b).area > 0.98


def test_default_tile_batch_is_small_on_cpu_and_gives_the_same_probabilities(tmp_path):
    from model.inference import tile_batch_size

    assert tile_batch_size(None, "cpu") == 2 and tile_batch_size(5, "cpu") == 5
    path, _ = make_scene(tmp_path / "s.tif", (300, 350), ROOFS, seed=4)
    ckpt, scene = bright_roof_checkpoint(), open_scene(path)
    default = _read(predict_scene(ckpt, scene, tmp_path / "d.tif", 64, 16, None, "cpu"))
    batched = _read(predict_scene(ckpt, scene, tmp_path / "b.tif", 64, 16, 5, "cpu"))
    assert np.abs(default.astype(int) - batched).max() <= 1
    assert 0.02 < (default >= 128).mean() < 0.8
