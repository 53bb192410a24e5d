"""Tiling, blending, vectorizing, export and the end-to-end train -> detect path."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import torch
from geodata import UTM18N, constant_checkpoint, make_scene, scene_transform
from shapely.geometry import box, shape

from loop.cli import main as cli_main
from model.checkpoint import Checkpoint, Normalization, save_checkpoint
from model.detect import DetectConfig, detect_scene
from model.errors import Cancelled
from model.export import detection_table, write_detections
from model.masks import rasterize_footprints
from model.predict_scene import predict_scene
from model.scene import chip_windows, open_scene, read_window, write_geotiff
from model.tiling import blend_weights, tile_starts
from model.train import TrainConfig, fit
from model.unet import UNet, UNetConfig
from model.vectorize import merge_nearby, vectorize_probability

torch.set_num_threads(1)


def test_tile_starts_cover_and_snap():
    assert tile_starts(100, 256, 224) == [0]
    s = tile_starts(1000, 256, 224)
    assert s[0] == 0 and s[-1] == 1000 - 256 and all(b - a <= 224 for a, b in zip(s, s[1:], strict=False))


def test_blend_weights_are_a_partition_of_unity_across_overlap():
    w = blend_weights(64, 16)[32]  # one row through the centre
    overlap_sum = w[-16:] + w[:16]  # right edge of one tile + left edge of the next
    np.testing.assert_allclose(overlap_sum, 1.0, atol=1e-6)
    assert w[16:-16].min() == 1.0


@pytest.mark.parametrize(("size", "tile", "overlap"), [((300, 470), 64, 16), ((50, 40), 64, 16), ((256, 256), 128, 0)])
def test_blended_prediction_has_no_seams_or_edge_loss(tmp_path, size, tile, overlap):
    path, _ = make_scene(tmp_path / "s.tif", size, seed=1)
    out = predict_scene(constant_checkpoint(0.6), open_scene(path), tmp_path / "p.tif", tile, overlap, 3, "cpu")
    with rasterio.open(out) as src:
        prob = src.read(1)
        assert src.crs == open_scene(path).crs and src.transform == open_scene(path).transform
    assert prob.shape == size
    assert (prob == round(0.6 * 255)).all()


def test_nodata_tiles_are_skipped(tmp_path):
    path, _ = make_scene(tmp_path / "s.tif", (128, 256), seed=1)
    with rasterio.open(path, "r+") as dst:
        arr = dst.read()
        arr[:, :, 128:] = 0
        dst.write(arr)
    out = predict_scene(constant_checkpoint(0.6), open_scene(path), tmp_path / "p.tif", 64, 0, 4, "cpu")
    with rasterio.open(out) as src:
        prob = src.read(1)
    assert (prob[:, :128] == 153).all() and (prob[:, 128:] == 0).all()


def test_cancel_leaves_no_output(tmp_path):
    path, _ = make_scene(tmp_path / "s.tif", (200, 200))
    with pytest.raises(Cancelled):
        predict_scene(constant_checkpoint(0.6), open_scene(path), tmp_path / "p.tif", 64, 16, 1, "cpu",
                      cancel=lambda: True)
    assert list(tmp_path.iterdir()) == [path]


def _prob_raster(tmp_path, prob, res=0.6):
    t = scene_transform(res)
    with rasterio.open(tmp_path / "prob.tif", "w", driver="GTiff", width=prob.shape[1], height=prob.shape[0],
                       count=1, dtype="uint8", crs="EPSG:32618", transform=t) as dst:
        dst.write(np.rint(prob * 255).astype(np.uint8)[None])
    return tmp_path / "prob.tif", t


def test_vectorize_stitches_blocks_merges_close_and_keeps_edges(tmp_path):
    prob = np.zeros((300, 300), np.float32)
    prob[90:210, 20:80] = 0.9  # crosses block edges at rows 100 and 200
    prob[0:50, 250:300] = 0.8  # touches the scene corner: kept
    prob[120:180, 100:130] = 0.9  # 12 px (7.2 m) from the next: merged at 10 m
    prob[120:180, 142:170] = 0.9
    prob[280:285, 5:10] = 0.9  # 25 px: under min_area, dropped
    path, t = _prob_raster(tmp_path, prob)
    small = vectorize_probability(path, 0.5, 100, 10.0, 0.0, block_rows=100)
    whole = vectorize_probability(path, 0.5, 100, 10.0, 0.0, block_rows=4096)
    assert len(small) == len(whole) == 3
    areas = sorted(small.geometry.area / 0.36)
    assert areas == pytest.approx(sorted(whole.geometry.area / 0.36))
    assert areas[0] == pytest.approx(2500) and areas[2] == pytest.approx(120 * 60)
    assert 60 * 30 + 60 * 28 < areas[1] <= 60 * 70  # merged pair incl. the bridge
    conf = dict(zip(np.round(small.geometry.area / 0.36), small["mean_confidence"], strict=True))
    assert conf[2500] == pytest.approx(0.8, abs=0.01) and conf[7200] == pytest.approx(0.9, abs=0.01)
    assert 0.5 < conf[areas[1]] < 0.9  # the bridge between merged parts holds no detected pixels
    apart = vectorize_probability(path, 0.5, 100, 3.0, 0.0)
    assert len(apart) == 4


def test_specks_are_dropped_early_but_block_edge_pieces_are_kept(tmp_path):
    rng = np.random.default_rng(0)
    prob = (rng.random((400, 400)) > 0.97).astype(np.float32) * 0.9  # ~4800 one-pixel specks
    prob[95:105, 200:215] = 0.9  # 150 px, cut by the block edge at row 100 into two 75 px pieces
    path, _ = _prob_raster(tmp_path, prob)
    found = vectorize_probability(path, 0.5, 100, 0.0, 0.0, block_rows=100)
    assert len(found) == 1
    assert found.geometry.iloc[0].area / 0.36 >= 150


def test_merge_nearby_leaves_far_polygons_untouched():
    a, b, c = box(0, 0, 10, 10), box(14, 0, 24, 10), box(100, 0, 110, 10)
    merged = merge_nearby([a, b, c], 5.0)
    assert len(merged) == 2 and merged[1].equals(c)
    assert merged[0].contains(box(1, 1, 23, 9))


def test_detection_table_and_files(tmp_path):
    polys = [box(285_000, 4_319_900, 285_100, 4_320_000)]
    gdf = gpd.GeoDataFrame({"mean_confidence": [0.83]}, geometry=polys, crs="EPSG:32618")
    table = detection_table(gdf, "v7")
    assert table.loc[0, "area_m2"] == pytest.approx(10_000)
    write_detections(table, geojson=tmp_path / "d.geojson", gpkg=tmp_path / "d.gpkg", csv=tmp_path / "d.csv")
    gj = json.loads((tmp_path / "d.geojson").read_text())
    assert "crs" not in gj  # RFC 7946: lon/lat WGS 84, no crs member
    props = gj["features"][0]["properties"]
    assert set(props) == {"id", "area_m2", "centroid_lat", "centroid_lon", "mean_confidence", "model_version"}
    geom = shape(gj["features"][0]["geometry"])
    assert geom.contains(shape({"type": "Point", "coordinates": [props["centroid_lon"], props["centroid_lat"]]}))
    assert 38.9 < props["centroid_lat"] < 39.1 and -77.6 < props["centroid_lon"] < -77.4
    assert gpd.read_file(tmp_path / "d.gpkg").crs.to_epsg() == 32618
    assert (tmp_path / "d.csv").read_text().splitlines()[0].startswith("id,area_m2,centroid_lat")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left


def _train_tiny(tmp_path):
    buildings = [(40, 40, 140, 170), (200, 250, 330, 380), (320, 30, 400, 120)]
    path, polys = make_scene(tmp_path / "scene.tif", (416, 416), buildings, seed=2)
    s = open_scene(path)
    mask = rasterize_footprints(polys, None, s.crs, s.transform, (s.height, s.width))
    pairs = []
    for w in chip_windows(s.width, s.height, 96, 64):
        r, c = int(w.row_off), int(w.col_off)
        pairs.append((read_window(s, w), mask[r : r + 96, c : c + 96]))
    cfg = TrainConfig(epochs=2, batch_size=8, base_channels=4, depth=2, lr=5e-3, accelerator="cpu")
    events = []
    ck = fit(pairs, pairs[::5], cfg, progress=lambda d, t, i: events.append(i))
    return path, polys, ck, events


def test_end_to_end_train_detect_geojson(tmp_path):
    path, polys, ck, events = _train_tiny(tmp_path)
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1, 2]
    assert {"iou", "dice", "precision", "recall", "object_f1"} <= set(ck.metrics)
    assert ck.threshold == ck.metrics["threshold"] and "threshold_choice" in ck.train  # chosen on validation
    ckpt = save_checkpoint(ck, tmp_path / "m.pt")
    rc = cli_main(["detect", "--checkpoint", str(ckpt), "--image", str(path), "--threshold", "0.3",
                   "--output-geojson", str(tmp_path / "d.geojson"), "--output-mask", str(tmp_path / "m.tif"),
                   "--output-csv", str(tmp_path / "d.csv"), "--tile-size", "128", "--overlap", "32"])
    assert rc == 0
    gj = json.loads((tmp_path / "d.geojson").read_text())
    scene = open_scene(path)
    bounds = gpd.GeoSeries([box(*scene.bounds)], crs=scene.crs).to_crs("EPSG:4326").iloc[0]
    for f in gj["features"]:
        p = f["properties"]
        assert bounds.contains(shape({"type": "Point", "coordinates": [p["centroid_lon"], p["centroid_lat"]]}))
        assert p["model_version"] == ck.version and 0 <= p["mean_confidence"] <= 1
        assert shape(f["geometry"]).is_valid
    with rasterio.open(tmp_path / "m.tif") as m:
        assert m.crs == scene.crs and set(np.unique(m.read(1))) <= {0, 1}


def test_detect_cli_errors_name_the_file(tmp_path, capsys):
    path, _ = make_scene(tmp_path / "s.tif", (64, 64), bands=3)
    save_checkpoint(constant_checkpoint(0.5), tmp_path / "m.pt")
    rc = cli_main(["detect", "--checkpoint", str(tmp_path / "m.pt"), "--image", str(path),
                   "--output-geojson", str(tmp_path / "o.geojson")])
    err = capsys.readouterr().err
    assert rc == 2 and "s.tif" in err and "expected 4 bands" in err and "found 3" in err and "near-infrared" in err
    rc = cli_main(["detect", "--checkpoint", str(tmp_path / "m.pt"), "--image", str(path), "--bands", "1,2,3,9",
                   "--output-geojson", str(tmp_path / "o.geojson")])
    assert rc == 2 and "found 3" in capsys.readouterr().err  # too few bands is said first, --bands or not
    assert not (tmp_path / "o.geojson").exists()
    detect_scene(tmp_path / "m.pt", make_scene(tmp_path / "g.tif", (64, 64))[0], DetectConfig(tile_size=64, overlap=0),
                 output_geojson=tmp_path / "ok.geojson")
    assert (tmp_path / "ok.geojson").exists()


@pytest.mark.parametrize("flag, target, message", [
    ("--output-mask", "scene", "also the input scene"),
    ("--output-geojson", "checkpoint", "also the checkpoint"),
    ("--output-csv", "folder", "is a folder"),
    ("--output-gpkg", "under a file", "is a file, not a folder"),
    ("--output-prob", "the mask output", "give each output its own path"),
    ("--output-geojson", "unwritable", "cannot write"),  # /proc takes no files, even from root
])
def test_detect_refuses_outputs_that_would_destroy_inputs_before_any_work(tmp_path, capsys, flag, target, message):
    scene, _ = make_scene(tmp_path / "s.tif", (64, 64), [(10, 10, 40, 40)])
    ckpt = save_checkpoint(constant_checkpoint(0.9), tmp_path / "m.pt")
    (tmp_path / "folder.csv").mkdir()
    (tmp_path / "note.txt").write_text("a file")
    path = {"scene": scene, "checkpoint": ckpt, "folder": tmp_path / "folder.csv",
            "under a file": tmp_path / "note.txt" / "o.gpkg", "the mask output": tmp_path / "m.tif",
            "unwritable": Path("/proc/dclabel-out/o.geojson")}[target]
    before = {p: p.read_bytes() for p in (scene, ckpt)}
    argv = ["detect", "--checkpoint", str(ckpt), "--image", str(scene), "--tile-size", "64", "--overlap", "0",
            flag, str(path)] + (["--output-mask", str(tmp_path / "m.tif")] if flag == "--output-prob" else [])
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and str(path) in err and "Traceback" not in err
    assert {p: p.read_bytes() for p in (scene, ckpt)} == before  # inputs intact
    assert not (tmp_path / "m.tif").exists()  # nothing written


@pytest.mark.parametrize("engine", [[], ["--accelerator", "cpu", "--devices", "1"]], ids=["loop", "lightning"])
def test_batch_detect_goes_on_past_a_broken_scene_and_reports_it(tmp_path, capsys, engine):
    good = [make_scene(tmp_path / "in" / f"{n}.tif", (64, 64), [(10, 10, 40, 40)])[0] for n in ("a", "c")]
    (tmp_path / "in" / "b.tif").write_text("not a raster")
    ckpt = save_checkpoint(constant_checkpoint(0.9), tmp_path / "m.pt")
    argv = ["batch-detect", "--checkpoint", str(ckpt), "--input-dir", str(tmp_path / "in"),
            "--output-dir", str(tmp_path / "out"), "--tile-size", "64", "--overlap", "0", *engine]
    assert cli_main(argv) == 1
    captured = capsys.readouterr()
    assert "FAILED" in captured.err and "b.tif" in captured.err and "over 2 of 3 scenes" in captured.out
    assert sorted(p.name for p in (tmp_path / "out").glob("?.geojson")) == ["a.geojson", "c.geojson"]
    summary = gpd.read_file(tmp_path / "out" / "all_detections.geojson")
    assert set(summary["scene"]) == {"a", "c"}
    (tmp_path / "in" / "b.tif").unlink()  # fixed: the rerun keeps the finished scenes and succeeds
    assert cli_main(argv) == 0 and "over 2 of 2 scenes" in capsys.readouterr().out
    assert good[0].exists()


def test_batch_detect_refuses_two_scenes_with_one_name(tmp_path):
    from model.detect import batch_detect
    from model.errors import ConfigError

    a = make_scene(tmp_path / "x" / "scene.tif", (64, 64))[0]
    b = make_scene(tmp_path / "y" / "scene.tif", (64, 64))[0]
    with pytest.raises(ConfigError, match="would both write scene.geojson"):
        batch_detect(save_checkpoint(constant_checkpoint(0.9), tmp_path / "m.pt"), [a, b], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_detect_settings_errors_name_the_flags():
    from model.errors import ConfigError

    with pytest.raises(ConfigError, match=r"--overlap must be between 0 and half of --tile-size \(50 px"):
        DetectConfig(tile_size=100, overlap=80)
    for field, flag in (("min_area", "--min-area"), ("merge_distance", "--merge-distance"), ("simplify", "--simplify")):
        with pytest.raises(ConfigError, match=f"{flag} must be 0 or more, got -5"):
            DetectConfig(**{field: -5})


def test_outputs_are_written_all_or_none(tmp_path, monkeypatch):
    import model.detect

    scene, _ = make_scene(tmp_path / "s.tif", (64, 64), [(10, 10, 40, 40)])
    outs = {"output_geojson": tmp_path / "o.geojson", "output_gpkg": tmp_path / "o.gpkg",
            "output_csv": tmp_path / "o.csv", "output_prob": tmp_path / "p.tif", "output_mask": tmp_path / "m.tif"}

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(model.detect, "write_mask", disk_full)  # the last output written fails
    with pytest.raises(OSError, match="No space left"):
        detect_scene(constant_checkpoint(0.9), scene, DetectConfig(tile_size=64, overlap=0), **outs)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.tif"]  # no output, no temporary file
    monkeypatch.undo()
    table = detect_scene(constant_checkpoint(0.9), scene, DetectConfig(tile_size=64, overlap=0), **outs)
    assert len(table) == 1 and all(p.exists() for p in outs.values())


def test_bottom_up_scene_detects_where_the_data_is(tmp_path):
    # a grid stored south-up (positive y pixel size): array rows 0-63 hold data, rows 64-127 are
    # empty (skipped, probability 0), so the detection is the southern half of the scene
    arr = np.full((4, 128, 128), 120, np.uint8)
    arr[:, 64:] = 0
    x0, y0 = 285_000.0, 4_320_000.0
    up = rasterio.Affine(0.6, 0, x0, 0, 0.6, y0)
    path = tmp_path / "up.tif"
    with rasterio.open(path, "w", driver="GTiff", width=128, height=128, count=4, dtype="uint8",
                       crs="EPSG:32618", transform=up) as dst:
        dst.write(arr)
    save_checkpoint(constant_checkpoint(0.8), tmp_path / "m.pt")
    table = detect_scene(tmp_path / "m.pt", path, DetectConfig(tile_size=64, overlap=0, simplify=0.0),
                         output_geojson=tmp_path / "up.geojson")
    [geom] = table.to_crs(32618).geometry
    assert geom.symmetric_difference(box(x0, y0, x0 + 128 * 0.6, y0 + 64 * 0.6)).area < 1.0
    assert table["mean_confidence"].iloc[0] == pytest.approx(0.8, abs=0.01)


def test_truncated_scene_is_one_clear_error_and_no_output(tmp_path, capsys):
    path, _ = make_scene(tmp_path / "s.tif", (512, 512))
    data = path.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) * 2 // 3])  # header and the first blocks survive
    save_checkpoint(constant_checkpoint(0.6), tmp_path / "m.pt")
    rc = cli_main(["detect", "--checkpoint", str(tmp_path / "m.pt"), "--image", str(cut),
                   "--output-geojson", str(tmp_path / "o.geojson"), "--tile-size", "128"])
    err = capsys.readouterr().err
    assert rc == 2 and "cut.tif" in err and "truncated or damaged" in err and "Traceback" not in err
    assert not (tmp_path / "o.geojson").exists()


def test_simplify_zero_still_writes_valid_polygons(tmp_path):
    prob = np.zeros((120, 120), np.float32)
    prob[10:30, 10:30] = prob[30:50, 30:50] = 0.9  # squares touching at one corner: one 8-connected outline
    prob[60:110, 60:110] = 0.9  # a ring whose hole touches itself at a corner
    prob[70:80, 70:80] = prob[80:90, 80:90] = 0.0
    path, _ = _prob_raster(tmp_path, prob)
    found = vectorize_probability(path, 0.5, 20, 0.0, 0.0)
    assert len(found) == 2 and found.geometry.is_valid.all()
    assert sorted(found.geometry.area / 0.36) == pytest.approx([800, 2500 - 200])  # no pixel lost or added
    write_detections(detection_table(found, "v"), geojson=tmp_path / "d.geojson", gpkg=tmp_path / "d.gpkg")
    for name in ("d.geojson", "d.gpkg"):
        assert gpd.read_file(tmp_path / name).geometry.is_valid.all()


def _random_checkpoint() -> Checkpoint:
    """A seeded random U-Net: its output depends on every input pixel (unlike constant_checkpoint)."""
    torch.manual_seed(0)
    cfg = UNetConfig(base_channels=4, depth=2)
    return Checkpoint(UNet(cfg).state_dict(), cfg, Normalization((100.0,) * 4, (40.0,) * 4))


def with_nodata_collar(path, out, value):
    """``path``'s pixels (kept off ``value``) with a collar (top 10 rows, left 20 columns) set to
    ``value`` and declared nodata."""
    with rasterio.open(path) as src:
        arr, profile = src.read(), src.profile
    arr[arr == value] = value - 1 if value else 1
    arr[:, :10, :] = value
    arr[:, :, :20] = value
    with rasterio.open(out, "w", **(profile | {"nodata": value})) as dst:
        dst.write(arr)
    return out


def test_detections_and_outputs_do_not_depend_on_the_nodata_value(tmp_path):
    path, _ = make_scene(tmp_path / "s.tif", (96, 128), [(30, 40, 80, 100)], seed=5)
    ckpt, cfg = _random_checkpoint(), DetectConfig(tile_size=64, overlap=16, threshold=0.5, min_area=4)
    probs = {}
    for value in (0, 255):
        scene = with_nodata_collar(path, tmp_path / f"nd{value}.tif", value)
        detect_scene(ckpt, scene, cfg, output_prob=tmp_path / f"p{value}.tif", output_mask=tmp_path / f"m{value}.tif")
        with rasterio.open(tmp_path / f"p{value}.tif") as p, rasterio.open(tmp_path / f"m{value}.tif") as m:
            probs[value] = p.read(1)
            # no data is said by a GDAL mask band; the values stay probabilities and a 0/1 mask
            for out in (p, m):
                valid = out.read_masks(1) > 0
                assert not valid[:10].any() and not valid[:, :20].any() and valid[10:, 20:].all()
            assert set(np.unique(m.read(1))) <= {0, 1} and m.nodata is None
            assert (p.read(1)[:10] == 0).all()
    np.testing.assert_array_equal(probs[0], probs[255])


def test_mask_source_tag_names_the_kept_probability_file_or_nothing(tmp_path):
    scene, _ = make_scene(tmp_path / "s.tif", (64, 64), [(10, 10, 40, 40)])
    cfg = DetectConfig(tile_size=64, overlap=0)
    detect_scene(constant_checkpoint(0.9), scene, cfg, output_mask=tmp_path / "m.tif")
    with rasterio.open(tmp_path / "m.tif") as m:
        assert "source" not in m.tags()  # was a temporary file, deleted when detect returned
    detect_scene(constant_checkpoint(0.9), scene, cfg, output_mask=tmp_path / "m2.tif", output_prob=tmp_path / "p.tif")
    with rasterio.open(tmp_path / "m2.tif") as m:
        assert m.tags()["source"] == str(tmp_path / "p.tif")


def _batch_argv(tmp_path, ckpt, *extra):
    return ["batch-detect", "--checkpoint", str(ckpt), "--input-dir", str(tmp_path / "in"),
            "--output-dir", str(tmp_path / "out"), "--tile-size", "64", "--overlap", "0", *extra]


@pytest.mark.parametrize("engine", [[], ["--accelerator", "cpu", "--devices", "1"]], ids=["loop", "lightning"])
def test_batch_detect_rerun_redoes_scenes_whose_checkpoint_settings_input_or_outputs_changed(tmp_path, capsys,
                                                                                              engine):
    for n in ("a", "b"):
        make_scene(tmp_path / "in" / f"{n}.tif", (64, 64), [(10, 10, 40, 40)], seed=ord(n))
    v1 = constant_checkpoint(0.9)
    v1.version = "v1"
    v2 = constant_checkpoint(0.8)
    v2.version = "v2"
    ck1, ck2 = save_checkpoint(v1, tmp_path / "v1.pt"), save_checkpoint(v2, tmp_path / "v2.pt")
    out = tmp_path / "out"

    def run(ckpt, *extra):
        assert cli_main(_batch_argv(tmp_path, ckpt, *extra, *engine)) == 0
        summary = gpd.read_file(out / "all_detections.geojson")
        return capsys.readouterr().out, summary

    text, summary = run(ck1)
    assert set(summary["model_version"]) == {"v1"} and "skipped" not in text
    text, _ = run(ck1)
    assert "2 scene(s) already done with this checkpoint and these settings: skipped" in text
    text, summary = run(ck2)  # another checkpoint
    assert set(summary["model_version"]) == {"v2"}
    assert "a: detected again: another checkpoint (v1 -> v2)" in text
    text, summary = run(ck2, "--threshold", "0.85")  # 0.8 < 0.85: nothing left
    assert len(summary) == 0 and "other settings (threshold 0.5 -> 0.85)" in text
    text, _ = run(ck2, "--threshold", "0.85", "--output-mask")  # a mask newly asked for
    assert "a_mask.tif missing" in text and (out / "a_mask.tif").exists() and (out / "b_mask.tif").exists()
    make_scene(tmp_path / "in" / "b.tif", (64, 64), [], seed=9)  # the scene itself changed
    text, _ = run(ck2, "--threshold", "0.85", "--output-mask")
    assert "b: detected again: the input scene changed" in text and "1 scene(s) already done" in text
    text, summary = run(ck2)  # masks no longer asked for: the earlier ones, now stale, are removed
    assert not (out / "a_mask.tif").exists() and len(summary) == 2
    record = json.loads((out / "a.detect.json").read_text())
    assert record["checkpoint"]["version"] == "v2" and record["settings"]["threshold"] == 0.5


def test_batch_detect_redoes_outputs_left_without_a_record(tmp_path, capsys):
    make_scene(tmp_path / "in" / "a.tif", (64, 64), [(10, 10, 40, 40)])
    ckpt = save_checkpoint(constant_checkpoint(0.9), tmp_path / "m.pt")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.geojson").write_text('{"type": "FeatureCollection", "features": []}')  # an older run's
    assert cli_main(_batch_argv(tmp_path, ckpt)) == 0
    assert "a: detected again: earlier outputs without a record" in capsys.readouterr().out
    assert len(gpd.read_file(tmp_path / "out" / "a.geojson")) == 1


@pytest.mark.parametrize("engine", [[], ["--accelerator", "cpu", "--devices", "1"]], ids=["loop", "lightning"])
def test_batch_detect_refuses_a_scene_named_like_the_aggregate_before_any_work(tmp_path, capsys, engine):
    make_scene(tmp_path / "in" / "x.tif", (64, 64), [(10, 10, 40, 40)])
    make_scene(tmp_path / "in" / "all_detections.tif", (64, 64), [(10, 10, 40, 40)])
    ckpt = save_checkpoint(constant_checkpoint(0.9), tmp_path / "m.pt")
    assert cli_main(_batch_argv(tmp_path, ckpt, *engine)) == 2
    err = capsys.readouterr().err
    assert "all_detections.tif" in err and "cannot be named all_detections" in err and "Rename" in err
    assert not (tmp_path / "out").exists()


def test_all_detections_ids_are_unique_and_lead_back_to_the_scene_files(tmp_path):
    from model.detect import batch_detect

    scenes = [_dark_scene_with_two_roofs(tmp_path / f"{n}.tif") for n in "ab"]
    ckpt = save_checkpoint(constant_checkpoint(0.9), tmp_path / "m.pt")
    table = batch_detect(ckpt, scenes, tmp_path / "out", DetectConfig(tile_size=64, overlap=0, merge_distance=0))
    summary = gpd.read_file(tmp_path / "out" / "all_detections.geojson")
    assert len(summary) == 4 and sorted(summary["id"]) == [1, 2, 3, 4] and list(table["id"]) == [1, 2, 3, 4]
    for _, row in summary.iterrows():
        own = gpd.read_file(tmp_path / "out" / f"{row['scene']}.geojson").set_index("id")
        assert own.loc[row["scene_detection_id"], "area_m2"] == row["area_m2"]


def _dark_scene_with_two_roofs(path):
    """A 128 x 128 scene, zero (empty) except a roof in the top-left and one in the bottom-right
    64 px tile: with 64 px tiles and a constant model only those two tiles are detected."""
    arr = np.zeros((4, 128, 128), np.uint8)
    arr[:, 5:40, 5:40] = arr[:, 70:120, 70:120] = 200
    return write_geotiff(path, arr, UTM18N, scene_transform(), nodata=0)


def _copy_on_grid(path, out, pixels, transform):
    """``path``'s profile with other ``pixels`` under another ``transform``."""
    with rasterio.open(path) as src:
        profile = src.profile
    with rasterio.open(out, "w", **(profile | {"transform": transform, "width": pixels.shape[2],
                                               "height": pixels.shape[1]})) as dst:
        dst.write(np.ascontiguousarray(pixels))
    return out


def test_south_up_and_rotated_grids_are_detected_north_up(tmp_path):
    # the same ground stored north-up, south-up (rows flipped, positive y pixel size) and turned a
    # quarter (rows are columns): a model that is not flip-invariant must see the same north-up image
    path, _ = make_scene(tmp_path / "n.tif", (96, 128), [(20, 30, 70, 90)], seed=6)
    with rasterio.open(path) as src:
        img, t = src.read(), src.transform
    south = _copy_on_grid(path, tmp_path / "s.tif", img[:, ::-1], rasterio.Affine(t.a, 0, t.c, 0, -t.e, t.f + t.e * 96))
    # column j of the turned grid is row j of the north-up one: x = c + 0.6 * row, y = f - 0.6 * col
    turned = _copy_on_grid(path, tmp_path / "t.tif", img.transpose(0, 2, 1), rasterio.Affine(0, t.a, t.c, t.e, 0, t.f))
    ckpt, cfg = _random_checkpoint(), DetectConfig(tile_size=64, overlap=16, threshold=0.5, min_area=4, simplify=0.0)
    outs, probs = {}, {}
    for name, scene in (("n", path), ("s", south), ("t", turned)):
        outs[name] = detect_scene(ckpt, scene, cfg, output_prob=tmp_path / f"p{name}.tif",
                                  output_mask=tmp_path / f"m{name}.tif").geometry.union_all()
        with rasterio.open(tmp_path / f"p{name}.tif") as p, rasterio.open(tmp_path / f"m{name}.tif") as m:
            assert p.transform == m.transform == rasterio.open(scene).transform  # on the scene's own grid
            probs[name] = p.read(1)
    assert not outs["n"].is_empty
    assert outs["s"].symmetric_difference(outs["n"]).area == pytest.approx(0, abs=1e-6)  # a flip is exact
    np.testing.assert_array_equal(probs["s"][::-1], probs["n"])
    assert outs["t"].symmetric_difference(outs["n"]).area < 0.01 * outs["n"].area
    assert np.abs(probs["t"].T.astype(int) - probs["n"]).max() <= 1


def test_saturated_red_is_not_nodata_in_detection_outputs(tmp_path):
    path, _ = make_scene(tmp_path / "s.tif", (64, 64), seed=2)
    with rasterio.open(path) as src:
        img, profile = src.read(), src.profile
    img[img == 255] = 254
    img[0, 30:40, 30:40] = 255  # a saturated red roof, valid in green, blue and NIR
    img[:, :8] = 255  # a no-data strip
    with rasterio.open(tmp_path / "nd.tif", "w", **(profile | {"nodata": 255, "photometric": "minisblack"})) as dst:
        dst.write(img)
    detect_scene(constant_checkpoint(0.8), tmp_path / "nd.tif", DetectConfig(tile_size=64, overlap=0),
                 output_mask=tmp_path / "m.tif", output_prob=tmp_path / "p.tif")
    for out in ("m.tif", "p.tif"):
        with rasterio.open(tmp_path / out) as o:
            valid = o.read_masks(1) > 0
            assert not valid[:8].any() and valid[8:].all(), out
            assert (o.read(1)[30:40, 30:40] > 0).all(), out


@pytest.mark.parametrize("band1", ["no data", "data"])
def test_output_no_data_mask_is_taken_over_the_bands_read(tmp_path, band1):
    """``--bands 2,3,4,5`` on a 5-band file: band 1 (not read) decides nothing in the outputs' no-data
    mask. Top 8 rows: only NIR (band 5) has data when band 1 is no data everywhere (valid, as
    detection read them), or bands 2-5 are all no data under a band 1 of data (no data)."""
    path, _ = make_scene(tmp_path / "s.tif", (64, 64), bands=5, seed=3)
    with rasterio.open(path) as src:
        img, profile = src.read(), src.profile
    img[img == 0] = 1
    if band1 == "no data":
        img[0] = 0
        img[1:4, :8] = 0
    else:
        img[1:, :8] = 0
    with rasterio.open(tmp_path / "nd.tif", "w", **(profile | {"nodata": 0})) as dst:
        dst.write(img)
    save_checkpoint(constant_checkpoint(0.8), tmp_path / "m.pt")
    rc = cli_main(["detect", "--checkpoint", str(tmp_path / "m.pt"), "--image", str(tmp_path / "nd.tif"),
                   "--bands", "2,3,4,5", "--tile-size", "64", "--overlap", "0", "--output-mask",
                   str(tmp_path / "m.tif"), "--output-prob", str(tmp_path / "p.tif")])
    assert rc == 0
    top_valid = band1 == "no data"
    for out in ("m.tif", "p.tif"):
        with rasterio.open(tmp_path / out) as o:
            valid, values = o.read_masks(1) > 0, o.read(1)
            assert (valid[:8] == top_valid).all() and valid[8:].all(), out
            assert ((values[:8] > 0) == top_valid).all(), out  # the mask agrees with what detection saw
