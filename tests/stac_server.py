"""A loopback stand-in for the Planetary Computer: STAC API, SAS token endpoint and blob storage.

One real HTTP server on 127.0.0.1 (``ThreadingHTTPServer`` in a thread, port 0) answers three
families of paths, like the three services dclabel talks to:

* ``/api/stac/v1/...``: a minimal STAC API (landing page with item-search conformance,
  ``/conformance``, ``/collections/naip``, ``/search`` by GET and POST with ``bbox``,
  ``intersects``, ``datetime``, ``limit`` and ``next`` paging links, item JSON);
* ``/api/sas/v1/token/{account}/{container}``: SAS tokens as planetary-computer requests them
  (``PC_SDK_SAS_URL`` points here), ``{"token": ..., "msft:expiry": ...}``;
* ``/{account}/{container}/{blob}``: path-style blob storage (the Azurite convention, which
  ``DCLABEL_BLOB_ENDPOINT`` maps ``https://{account}.blob.core.windows.net/`` onto) serving the
  item COGs with HEAD and HTTP Range, answering 403 to a missing, unknown or expired token.

Item asset hrefs are real-looking ``https://naipeuwest.blob.core.windows.net/naip/...`` URLs, so
planetary-computer signs them exactly as it signs the real ones.

Knobs for tests: :meth:`NaipStacServer.expire_tokens`, :meth:`NaipStacServer.fail_next`,
:meth:`NaipStacServer.hang_next`,
:meth:`NaipStacServer.go_down`. The log :attr:`NaipStacServer.requests` records every request.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlparse

import numpy as np
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import ColorInterp
from rasterio.io import MemoryFile
from rasterio.shutil import copy as copy_raster
from rasterio.warp import transform_geom
from shapely.geometry import box, mapping, shape

ACCOUNT = "naipeuwest"
CONTAINER = "naip"
STAC_PREFIX = "/api/stac/v1"
SAS_PREFIX = "/api/sas/v1/token"
CONFORMANCE = [
    "https://api.stacspec.org/v1.0.0/core",
    "https://api.stacspec.org/v1.0.0/item-search",
    "https://api.stacspec.org/v1.0.0/ogcapi-features",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
]


def make_cog(array: np.ndarray, crs: CRS, transform: Affine) -> bytes:
    """Encode a (C, H, W) uint8 array as Cloud Optimized GeoTIFF bytes (256 px tiles, deflate)."""
    count, height, width = array.shape
    profile = dict(driver="GTiff", count=count, height=height, width=width, dtype="uint8",
                   crs=crs, transform=transform)
    with MemoryFile() as src_mem:
        with src_mem.open(**profile) as dst:
            dst.write(array)
            # Like real NAIP: the 4th band is NIR, not alpha.
            dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue,
                               ColorInterp.undefined][:count]
        with src_mem.open() as src, MemoryFile() as cog_mem:
            copy_raster(src, cog_mem.name, driver="COG", compress="DEFLATE", blocksize=256)
            return bytes(cog_mem.read())


@dataclass
class NaipItem:
    """One quarter-quad of the fake catalogue: STAC metadata plus its COG bytes."""

    item_id: str
    year: int
    crs: CRS
    transform: Affine
    array: np.ndarray
    blob_path: str = ""
    cog: bytes = b""
    geometry: dict = field(default_factory=dict)
    asset_key: str = "image"  # another key publishes an item the downloader cannot read

    @property
    def href(self) -> str:
        """The asset href as the real catalogue writes it (Azure blob storage)."""
        return f"https://{ACCOUNT}.blob.core.windows.net/{CONTAINER}/{self.blob_path}"

    def to_stac(self, root: str) -> dict:
        """The item as STAC JSON (pystac-client parses it)."""
        _, height, width = self.array.shape
        left, top = self.transform @ (0, 0)
        right, bottom = self.transform @ (width, height)
        bbox = list(shape(self.geometry).bounds)
        return {
            "type": "Feature",
            "stac_version": "1.0.0",
            "stac_extensions": [],
            "id": self.item_id,
            "collection": "naip",
            "geometry": self.geometry,
            "bbox": bbox,
            "properties": {
                "datetime": f"{self.year}-07-01T00:00:00Z",
                "naip:year": str(self.year),
                "naip:state": "va",
                "gsd": abs(self.transform.a),
                "proj:epsg": self.crs.to_epsg(),
                "proj:shape": [height, width],
                "proj:bbox": [left, bottom, right, top],
                "proj:transform": list(self.transform)[:6],
            },
            "links": [
                {"rel": "self", "href": f"{root}/collections/naip/items/{self.item_id}"},
                {"rel": "collection", "href": f"{root}/collections/naip"},
                {"rel": "root", "href": f"{root}/"},
            ],
            "assets": {
                self.asset_key: {
                    "href": self.href,
                    "type": "image/tiff; application=geotiff; profile=cloud-optimized",
                    "roles": ["data"],
                    "eo:bands": [{"name": n} for n in ("Red", "Green", "Blue", "NIR")],
                }
            },
        }


class NaipStacServer:
    """The loopback Planetary Computer; use as a context manager or call start()/stop().

    Attributes:
        items: Catalogue items, in insertion order.
        requests: Log of ``(method, path, status)`` for every request answered.
        token_ttl_s: Lifetime of issued tokens (planetary-computer refreshes below 60 s).
    """

    def __init__(self) -> None:
        self.items: list[NaipItem] = []
        self.requests: list[tuple[str, str, int]] = []
        self.blob_bytes = 0
        self.token_ttl_s = 3600.0
        self.hang_s = 5.0
        self._tokens: dict[str, datetime] = {}
        self._fail: list[tuple[int, str]] = []
        self._expire_next = 0
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # ----------------------------------------------------------------- catalogue
    def add_item(self, item_id: str, year: int, crs: CRS | str | int, transform: Affine,
                 array: np.ndarray) -> NaipItem:
        """Publish a 4-band uint8 raster as a NAIP item of ``year``."""
        crs = CRS.from_user_input(crs)
        _, height, width = array.shape
        left, top = transform @ (0, 0)
        right, bottom = transform @ (width, height)
        footprint = transform_geom(crs, "EPSG:4326", mapping(box(left, bottom, right, top)))
        item = NaipItem(item_id, year, crs, transform, array,
                        blob_path=f"v002/va/{year}/va_060cm_{year}/{item_id}.tif",
                        cog=make_cog(array, crs, transform), geometry=footprint)
        self.items.append(item)
        return item

    # ----------------------------------------------------------------- knobs
    def expire_tokens(self, next_issued: int = 0) -> None:
        """Expire every token issued so far; the next ``next_issued`` tokens are born expired."""
        with self._lock:
            past = datetime.now(UTC) - timedelta(seconds=1)
            self._tokens = {t: past for t in self._tokens}
            self._expire_next = next_issued

    def fail_next(self, count: int, status: int = 503, prefix: str = "/") -> None:
        """Answer the next ``count`` requests whose path starts with ``prefix`` with ``status``."""
        with self._lock:
            self._fail.extend([(status, prefix)] * count)

    def hang_next(self, count: int, prefix: str = "/", seconds: float = 5.0) -> None:
        """Accept the next ``count`` requests under ``prefix`` and answer nothing for ``seconds``
        (a server that hangs), then drop the connection."""
        with self._lock:
            self.hang_s = seconds
            self._fail.extend([(0, prefix)] * count)

    def go_down(self) -> None:
        """Stop listening: later connections are refused (the network is down)."""
        self.stop()

    def blob_reads(self) -> list[tuple[str, str, int]]:
        """Logged requests for blob (COG) bytes."""
        return [r for r in self.requests if r[1].startswith(f"/{ACCOUNT}/")]

    # ----------------------------------------------------------------- urls
    @property
    def root(self) -> str:
        """Base URL of the server."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def stac_url(self) -> str:
        """The STAC API root (what ``DCLABEL_STAC_URL`` is set to)."""
        return self.root + STAC_PREFIX

    @property
    def sas_url(self) -> str:
        """The token endpoint (what ``PC_SDK_SAS_URL`` is set to)."""
        return self.root + SAS_PREFIX

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> NaipStacServer:
        """Listen on a free loopback port in a daemon thread."""
        server = self

        class Handler(_Handler):
            stac = server

        self._httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True,
                                        name="naip-stac-server")
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> NaipStacServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ----------------------------------------------------------------- internals
    def _take_failure(self, path: str) -> int | None:
        with self._lock:
            for i, (status, prefix) in enumerate(self._fail):
                if path.startswith(prefix):
                    del self._fail[i]
                    return status
        return None

    def _issue_token(self) -> dict:
        with self._lock:
            if self._expire_next > 0:
                self._expire_next -= 1
                expiry = datetime.now(UTC) - timedelta(seconds=1)
            else:
                expiry = datetime.now(UTC) + timedelta(seconds=self.token_ttl_s)
            sig = secrets.token_hex(8)
            self._tokens[sig] = expiry
        se = expiry.strftime("%Y-%m-%dT%H:%M:%SZ")
        return {"msft:expiry": se, "token": f"se={se}&sp=rl&sv=2021-06-08&sr=c&sig={sig}"}

    def _token_valid(self, query: str) -> bool:
        sig = parse_qs(query).get("sig", [""])[0]
        with self._lock:
            expiry = self._tokens.get(sig)
        return expiry is not None and expiry > datetime.now(UTC)

    def _search(self, params: dict) -> tuple[list[NaipItem], int]:
        """Items matching the search parameters, and the page size."""
        found = list(self.items)
        if params.get("collections") and "naip" not in params["collections"]:
            found = []
        if params.get("bbox"):
            area = box(*params["bbox"])
            found = [i for i in found if shape(i.geometry).intersects(area)]
        if params.get("intersects"):
            area = shape(params["intersects"])
            found = [i for i in found if shape(i.geometry).intersects(area)]
        if params.get("datetime"):
            start, _, end = str(params["datetime"]).partition("/")
            end = end or start
            lo = int(start[:4]) if start not in ("", "..") else 0
            hi = int(end[:4]) if end not in ("", "..") else 9999
            found = [i for i in found if lo <= i.year <= hi]
        return found, int(params.get("limit") or 10)


class _QuietServer(ThreadingHTTPServer):
    """A threading server that does not print the connections clients drop on purpose."""

    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def _listify(value: str) -> list[str]:
    return [v for v in value.split(",") if v]


class _Handler(BaseHTTPRequestHandler):
    """Routes requests of one connection; HTTP/1.0 so a stopped server really refuses."""

    stac: NaipStacServer
    protocol_version = "HTTP/1.0"

    def log_message(self, *args) -> None:  # quiet test output
        pass

    # ------------------------------------------------------------- helpers
    def _send(self, status: int, body: bytes = b"", ctype: str = "application/json",
              headers: dict | None = None, head: bool = False) -> None:
        self.stac.requests.append((self.command, self.path, status))
        if not head and self.path.startswith(f"/{ACCOUNT}/"):
            self.stac.blob_bytes += len(body)
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, obj: dict, status: int = 200) -> None:
        self._send(status, json.dumps(obj).encode())

    # ------------------------------------------------------------- verbs
    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route()

    def do_POST(self) -> None:
        self._route()

    def _route(self, head: bool = False) -> None:
        url = urlparse(self.path)
        failure = self.stac._take_failure(url.path)
        if failure == 0:
            time.sleep(self.stac.hang_s)
            self.close_connection = True
            return None
        if failure is not None:
            return self._send(failure, b"transient failure", "text/plain", head=head)
        path = url.path.rstrip("/")
        root = self.stac.stac_url
        if path.startswith(f"/{ACCOUNT}/{CONTAINER}/"):
            return self._blob(path[len(f"/{ACCOUNT}/{CONTAINER}/"):], url.query, head)
        if path.startswith(SAS_PREFIX + "/"):
            return self._json(self.stac._issue_token())
        if path == STAC_PREFIX:
            return self._json({
                "type": "Catalog", "id": "loopback-pc", "stac_version": "1.0.0",
                "description": "Loopback Planetary Computer for tests", "conformsTo": CONFORMANCE,
                "links": [
                    {"rel": "self", "href": f"{root}/", "type": "application/json"},
                    {"rel": "root", "href": f"{root}/", "type": "application/json"},
                    {"rel": "conformance", "href": f"{root}/conformance"},
                    {"rel": "data", "href": f"{root}/collections"},
                    {"rel": "child", "href": f"{root}/collections/naip"},
                    {"rel": "search", "href": f"{root}/search", "method": "GET",
                     "type": "application/geo+json"},
                    {"rel": "search", "href": f"{root}/search", "method": "POST",
                     "type": "application/geo+json"},
                ]})
        if path == STAC_PREFIX + "/conformance":
            return self._json({"conformsTo": CONFORMANCE})
        if path == STAC_PREFIX + "/collections":
            return self._json({"collections": [self._collection()], "links": []})
        if path == STAC_PREFIX + "/collections/naip":
            return self._json(self._collection())
        match = re.fullmatch(STAC_PREFIX + r"/collections/naip/items/([^/]+)", path)
        if match:
            for item in self.stac.items:
                if item.item_id == match.group(1):
                    return self._json(item.to_stac(root))
            return self._json({"code": "NotFound"}, 404)
        if path == STAC_PREFIX + "/search":
            return self._search(url.query)
        return self._json({"code": "NotFound", "description": self.path}, 404)

    def _collection(self) -> dict:
        root = self.stac.stac_url
        return {
            "type": "Collection", "id": "naip", "stac_version": "1.0.0",
            "description": "NAIP (loopback)", "license": "proprietary",
            "extent": {"spatial": {"bbox": [[-180, 0, 0, 90]]},
                       "temporal": {"interval": [["2010-01-01T00:00:00Z", None]]}},
            "links": [{"rel": "self", "href": f"{root}/collections/naip"},
                      {"rel": "root", "href": f"{root}/"},
                      {"rel": "items", "href": f"{root}/collections/naip/items"}],
        }

    def _search(self, query: str) -> None:
        root = self.stac.stac_url
        if self.command == "POST":
            length = int(self.headers.get("Content-Length") or 0)
            params = json.loads(self.rfile.read(length) or b"{}")
        else:
            raw = {k: v[0] for k, v in parse_qs(query).items()}
            params = dict(raw)
            if "bbox" in raw:
                params["bbox"] = [float(v) for v in _listify(raw["bbox"])]
            if "collections" in raw:
                params["collections"] = _listify(raw["collections"])
            if "intersects" in raw:
                params["intersects"] = json.loads(raw["intersects"])
        found, limit = self.stac._search(params)
        start = int(params.get("token") or 0)
        page = found[start:start + limit]
        links = [{"rel": "root", "href": f"{root}/"}]
        if start + limit < len(found):
            nxt = {**params, "token": str(start + limit)}
            if self.command == "POST":
                links.append({"rel": "next", "href": f"{root}/search", "method": "POST",
                              "body": nxt, "type": "application/geo+json"})
            else:
                flat = {k: (",".join(map(str, v)) if isinstance(v, list) else
                            json.dumps(v) if isinstance(v, dict) else v) for k, v in nxt.items()}
                links.append({"rel": "next", "href": f"{root}/search?{urlencode(flat)}",
                              "method": "GET", "type": "application/geo+json"})
        self._json({"type": "FeatureCollection",
                    "features": [i.to_stac(root) for i in page], "links": links,
                    "context": {"returned": len(page), "matched": len(found), "limit": limit}})

    def _blob(self, blob_path: str, query: str, head: bool) -> None:
        if not self.stac._token_valid(query):
            body = (b'<?xml version="1.0" encoding="utf-8"?><Error><Code>AuthenticationFailed'
                    b"</Code><Message>Signature not valid in the specified time frame, or "
                    b"missing</Message></Error>")
            return self._send(403, body, "application/xml", head=head)
        for item in self.stac.items:
            if item.blob_path == blob_path:
                data = item.cog
                break
        else:
            return self._send(404, b"BlobNotFound", "text/plain", head=head)
        headers = {"Accept-Ranges": "bytes"}
        rng = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", "").strip())
        if rng is None:
            return self._send(200, data, "image/tiff", headers, head)
        first = int(rng.group(1))
        last = min(int(rng.group(2)) if rng.group(2) else len(data) - 1, len(data) - 1)
        if first >= len(data):
            headers["Content-Range"] = f"bytes */{len(data)}"
            return self._send(416, b"", "image/tiff", headers, head)
        headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
        return self._send(206, data[first:last + 1], "image/tiff", headers, head)
