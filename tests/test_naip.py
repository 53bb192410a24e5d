"""NAIP download against the loopback Planetary Computer (tests/stac_server.py); no internet."""

from __future__ import annotations

import time

import numpy as np
import pytest
import rasterio
from affine import Affine
from planetary_computer.settings import Settings
from pyproj import Transformer
from stac_server import ACCOUNT, NaipStacServer

from loop.errors import NaipError
from loop.naip import download_naip, search_naip, utm_crs
from loop.naip_assets import RetryPolicy, gdal_path, http_status
from model.errors import Cancelled

RES = 0.6
SIZE = 512  # pixels per side of a test quarter-quad
FAST = RetryPolicy(attempts=4, backoff_s=0.01, max_backoff_s=0.05)
LAT, LON = 38.0, -77.0  # zone 18 (EPSG:26918), Virginia


@pytest.fixture
def server(monkeypatch, tmp_path):
    """The loopback server, with dclabel and planetary-computer pointed at it; always stopped."""
    srv = NaipStacServer().start()
    monkeypatch.setenv("DCLABEL_STAC_URL", srv.stac_url)
    monkeypatch.setenv("DCLABEL_BLOB_ENDPOINT", srv.root)
    monkeypatch.setenv("PC_SDK_SAS_URL", srv.sas_url)
    monkeypatch.delenv("PC_SDK_SUBSCRIPTION_KEY", raising=False)
    Settings.get.cache_clear()  # planetary-computer reads its settings once per process
    try:
        yield srv
    finally:
        srv.stop()
        Settings.get.cache_clear()


def _pixels(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 256, (4, SIZE, SIZE), dtype=np.uint8)


def _corner(lon: float, lat: float, epsg: int, dx_px: int = 0, dy_px: int = 0):
    """Top-left corner on the 0.6 m lattice near lon/lat, shifted by whole pixels."""
    x, y = Transformer.from_crs("EPSG:4326", epsg, always_xy=True).transform(lon, lat)
    x = np.floor(x / RES) * RES + dx_px * RES
    y = np.floor(y / RES) * RES + dy_px * RES
    return Affine(RES, 0, x, 0, -RES, y)


def _add(srv: NaipStacServer, name: str, year: int, transform: Affine, seed: int, epsg=26918):
    array = _pixels(seed)
    srv.add_item(f"m_{name}_{year}", year, epsg, transform, array)
    return array


def _expected(out_path, sources):
    """Nearest source pixel for every output pixel, computed independently, per source."""
    with rasterio.open(out_path) as out:
        image, crs, tf = out.read(), out.crs, out.transform
    rows, cols = np.mgrid[0:image.shape[1], 0:image.shape[2]]
    xs, ys = tf @ (cols + 0.5, rows + 0.5)
    result = []
    for array, transform, epsg in sources:
        sx, sy = Transformer.from_crs(crs, epsg, always_xy=True).transform(xs, ys)
        c, r = ~transform @ (sx, sy)
        r, c = np.floor(r).astype(int), np.floor(c).astype(int)
        inside = (r >= 0) & (r < SIZE) & (c >= 0) & (c < SIZE)
        values = np.zeros_like(image)
        values[:, inside] = array[:, r[inside], c[inside]]
        result.append((values, inside))
    return image, result


def test_one_quarter_quad_matches_source_and_is_tagged(server, tmp_path):
    tf = _corner(LON, LAT, 26918, dx_px=-128, dy_px=128)  # the area sits in one 256 px tile
    array = _add(server, "3807701_ne", 2021, tf, seed=1)
    calls = []
    out = download_naip(LAT, LON, 60, tmp_path / "one.tif", retry=FAST,
                        progress=lambda d, t, info: calls.append((d, t)))
    with rasterio.open(out) as src:
        assert src.crs.to_epsg() == 26918 and src.count == 4
        assert src.res == pytest.approx((RES, RES))
        assert abs(src.width * RES - 60) <= RES and src.profile["tiled"]
        assert src.profile["compress"] == "deflate"
        assert src.tags()["stac_items"] == "m_3807701_ne_2021"
        assert src.tags()["naip_year"] == "2021"
        assert src.tags()["source"] == server.stac_url
        # NIR is the fourth band, not an alpha mask (GDAL's default for 4 uint8 bands)
        assert [c.name for c in src.colorinterp] == ["red", "green", "blue", "undefined"]
        assert all(f == [rasterio.enums.MaskFlags.all_valid] for f in src.mask_flag_enums)
        col, row = ~tf @ (src.transform.c, src.transform.f)
        r, c = int(round(row)), int(round(col))
        np.testing.assert_array_equal(src.read(), array[:, r:r + src.height, c:c + src.width])
        # the requested centre is the output's centre
        cx, cy = src.xy(src.height / 2, src.width / 2, offset="ul")
    x, y = Transformer.from_crs("EPSG:4326", 26918, always_xy=True).transform(LON, LAT)
    assert abs(cx - x) <= RES and abs(cy - y) <= RES
    assert calls and calls[-1][0] == calls[-1][1]
    # only the needed window was read: ranged GETs adding up to well under the whole COG
    blob = server.blob_reads()
    assert [s for m, _, s in blob if m == "GET"] and all(
        s == 206 for m, _, s in blob if m == "GET")
    assert 0 < server.blob_bytes < len(server.items[0].cog) / 2
    assert "sig=" in blob[-1][1]  # the SAS query planetary-computer appended reached the server
    assert not list(tmp_path.glob(".*part*"))


def test_mosaic_across_two_items_has_no_seam(server, tmp_path):
    west_tf = _corner(LON, LAT, 26918, dx_px=-SIZE, dy_px=256)
    east_tf = west_tf @ Affine.translation(SIZE, 0)
    west = _add(server, "3807701_nw", 2021, west_tf, seed=2)
    east = _add(server, "3807701_ne", 2021, east_tf, seed=3)
    out = download_naip(LAT, LON, 200, tmp_path / "mosaic.tif", retry=FAST)
    image, [(exp_w, in_w), (exp_e, in_e)] = _expected(out, [(west, west_tf, 26918),
                                                          (east, east_tf, 26918)])
    assert in_w.any() and in_e.any() and (in_w | in_e).all()
    assert not (in_w & in_e).any()  # shared edge, no overlap: the seam is between two columns
    np.testing.assert_array_equal(image[:, in_w], exp_w[:, in_w])
    np.testing.assert_array_equal(image[:, in_e], exp_e[:, in_e])
    with rasterio.open(out) as src:
        assert set(src.tags()["stac_items"].split(",")) == {"m_3807701_nw_2021",
                                                            "m_3807701_ne_2021"}


def test_area_across_utm_zones_is_reprojected_to_the_centre_zone(server, tmp_path):
    lat, lon = 38.0, -77.9995  # zone 18, 44 m east of the 17/18 boundary at -78
    assert utm_crs(lon, lat).to_epsg() == 26918
    east_tf = _corner(lon, lat, 26918, dx_px=-100, dy_px=256)
    west_tf = _corner(-78.0006, lat, 26917, dx_px=-256, dy_px=256)
    east = _add(server, "3807801_ne", 2021, east_tf, seed=4, epsg=26918)
    west = _add(server, "3807801_nw", 2021, west_tf, seed=5, epsg=26917)
    out = download_naip(lat, lon, 200, tmp_path / "zones.tif", retry=FAST)
    image, [(exp_e, in_e), (exp_w, in_w)] = _expected(out, [(east, east_tf, 26918),
                                                          (west, west_tf, 26917)])
    with rasterio.open(out) as src:
        assert src.crs.to_epsg() == 26918
        west_lon = Transformer.from_crs(src.crs, 4326, always_xy=True).transform(
            src.bounds.left, (src.bounds.bottom + src.bounds.top) / 2)[0]
    assert west_lon < -78.0  # the output really reaches into zone 17
    assert (in_e | in_w).all() and (in_w & ~in_e).any()
    only_w, only_e, both = in_w & ~in_e, in_e & ~in_w, in_w & in_e
    np.testing.assert_array_equal(image[:, only_w], exp_w[:, only_w])
    np.testing.assert_array_equal(image[:, only_e], exp_e[:, only_e])
    from_either = (image == exp_e).all(axis=0) | (image == exp_w).all(axis=0)
    assert from_either[both].all()


def test_newest_full_year_is_chosen_and_year_argument_overrides(server, tmp_path):
    tf = _corner(LON, LAT, 26918, dx_px=-256, dy_px=256)
    old = _add(server, "q", 2019, tf, seed=6)
    new = _add(server, "q", 2021, tf, seed=7)
    # 2023 exists but covers only part of the area: not chosen by default
    _add(server, "q", 2023, _corner(LON, LAT, 26918, dx_px=-30, dy_px=256), seed=8)
    newest = download_naip(LAT, LON, 60, tmp_path / "newest.tif", retry=FAST)
    chosen = download_naip(LAT, LON, 60, tmp_path / "y2019.tif", year=2019, retry=FAST)
    for path, year, array in ((newest, "2021", new), (chosen, "2019", old)):
        with rasterio.open(path) as src:
            assert src.tags()["naip_year"] == year
            col, row = ~tf @ (src.transform.c, src.transform.f)
            r, c = int(round(row)), int(round(col))
            np.testing.assert_array_equal(src.read(), array[:, r:r + src.height, c:c + src.width])
    with pytest.raises(NaipError, match="no single NAIP year fully covers.*2023"):
        download_naip(LAT, LON, 60, tmp_path / "y2023.tif", year=2023, retry=FAST)
    with pytest.raises(NaipError, match="in 2015"):
        download_naip(LAT, LON, 60, tmp_path / "y2015.tif", year=2015, retry=FAST)


def test_an_item_without_the_image_asset_falls_back_to_an_older_year(server, tmp_path):
    tf = _corner(LON, LAT, 26918, dx_px=-256, dy_px=256)
    old = _add(server, "q", 2019, tf, seed=6)
    _add(server, "q", 2021, tf, seed=7)
    server.items[-1].asset_key = "rendered_preview"  # the newest year's item lacks the COG
    path = download_naip(LAT, LON, 60, tmp_path / "fallback.tif", retry=FAST)
    with rasterio.open(path) as src:
        assert src.tags()["naip_year"] == "2019" and src.tags()["stac_items"] == "m_q_2019"
        col, row = ~tf @ (src.transform.c, src.transform.f)
        r, c = int(round(row)), int(round(col))
        np.testing.assert_array_equal(src.read(), array_window(old, r, c, src.height, src.width))
    with pytest.raises(NaipError, match="no .image. asset: m_q_2021; expected NAIP items"):
        download_naip(LAT, LON, 60, tmp_path / "y2021.tif", year=2021, retry=FAST)
    assert not (tmp_path / "y2021.tif").exists()


def array_window(array, row, col, height, width):
    return array[:, row:row + height, col:col + width]


def test_token_born_expired_is_re_signed(server, tmp_path):
    _add(server, "q", 2021, _corner(LON, LAT, 26918, dx_px=-256, dy_px=256), seed=9)
    server.expire_tokens(next_issued=1)  # the first SAS token is already past msft:expiry
    out = download_naip(LAT, LON, 60, tmp_path / "token.tif", retry=FAST)
    statuses = [s for _, _, s in server.blob_reads()]
    assert statuses[0] == 403 and statuses[-1] in (200, 206)
    tokens = [p for _, p, _ in server.requests if p.startswith("/api/sas/v1/token/")]
    assert tokens == [f"/api/sas/v1/token/{ACCOUNT}/naip"] * 2
    assert out.exists()


def test_revoked_cached_token_is_forgotten_and_replaced(server, tmp_path):
    _add(server, "q", 2021, _corner(LON, LAT, 26918, dx_px=-256, dy_px=256), seed=10)
    download_naip(LAT, LON, 60, tmp_path / "a.tif", retry=FAST)
    server.expire_tokens()  # the SDK still caches that token as valid for an hour
    before = len(server.requests)
    download_naip(LAT, LON, 90, tmp_path / "b.tif", retry=FAST)
    later = server.requests[before:]
    assert any(s == 403 for _, p, s in later if p.startswith(f"/{ACCOUNT}/"))
    assert any(p.startswith("/api/sas/v1/token/") for _, p, _ in later)
    assert (tmp_path / "b.tif").exists()


def test_transient_503_is_retried(server, tmp_path):
    tf = _corner(LON, LAT, 26918, dx_px=-256, dy_px=256)
    array = _add(server, "q", 2021, tf, seed=11)
    server.fail_next(1, 503, prefix="/api/stac/v1/search")
    server.fail_next(2, 503, prefix=f"/{ACCOUNT}/")
    out = download_naip(LAT, LON, 60, tmp_path / "retry.tif", retry=FAST)
    assert sum(s == 503 for _, _, s in server.requests) == 3
    with rasterio.open(out) as src:
        col, row = ~tf @ (src.transform.c, src.transform.f)
        r, c = int(round(row)), int(round(col))
        np.testing.assert_array_equal(src.read(), array[:, r:r + src.height, c:c + src.width])


def test_persistent_503_gives_up_with_clear_error_and_no_file(server, tmp_path):
    _add(server, "q", 2021, _corner(LON, LAT, 26918, dx_px=-256, dy_px=256), seed=12)
    server.fail_next(50, 503, prefix=f"/{ACCOUNT}/")
    with pytest.raises(NaipError, match="gave up reading NAIP asset.*4 attempts"):
        download_naip(LAT, LON, 60, tmp_path / "fail.tif", retry=FAST)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where, message", [
    ("/api/stac/v1/search", "STAC"),  # pystac-client's Client.open used to reset the timeout to none
    ("/api/sas/", "SAS token"),  # planetary-computer's token request has no timeout of its own
])
def test_a_server_that_never_answers_times_out_with_a_clear_error(server, tmp_path, monkeypatch, where, message):
    _add(server, "q", 2021, _corner(LON, LAT, 26918, dx_px=-256, dy_px=256), seed=16)
    monkeypatch.setenv("DCLABEL_HTTP_TIMEOUT", "0.5")
    server.hang_next(10, prefix=where, seconds=60.0)
    t0 = time.perf_counter()
    with pytest.raises(NaipError, match=message):
        download_naip(LAT, LON, 60, tmp_path / "hang.tif", retry=FAST)
    assert time.perf_counter() - t0 < 20  # two waits of 0.5 s and short back-offs, not a minute or for ever
    assert list(tmp_path.iterdir()) == []


def test_cancel_while_the_stac_search_waits_is_prompt(server, tmp_path):
    _add(server, "q", 2021, _corner(LON, LAT, 26918, dx_px=-256, dy_px=256), seed=17)
    server.hang_next(1, prefix="/api/stac/v1/search", seconds=30.0)
    t0 = time.perf_counter()
    with pytest.raises(Cancelled, match="during the STAC search"):
        download_naip(LAT, LON, 60, tmp_path / "c.tif", retry=FAST, cancel=lambda: time.perf_counter() - t0 > 0.3)
    assert time.perf_counter() - t0 < 3 and list(tmp_path.iterdir()) == []


def test_outside_the_us_is_a_clear_error(server, tmp_path):
    _add(server, "q", 2021, _corner(LON, LAT, 26918, dx_px=-256, dy_px=256), seed=13)
    with pytest.raises(NaipError, match=r"no NAIP imagery covers lat, lon 48\.85.*United States"):
        download_naip(48.85, 2.35, 500, tmp_path / "paris.tif", retry=FAST)
    assert list(tmp_path.iterdir()) == []


def test_network_down_names_endpoint_and_variable_and_leaves_no_file(server, tmp_path):
    _add(server, "q", 2021, _corner(LON, LAT, 26918, dx_px=-256, dy_px=256), seed=14)
    url = server.stac_url
    server.go_down()
    with pytest.raises(NaipError) as info:
        download_naip(LAT, LON, 60, tmp_path / "down.tif", retry=FAST)
    assert url in str(info.value) and "DCLABEL_STAC_URL" in str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert list(tmp_path.iterdir()) == []


def test_second_run_reuses_the_finished_output(server, tmp_path):
    _add(server, "q", 2021, _corner(LON, LAT, 26918, dx_px=-256, dy_px=256), seed=15)
    out = download_naip(LAT, LON, 60, tmp_path / "resume.tif", retry=FAST)
    stamp, count = out.stat().st_mtime_ns, len(server.requests)
    assert download_naip(LAT, LON, 60, out, retry=FAST) == out
    assert len(server.requests) == count and out.stat().st_mtime_ns == stamp
    # a different request for the same file is not mistaken for a finished one
    download_naip(LAT, LON, 90, out, retry=FAST)
    assert len(server.requests) > count


def test_oversized_area_is_refused_before_any_request(server, tmp_path):
    with pytest.raises(NaipError, match="smaller pieces"):
        download_naip(LAT, LON, 30_000, tmp_path / "huge.tif", retry=FAST)
    assert server.requests == [] and list(tmp_path.iterdir()) == []


def test_size_limit_counts_the_pixels_of_a_0_3_m_year(server, tmp_path, monkeypatch):
    # 60 m at 0.6 m is 100 x 100 px, under a 150 x 150 limit; the chosen year is 0.3 m: 200 x 200
    import loop.naip

    x, y = Transformer.from_crs("EPSG:4326", 26918, always_xy=True).transform(LON, LAT)
    fine = Affine(0.3, 0, np.floor(x / 0.6) * 0.6 - 256 * 0.3, 0, -0.3, np.floor(y / 0.6) * 0.6 + 256 * 0.3)
    _add(server, "fine", 2022, fine, seed=22)
    monkeypatch.setattr(loop.naip, "MAX_PIXELS", 150 * 150)
    with pytest.raises(NaipError, match=r"20\d x 20\d px at 0.3 m.*smaller pieces"):
        download_naip(LAT, LON, 60, tmp_path / "fine.tif", retry=FAST)
    assert not server.blob_reads() and list(tmp_path.iterdir()) == []


def test_cancel_leaves_nothing(server, tmp_path):
    _add(server, "q", 2021, _corner(LON, LAT, 26918, dx_px=-256, dy_px=256), seed=16)
    with pytest.raises(Cancelled):
        download_naip(LAT, LON, 60, tmp_path / "c.tif", retry=FAST, cancel=lambda: True)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_search_follows_next_pages(server, method):
    for i in range(3):
        _add(server, f"p{i}", 2020 + i, _corner(LON, LAT, 26918, dx_px=-256, dy_px=256), seed=i)
    items = search_naip((LON - 0.01, LAT - 0.01, LON + 0.01, LAT + 0.01), page_size=1,
                        method=method, policy=FAST)
    assert [i.id for i in items] == ["m_p2_2022", "m_p1_2021", "m_p0_2020"]
    searches = [p for m, p, _ in server.requests if "/search" in p and m == method]
    assert len(searches) == 3


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_server_search_filters_by_intersects_and_datetime(server, method):
    from pystac_client import Client
    from shapely.geometry import mapping

    _add(server, "q", 2019, _corner(LON, LAT, 26918, dx_px=-256, dy_px=256), seed=20)
    _add(server, "q", 2021, _corner(LON, LAT, 26918, dx_px=-256, dy_px=256), seed=21)
    client = Client.open(server.stac_url)
    point = mapping(_square(LON, LAT, 10))
    found = client.search(collections=["naip"], intersects=point, method=method,
                          datetime="2021-01-01T00:00:00Z/2021-12-31T23:59:59Z")
    assert [i.id for i in found.items()] == ["m_q_2021"]
    away = mapping(_square(LON + 0.05, LAT, 10))
    assert list(client.search(collections=["naip"], intersects=away, method=method).items()) == []


def test_blob_endpoint_mapping_and_error_classification():
    href = "https://naipeuwest.blob.core.windows.net/naip/v002/a.tif?se=x&sig=y"
    assert gdal_path(href, "http://127.0.0.1:9") == (
        "/vsicurl/http://127.0.0.1:9/naipeuwest/naip/v002/a.tif?se=x&sig=y")
    assert gdal_path(href) == f"/vsicurl/{href}"
    assert http_status(OSError("HTTP response code: 403")) == 403
    assert http_status(OSError("CURL error: Could not connect to server")) == 0
    assert http_status(OSError("not a TIFF file")) is None
    # rasterio's outer message says nothing; GDAL's cause says the response was cut off: retry it
    try:
        try:
            raise OSError("a.tif: got 257925 bytes, expected 262153")
        except OSError as cause:
            raise OSError("Read failed. See previous exception for details.") from cause
    except OSError as exc:
        assert http_status(exc) == 0


def _cli(argv: list[str]) -> int:
    """Run a command of loop.cli_naip the way loop.cli.main does (errors -> one line, exit 2)."""
    import argparse
    import sys

    from loop import cli_naip
    from model.errors import DclabelError

    parser = argparse.ArgumentParser(prog="dclabel")
    cli_naip.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DclabelError as exc:
        print(f"dclabel {args.command}: error: {exc}", file=sys.stderr)
        return 2


def test_cli_download_naip_and_clear_error(server, tmp_path, capsys):
    tf = _corner(LON, LAT, 26918, dx_px=-256, dy_px=256)
    array = _add(server, "q", 2021, tf, seed=17)
    out = tmp_path / "cli.tif"
    code = _cli(["download-naip", "--lat", str(LAT), "--lon", str(LON), "--size", "60",
                 "--output", str(out), "--stac-url", server.stac_url])
    assert code == 0 and capsys.readouterr().out.strip() == str(out)
    with rasterio.open(out) as src:
        col, row = ~tf @ (src.transform.c, src.transform.f)
        r, c = int(round(row)), int(round(col))
        np.testing.assert_array_equal(src.read(), array[:, r:r + src.height, c:c + src.width])
    code = _cli(["download-naip", "--lat", "48.85", "--lon", "2.35", "--size", "60",
                 "--output", str(tmp_path / "paris.tif")])
    err = capsys.readouterr().err
    assert code == 2 and "no NAIP imagery covers" in err
    assert not (tmp_path / "paris.tif").exists()
    code = _cli(["download-naip", "--output", str(tmp_path / "x.tif")])
    assert code == 2 and "--lat and --lon" in capsys.readouterr().err


def _square(lon: float, lat: float, side_m: float):
    """A lon/lat polygon of a square of side_m metres centred on lon/lat (zone 18)."""
    from shapely.geometry import box as sbox
    from shapely.ops import transform as shp_transform

    x, y = Transformer.from_crs(4326, 26918, always_xy=True).transform(lon, lat)
    back = Transformer.from_crs(26918, 4326, always_xy=True).transform
    h = side_m / 2
    return shp_transform(back, sbox(x - h, y - h, x + h, y + h))


def test_bootstrap_fetches_chips_and_imports_reviewed_labels(server, tmp_path):
    import geopandas

    from loop.naip_bootstrap import bootstrap, plan_chips
    from loop.project import Project

    far_lon = LON + 0.02  # ~1.7 km east: its own item and its own chip
    _add(server, "a", 2021, _corner(LON, LAT, 26918, dx_px=-256, dy_px=256), seed=18)
    _add(server, "b", 2021, _corner(far_lon, LAT, 26918, dx_px=-256, dy_px=256), seed=19)
    geoms = [_square(LON, LAT, 30), _square(LON + 0.0003, LAT, 20),  # 26 m apart: one chip
             _square(far_lon, LAT, 30), _square(2.35, 48.85, 30)]  # far; outside the US
    labels = geopandas.GeoDataFrame({"class": ["datacenter", "warehouse", "datacenter", "other"]},
                                    geometry=geoms, crs="EPSG:4326")
    path = tmp_path / "labels.geojson"
    labels.to_file(path, driver="GeoJSON")
    assert [c.footprints for c in plan_chips(geoms, size_m=120, margin_m=20)] == [
        (0, 1), (2,), (3,)]

    root = tmp_path / "project"
    result = bootstrap(path, root, size_m=120, margin_m=20, retry=FAST)
    assert len(result.scenes) == 2 and result.footprints_added == 3
    assert len(result.skipped) == 1 and "no NAIP imagery covers" in result.skipped[0][2]
    project = Project.open(root)
    assert sorted(project.scene_ids) == sorted(result.scenes)
    footprints = project.labels.footprints()
    assert sorted(footprints["class"]) == ["datacenter", "datacenter", "warehouse"]
    reviewed = project.labels.reviewed_chips()
    assert {r.scene_id for r in reviewed} == set(result.scenes)
    for info in project.scenes:
        assert info.crs.to_epsg() == 26918 and info.path.parent == root / "scenes"

    reads = len(server.blob_reads())
    again = bootstrap(path, root, size_m=120, margin_m=20, retry=FAST)
    assert again.footprints_added == 0 and sorted(again.scenes) == sorted(result.scenes)
    assert len(server.blob_reads()) == reads  # finished chips were reused, not fetched again


def test_bootstrap_reads_0_3_m_naip_at_the_projects_0_6_m(server, tmp_path):
    """Recent NAIP years come at 0.3 m: the chip is downloaded as it is and read resampled to 0.6 m."""
    import geopandas

    from loop.naip_bootstrap import bootstrap
    from loop.project import Project

    x, y = Transformer.from_crs("EPSG:4326", 26918, always_xy=True).transform(LON, LAT)
    fine = Affine(0.3, 0, np.floor(x / 0.6) * 0.6 - 256 * 0.3, 0, -0.3, np.floor(y / 0.6) * 0.6 + 256 * 0.3)
    _add(server, "fine", 2022, fine, seed=21)
    labels = geopandas.GeoDataFrame({"class": ["datacenter"]}, geometry=[_square(LON, LAT, 30)], crs="EPSG:4326")
    labels.to_file(tmp_path / "labels.geojson", driver="GeoJSON")
    result = bootstrap(tmp_path / "labels.geojson", tmp_path / "project", size_m=120, margin_m=20, retry=FAST)
    [info] = Project.open(tmp_path / "project").scenes
    assert len(result.scenes) == 1 and info.res == pytest.approx((0.6, 0.6)) and info.path.suffix == ".vrt"
    with rasterio.open(next((tmp_path / "project" / "scenes").glob("*.tif"))) as src:
        assert src.res == pytest.approx((0.3, 0.3))  # the download keeps the imagery's own pixels


def test_bootstrap_refuses_an_unknown_class_before_downloading(server, tmp_path):
    import geopandas

    from loop.naip_bootstrap import bootstrap
    from model.errors import LabelError

    _add(server, "q", 2021, _corner(LON, LAT, 26918, dx_px=-256, dy_px=256), seed=23)
    labels = geopandas.GeoDataFrame({"class": ["substation"]}, geometry=[_square(LON, LAT, 30)], crs="EPSG:4326")
    labels.to_file(tmp_path / "labels.geojson", driver="GeoJSON")
    with pytest.raises(LabelError, match="unknown class.*substation"):
        bootstrap(tmp_path / "labels.geojson", tmp_path / "project", size_m=120, margin_m=20, retry=FAST)
    assert server.requests == [] and not (tmp_path / "project").exists()


def test_bootstrap_stops_at_once_when_the_stac_api_is_unreachable(server, tmp_path):
    import geopandas

    from loop.errors import StacUnreachableError
    from loop.naip_bootstrap import bootstrap

    # three chips far apart: without the stop, each would wait out the same dead endpoint
    geoms = [_square(LON + 0.02 * k, LAT, 30) for k in range(3)]
    path = tmp_path / "labels.geojson"
    geopandas.GeoDataFrame({"class": ["datacenter"] * 3}, geometry=geoms, crs="EPSG:4326").to_file(path)
    server.go_down()
    seen = []
    with pytest.raises(StacUnreachableError, match="stopped at chip 1 of 3.*cannot reach the STAC API"):
        bootstrap(path, tmp_path / "project", stac_url=server.stac_url, retry=FAST,
                  progress=lambda done, total, info: seen.append(done))
    assert seen == []  # no chip was tried after the first


def test_the_download_panels_largest_side_fits_the_pixel_cap() -> None:
    from loop.naip import MAX_PIXELS, MAX_SIDE_M, area_grid

    for lat, lon in [(38.95, -77.45), (47.6, -122.3), (25.8, -80.2), (44.0, -71.99)]:
        grid = area_grid(lat, lon, MAX_SIDE_M)
        assert grid.width * grid.height <= MAX_PIXELS
    wider = area_grid(38.95, -77.45, MAX_SIDE_M + 200)  # the old 20 km limit was always refused
    assert wider.width * wider.height > MAX_PIXELS
