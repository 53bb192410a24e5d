"""Scene IO, chip grids, masks and checkpoints: the georeferenced plumbing of the learner."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import rasterio.features
import shapely
import shapely.geometry
import torch
from affine import Affine
from geodata import UTM18N, make_scene
from rasterio.crs import CRS
from rasterio.windows import Window
from shapely.geometry import Polygon, box

from model.checkpoint import (
    Checkpoint,
    Normalization,
    build_model,
    load_checkpoint,
    save_checkpoint,
)
from model.errors import CheckpointError, LabelError, SceneError, SceneNotFoundError
from model.masks import load_footprints, rasterize_footprints
from model.scene import chip_windows, open_scene, read_chip, read_window, write_geotiff
from model.unet import UNet, UNetConfig, parameter_count


def test_open_scene_reports_what_it_found(tmp_path):
    path, _ = make_scene(tmp_path / "s.tif", (64, 80))
    s = open_scene(path)
    assert (s.width, s.height, s.bands) == (80, 64, (1, 2, 3, 4))
    assert s.crs == UTM18N and s.res == pytest.approx((0.6, 0.6))


@pytest.mark.parametrize(
    ("kind", "error", "words"),
    [
        ("missing", SceneNotFoundError, "no such file"),
        ("text", SceneError, "not a raster"),
        ("three_bands", SceneError, "expected 4 bands"),
        ("no_crs", SceneError, "no CRS"),
    ],
)
def test_bad_scenes_raise_clear_errors(tmp_path, kind, error, words):
    path = tmp_path / f"{kind}.tif"
    if kind == "text":
        path.write_text("not an image")
    elif kind == "three_bands":
        make_scene(path, (32, 32), bands=3)
    elif kind == "no_crs":
        make_scene(path, (32, 32), crs=None)
    with pytest.raises(error, match=words) as info:
        open_scene(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)  # callers may catch the built-in


def test_bands_reorder_reads_the_named_bands(tmp_path):
    path, _ = make_scene(tmp_path / "s.tif", (32, 32), bands=5, seed=3)
    with rasterio.open(path) as src:
        raw = src.read()
    s = open_scene(path, bands=(3, 2, 1, 5))
    img = read_window(s, s.window)
    np.testing.assert_array_equal(img, raw[[2, 1, 0, 4]])
    with pytest.raises(SceneError, match=r"asks for band\(s\) 6, but the file has 5 band\(s\)"):
        open_scene(path, bands=(1, 2, 3, 6))


def test_chip_windows_cover_edges_without_dropping_them():
    wins = chip_windows(600, 300, 256)
    covered = np.zeros((300, 600), bool)
    for w in wins:
        assert w.col_off + w.width <= 600 and w.row_off + w.height <= 300
        covered[int(w.row_off) : int(w.row_off) + 256, int(w.col_off) : int(w.col_off) + 256] = True
    assert covered.all()
    assert chip_windows(100, 100, 256)[0].width == 256  # small scene: one zero-padded chip


def test_chip_carries_its_georeference(tmp_path):
    path, polys = make_scene(tmp_path / "s.tif", (300, 300), [(100, 120, 180, 220)])
    s = open_scene(path)
    chip = read_chip(s, chip_windows(300, 300, 128)[4])
    assert chip.scene_id == s.scene_id and chip.crs == s.crs
    x, y = chip.transform @ (0, 0)
    assert (x, y) == pytest.approx(s.transform @ (chip.window.col_off, chip.window.row_off))


def test_rasterize_reprojects_labels_from_lon_lat(tmp_path):
    path, polys = make_scene(tmp_path / "s.tif", (200, 200), [(50, 40, 150, 160)])
    s = open_scene(path)
    native = rasterize_footprints(polys, None, s.crs, s.transform, (200, 200))
    lonlat = gpd.GeoSeries(polys, crs=s.crs).to_crs("EPSG:4326")
    reproj = rasterize_footprints(lonlat.values, "EPSG:4326", s.crs, s.transform, (200, 200))
    assert native.sum() == 100 * 120
    assert np.count_nonzero(native != reproj) <= 2 * (100 + 120)  # boundary pixels only
    grown = rasterize_footprints(polys, None, s.crs, s.transform, (200, 200), buffer_m=3.0)
    assert grown.sum() > native.sum() + 2 * (100 + 120) * 4


def test_buffer_is_ground_metres_in_web_mercator_and_degrees():
    # a 60 x 36 m roof near Ashburn grown by 6 m: same ground area whatever the grid's CRS
    roof = box(285_000.0, 4_319_900.0, 285_060.0, 4_319_936.0)
    expected = roof.buffer(6.0).area
    for epsg, res in ((32618, 0.6), (3857, 0.6 / np.cos(np.radians(39.0))), (4326, 0.6 / 100_000)):
        crs = CRS.from_epsg(epsg)
        x0, y0, x1, y1 = gpd.GeoSeries([roof.buffer(30.0)], crs=32618).to_crs(crs).total_bounds
        shape = (int(np.ceil((y1 - y0) / res)), int(np.ceil((x1 - x0) / res)))
        t = Affine(res, 0, x0, 0, -res, y1)
        mask = rasterize_footprints([roof], 32618, crs, t, shape, buffer_m=6.0)
        found = [shapely.geometry.shape(g) for g, v in rasterio.features.shapes(mask, mask=mask > 0, transform=t) if v]
        area = gpd.GeoSeries(found, crs=crs).to_crs(32618).union_all().area
        assert area == pytest.approx(expected, rel=0.03), epsg


def test_self_intersecting_polygon_is_repaired(tmp_path):
    path, _ = make_scene(tmp_path / "s.tif", (100, 100))
    s = open_scene(path)
    x0, y0 = s.transform @ (10, 10)
    x1, y1 = s.transform @ (90, 90)
    bowtie = Polygon([(x0, y0), (x1, y1), (x1, y0), (x0, y1)])
    assert not bowtie.is_valid
    mask = rasterize_footprints([bowtie], None, s.crs, s.transform, (100, 100))
    assert 0.4 * 80 * 80 < mask.sum() < 0.6 * 80 * 80


def test_load_footprints_normalises_classes(tmp_path):
    gdf = gpd.GeoDataFrame(
        {"class": ["datacemter", "warehouse", "Datacenter"]},
        geometry=[box(0, 0, 0.01, 0.01), box(1, 1, 1.01, 1.01), box(2, 2, 2.01, 2.01)],
        crs="EPSG:4326",
    )
    gdf.to_file(tmp_path / "l.geojson")
    got = load_footprints(tmp_path / "l.geojson")
    assert list(got["class"]) == ["datacenter", "warehouse", "datacenter"]
    gpd.GeoDataFrame({"class": ["x"]}, geometry=[shapely.Point(0, 0)], crs="EPSG:4326").to_file(tmp_path / "p.geojson")
    with pytest.raises(LabelError, match="no polygons"):
        load_footprints(tmp_path / "p.geojson")


def test_unet_shapes_and_seed_parameter_count():
    net = UNet(UNetConfig())
    assert net(torch.zeros(1, 4, 64, 64)).shape == (1, 1, 64, 64)
    assert 7_700_000 < parameter_count(net) < 7_800_000  # the seed's 4-level, base-32 U-Net
    small = UNet(UNetConfig(base_channels=8, depth=2))
    assert parameter_count(small) < parameter_count(net) / 50


def test_checkpoint_round_trip_and_errors(tmp_path):
    cfg = UNetConfig(base_channels=4, depth=2)
    net = UNet(cfg)
    ck = Checkpoint(net.state_dict(), cfg, Normalization((1, 2, 3, 4), (5, 6, 7, 8)), metrics={"iou": 0.5})
    path = save_checkpoint(ck, tmp_path / "m.pt")
    back = load_checkpoint(path)
    assert back.unet == cfg and back.normalization == ck.normalization and back.metrics == {"iou": 0.5}
    x = torch.rand(1, 4, 32, 32)
    net.eval()
    torch.testing.assert_close(build_model(back, "cpu")(x), net(x))
    with pytest.raises(CheckpointError, match="expects 4 bands"):
        load_checkpoint(path, expected_bands=3)
    (tmp_path / "bad.pt").write_bytes(path.read_bytes()[:200])
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_checkpoint(tmp_path / "bad.pt")
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="expected a dclabel-checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


class _Evil:
    def __reduce__(self):
        return (print, ("code ran",))


def test_checkpoint_with_pickled_code_is_refused(tmp_path, capsys):
    torch.save({"format": "dclabel-checkpoint/1", "x": _Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="plain data only") as err:
        load_checkpoint(tmp_path / "evil.pt")
    assert "code ran" not in capsys.readouterr().out
    assert "weights_only" not in str(err.value)  # torch's advice to load it as code is not passed on


@pytest.mark.parametrize(("dtype", "peak", "scale"), [("uint16", 60000, 255 / 65535), ("uint16", 4000, 255 / 4095),
                                                       ("uint16", 250, 1.0), ("float32", 0.9, 255.0)])
def test_non_byte_scenes_are_scaled_once_per_scene(tmp_path, dtype, peak, scale):
    """Every window of a 12/16-bit or reflectance scene gets the same scale, whatever it holds."""
    img = np.full((4, 64, 64), peak / 30, dtype=dtype)  # dark land
    img[:, 40:, 40:] = peak  # one bright roof
    path = write_geotiff(tmp_path / "s.tif", img, CRS.from_epsg(32618), Affine(0.6, 0, 5e5, 0, -0.6, 4.3e6))
    scene = open_scene(path)
    assert scene.value_scale == pytest.approx(scale)
    dark = read_window(scene, Window(0, 0, 32, 32))  # holds no bright pixel
    whole = read_window(scene, Window(0, 0, 64, 64))
    assert dark.dtype == np.uint8 and np.array_equal(dark, whole[:, :32, :32])
    assert whole.max() == min(255, int(peak * scale)) and dark.max() == int(peak / 30 * scale)


def _with_nodata(path, out, value, dtype="uint8", scale=1):
    """``path``'s pixels (kept off ``value``) times ``scale`` in ``dtype``, a collar (left 20
    columns, top 10 rows) set to ``value`` and declared nodata."""
    with rasterio.open(path) as src:
        arr, profile = src.read().astype(dtype) * scale, src.profile
    arr[arr == value] = value - 1 if value else 1
    arr[:, :, :20] = value
    arr[:, :10, :] = value
    with rasterio.open(out, "w", **(profile | {"dtype": dtype, "nodata": value})) as dst:
        dst.write(arr)
    return out


@pytest.mark.parametrize(("value", "dtype", "scale"), [(255, "uint8", 1), (65535, "uint16", 16)])
def test_nodata_pixels_read_like_the_zero_fill_past_the_edge(tmp_path, value, dtype, scale):
    path, _ = make_scene(tmp_path / "s.tif", (64, 64), [(30, 30, 50, 50)], seed=4)
    zero = open_scene(_with_nodata(path, tmp_path / "zero.tif", 0, dtype, scale))
    other = open_scene(_with_nodata(path, tmp_path / "other.tif", value, dtype, scale))
    win = Window(-8, -8, 80, 80)  # past the edge too
    a, b = read_window(zero, win), read_window(other, win)
    assert (b[:, 8:18, 8:72] == 0).all() and (b[:, :, 8:28] == 0).all()  # the collar reads as zero fill
    np.testing.assert_array_equal(a, b)  # the nodata value does not change what the model sees


def test_five_band_scene_without_bands_warns_naming_the_file_and_the_flag(tmp_path, recwarn):
    path, _ = make_scene(tmp_path / "five.tif", (32, 32), bands=5, seed=3)
    with pytest.warns(UserWarning, match=r"five\.tif: the file has 5 bands; reading bands 1-4.*--bands"):
        assert open_scene(path).bands == (1, 2, 3, 4)
    recwarn.clear()
    open_scene(path, bands=(1, 2, 3, 4))  # said explicitly: no warning
    open_scene(make_scene(tmp_path / "four.tif", (32, 32))[0])
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]


def test_four_band_files_we_write_keep_nir_a_band_not_an_alpha_mask(tmp_path):
    from rasterio.enums import ColorInterp
    from rasterio.windows import Window

    from model.scene import open_scene, read_window, write_geotiff

    img = np.full((4, 300, 300), 120, np.uint8)
    img[3, 10:20, 10:20] = 0  # dark NIR (water, shadow) is data, not "transparent"
    path = write_geotiff(tmp_path / "chip.tif", img, CRS.from_epsg(32618), Affine(0.6, 0, 5e5, 0, -0.6, 4e6))
    with rasterio.open(path) as src:
        assert src.colorinterp == (ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.undefined)
        assert all(f == [rasterio.enums.MaskFlags.all_valid] for f in src.mask_flag_enums)
    np.testing.assert_array_equal(read_window(open_scene(path), Window(0, 0, 300, 300)), img)


def test_a_tiff_cut_before_its_directory_is_called_truncated(tmp_path):
    from model.errors import SceneError
    from model.scene import open_scene

    good = tmp_path / "good.tif"
    with rasterio.open(good, "w", driver="GTiff", width=64, height=64, count=4, dtype="uint8",
                       crs="EPSG:32618", transform=Affine(0.6, 0, 5e5, 0, -0.6, 4e6)) as dst:
        dst.write(np.full((4, 64, 64), 9, np.uint8))
        dst.update_tags(note="x")  # set after the pixels: GDAL moves the directory to the end
    cut = tmp_path / "cut.tif"
    cut.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(SceneError, match="cut.tif: not a raster.*starts like a TIFF, so it is truncated or damaged"):
        open_scene(cut)
    (tmp_path / "notes.tif").write_text("hello")
    with pytest.raises(SceneError) as info:
        open_scene(tmp_path / "notes.tif")
    assert "truncated" not in str(info.value)


RAW_TRANSFORM = Affine(0.6, 0, 5e5, 0, -0.6, 4e6)


def _raw_geotiff(path, img, transform=RAW_TRANSFORM, colorinterp=None, **profile):
    """``img`` written as GDAL writes it by default (4 uint8 bands: RGB + alpha), or tagged ``colorinterp``."""
    with rasterio.open(path, "w", driver="GTiff", width=img.shape[2], height=img.shape[1], count=img.shape[0],
                       dtype=img.dtype, crs="EPSG:32618", transform=transform, **profile) as dst:
        if colorinterp is not None:
            dst.colorinterp = colorinterp
        dst.write(img)
    return path


def test_nir_tagged_alpha_is_read_as_data_with_a_warning_but_a_fifth_alpha_band_masks(tmp_path):
    from rasterio.enums import ColorInterp

    img = np.random.default_rng(7).integers(1, 256, (5, 40, 50), dtype=np.uint8)
    img[3, 5:15, 5:25] = 0  # dark NIR (water, a dropout): R, G, B there are real pixels
    path = _raw_geotiff(tmp_path / "rgba.tif", img[:4])
    with rasterio.open(path) as src:
        assert src.colorinterp[3] == ColorInterp.alpha  # GDAL's default tagging
    with pytest.warns(UserWarning, match=r"rgba\.tif: band 4 \(read as nir\) is tagged alpha.*image data"):
        scene = open_scene(path)
    np.testing.assert_array_equal(read_window(scene, Window(0, 0, 50, 40)), img[:4])
    # a true alpha band beyond the four read stays a mask (GDAL itself ignores it in a 5-band file)
    img[4] = 255
    img[4, 30:, :] = 0
    ci = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.undefined, ColorInterp.alpha]
    five = _raw_geotiff(tmp_path / "rgbna.tif", img, colorinterp=ci, photometric="minisblack")
    got = read_window(open_scene(five, bands=(1, 2, 3, 4)), Window(0, 0, 50, 40))
    assert (got[:, 30:] == 0).all()
    np.testing.assert_array_equal(got[:, :30], img[:4, :30])


def test_nodata_is_a_pixel_where_every_band_read_is_nodata(tmp_path):
    img = np.random.default_rng(8).integers(0, 255, (4, 32, 32), dtype=np.uint8)  # no 255 by chance
    img[0, 4:8, 4:8] = 255  # a saturated red roof: valid
    img[:, 20:, :] = 255  # no data in every band
    path = _raw_geotiff(tmp_path / "nd.tif", img, nodata=255, photometric="minisblack")
    got = read_window(open_scene(path), Window(0, 0, 32, 32))
    np.testing.assert_array_equal(got[:, :20], img[:, :20])
    assert (got[:, 20:] == 0).all()


def test_bands_must_differ_and_a_real_alpha_band_is_not_read_as_nir(tmp_path):
    from rasterio.enums import ColorInterp

    from model.cli import parse_bands

    path, _ = make_scene(tmp_path / "s.tif", (32, 32))
    with pytest.raises(SceneError, match=r"s\.tif: --bands 1,1,1,1 reads one band as two"):
        open_scene(path, bands=(1, 1, 1, 1))
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="4 different bands"):
        parse_bands("1,2,3,3")
    img = np.full((5, 32, 32), 90, np.uint8)
    ci = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.undefined, ColorInterp.alpha]
    five = _raw_geotiff(tmp_path / "rgbna.tif", img, colorinterp=ci, photometric="minisblack")
    with pytest.raises(SceneError, match=r"rgbna\.tif: band 5 \(read as nir\) is tagged alpha.*--bands 1,2,3,4"):
        open_scene(five, bands=(1, 2, 3, 5))
