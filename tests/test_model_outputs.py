"""Writing detection outputs: GeoPackages that are not ours, full disks, valid polygons as written,
extensions that name another format."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pytest
import rasterio
import torch
from geodata import UTM18N, constant_checkpoint, make_scene
from shapely.geometry import MultiPolygon, Polygon, box
from shapely.validation import explain_validity

from loop.cli import main as cli_main
from model.checkpoint import Checkpoint, Normalization, save_checkpoint
from model.export import detection_table, write_detections
from model.unet import UNet, UNetConfig

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]


def noisy_checkpoint() -> Checkpoint:
    """A random U-Net: probabilities that vary pixel to pixel (a GeoTIFF that does not compress away)."""
    torch.manual_seed(0)
    cfg = UNetConfig(base_channels=4, depth=2)
    return Checkpoint(UNet(cfg).state_dict(), cfg, Normalization((90,) * 4, (20,) * 4))


def detect_argv(ckpt: Path, scene: Path, *outputs: str) -> list[str]:
    return ["detect", "--checkpoint", str(ckpt), "--image", str(scene), "--tile-size", "64", "--overlap", "0",
            *outputs]


# ----- 1. existing GeoPackages --------------------------------------------------------------------
def test_detect_refuses_to_replace_a_label_store_or_a_geopackage_with_other_layers(tmp_path, capsys):
    from loop.labelstore import LabelStore

    scene, roofs = make_scene(tmp_path / "s.tif", (64, 64), [(10, 10, 40, 40)])
    ckpt = save_checkpoint(constant_checkpoint(0.9), tmp_path / "m.pt")
    labels = tmp_path / "proj" / "labels.gpkg"
    store = LabelStore(labels)
    store.register_scene("s", UTM18N)
    store.add_footprint("s", roofs[0])
    store.close()
    before = labels.read_bytes()
    assert cli_main(detect_argv(ckpt, scene, "--output-gpkg", str(labels), "--output-geojson",
                                str(tmp_path / "d.geojson"))) == 2
    err = capsys.readouterr().err
    assert str(labels) in err and "label store" in err and "footprints_32618" in err and "Traceback" not in err
    assert labels.read_bytes() == before and not (tmp_path / "d.geojson").exists()  # before any work
    assert len(LabelStore(labels, read_only=True).footprints()) == 1

    mine = tmp_path / "mine.gpkg"
    gpd.GeoDataFrame({"name": ["a"]}, geometry=[roofs[0]], crs=UTM18N).to_file(mine, layer="parcels")
    gpd.GeoDataFrame({"name": ["b"]}, geometry=[roofs[0].centroid], crs=UTM18N).to_file(mine, layer="points")
    assert cli_main(detect_argv(ckpt, scene, "--output-gpkg", str(mine))) == 2
    err = capsys.readouterr().err
    assert str(mine) in err and "parcels, points" in err and "Choose another path" in err
    assert sorted(pyogrio.list_layers(mine)[:, 0]) == ["parcels", "points"]

    ours = tmp_path / "dets.gpkg"  # our own earlier output is replaced, as before
    assert cli_main(detect_argv(ckpt, scene, "--output-gpkg", str(ours))) == 0
    assert cli_main(detect_argv(ckpt, scene, "--output-gpkg", str(ours), "--threshold", "0.95")) == 0
    assert pyogrio.list_layers(ours)[:, 0].tolist() == ["detections"] and len(gpd.read_file(ours)) == 0


def test_labels_export_keeps_the_other_layers_of_an_existing_geopackage(tiny_project, tmp_path, capsys):
    from loop.project import Project

    project = Project.open(tiny_project)
    scene = project.scenes[0]
    x0, y0 = scene.transform * (100, 100)
    project.labels.add_footprint(scene.scene_id, box(x0, y0 - 30, x0 + 30, y0))
    other = tmp_path / "other.gpkg"
    gpd.GeoDataFrame({"n": [1]}, geometry=[box(0, 0, 1, 1)], crs=4326).to_file(other, layer="roads")
    argv = ["labels", "export", str(tiny_project), "--output", str(other)]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "other.gpkg" in err and "roads" in err
    assert pyogrio.list_layers(other)[:, 0].tolist() == ["roads"]
    again = tmp_path / "labels_out.gpkg"  # an earlier export of ours is replaced
    for _ in range(2):
        assert cli_main(["labels", "export", str(tiny_project), "--output", str(again)]) == 0
    assert len(gpd.read_file(again, layer="footprints")) == 1


def test_the_export_panels_check_refuses_a_label_store_of_another_project(tiny_project, tmp_path):
    """labeler/export_widget.py checks its paths with check_outputs (its default layer) before
    detecting; the label store of another project is refused there, with its layers named."""
    from loop.labelstore import LabelStore
    from model.atomic import check_outputs
    from model.errors import ConfigError

    other = tmp_path / "other_project" / "labels.gpkg"
    LabelStore(other).register_scene("x", UTM18N)
    with pytest.raises(ConfigError, match="is a dclabel label store"):
        check_outputs({"gpkg output": other, "geojson output": tmp_path / "d.geojson"},
                      {"project's label store": tiny_project / "labels.gpkg"})


@pytest.mark.gui
def test_the_export_panel_refuses_a_label_store_before_detecting(app, tmp_path) -> None:
    from loop.labelstore import LabelStore

    other = tmp_path / "elsewhere" / "labels.gpkg"
    store = LabelStore(other)
    store.register_scene("x", UTM18N)
    store.add_footprint("x", box(285_000, 4_319_900, 285_030, 4_319_930))
    store.close()
    before = other.read_bytes()
    export = app.export
    export.confirm_replace = lambda existing: pytest.fail(f"asked to replace {existing}")
    for box_fmt, ticked in export.formats.items():
        ticked.setChecked(box_fmt == "gpkg")
    export.output.setText(str(other))
    assert export.run() is None and export.job is None
    assert "label store" in export.status.text() and other.read_bytes() == before


# ----- 2. full disks ------------------------------------------------------------------------------
def _run_limited(script: str, limit: int, tmp_path: Path) -> subprocess.CompletedProcess:
    """Run python ``script`` with files capped at ``limit`` bytes (RLIMIT_FSIZE): writes past it fail
    with EFBIG, as on a full disk with ENOSPC, and GDAL only logs them."""
    import resource
    import signal

    def cap() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=tmp_path, env=env, preexec_fn=cap,
                          capture_output=True, text=True, timeout=300)


def _probabilities(path: Path) -> Path:
    rng = np.random.default_rng(0)
    prob = rng.integers(0, 255, (512, 512), dtype=np.uint8)
    prob[:, 200:] = 0  # the mask compresses well: GDAL writes it at close, where a failure is only logged
    with rasterio.open(path, "w", driver="GTiff", width=512, height=512, count=1, dtype="uint8", crs=UTM18N,
                       transform=rasterio.Affine(0.6, 0, 285_000, 0, -0.6, 4_320_000), tiled=True,
                       blockxsize=256, blockysize=256, compress="deflate") as dst:
        dst.write(prob[None])
    return path


def test_a_mask_or_probability_over_a_file_size_limit_is_an_error_and_leaves_nothing(tmp_path):
    _probabilities(tmp_path / "prob.tif")
    script = """
        import json, os
        from model.export import write_mask, write_probability
        result = {}
        for name, write in (("mask.tif", lambda: write_mask("prob.tif", "out/mask.tif", 0.5)),
                            ("p.tif", lambda: write_probability("prob.tif", "out/p.tif"))):
            try:
                write()
                result[name] = "written"
            except Exception as exc:
                result[name] = [type(exc).__name__, str(exc)]
        print(json.dumps({"result": result, "left": sorted(os.listdir("out"))}))
    """
    (tmp_path / "out").mkdir()
    run = _run_limited(script, 8 * 1024, tmp_path)  # the input is read, not written: only outputs are capped
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout.strip().splitlines()[-1])
    for name in ("mask.tif", "p.tif"):
        assert out["result"][name] == ["OutputError", f"file too large (a file size limit) writing out/{name}, "
                                       + out["result"][name][1].split(", ", 1)[1]]
        assert "No partial file was left" in out["result"][name][1]
    assert out["left"] == []


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs (root only: skipped elsewhere), unmounted afterwards."""
    disk = tmp_path / "tiny"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=False)


def test_a_mask_on_a_full_disk_is_an_error_and_takes_the_other_outputs_with_it(tmp_path, tiny_disk):
    from model.detect import DetectConfig, export_scene
    from model.errors import OutputError
    from model.scene import open_scene

    scene, _ = make_scene(tmp_path / "s.tif", (512, 512))
    prob = _probabilities(tmp_path / "prob.tif")
    with rasterio.open(prob) as src, rasterio.open(scene) as sc:
        assert (src.crs, src.transform, src.shape) == (sc.crs, sc.transform, sc.shape)
    (tiny_disk / "fill").write_bytes(b"x" * 56 * 1024)  # 8 KiB left: the mask (~12 KiB) does not fit
    with pytest.raises(OutputError, match=f"^no space left on device writing {tiny_disk / 'mask.tif'}"):
        export_scene(prob, open_scene(scene), "v1", DetectConfig(threshold=0.5, min_area=10),
                     output_geojson=tmp_path / "d.geojson", output_mask=tiny_disk / "mask.tif")
    assert sorted(p.name for p in tiny_disk.iterdir()) == ["fill"]
    assert not (tmp_path / "d.geojson").exists()  # "a disk-full mask takes the GeoJSON with it"


def test_detect_with_a_probability_output_that_does_not_fit_is_one_line_and_leaves_nothing(tmp_path):
    scene, _ = make_scene(tmp_path / "s.tif", (512, 512), [(100, 100, 300, 300)])
    ckpt = save_checkpoint(noisy_checkpoint(), tmp_path / "m.pt")
    (tmp_path / "out").mkdir()
    script = f"""
        import sys
        from loop.cli import main
        sys.exit(main({detect_argv(ckpt, scene, "--output-geojson", "out/d.geojson", "--output-prob", "out/p.tif",
                                   "--threshold", "0.3")!r}))
    """
    run = _run_limited(script, 16 * 1024, tmp_path)  # the probabilities take ~56 KiB
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr
    assert "dclabel detect: error: " in run.stderr and "out/p.tif" in run.stderr.splitlines()[-1]
    assert list((tmp_path / "out").iterdir()) == []


# ----- 3. valid polygons as written ---------------------------------------------------------------
def corner_touching_footprints(n: int = 60, seed: int = 0) -> gpd.GeoDataFrame:
    """Footprints of two parts touching at one point, a corner of one lying on the other's edge
    (valid in UTM): a reprojection or rounding moves the corner off the edge, into the other part."""
    rng = np.random.default_rng(seed)
    geoms = []
    for i in range(n):
        x, y = 285_000 + 100 * i + rng.uniform(0, 1), 4_320_000 + rng.uniform(0, 1)
        right = box(x + 10, y, x + 30, y + 20)  # its left edge runs from y to y + 20
        wedge = Polygon([(x, y + 6), (x + 10, y + 10 + rng.uniform(-3, 3)), (x, y + 14)])  # its tip on that edge
        geoms.append(MultiPolygon([wedge, right]))
    assert all(g.is_valid for g in geoms)
    found = gpd.GeoDataFrame({"mean_confidence": np.full(n, 0.8)}, geometry=geoms, crs=UTM18N)
    return detection_table(found, "v1")


def _invalid(path: Path, **kw) -> list[str]:
    return [explain_validity(g) for g in gpd.read_file(path, **kw).geometry if not g.is_valid]


def test_written_polygons_are_valid_in_the_crs_and_precision_they_are_written_in(tmp_path):
    table = corner_touching_footprints()
    write_detections(table, geojson=tmp_path / "d.geojson", gpkg=tmp_path / "d.gpkg")
    assert _invalid(tmp_path / "d.geojson") == []  # EPSG:4326 at 7 decimals
    assert _invalid(tmp_path / "d.gpkg") == []
    # a scene in EPSG:4326: its polygons come back from the UTM zone it was detected in
    write_detections(table.to_crs("EPSG:4326"), gpkg=tmp_path / "g.gpkg")
    assert _invalid(tmp_path / "g.gpkg") == []
    back = gpd.read_file(tmp_path / "d.geojson")
    assert len(back) == len(table)
    assert np.allclose(back.to_crs(UTM18N).area, table.area, rtol=1e-3)  # the same footprints


def test_batch_all_detections_polygons_are_valid(tmp_path):
    from model.detect import merge_scene_tables

    table = corner_touching_footprints(seed=1).to_crs("EPSG:4326").assign(scene="a")
    merge_scene_tables([table], tmp_path)
    assert _invalid(tmp_path / "all_detections.geojson") == []


# ----- 4. extensions ------------------------------------------------------------------------------
@pytest.mark.parametrize("flag, name, expected", [
    ("--output-gpkg", "dets.geojson", ".gpkg"),
    ("--output-geojson", "dets.shp", ".geojson or .json"),
    ("--output-mask", "mask.png", ".tif or .tiff"),
    ("--output-csv", "dets.xlsx", ".csv or .txt"),
    ("--output-prob", "prob", ".tif or .tiff"),
])
def test_detect_refuses_an_output_named_for_another_format_before_any_work(tmp_path, capsys, flag, name, expected):
    # the scene and checkpoint do not exist: the name is refused before either is read
    assert cli_main(detect_argv(tmp_path / "m.pt", tmp_path / "s.tif", flag, str(tmp_path / name))) == 2
    err = capsys.readouterr().err
    assert f"{flag} {tmp_path / name}" in err and expected in err and "e.g." in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_detect_takes_the_usual_variants_of_each_extension(tmp_path):
    scene, _ = make_scene(tmp_path / "s.tif", (64, 64), [(10, 10, 40, 40)])
    ckpt = save_checkpoint(constant_checkpoint(0.9), tmp_path / "m.pt")
    outs = {"--output-geojson": "d.json", "--output-gpkg": "d.GPKG", "--output-csv": "d.txt",
            "--output-mask": "m.TIFF", "--output-prob": "p.tiff"}
    argv = detect_argv(ckpt, scene, *[x for flag, n in outs.items() for x in (flag, str(tmp_path / n))])
    assert cli_main(argv) == 0
    assert len(gpd.read_file(tmp_path / "d.json")) == len(gpd.read_file(tmp_path / "d.GPKG")) == 1
    assert len(pd.read_csv(tmp_path / "d.txt")) == 1
    with rasterio.open(tmp_path / "m.TIFF") as m:
        assert m.driver == "GTiff"
