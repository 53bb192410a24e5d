"""The seed scripts' workflow through the CLI: chips -> create-masks -> train -> batch-detect."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import pytest
import rasterio
import torch
from geodata import make_scene
from shapely.geometry import box

from loop.cli import main as cli_main
from model.checkpoint import load_checkpoint
from model.chips import write_chips
from model.errors import LabelError, SceneError
from model.scene import open_scene

torch.set_num_threads(1)


@pytest.fixture
def chips(tmp_path):
    path, polys = make_scene(tmp_path / "scene.tif", (512, 512), [(40, 40, 200, 220), (300, 280, 460, 470)])
    s = open_scene(path)
    labels = gpd.GeoDataFrame({"class": ["datacenter", "warehouse"]}, geometry=polys, crs=s.crs).to_crs(4326)
    labels.to_file(tmp_path / "labels.geojson")
    write_chips(s, labels, tmp_path / "ds", size=128)
    return tmp_path, path


def test_create_masks_train_and_batch_detect(chips, capsys):
    tmp, scene = chips
    assert cli_main(["create-masks", "--chips-dir", str(tmp / "ds/chips"), "--geojson", str(tmp / "labels.geojson"),
                     "--output-dir", str(tmp / "masks")]) == 0
    assert "16 masks (4 with data centers)" in capsys.readouterr().out  # the warehouse is background
    for name in ("ds/masks", "masks"):  # write_chips and create-masks agree
        with rasterio.open(next((tmp / name).glob("*r0_c0.tif"))) as m:
            assert m.read(1).sum() > 0
    assert cli_main(["train", "--chips-dir", str(tmp / "ds/chips"), "--masks-dir", str(tmp / "masks"),
                     "--output-dir", str(tmp / "run"), "--epochs", "1", "--batch-size", "8",
                     "--base-channels", "4", "--depth", "2", "--accelerator", "cpu"]) == 0
    ckpt = load_checkpoint(tmp / "run" / "best.pt")
    assert ckpt.train["train_chips"] + ckpt.train["val_chips"] == 16 and "iou" in ckpt.metrics
    assert ckpt.train["resolution_m"] == pytest.approx(0.6)  # read from the chips' georeference
    assert (tmp / "run" / "logs" / "metrics.csv").exists()
    assert cli_main(["batch-detect", "--checkpoint", str(tmp / "run" / "best.pt"), "--images", str(scene),
                     "--output-dir", str(tmp / "out"), "--tile-size", "128"]) == 0
    summary = json.loads((tmp / "out" / "all_detections.geojson").read_text())
    assert summary["type"] == "FeatureCollection"
    assert (tmp / "out" / "scene.geojson").exists() and (tmp / "out" / "all_detections.csv").exists()


def test_create_masks_errors_when_labels_miss_the_chips(chips):
    tmp, _ = chips
    far = gpd.GeoDataFrame({"class": ["datacenter"]}, geometry=gpd.points_from_xy([-120.0], [36.0]).buffer(0.001),
                           crs=4326)
    far.to_file(tmp / "far.geojson")
    from model.chips import create_masks

    with pytest.raises(LabelError, match="no data-center polygon overlaps"):
        create_masks(tmp / "ds/chips", tmp / "far.geojson", tmp / "m2", progress=False)
    assert not (tmp / "m2").exists() and not list(tmp.glob(".m2.*"))  # nothing written, no scratch left


def test_label_classes_mean_the_same_in_create_masks_and_labels_import(tmp_path):
    from model.masks import load_footprints

    sq = [box(0, 0, 1e-4, 1e-4), box(1, 1, 1.0001, 1.0001), box(2, 2, 2.0001, 2.0001), box(3, 3, 3.0001, 3.0001)]
    cases = {
        "bool.geojson": {"label": [True, False, True, False]},
        "strings.geojson": {"label": ["true", "false", "yes", "0"]},
        "alias.geojson": {"class": ["data-center", "warehouse", "Data Center", "retail"]},
    }
    for name, props in cases.items():
        gpd.GeoDataFrame(props, geometry=sq, crs=4326).to_file(tmp_path / name)
        assert list(load_footprints(tmp_path / name)["class"] == "datacenter") == [True, False, True, False], name
    # a null label in a row without a class cannot be read either way: a clear error, not a guess
    gpd.GeoDataFrame({"label": [True, None, False, True]}, geometry=sq, crs=4326).to_file(tmp_path / "null.geojson")
    with pytest.raises(LabelError, match="neither a 'class' nor a true/false 'label'"):
        load_footprints(tmp_path / "null.geojson")


def test_create_masks_keeps_the_chips_and_grows_footprints_into_chips(chips, capsys):
    tmp, _ = chips
    chip_dir = tmp / "ds/chips"
    before = {f.name: f.read_bytes() for f in chip_dir.iterdir()}
    rc = cli_main(["create-masks", "--chips-dir", str(chip_dir), "--geojson", str(tmp / "labels.geojson"),
                   "--output-dir", str(chip_dir)])
    assert rc == 2 and "would overwrite the chips" in capsys.readouterr().err
    assert {f.name: f.read_bytes() for f in chip_dir.iterdir()} == before
    # a footprint 2 m west of a chip, grown by 5 m, reaches 3 m (5 px) into it
    from model.chips import create_masks

    first = sorted(chip_dir.glob("*.tif"))[0]
    with rasterio.open(first) as src:
        left, bottom, right, top = src.bounds
        crs = src.crs
    near = gpd.GeoDataFrame({"class": ["datacenter"]}, geometry=[box(left - 30, bottom + 20, left - 2, top - 20)], crs=crs)
    near.to_file(tmp / "near.geojson")
    create_masks(chip_dir, tmp / "near.geojson", tmp / "m_near", buffer=5.0, progress=False)
    with rasterio.open(tmp / "m_near" / first.name) as m:
        mask = m.read(1)
    assert mask[:, :5].any() and not mask[:, 6:].any()
    # a file in the chips folder that is not a raster: one clear error, no masks
    (chip_dir / "zz_notes.tif").write_text("not a raster")
    with pytest.raises(SceneError, match="zz_notes.tif: not a raster"):
        create_masks(chip_dir, tmp / "labels.geojson", tmp / "m_bad", progress=False)
    assert not (tmp / "m_bad").exists()


@pytest.mark.parametrize("case, message", [
    ("shifted mask", "must lie on its chip's grid"),
    ("mask in another CRS", "must lie on its chip's grid"),
    ("chips as masks", "is the chips folder"),
    ("mixed sizes", "chips of different sizes"),
    ("90 px chips", "multiple of 4"),
    ("not a raster", "not a raster"),
    ("empty masks", "none of the"),
    ("output is a file", "is a file"),
])
def test_train_checks_chips_and_masks_before_writing_anything(chips, capsys, case, message):
    import shutil

    import numpy as np
    from affine import Affine

    from model.scene import write_geotiff

    tmp, _ = chips
    chip_dir, mask_dir = tmp / "ds/chips", tmp / "ds/masks"
    first = sorted(mask_dir.glob("*.tif"))[0]
    with rasterio.open(first) as m:
        mask, crs, t = m.read(1), m.crs, m.transform
    out = tmp / "run"
    if case == "shifted mask":
        write_geotiff(first, mask, crs, t * Affine.translation(30, 0))
    elif case == "mask in another CRS":
        write_geotiff(first, mask, rasterio.crs.CRS.from_epsg(32617), t)
    elif case == "chips as masks":
        mask_dir = chip_dir
    elif case in ("mixed sizes", "90 px chips"):
        side = 64 if case == "mixed sizes" else 90
        for d in (chip_dir, mask_dir):
            for f in sorted(d.glob("*.tif"))[: 1 if case == "mixed sizes" else 99]:
                with rasterio.open(f) as src:
                    arr, crs, t = src.read(window=((0, side), (0, side))), src.crs, src.transform
                write_geotiff(f, arr, crs, t)
    elif case == "not a raster":
        (chip_dir / "zz.tif").write_text("notes")
        (mask_dir / "zz.tif").write_text("notes")
    elif case == "empty masks":
        for f in mask_dir.glob("*.tif"):
            with rasterio.open(f) as src:
                crs, t, shape = src.crs, src.transform, (src.height, src.width)
            write_geotiff(f, np.zeros(shape, np.uint8), crs, t)
    elif case == "output is a file":
        out.write_text("a file")
    argv = ["train", "--chips-dir", str(chip_dir), "--masks-dir", str(mask_dir), "--output-dir", str(out),
            "--epochs", "1", "--base-channels", "4", "--depth", "2", "--accelerator", "cpu"]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not (out.is_dir() and any(out.iterdir()))  # nothing written
    shutil.rmtree(tmp / "ds", ignore_errors=True)


@pytest.mark.parametrize("argv, setting", [
    (["detect", "--checkpoint", "m.pt", "--image", "s.tif", "--output-geojson", "o.geojson", "--threshold", "1.5"],
     "--threshold must be in (0, 1)"),
    (["detect", "--checkpoint", "m.pt", "--image", "s.tif", "--output-geojson", "o.geojson", "--gate-threshold", "1"],
     "--gate-threshold must be in [0, 1)"),
    (["train", "--chips-dir", "c", "--masks-dir", "m", "--output-dir", "o", "--lr", "0"], "lr"),
    (["simulate", "--image", "s.tif", "--truth", "t.geojson", "--output-dir", "o", "--finetune-lr-factor", "2"],
     "--finetune-lr-factor"),
])
def test_out_of_range_flags_get_one_line_naming_the_setting(argv, setting, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dclabel {argv[0]}: error:") and setting in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_ctrl_c_during_train_exits_130_and_leaves_the_previous_run_intact(chips):
    import os
    import signal
    import subprocess
    import sys
    import time

    tmp, _ = chips
    out = tmp / "run"
    out.mkdir()
    (out / "best.pt").write_bytes(b"previous run")
    (out / "logs").mkdir()
    (out / "logs" / "metrics.csv").write_text("previous log\n")
    argv = [sys.executable, "-m", "labeler.cli", "train", "--chips-dir", str(tmp / "ds/chips"), "--masks-dir",
            str(tmp / "ds/masks"), "--output-dir", str(out), "--epochs", "100000", "--base-channels", "4",
            "--depth", "2", "--gate-seconds", "0", "--accelerator", "cpu"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=Path(__file__).resolve().parents[1])
    t0 = time.monotonic()
    while not any(p.name.startswith(".logs.") for p in out.iterdir()) and time.monotonic() - t0 < 60:
        time.sleep(0.2)  # training has started: its log is being written
    time.sleep(2.0)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, output[-2000:]
    assert (out / "best.pt").read_bytes() == b"previous run"
    assert (out / "logs" / "metrics.csv").read_text() == "previous log\n"
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "logs"]


def test_first_run_mistakes_are_one_line_errors(chips, capsys):
    from labeler.cli import main as app_main
    from loop.demo import ensure_demo_project
    from loop.errors import ProjectError
    from loop.project import Project

    tmp, scene = chips
    ckpt = tmp / "m.pt"
    ckpt.write_bytes(b"unused")
    # batch-detect: a missing input folder, and outputs into the input folder (read back as scenes)
    assert cli_main(["batch-detect", "--checkpoint", str(ckpt), "--input-dir", str(tmp / "nothere"),
                     "--output-dir", str(tmp / "o")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert cli_main(["batch-detect", "--checkpoint", str(ckpt), "--input-dir", str(tmp / "ds/chips"),
                     "--output-dir", str(tmp / "ds/chips")]) == 2
    assert "is the input folder" in capsys.readouterr().err
    # app on a folder that is not a project: an error line, no window
    assert app_main(["app", str(tmp / "ds")]) == 2
    assert "not a dclabel project" in capsys.readouterr().err
    # demo never writes into another project
    other = Project.create(tmp / "mine", images=[scene])
    before = (tmp / "mine" / "project.json").read_text()
    with pytest.raises(ProjectError, match="holds no demo project"):
        ensure_demo_project(other.root)
    assert (tmp / "mine" / "project.json").read_text() == before


def test_create_masks_rerun_names_masks_left_from_an_earlier_run(chips):
    from model.chips import create_masks

    tmp, _ = chips
    create_masks(tmp / "ds/chips", tmp / "labels.geojson", tmp / "m", progress=False)
    (tmp / "m" / "gone_chip.tif").write_bytes((tmp / "m" / sorted(p.name for p in (tmp / "m").iterdir())[0]).read_bytes())
    with pytest.warns(UserWarning, match="1 mask.* have no chip.*gone_chip.tif"):
        create_masks(tmp / "ds/chips", tmp / "labels.geojson", tmp / "m", progress=False)


def test_training_without_validation_chips_does_not_warn_about_it(recwarn):
    import numpy as np

    from model.config import TrainConfig
    from model.train import fit

    pairs = [(np.full((4, 32, 32), 100, np.uint8), np.pad(np.ones((8, 8), np.uint8), 12))] * 2
    fit(pairs, [], TrainConfig(epochs=1, batch_size=2, base_channels=4, depth=2, accelerator="cpu", gate_seconds=0,
                               progress_bar=False))
    assert not [w for w in recwarn if "val_dataloader" in str(w.message)]


def test_batch_detect_says_which_subfolders_of_the_input_it_did_not_search(tmp_path, capsys):
    from test_model_detect import constant_checkpoint

    from model.checkpoint import save_checkpoint

    make_scene(tmp_path / "in" / "a.tif", (64, 64), [(10, 10, 40, 40)])
    make_scene(tmp_path / "in" / "2024" / "b.tif", (64, 64), [(10, 10, 40, 40)])
    make_scene(tmp_path / "in" / "2025" / "deeper" / "c.tif", (64, 64), [(10, 10, 40, 40)])
    ckpt = save_checkpoint(constant_checkpoint(0.9), tmp_path / "m.pt")
    assert cli_main(["batch-detect", "--checkpoint", str(ckpt), "--input-dir", str(tmp_path / "in"),
                     "--output-dir", str(tmp_path / "in" / "detections"), "--tile-size", "64", "--overlap", "0"]) == 0
    captured = capsys.readouterr()
    assert "2 subfolder(s) of" in captured.err and "not searched (2 .tif/.vrt file(s) in them)" in captured.err
    assert "over 1 of 1 scenes" in captured.out  # the output folder inside the input is not counted
    (tmp_path / "in2" / "notes").mkdir(parents=True)  # a subfolder without scenes leaves nothing out
    make_scene(tmp_path / "in2" / "a.tif", (64, 64), [(10, 10, 40, 40)])
    assert cli_main(["batch-detect", "--checkpoint", str(ckpt), "--input-dir", str(tmp_path / "in2"),
                     "--output-dir", str(tmp_path / "out2"), "--tile-size", "64", "--overlap", "0"]) == 0
    assert "not searched" not in capsys.readouterr().err


def _mask_sums(folder: Path) -> dict[str, int]:
    out = {}
    for f in sorted(folder.glob("*.tif")):
        with rasterio.open(f) as m:
            out[f.name] = int(m.read(1).sum())
    return out


def test_create_masks_reads_a_0_1_class_column_like_labels_import(chips, capsys, recwarn):
    """``class`` 1/0 (ints, floats with a null, booleans, "1"/"0") means data center / not, as a
    ``label`` does: the 0s are background and no row is said to lack a class. Codes other than 0/1
    are refused; so is a "1" among class names (it was background, while an integer 1 was a data center)."""
    from model.masks import load_footprints

    tmp, _ = chips
    named = gpd.read_file(tmp / "labels.geojson")  # datacenter, warehouse
    assert cli_main(["create-masks", "--chips-dir", str(tmp / "ds/chips"), "--geojson", str(tmp / "labels.geojson"),
                     "--output-dir", str(tmp / "m_named")]) == 0
    for name, values in (("int", [1, 0]), ("bool", [True, False]), ("str", ["1", "0"])):
        named[["geometry"]].assign(**{"class": values}).to_file(tmp / f"{name}.geojson")
        assert cli_main(["create-masks", "--chips-dir", str(tmp / "ds/chips"), "--geojson", str(tmp / f"{name}.geojson"),
                         "--output-dir", str(tmp / f"m_{name}")]) == 0, name
        assert _mask_sums(tmp / f"m_{name}") == _mask_sums(tmp / "m_named"), name
    assert not [w for w in recwarn if "without a class" in str(w.message)]
    sq = [box(0, 0, 1e-4, 1e-4), box(1, 1, 1.0001, 1.0001), box(2, 2, 2.0001, 2.0001)]
    gpd.GeoDataFrame({"class": [1.0, None, 0.0], "label": [False, True, False]}, geometry=sq,
                     crs=4326).to_file(tmp / "float.geojson")
    assert list(load_footprints(tmp / "float.geojson")["class"]) == ["datacenter", "datacenter", "other"]
    gpd.GeoDataFrame({"class": [0, 3, 5]}, geometry=sq, crs=4326).to_file(tmp / "codes.geojson")
    gpd.GeoDataFrame({"class": ["datacenter", "1", "retail"]}, geometry=sq, crs=4326).to_file(tmp / "mixed.geojson")
    for name, shown in (("codes", "0, 3, 5"), ("mixed", "1")):
        capsys.readouterr()
        assert cli_main(["create-masks", "--chips-dir", str(tmp / "ds/chips"), "--geojson",
                         str(tmp / f"{name}.geojson"), "--output-dir", str(tmp / "m_bad")]) == 2
        err = capsys.readouterr().err
        assert f"numeric code(s) {shown}," in err and "Map the codes to names" in err, err
    assert not (tmp / "m_bad").exists()


def test_create_masks_layer_flag_and_several_layers_refused(chips, capsys):
    tmp, _ = chips
    labels = gpd.read_file(tmp / "labels.geojson")
    gpkg = tmp / "multi.gpkg"
    labels[labels["class"] == "warehouse"].to_file(gpkg, layer="negatives")  # first layer: no data center
    labels.to_file(gpkg, layer="all")
    argv = ["create-masks", "--chips-dir", str(tmp / "ds/chips"), "--geojson", str(gpkg), "--output-dir",
            str(tmp / "m")]
    assert cli_main(argv) == 2
    assert "negatives (Polygon), all (Polygon); choose one with --layer NAME" in capsys.readouterr().err
    assert not (tmp / "m").exists()
    assert cli_main([*argv, "--layer", "all"]) == 0
    assert "16 masks (4 with data centers)" in capsys.readouterr().out
    assert cli_main([*argv, "--layer", "nope"]) == 2
    assert "no layer 'nope'; its layers are negatives (Polygon), all (Polygon)" in capsys.readouterr().err


def test_create_masks_diagnoses_projected_geojson_without_crs(chips, capsys):
    tmp, scene = chips
    utm = gpd.read_file(tmp / "labels.geojson").to_crs(open_scene(scene).crs)
    doc = json.loads(utm.to_json())
    doc.pop("crs", None)  # metres, no crs member: GDAL reads it as EPSG:4326
    (tmp / "utm.geojson").write_text(json.dumps(doc))
    assert cli_main(["create-masks", "--chips-dir", str(tmp / "ds/chips"), "--geojson", str(tmp / "utm.geojson"),
                     "--output-dir", str(tmp / "m")]) == 2
    err = capsys.readouterr().err
    assert "are not longitude/latitude" in err and "ogr2ogr -a_srs" in err and "overlaps" not in err, err


def test_class_and_label_that_disagree_or_are_missing_are_warned(tmp_path):
    from model.masks import load_footprints

    sq = [box(0, 0, 1e-4, 1e-4), box(1, 1, 1.0001, 1.0001), box(2, 2, 2.0001, 2.0001), box(3, 3, 3.0001, 3.0001)]
    gpd.GeoDataFrame({"class": ["DATACENTER", None, "warehouse", "retail"], "label": [False, False, False, False]},
                     geometry=sq, crs=4326).to_file(tmp_path / "clash.geojson")
    with pytest.warns(UserWarning, match=r"1 polygon\(s\) have a 'class' that contradicts their 'label' \(e.g. "
                      r"class 'datacenter' with label false\); the class is used"):
        got = load_footprints(tmp_path / "clash.geojson")
    assert list(got["class"]) == ["datacenter", "other", "warehouse", "retail"]  # the null class: its label
    gpd.GeoDataFrame({"class": ["datacenter", None, "warehouse", "retail"]}, geometry=sq,
                     crs=4326).to_file(tmp_path / "null.geojson")
    with pytest.warns(UserWarning, match=r"1 polygon\(s\) without a class or label are taken as data centers"):
        load_footprints(tmp_path / "null.geojson")


def test_batch_detect_reads_vrt_scenes_but_not_a_mosaic_of_its_own_tiles(tmp_path, capsys):
    import rasterio.shutil
    from test_model_detect import constant_checkpoint

    from model.checkpoint import save_checkpoint

    make_scene(tmp_path / "in" / "a.tif", (64, 64), [(10, 10, 40, 40)])
    make_scene(tmp_path / "elsewhere" / "b.tif", (64, 64), [(10, 10, 40, 40)], seed=1)
    rasterio.shutil.copy(tmp_path / "elsewhere" / "b.tif", tmp_path / "in" / "b.vrt", driver="VRT")
    rasterio.shutil.copy(tmp_path / "in" / "a.tif", tmp_path / "in" / "mosaic.vrt", driver="VRT")
    ckpt = save_checkpoint(constant_checkpoint(0.9), tmp_path / "m.pt")
    assert cli_main(["batch-detect", "--checkpoint", str(ckpt), "--input-dir", str(tmp_path / "in"),
                     "--output-dir", str(tmp_path / "out"), "--tile-size", "64", "--overlap", "0"]) == 0
    captured = capsys.readouterr()
    assert "over 2 of 2 scenes" in captured.out
    assert (tmp_path / "out" / "a.geojson").exists() and (tmp_path / "out" / "b.geojson").exists()
    assert "mosaic.vrt left out: it is built over 1 scene(s)" in captured.err
    assert not (tmp_path / "out" / "mosaic.geojson").exists()
