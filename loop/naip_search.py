"""Searching the NAIP collection of a STAC API and choosing the year that covers an area."""

from __future__ import annotations

import os
from collections import defaultdict

import pystac
import requests
from pystac_client import Client
from pystac_client.exceptions import APIError
from pystac_client.stac_api_io import StacApiIO
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union
from urllib3.util.retry import Retry

from loop.errors import NaipError, StacUnreachableError
from loop.naip_assets import CONNECT_TIMEOUT_S, DEFAULT_RETRY, RetryPolicy, http_timeout

DEFAULT_STAC_URL = "https://planetarycomputer.microsoft.com/api/stac/v1"
STAC_URL_ENV = "DCLABEL_STAC_URL"
COLLECTION = "naip"
ASSET_KEY = "image"  # the 4-band COG of a NAIP item
# Footprints are compared in degrees; 1e-7 deg is about 1 cm.
COVER_TOLERANCE_DEG = 1e-7


def resolve_stac_url(stac_url: str | None = None) -> str:
    """The STAC API root: the argument, else ``DCLABEL_STAC_URL``, else the Planetary Computer."""
    url = stac_url or os.environ.get(STAC_URL_ENV, "").strip() or DEFAULT_STAC_URL
    return url.rstrip("/")


def item_year(item: pystac.Item) -> int:
    """The NAIP year of an item (``naip:year``, else the year of its datetime)."""
    value = item.properties.get("naip:year")
    if value:
        return int(value)
    when = item.datetime or item.common_metadata.start_datetime
    if when is None:
        raise NaipError(f"STAC item {item.id} has neither naip:year nor a datetime; expected "
                        "NAIP items: check that the endpoint serves the naip collection")
    return when.year


def _unreachable(stac_url: str, exc: BaseException) -> StacUnreachableError:
    return StacUnreachableError(
        f"cannot reach the STAC API at {stac_url} ({type(exc).__name__}: {exc}); expected a "
        f"STAC item-search endpoint. Check the network connection, or point {STAC_URL_ENV} "
        f"(or --stac-url) at a reachable STAC API; the default is {DEFAULT_STAC_URL}"
    )


def search_naip(bbox: tuple[float, float, float, float], stac_url: str | None = None,
                year: int | None = None, policy: RetryPolicy = DEFAULT_RETRY,
                page_size: int = 100, method: str | None = None) -> list[pystac.Item]:
    """All NAIP items intersecting ``bbox`` (every page of the search).

    Args:
        bbox: (west, south, east, north) in degrees.
        stac_url: STAC API root (see :func:`resolve_stac_url`).
        year: Restrict to items of this year.
        policy: Retries (with backoff) for 429/5xx answers and dropped connections.
        page_size: Items per page (``limit``); further pages follow ``next`` links.
        method: "GET" or "POST"; default pystac-client's choice.

    Returns:
        The items, newest first.

    Raises:
        NaipError: The endpoint is unreachable or answers with an error.
    """
    stac_url = resolve_stac_url(stac_url)
    retries = Retry(total=policy.attempts, connect=min(2, policy.attempts), read=1,  # a silent server: one more wait
                    backoff_factor=policy.backoff_s, backoff_max=policy.max_backoff_s,
                    status_forcelist=(429, 500, 502, 503, 504), allowed_methods=None,
                    raise_on_status=False)
    timeout = (CONNECT_TIMEOUT_S, http_timeout())
    stac_io = StacApiIO(max_retries=retries, timeout=timeout)
    datetime = f"{year}-01-01T00:00:00Z/{year}-12-31T23:59:59Z" if year else None
    try:
        # Client.open sets the StacApiIO's timeout to its own argument (None: wait for ever)
        client = Client.open(stac_url, stac_io=stac_io, timeout=timeout)
        search = client.search(collections=[COLLECTION], bbox=list(bbox), datetime=datetime,
                               limit=page_size, **({"method": method} if method else {}))
        items = list(search.items())
    except (requests.RequestException, APIError, pystac.STACError, OSError) as exc:
        raise _unreachable(stac_url, exc) from exc
    items = [i for i in items if i.collection_id in (None, COLLECTION)]
    return sorted(items, key=lambda i: (item_year(i), i.datetime is not None and i.datetime,
                                        i.id), reverse=True)


def choose_year(items: list[pystac.Item], area: BaseGeometry, where: str,
                year: int | None = None, asset: str = ASSET_KEY) -> tuple[int, list[pystac.Item]]:
    """The newest year (or ``year``) whose items together cover ``area``, and those items.

    Items without the ``asset`` to read are left out (an incomplete item of the newest year
    falls back to an older year that covers the area).

    Args:
        items: Candidate items (any years).
        area: The area's outline in degrees (lon, lat).
        where: Human description of the area for messages.
        year: Only consider this year.
        asset: Key of the image asset an item must have.

    Returns:
        ``(year, items)``: the items of that year intersecting the area, newest first.

    Raises:
        NaipError: No item (or no year's items) covers the area.
    """
    by_year: dict[int, list[pystac.Item]] = defaultdict(list)
    lacking = []
    for item in items:
        footprint = shape(item.geometry)
        if not footprint.intersects(area) or (year is not None and item_year(item) != year):
            continue
        if asset not in item.assets:
            lacking.append(item.id)
        else:
            by_year[item_year(item)].append(item)
    left_out = (f" ({len(lacking)} STAC item(s) without an '{asset}' asset were left out: "
                f"{', '.join(lacking[:5])}{', ...' if len(lacking) > 5 else ''})") if lacking else ""
    if not by_year and lacking:
        raise NaipError(f"the STAC items that cover {where} have no '{asset}' asset: "
                        f"{', '.join(lacking[:5])}{', ...' if len(lacking) > 5 else ''}; expected NAIP "
                        f"items (4-band COG under '{asset}'): check the endpoint (--stac-url / {STAC_URL_ENV})")
    if not by_year:
        asked = f" in {year}" if year is not None else ""
        raise NaipError(
            f"no NAIP imagery covers {where}{asked}; NAIP is flown only over the United States "
            "(the contiguous states, plus some years of Hawaii and territories). Check the "
            "coordinates (lat first, west longitudes negative)"
            + (", or drop --year to use any year" if year is not None else "")
        )
    partial = []
    for candidate in sorted(by_year, reverse=True):
        union = unary_union([shape(i.geometry) for i in by_year[candidate]])
        if union.buffer(COVER_TOLERANCE_DEG).covers(area):
            return candidate, by_year[candidate]
        partial.append(f"{candidate} ({100 * union.intersection(area).area / area.area:.0f}%)")
    raise NaipError(
        f"no single NAIP year fully covers {where}; years found with partial coverage: "
        f"{', '.join(partial)}{left_out}. Use a smaller area, move it, or pick a --year"
    )
