"""Project folder: create, open, reopen, chip folders, errors, training chips from reviews."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window
from shapely.geometry import box

from loop.errors import ProjectError
from loop.project import CLASSES, Project, ProjectSettings
from loop.training_chips import positive_reviewed_count, reviewed_training_chips
from model.errors import SceneError
from model.scene import write_geotiff

UTM = CRS.from_epsg(32618)


def make_scene(path, width=96, height=80, seed=0, origin=(500_000.0, 4_300_000.0), bands=4, res=0.6):
    rng = np.random.default_rng(seed)
    img = rng.integers(1, 256, (bands, height, width), dtype=np.uint8)  # no 0: band 4 is tagged alpha
    transform = Affine(res, 0, origin[0], 0, -res, origin[1])
    write_geotiff(path, img, UTM, transform)
    return path, img, transform


def test_create_open_reopen(tmp_path):
    scene, _, _ = make_scene(tmp_path / "outside" / "a.tif")
    root = tmp_path / "proj"
    project = Project.create(root, images=[scene], chip_size=32)
    assert (root / "project.json").exists() and (root / "checkpoints").is_dir() and (root / "logs").is_dir()
    assert project.settings == ProjectSettings(chip_size=32)
    assert project.settings.classes == CLASSES
    [info] = project.scenes
    assert (info.width, info.height) == (96, 80)
    assert len(project.chip_windows(info.scene_id)) == 3 * 3  # edges covered, last window snapped
    # inside-project scenes are stored relative, outside ones absolute
    inside, _, _ = make_scene(root / "scenes" / "b.tif", seed=1)
    b = project.add_scene(inside)
    stored = {s["id"]: s["path"] for s in json.loads((root / "project.json").read_text())["scenes"]}
    assert stored == {info.scene_id: str(scene.resolve()), b.scene_id: "scenes/b.tif"}
    again = Project.open(root)
    assert again.scene_ids == project.scene_ids
    assert again.scene(info.scene_id).transform == info.transform
    # adding the same file twice is a no-op
    again.add_scene(scene)
    assert len(Project.open(root).scenes) == 2


def test_project_folder_moves_and_keeps_scene_ids(tmp_path):
    root = tmp_path / "proj"
    make_scene(root / "scenes" / "a.tif")
    project = Project.create(root, images=[root / "scenes" / "a.tif"])
    sid = project.scene_ids[0]
    moved = root.rename(tmp_path / "moved")
    reopened = Project.open(moved)
    assert reopened.scene_ids == [sid]
    assert reopened.scene(sid).path.resolve() == (moved / "scenes" / "a.tif").resolve()


def test_project_reads_every_scene_at_its_resolution(tmp_path, capsys):
    from loop.cli import main as cli_main

    fine, img, _ = make_scene(tmp_path / "in" / "fine.tif", width=192, height=160, res=0.3)
    coarse, _, _ = make_scene(tmp_path / "in" / "coarse.tif", seed=1, res=0.6)
    root = tmp_path / "proj"
    assert cli_main(["init", str(root), "--image", str(fine), "--image", str(coarse), "--res", "0.6"]) == 0
    project = Project.open(root)
    assert project.settings.resolution_m == 0.6
    a, b = project.scenes
    assert (a.width, a.height, a.res) == (96, 80, (0.6, 0.6)) and a.path.suffix == ".vrt"
    assert b.path == coarse.resolve() or b.path.resolve() == coarse.resolve()  # already 0.6 m: read directly
    chip = project.chips(a.scene_id)[0]
    from model.scene import read_window

    got = read_window(a, chip).astype(float)[:, :80, :96]  # the chip (256 px) reads past the edge
    want = img.reshape(4, 80, 2, 96, 2).mean(axis=(2, 4))
    assert np.abs(got - want).max() <= 1.0  # each 0.6 m pixel averages four 0.3 m ones
    stored = json.loads((root / "project.json").read_text())["scenes"][0]
    assert stored["path"].startswith("scenes/") and stored["source"] == str(fine.resolve())
    Project.open(root).add_scene(fine)  # the source again: a no-op
    assert len(Project.open(root).scenes) == 2
    fine.rename(tmp_path / "moved.tif")  # the imagery behind a resampled scene moved: say which file
    with pytest.raises(SceneError, match=r"fine\.tif: no such file.*resampled to 0\.6 m"):
        Project.open(root).scene(a.scene_id)
    (tmp_path / "moved.tif").rename(fine)
    mixed = Project.create(tmp_path / "mixed", images=[coarse])  # no --res: mixing scales is flagged
    with pytest.warns(UserWarning, match=r"pixels are 0\.30 m.*init NEW_PROJECT --res 0\.6"):
        mixed.add_scene(fine)


def test_a_moved_project_reads_resampled_imagery_kept_inside_it(tmp_path):
    # imagery beside scenes/ (PROJECT/imagery): GDAL wrote its absolute path into the VRT, so after
    # a move the scene read from where the project used to be (read errors, or an old copy's pixels)
    from model.scene import read_window

    root = tmp_path / "proj"
    fine, img, _ = make_scene(root / "imagery" / "fine ü.tif", width=192, height=160, res=0.3)
    sid = Project.create(root, images=[fine], resolution_m=0.6).scene_ids[0]
    moved = root.rename(tmp_path / "moved away")
    scene = Project.open(moved).scene(sid)
    got = read_window(scene, Window(0, 0, 96, 80)).astype(float)
    assert np.abs(got - img.reshape(4, 80, 2, 96, 2).mean(axis=(2, 4))).max() <= 1.0
    assert str(root) not in "".join(p.read_text() for p in (moved / "scenes").glob("*.vrt"))


@pytest.fixture
def read_only_mount(tmp_path):
    """A folder mounted read-only (a bind mount; root only: skipped elsewhere), unmounted afterwards."""
    source, mount = tmp_path / "rw", tmp_path / "ro"
    source.mkdir()
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "--bind", str(source), str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root to bind-mount a folder read-only")
    try:
        if subprocess.run(["mount", "-o", "remount,bind,ro", str(mount)], capture_output=True).returncode != 0:
            pytest.skip("cannot remount read-only here")
        yield source, mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_a_read_only_project_folder_is_named_not_a_traceback(tmp_path, read_only_mount, capsys):
    from loop.cli import main as cli_main

    source, mount = read_only_mount
    scene, _, _ = make_scene(tmp_path / "a.tif")
    other, _, _ = make_scene(tmp_path / "b.tif", seed=1, origin=(501_000.0, 4_300_000.0))
    Project.create(source / "proj", images=[scene]).labels.close()
    before = sorted(p.name for p in (source / "proj").iterdir())
    assert cli_main(["init", str(mount / "proj"), "--image", str(other)]) == 2
    err = capsys.readouterr().err
    assert f"{mount / 'proj'}: cannot be written (a read-only folder or disk)" in err and "Traceback" not in err
    assert cli_main(["init", str(mount / "new"), "--image", str(other)]) == 2
    assert f"{mount}: cannot be written" in capsys.readouterr().err
    assert cli_main(["labels", "info", str(mount / "proj")]) == 2
    err = capsys.readouterr().err
    assert "labels.gpkg: cannot open the label store" in err and "is read-only" in err
    assert "move the file away" not in err  # the store is fine: moving it away would lose the labels
    assert sorted(p.name for p in (source / "proj").iterdir()) == before


def test_scenes_added_by_two_processes_at_once_are_all_kept(tmp_path):
    # two `dclabel init PROJECT --image` (or the app's download) at once: each read project.json
    # before the other wrote it, and the last write dropped the other's scene
    a, _, _ = make_scene(tmp_path / "a.tif")
    b, _, _ = make_scene(tmp_path / "b.tif", seed=1, origin=(501_000.0, 4_300_000.0))
    root = tmp_path / "proj"
    Project.create(root)
    first, second = Project.open(root), Project.open(root)
    sid = first.add_scene(a).scene_id
    second.add_scene(b)
    assert len(Project.open(root).scene_ids) == 2
    assert second.add_scene(a).scene_id == sid and len(Project.open(root).scene_ids) == 2  # known: not twice


def test_chip_folder_becomes_one_scene_per_tif(tmp_path):
    chips = tmp_path / "data" / "chips"
    for i in range(3):
        make_scene(chips / f"chip_{i}.tif", 32, 32, seed=i, origin=(500_000.0 + 40 * i, 4_300_000.0))
    make_scene(chips / "masks" / "chip_0.tif", 32, 32, bands=1)  # mask sub-folders are skipped
    (chips / "labels.geojson").write_text('{"type": "FeatureCollection", "features": []}')
    project = Project.create(tmp_path / "proj", images=[chips], chip_size=32)
    assert len(project.scenes) == 3
    assert all(len(project.chip_windows(s.scene_id)) == 1 for s in project.scenes)


def test_clear_errors(tmp_path):
    with pytest.raises(ProjectError, match="no such file or folder"):
        Project.create(tmp_path / "p", images=[tmp_path / "missing_folder"])
    with pytest.raises(ProjectError, match="holds no GeoTIFFs"):
        (tmp_path / "empty").mkdir()
        Project.create(tmp_path / "p2", images=[tmp_path / "empty"])
    with pytest.raises(ProjectError, match="no such project folder"):
        Project.open(tmp_path / "nope")
    (tmp_path / "notproj").mkdir()
    with pytest.raises(ProjectError, match="project.json: missing"):
        Project.open(tmp_path / "notproj")
    project = Project.create(tmp_path / "ok")
    with pytest.raises(ProjectError, match="no scene with id 'zzz'"):
        project.scene("zzz")
    (tmp_path / "ok" / "project.json").write_text('{"chip_size": 256, "classes": ')
    with pytest.raises(ProjectError, match="unreadable"):
        Project.open(tmp_path / "ok")
    three, _, _ = make_scene(tmp_path / "three.tif", bands=3)
    with pytest.raises(SceneError, match="bands"):
        Project.create(tmp_path / "p3", images=[three])


def test_reviewed_training_chips_burn_only_datacenters(tmp_path):
    scene, img, transform = make_scene(tmp_path / "a.tif", 64, 64)
    project = Project.create(tmp_path / "proj", images=[scene], chip_size=32)
    sid = project.scene_ids[0]
    x0, y0 = transform @ (0, 0)
    # a data center straddling chips (0,0) and (32,0): pixels 20..40 x 4..12
    dc = box(x0 + 20 * 0.6, y0 - 12 * 0.6, x0 + 40 * 0.6, y0 - 4 * 0.6)
    warehouse = box(x0 + 4 * 0.6, y0 - 40 * 0.6, x0 + 12 * 0.6, y0 - 36 * 0.6)  # in chip (0,32)
    project.labels.add_footprint(sid, dc, "datacenter")
    project.labels.add_footprint(sid, warehouse, "warehouse")
    assert positive_reviewed_count(project) == (0, 0)
    for w in project.chip_windows(sid)[:3]:  # (0,0), (32,0), (0,32)
        project.labels.mark_reviewed(sid, w)
    chips = {(int(c.window.col_off), int(c.window.row_off)): c for c in reviewed_training_chips(project)}
    assert set(chips) == {(0, 0), (32, 0), (0, 32)}
    assert positive_reviewed_count(project) == (3, 2)
    left, right, below = chips[(0, 0)], chips[(32, 0)], chips[(0, 32)]
    np.testing.assert_array_equal(left.image, img[:, :32, :32])
    np.testing.assert_array_equal(right.image, img[:, :32, 32:])
    assert left.mask.sum() == 12 * 8 and left.mask[4:12, 20:32].all()
    assert right.mask.sum() == 8 * 8 and right.mask[4:12, 0:8].all()
    assert below.mask.sum() == 0  # hard negatives are background
    assert below.crs == UTM and below.window == Window(0, 32, 32, 32)
    # a read-only reopen (the retraining process) sees the same chips
    ro = Project.open(tmp_path / "proj", read_only=True)
    assert sum(c.mask.sum() for c in reviewed_training_chips(ro)) == 12 * 8 + 8 * 8


def test_cli_init_creates_project_and_reports_errors(tmp_path, capsys):
    from loop.cli import main

    scene, _, _ = make_scene(tmp_path / "a.tif")
    assert main(["init", str(tmp_path / "proj"), "--image", str(scene), "--chip-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "96 x 80 px, EPSG:32618, 0.6 m pixels, 9 chips" in out
    project = Project.open(tmp_path / "proj")
    assert len(project.scenes) == 1 and (tmp_path / "proj" / "labels.gpkg").exists()
    # chip size and pixel size belong to the project: on an existing one they are refused aloud
    assert main(["init", str(tmp_path / "proj"), "--chip-size", "64", "--res", "0.3"]) == 0
    err = capsys.readouterr().err
    assert "--chip-size 64 is ignored" in err and "keeps 32" in err
    assert "--res 0.3 is ignored" in err and "each scene's own pixel size" in err
    assert Project.open(tmp_path / "proj").settings.chip_size == 32
    assert main(["init", str(tmp_path / "proj"), "--bands", "3,2,1,4"]) == 0  # it used to say nothing
    assert "--bands 3,2,1,4 changes nothing: its scenes keep the bands they were added with" in capsys.readouterr().err
    assert main(["init", str(tmp_path / "proj"), "--chip-size", "32"]) == 0
    assert "ignored" not in capsys.readouterr().err  # the same value is no change
    assert main(["init", str(tmp_path / "p2"), "--image", str(tmp_path / "missing.tif")]) == 2
    assert "missing.tif: no such file or folder" in capsys.readouterr().err
    assert not (tmp_path / "p2").exists()  # no half-made project left behind
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    (tmp_path / "bad.tif").write_text("not a raster")
    assert main(["init", str(tmp_path / "mine"), "--image", str(scene), "--image", str(tmp_path / "bad.tif")]) == 2
    assert "bad.tif" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]  # only what we added is removed
    with pytest.raises(SystemExit):
        main(["init", str(tmp_path / "p3"), "--bands", "1,2,3"])


def test_a_moved_scene_is_named_and_relinked(tmp_path, capsys):
    from loop.cli import main

    scene, _, _ = make_scene(tmp_path / "a.tif")
    project = Project.create(tmp_path / "proj", images=[scene], chip_size=32)
    sid = project.scene_ids[0]
    info = project.scenes[0]
    project.labels.add_footprint(sid, box(*info.bounds).buffer(-10), "datacenter")
    project.labels.close()
    moved = scene.rename(tmp_path / "moved.tif")
    with pytest.raises(SceneError, match=rf"a\.tif: no such file\. It is scene {sid} of .*--relink {sid} NEW_PATH"):
        Project.open(tmp_path / "proj").scene(sid)
    other, _, _ = make_scene(tmp_path / "far.tif", origin=(600_000.0, 4_300_000.0))  # not the same scene
    assert main(["init", str(tmp_path / "proj"), "--relink", sid, str(other)]) == 2
    assert f"is not the one recorded for scene {sid}" in capsys.readouterr().err  # grid checked first
    with pytest.warns(UserWarning):  # the scene is still missing before the relink
        assert main(["init", str(tmp_path / "proj"), "--relink", sid, str(moved)]) == 0
    assert f"{sid}: now reads {moved}" in capsys.readouterr().out
    reopened = Project.open(tmp_path / "proj")
    assert reopened.scene(sid).path == moved and len(reopened.labels.footprints(sid)) == 1


def test_labels_of_a_moved_scene_still_export(tmp_path, capsys):
    from loop.cli import main

    scene, _, _ = make_scene(tmp_path / "a.tif")
    project = Project.create(tmp_path / "proj", images=[scene], chip_size=32)
    info = project.scenes[0]
    project.labels.add_footprint(info.scene_id, box(*info.bounds).buffer(-10), "datacenter")
    project.labels.close()
    scene.rename(tmp_path / "moved.tif")
    with pytest.warns(UserWarning, match="Going on without scene .*labels stay in the store"):
        assert main(["labels", "export", str(tmp_path / "proj"), "--output", str(tmp_path / "out.geojson")]) == 0
    assert len(json.loads((tmp_path / "out.geojson").read_text())["features"]) == 1


def test_a_south_up_scene_is_read_north_up_pixel_for_pixel(tmp_path):
    # stored south-up (positive y pixel size): the project reads it through a flipping VRT, so the
    # app shows north at the top and chips, labels and windows are those of a north-up grid
    from model.scene import read_window

    img = np.random.default_rng(4).integers(1, 256, (4, 300, 260), dtype=np.uint8)  # band 4 is tagged alpha
    up = write_geotiff(tmp_path / "up.tif", img, UTM, Affine(0.6, 0, 285_000.0, 0, 0.6, 4_319_820.0))
    project = Project.create(tmp_path / "p", images=[up], chip_size=128)
    [scene] = project.scenes
    assert scene.transform == Affine(0.6, 0, 285_000.0, 0, -0.6, 4_320_000.0) and scene.path.suffix == ".vrt"
    np.testing.assert_array_equal(read_window(scene, Window(0, 0, 260, 300)), img[:, ::-1])
    reopened = Project.open(tmp_path / "p")
    assert reopened.scenes[0].transform == scene.transform and reopened.scene_ids == [scene.scene_id]
    assert Project.create(tmp_path / "p2", images=[up]).scenes[0].scene_id == scene.scene_id  # id of the file


def test_a_folder_of_16_bit_chips_is_refused_not_scaled_chip_by_chip(tmp_path):
    folder = tmp_path / "chips"
    folder.mkdir()
    for i, peak in enumerate((900, 4000)):  # one 12-bit sensor: each chip alone would look 8- or 12-bit
        img = np.full((4, 64, 64), 100, np.uint16)
        img[:, :8, :8] = peak
        write_geotiff(folder / f"c{i}.tif", img, UTM, Affine(0.6, 0, 500_000.0 + i * 100, 0, -0.6, 4_300_000.0))
    with pytest.raises(ProjectError, match="not 8-bit.*one scale"):
        Project.create(tmp_path / "p", images=[folder])
    assert not (tmp_path / "p").exists()


def test_chips_smaller_than_the_project_chips_warn_once(tmp_path):
    folder = tmp_path / "chips"
    folder.mkdir()
    for i in range(3):
        make_scene(folder / f"c{i}.tif", width=128, height=128, seed=i, origin=(500_000.0 + i * 100, 4_300_000.0))
    with pytest.warns(UserWarning, match="smaller than the project's 256 px chips.*--chip-size 128") as caught:
        Project.create(tmp_path / "p", images=[folder])
    assert sum("smaller than" in str(w.message) for w in caught) == 1


def _labelled_project(tmp_path, chip_size=32):
    """A 96 x 80 px scene outside the project with a data center in chip (0,0) and three reviewed chips."""
    scene, _, transform = make_scene(tmp_path / "data" / "a.tif")
    project = Project.create(tmp_path / "proj", images=[scene], chip_size=chip_size)
    sid = project.scene_ids[0]
    x0, y0 = transform @ (0, 0)
    project.labels.add_footprint(sid, box(x0 + 4 * 0.6, y0 - 12 * 0.6, x0 + 20 * 0.6, y0 - 4 * 0.6), "datacenter")
    for w in project.chip_windows(sid)[:3]:  # (0,0) holds the data center; (32,0) and (64,0) do not
        project.labels.mark_reviewed(sid, w)
    project.labels.close()
    return scene, project.root, sid


def test_a_scene_file_replaced_by_another_raster_is_refused_not_read(tmp_path, capsys):
    from loop.cli import main
    from loop.errors import NoTrainingDataError
    from loop.retrain import check_training_data

    scene, root, sid = _labelled_project(tmp_path)
    grid = json.loads((root / "project.json").read_text())["scenes"][0]["grid"]
    assert (grid["width"], grid["height"], grid["count"], grid["crs"]) == (96, 80, 4, "EPSG:32618")
    original = scene.read_bytes()
    make_scene(scene, width=64, height=48, seed=5)  # same CRS and origin, smaller: the chip at x=64 is outside
    project = Project.open(root)
    with pytest.raises(SceneError, match=rf"a\.tif: not the raster scene {sid} of .* was added with: recorded "
                       r"96 x 80 px.*found 64 x 48 px.*--relink"):
        project.scene(sid)
    with pytest.warns(UserWarning, match=rf"not the raster scene {sid}.*Going on without scene {sid}"):
        assert reviewed_training_chips(project) == []  # nothing read from the wrong raster
    with pytest.raises(NoTrainingDataError, match=rf"3 of the 3 reviewed chips in .* are on scenes that cannot "
                       rf"be read.*scene {sid}: 3 chip\(s\), 1 with a data center \(.*not the raster"):
        check_training_data(root)  # what `dclabel retrain` says before starting
    # the same size moved by one pixel is another grid too
    make_scene(scene, seed=5, origin=(500_000.6, 4_300_000.0))
    with pytest.raises(SceneError, match=r"origin \(500000, 4300000\).*found.*origin \(500000.6, 4300000\)"):
        Project.open(root).scene(sid)
    with pytest.warns(UserWarning, match="not the raster scene"):
        assert main(["init", str(root)]) == 0
    assert f"{sid}: not used, its file is missing or not the raster it was added with" in capsys.readouterr().out
    # --relink to a file of another grid is refused; to the original (moved) it works
    moved = tmp_path / "moved.tif"
    moved.write_bytes(original)
    assert main(["init", str(root), "--relink", sid, str(scene)]) == 2
    assert f"is not the one recorded for scene {sid}" in capsys.readouterr().err
    with pytest.warns(UserWarning):  # the replaced file, until relinked
        assert main(["init", str(root), "--relink", sid, str(moved)]) == 0
    assert Project.open(root).scene(sid).width == 96


def test_a_project_without_recorded_grids_still_opens_and_records_them(tmp_path):
    scene, root, sid = _labelled_project(tmp_path)
    payload = json.loads((root / "project.json").read_text())
    for entry in payload["scenes"]:
        del entry["grid"]  # a project.json from before grids were recorded
    (root / "project.json").write_text(json.dumps(payload))
    original = scene.read_bytes()
    make_scene(scene, width=64, height=48, seed=5)
    # no grid to compare with: the labels' check (the one --relink makes) still catches chips past the file
    with pytest.raises(SceneError, match=r"1 of scene .*'s 3 reviewed chip\(s\) reach past its 64 x 48 px.*"
                       r"added before projects recorded scene grids.*--relink"):
        Project.open(root, read_only=True).scene(sid)
    with pytest.warns(UserWarning, match="reach past"):
        Project.create(root)  # `dclabel init PROJECT` records grids, but not of a file its labels do not fit
    assert "grid" not in json.loads((root / "project.json").read_text())["scenes"][0]
    make_scene(scene, width=128, height=80, seed=5)  # labels fit a larger file: not noticed without a grid
    assert Project.open(root).scene(sid).width == 128
    scene.write_bytes(original)
    Project.create(root)
    assert json.loads((root / "project.json").read_text())["scenes"][0]["grid"]["width"] == 96
    make_scene(scene, width=64, height=48, seed=5)
    with pytest.raises(SceneError, match="not the raster scene"):
        Project.open(root).scene(sid)
    # a scene smaller than its project's chips has one chip reaching past it: that one fits
    small = Project.create(tmp_path / "small", images=[make_scene(tmp_path / "s.tif")[0]], chip_size=128)
    small.labels.mark_reviewed(small.scene_ids[0], small.chip_windows(small.scene_ids[0])[0])
    small.labels.close()
    payload = json.loads((small.root / "project.json").read_text())
    del payload["scenes"][0]["grid"]
    (small.root / "project.json").write_text(json.dumps(payload))
    assert Project.open(small.root).scene(small.scene_ids[0]).width == 96


def test_the_same_scene_added_again_is_not_a_second_scene(tmp_path, monkeypatch, capsys):
    import os

    from loop.cli import main

    scene, root, sid = _labelled_project(tmp_path)
    monkeypatch.chdir(tmp_path)
    link = tmp_path / "link.tif"
    link.symlink_to(scene)
    hard = tmp_path / "hard.tif"
    os.link(scene, hard)
    copy = tmp_path / "copy.tif"
    copy.write_bytes(scene.read_bytes())
    for spelling in (scene, "data/../data/a.tif", link, hard):
        with pytest.warns(UserWarning, match=rf"already scene {sid} of"):
            Project.create(root, images=[spelling])
    with pytest.warns(UserWarning, match=rf"copy\.tif: holds the same pixels as scene {sid}.*--relink {sid}"):
        assert main(["init", str(root), "--image", str(copy)]) == 0
    assert capsys.readouterr().out.count(" chips") == 1
    with pytest.warns(UserWarning, match="holds the same pixels"):
        assert Project.open(root).add_scene(copy).scene_id == sid  # the app's and bootstrap's way in
    with pytest.warns(UserWarning, match="already scene"):  # one command naming the file twice
        fresh = Project.create(tmp_path / "fresh", images=[scene, "data/a.tif"])
    assert len(fresh.scene_ids) == 1
    stored = json.loads((root / "project.json").read_text())["scenes"]
    assert [s["id"] for s in stored] == [sid]


def test_a_copied_project_keeps_scene_ids_unique(tmp_path):
    import shutil

    root = tmp_path / "proj"
    make_scene(root / "scenes" / "a.tif")
    sid = Project.create(root, images=[root / "scenes" / "a.tif"]).scene_ids[0]
    copy = Path(shutil.copytree(root, tmp_path / "copy"))
    with pytest.warns(UserWarning, match=f"holds the same pixels as scene {sid}"):  # the original's file
        Project.create(copy, images=[root / "scenes" / "a.tif"])
    assert Project.open(copy).scene_ids == [sid]
    make_scene(root / "scenes" / "a.tif", seed=9)  # another raster where the copy's scene came from
    ids = Project.create(copy, images=[root / "scenes" / "a.tif"]).scene_ids
    assert ids == [sid, f"{sid}-2"]  # scene_id_for gives both the same id


def test_chips_of_a_missing_scene_are_not_called_negatives(tmp_path):
    from loop.errors import NoTrainingDataError
    from loop.retrain import check_training_data

    scene, root, sid = _labelled_project(tmp_path)
    other, _, _ = make_scene(tmp_path / "data" / "b.tif", seed=2, origin=(501_000.0, 4_300_000.0))
    project = Project.create(root, images=[other])
    bid = project.scene_ids[1]
    project.labels.mark_reviewed(bid, project.chip_windows(bid)[0])  # a negative chip on a readable scene
    project.labels.close()
    scene.unlink()
    with pytest.raises(NoTrainingDataError, match=rf"3 of the 4 reviewed chips .* cannot be read.*scene {sid}: "
                       r"3 chip\(s\), 1 with a data center \(.*a\.tif: no such file.*The other 1 hold no data center"):
        check_training_data(root)
    # with a data center on a readable scene, training goes on without the missing scene (warned)
    project = Project.open(root)
    b = project.scene(bid)
    x0, y0 = b.transform @ (0, 0)
    project.labels.add_footprint(bid, box(x0 + 1, y0 - 5, x0 + 6, y0 - 1), "datacenter")
    assert positive_reviewed_count(project) == (4, 1)


def test_a_chip_with_a_footprint_of_unknown_class_is_not_trained_as_background(tmp_path):
    import sqlite3

    scene, _, transform = make_scene(tmp_path / "a.tif", 64, 64)
    project = Project.create(tmp_path / "proj", images=[scene], chip_size=32)
    sid = project.scene_ids[0]
    x0, y0 = transform @ (0, 0)
    fid = project.labels.add_footprint(sid, box(x0 + 4 * 0.6, y0 - 12 * 0.6, x0 + 12 * 0.6, y0 - 4 * 0.6), "other")
    for w in project.chip_windows(sid)[:2]:  # (0,0) holds the footprint, (32,0) does not
        project.labels.mark_reviewed(sid, w)
    table = next(t for (t,) in sqlite3.connect(project.root / "labels.gpkg").execute(
        "SELECT table_name FROM gpkg_contents WHERE table_name LIKE 'footprints%'"))
    with sqlite3.connect(project.root / "labels.gpkg") as db:  # as QGIS would: a class dclabel does not know
        db.execute(f'UPDATE "{table}" SET class = ? WHERE fid = ?', ("building", fid))
    reopened = Project.open(tmp_path / "proj")
    with pytest.warns(UserWarning, match=rf"1 reviewed chip\(s\) left out of training.*fid {fid} \('building'\)"):
        chips = reviewed_training_chips(reopened)
    assert [(int(c.window.col_off), int(c.window.row_off)) for c in chips] == [(32, 0)]


def test_adding_a_scene_with_more_than_four_bands_warns_like_detect(tmp_path, recwarn):
    five, _, _ = make_scene(tmp_path / "five.tif", bands=5)
    with pytest.warns(UserWarning, match=r"five\.tif: the file has 5 bands; reading bands 1-4.*--bands"):
        project = Project.create(tmp_path / "p", images=[five])
    assert project.scenes[0].bands == (1, 2, 3, 4)
    recwarn.clear()
    Project.create(tmp_path / "p2", images=[five], bands=(1, 2, 3, 4))  # said explicitly: no warning
    assert not [w for w in recwarn if "bands" in str(w.message)]
