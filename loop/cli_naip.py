"""``dclabel download-naip``: fetch a NAIP mosaic of an area from the Planetary Computer."""

from __future__ import annotations

import argparse
import sys

from loop.errors import NaipError
from loop.naip import DEFAULT_STAC_URL, STAC_URL_ENV, download_naip

ENVIRONMENT_HELP = f"""
environment:
  {STAC_URL_ENV}          STAC API root (default {DEFAULT_STAC_URL})
  PC_SDK_SUBSCRIPTION_KEY   Planetary Computer API key (optional, raises rate limits)
  PC_SDK_SAS_URL            SAS token endpoint (planetary-computer's setting)
  DCLABEL_BLOB_ENDPOINT     read blob assets from this path-style endpoint (Azurite layout)
  DCLABEL_HTTP_TIMEOUT      seconds to wait for any one HTTP answer (default 60)
"""


def _area_args(args: argparse.Namespace) -> tuple[float, float, float, tuple | None]:
    """(lat, lon, size_m, bbox) from the flags, or a NaipError naming what is missing."""
    bbox = tuple(args.bbox) if args.bbox else None
    if bbox is None and (args.lat is None or args.lon is None):
        raise NaipError("download-naip needs an area: pass --lat and --lon (with --size in "
                        "metres), or --bbox WEST SOUTH EAST NORTH in degrees")
    if bbox is not None:
        lat, lon = (bbox[1] + bbox[3]) / 2.0, (bbox[0] + bbox[2]) / 2.0
        return lat, lon, args.size, bbox
    return args.lat, args.lon, args.size, None


def run_download(args: argparse.Namespace) -> int:
    """Download the area of ``args`` and print the written path."""
    lat, lon, size_m, bbox = _area_args(args)
    path = download_naip(lat, lon, size_m, args.output, year=args.year, bbox=bbox,
                         stac_url=args.stac_url)
    print(path)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``download-naip`` and ``bootstrap``."""
    parser = subparsers.add_parser(
        "download-naip",
        help="download NAIP imagery (4-band, ~0.6 m) of an area from the Planetary Computer",
        description="Download a NAIP mosaic of a square around --lat/--lon (or a --bbox) as a "
                    "Cloud Optimized GeoTIFF in the UTM zone of its centre. The newest year "
                    "that fully covers the area is used unless --year is given; a finished "
                    "output of the same request is reused.",
        epilog=ENVIRONMENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--lat", type=float, help="latitude of the centre (degrees)")
    parser.add_argument("--lon", type=float, help="longitude of the centre (degrees, west < 0)")
    parser.add_argument("--size", type=float, default=1000.0,
                        help="side of the square area in metres (default 1000)")
    parser.add_argument("--output", required=True, help="GeoTIFF to write")
    parser.add_argument("--year", type=int, default=None, help="NAIP year (default: newest)")
    parser.add_argument("--bbox", type=float, nargs=4, metavar=("WEST", "SOUTH", "EAST", "NORTH"),
                        help="area as a lon/lat box instead of --lat/--lon/--size")
    parser.add_argument("--stac-url", default=None,
                        help=f"STAC API root (default ${STAC_URL_ENV} or {DEFAULT_STAC_URL})")
    parser.set_defaults(func=run_download)
    _register_bootstrap(subparsers)


def run_bootstrap(args: argparse.Namespace) -> int:
    """Fetch chips around the labels of ``args.geojson`` into ``args.project``; print a summary."""
    from loop.naip_bootstrap import bootstrap

    result = bootstrap(args.geojson, args.project, size_m=args.size, margin_m=args.margin,
                       year=args.year, stac_url=args.stac_url, resolution_m=args.res or None)
    for lat, lon, reason in result.skipped:
        print(f"skipped chip at {lat:.5f}, {lon:.5f}: {reason}", file=sys.stderr)
    print(f"{len(result.scenes)} scene(s) in {args.project}, {result.footprints_added} "
          f"footprint(s) imported as reviewed, {len(result.skipped)} chip(s) skipped")
    return 0


def _register_bootstrap(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bootstrap",
        help="start a project from a labels GeoJSON: NAIP chips around every polygon",
        description="Download a NAIP chip around every polygon of --geojson (data centers and "
                    "hard negatives; nearby polygons share a chip), add the chips to --project "
                    "as scenes and import the polygons as reviewed labels. Reruns resume.",
        epilog=ENVIRONMENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--geojson", required=True, help="labels file (polygons, any CRS)")
    parser.add_argument("--project", required=True, help="project folder (created if missing)")
    parser.add_argument("--size", type=float, default=512.0,
                        help="smallest chip side in metres (default 512)")
    parser.add_argument("--margin", type=float, default=64.0,
                        help="context around each polygon in metres (default 64)")
    parser.add_argument("--year", type=int, default=None, help="NAIP year (default: newest)")
    parser.add_argument("--res", type=float, default=0.6, metavar="METRES",
                        help="pixel size a new project reads every chip at: 0.3 m NAIP years are read resampled "
                        "to it (default 0.6, the seed study's; 0 keeps each chip's own)")
    parser.add_argument("--stac-url", default=None,
                        help=f"STAC API root (default ${STAC_URL_ENV} or {DEFAULT_STAC_URL})")
    parser.set_defaults(func=run_bootstrap)
