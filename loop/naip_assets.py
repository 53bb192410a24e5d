"""Reading NAIP asset pixels over HTTP: sign, map the blob host, read a warped window, retry.

NAIP COGs live in Azure blob storage (``https://{account}.blob.core.windows.net/{container}/...``).
Each read signs the asset href with :func:`planetary_computer.sign` (a SAS token appended as a
query string) and opens it through GDAL ``/vsicurl/``, reading only the blocks that the requested
output window needs (one windowed read per asset and output window, resampled by nearest
neighbour onto the output grid, reprojecting when the asset is in another UTM zone).

``DCLABEL_BLOB_ENDPOINT`` (for example ``http://127.0.0.1:10000``) sends blob reads to another
endpoint in the path-style layout of Azure's own emulator, Azurite:
``https://{account}.blob.core.windows.net/{container}/{blob}?{sas}`` is read from
``{endpoint}/{account}/{container}/{blob}?{sas}``. The SAS query string planetary-computer appended
reaches that endpoint unchanged, so a test server can check tokens and answer 403.

Failures: 403 (expired or revoked SAS token) re-signs and retries at once; 5xx, timeouts and
dropped connections retry with exponential backoff; anything else raises
:class:`loop.errors.NaipError`.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qs, urlparse

import numpy as np
import planetary_computer
import rasterio
import requests
from affine import Affine
from planetary_computer import sas as pc_sas
from planetary_computer.settings import Settings
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.errors import RasterioError
from rasterio.windows import Window
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from loop.errors import NaipError

BLOB_DOMAIN = ".blob.core.windows.net"
BLOB_ENDPOINT_ENV = "DCLABEL_BLOB_ENDPOINT"
HTTP_TIMEOUT_ENV = "DCLABEL_HTTP_TIMEOUT"
CONNECT_TIMEOUT_S = 15.0


def http_timeout() -> float:
    """Seconds to wait for each answer of the STAC API, the token endpoint and blob storage:
    ``DCLABEL_HTTP_TIMEOUT``, default 60 (a server that never answers fails, never hangs)."""
    value = os.environ.get(HTTP_TIMEOUT_ENV, "").strip()
    try:
        seconds = float(value) if value else 60.0
    except ValueError:
        raise NaipError(f"{HTTP_TIMEOUT_ENV}={value!r} is not a number of seconds; unset it or give e.g. 120") from None
    if not seconds > 0:
        raise NaipError(f"{HTTP_TIMEOUT_ENV}={value!r}: the timeout must be a positive number of seconds")
    return seconds

# GDAL HTTP settings for every asset read. Retries are ours (GDAL_HTTP_MAX_RETRY=0) so that a 403
# can re-sign; directory listing is off (a COG is one file).
GDAL_HTTP_OPTIONS = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MAX_RETRY": "0",
    "GDAL_HTTP_CONNECTTIMEOUT": str(int(CONNECT_TIMEOUT_S)),
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "VSI_CACHE": "FALSE",
}

_STATUS = re.compile(r"HTTP (?:response|error) code\s*:?\s*(\d{3})", re.IGNORECASE)
_CONNECTION = re.compile(
    r"curl error|could(?:n'?t| not) connect|connection (?:reset|refused|timed out)|recv failure|send failure|"
    r"timed out|timeout|empty reply|failed to connect|could not resolve|"
    r"got \d+ bytes, expected \d+",  # a response cut off mid-way
    re.IGNORECASE,
)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently transient HTTP failures are retried.

    Attributes:
        attempts: Tries per read (and per STAC request) before giving up.
        backoff_s: First wait; doubles after each failure.
        max_backoff_s: Cap on one wait.
    """

    attempts: int = 5
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError(f"RetryPolicy expects attempts >= 1 and waits >= 0, found {self}")

    def delay(self, failure: int) -> float:
        """Seconds to wait after the ``failure``-th (0-based) failure."""
        return min(self.max_backoff_s, self.backoff_s * 2**failure)


DEFAULT_RETRY = RetryPolicy()


@dataclass(frozen=True)
class OutputGrid:
    """The pixel grid a download is written on.

    Attributes:
        crs: Output CRS (UTM zone of the area's centre).
        transform: Affine transform of the output's top-left pixel.
        width: Columns.
        height: Rows.
    """

    crs: CRS
    transform: Affine
    width: int
    height: int


def blob_endpoint() -> str | None:
    """The custom blob endpoint from ``DCLABEL_BLOB_ENDPOINT``, or None for Azure itself."""
    value = os.environ.get(BLOB_ENDPOINT_ENV, "").strip()
    return value.rstrip("/") or None


def gdal_path(href: str, endpoint: str | None = None) -> str:
    """The GDAL path of a (signed) asset href, with the blob host mapped onto ``endpoint``.

    Args:
        href: An http(s) URL, possibly carrying a SAS query string.
        endpoint: Path-style blob endpoint replacing ``https://{account}.blob.core.windows.net``.

    Returns:
        ``/vsicurl/`` path GDAL opens.
    """
    parsed = urlparse(href)
    if endpoint and parsed.netloc.endswith(BLOB_DOMAIN):
        account = parsed.netloc[: -len(BLOB_DOMAIN)]
        href = f"{endpoint}/{account}{parsed.path}" + (f"?{parsed.query}" if parsed.query else "")
    return f"/vsicurl/{href}"


def http_status(exc: BaseException) -> int | None:
    """HTTP status named in a GDAL/rasterio error message or its causes (rasterio often says only
    "Read failed. See previous exception"); 0 for a dropped or cut-off connection."""
    chain, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        chain.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    text = " | ".join(chain)
    match = _STATUS.search(text)
    if match:
        return int(match.group(1))
    if _CONNECTION.search(text):
        return 0
    return None


def _is_transient(status: int | None) -> bool:
    return status is not None and (status == 0 or status == 429 or 500 <= status <= 599)


def _blob_container(href: str) -> tuple[str, str] | None:
    """(account, container) of an Azure blob href, None for other hosts."""
    parsed = urlparse(href)
    if not parsed.netloc.endswith(BLOB_DOMAIN):
        return None
    return parsed.netloc[: -len(BLOB_DOMAIN)], parsed.path.lstrip("/").split("/", 1)[0]


def _token(href: str, policy: RetryPolicy):
    """The SAS token of the href's container (a ``planetary_computer.sas.SASToken``), or None for an
    href that is not an unsigned Azure blob.

    Fetched like the SDK does (same endpoint, subscription key, cache and refresh below a minute
    left) but with our timeout and retries: the SDK's own request has no timeout (a silent token
    endpoint hangs for ever) and retries 10 times with waits up to 2 minutes. A token just
    fetched is used as it is, even if already expired: the blob read's 403 then re-signs.
    """
    container = _blob_container(href)
    if container is None or {"st", "se", "sp"} & set(parse_qs(urlparse(href).query)):
        return None
    settings = Settings.get()
    url = f"{settings.sas_url}/{container[0]}/{container[1]}"
    token = pc_sas.TOKEN_CACHE.get(url)
    if token is not None and token.ttl() >= 60:
        return token
    retry = Retry(total=policy.attempts - 1, read=1, backoff_factor=policy.backoff_s,
                  backoff_max=policy.max_backoff_s, status_forcelist=(429, 500, 502, 503, 504))
    with requests.Session() as session:
        session.mount("http://", HTTPAdapter(max_retries=retry))
        session.mount("https://", HTTPAdapter(max_retries=retry))
        headers = {"Ocp-Apim-Subscription-Key": settings.subscription_key} if settings.subscription_key else None
        response = session.get(url, headers=headers, timeout=(CONNECT_TIMEOUT_S, http_timeout()))
        response.raise_for_status()
        token = pc_sas.SASToken(**response.json())
    pc_sas.TOKEN_CACHE[url] = token
    return token


def _forget_token(href: str) -> None:
    """Drop planetary-computer's cached token for the href's container (server revoked it)."""
    container = _blob_container(href)
    if container is not None:
        pc_sas.TOKEN_CACHE.pop(f"{Settings.get().sas_url}/{container[0]}/{container[1]}", None)


def sign_href(href: str, policy: RetryPolicy = DEFAULT_RETRY) -> str:
    """Sign an asset href with planetary-computer, turning token-endpoint failures into NaipError.

    Raises:
        NaipError: The SAS token endpoint cannot be reached or refuses.
    """
    try:
        token = _token(href, policy)
        return token.sign(href).href if token is not None else planetary_computer.sign(href)
    except (requests.RequestException, ValueError) as exc:
        raise NaipError(
            f"could not get a SAS token to read {href} from {Settings.get().sas_url} ({exc}); "
            "check the network, or set PC_SDK_SUBSCRIPTION_KEY if the Planetary Computer "
            "throttles anonymous requests (PC_SDK_SAS_URL overrides the token endpoint)"
        ) from exc


def _source_pixels(grid: OutputGrid, window: Window, src_crs: CRS, src_transform: Affine,
                   src_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest source (row, col) of every output pixel centre in ``window``, and which are inside."""
    row_off, col_off = int(window.row_off), int(window.col_off)
    cols, rows = np.meshgrid(np.arange(int(window.width)) + col_off + 0.5,
                             np.arange(int(window.height)) + row_off + 0.5)
    xs, ys = grid.transform @ (cols, rows)
    if CRS.from_user_input(src_crs) != grid.crs:
        xs, ys = Transformer.from_crs(grid.crs, src_crs, always_xy=True).transform(xs, ys)
    src_cols, src_rows = ~src_transform @ (xs, ys)
    src_rows = np.floor(src_rows).astype(np.int64)
    src_cols = np.floor(src_cols).astype(np.int64)
    inside = (src_rows >= 0) & (src_rows < src_shape[0]) & (src_cols >= 0) & (src_cols < src_shape[1])
    return src_rows, src_cols, inside


def _read_nearest(src, grid: OutputGrid, window: Window) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-neighbour resample of ``src`` onto one window of the grid, reading one window."""
    rows, cols, inside = _source_pixels(grid, window, src.crs, src.transform,
                                        (src.height, src.width))
    image = np.zeros((4, int(window.height), int(window.width)), dtype=np.uint8)
    if not inside.any():
        return image, inside
    r0, r1 = int(rows[inside].min()), int(rows[inside].max())
    c0, c1 = int(cols[inside].min()), int(cols[inside].max())
    block = src.read([1, 2, 3, 4], window=Window(c0, r0, c1 - c0 + 1, r1 - r0 + 1))
    image[:, inside] = block[:, rows[inside] - r0, cols[inside] - c0]
    return image, inside


def read_asset_window(href: str, grid: OutputGrid, window: Window,
                      policy: RetryPolicy = DEFAULT_RETRY,
                      on_retry: Callable[[str, int | None, int], None] | None = None,
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Read one window of the output grid from one asset, fetching only the blocks it needs.

    Output pixels take the value of the source pixel under their centre (nearest neighbour), so
    on the asset's own grid the values are copied unchanged; in another CRS they are reprojected.

    Args:
        href: Unsigned asset href (it is signed, and re-signed after a 403, here).
        grid: The output grid.
        window: Window of ``grid`` to fill.
        policy: Retry policy for transient failures.
        on_retry: Called as ``on_retry(reason, status, attempt)`` before each retry.

    Returns:
        ``(image, valid)``: uint8 (4, h, w) pixels (zero outside the asset) and a bool (h, w)
        mask of pixels the asset covers.

    Raises:
        NaipError: The asset cannot be read (not found, not a 4-band raster, or still failing
            after ``policy.attempts`` tries).
    """
    endpoint = blob_endpoint()
    prefix = gdal_path(href, endpoint).split("?", 1)[0]
    options = {**GDAL_HTTP_OPTIONS, "GDAL_HTTP_TIMEOUT": str(max(1, round(http_timeout()))),
               "CPL_VSIL_CURL_NON_CACHED": prefix}
    failures = 0
    last: BaseException | None = None
    previous_signed = None
    for attempt in range(policy.attempts):
        signed = sign_href(href, policy)
        if signed == previous_signed:
            # The server rejected a token the SDK still holds as valid (revoked early):
            # forget it so the next signing asks the token endpoint again.
            _forget_token(href)
            signed = sign_href(href, policy)
        try:
            with rasterio.Env(**options), rasterio.open(gdal_path(signed, endpoint)) as src:
                if src.count < 4 or src.crs is None:
                    raise NaipError(f"NAIP asset {href} has {src.count} bands and CRS {src.crs}; "
                                    "expected 4 bands (red, green, blue, NIR) with a CRS: the "
                                    "catalogue entry is not NAIP imagery")
                return _read_nearest(src, grid, window)
        except RasterioError as exc:
            last = exc
            status = http_status(exc)
            if status == 403:
                previous_signed = signed
                if on_retry:
                    on_retry("expired token, re-signing", status, attempt + 1)
                continue
            if not _is_transient(status):
                raise NaipError(
                    f"could not read NAIP asset {href} (HTTP status {status}): {exc}; "
                    "the asset may have moved: search again, or report the item id"
                ) from exc
            previous_signed = None
            if attempt + 1 < policy.attempts:
                if on_retry:
                    on_retry("transient HTTP failure, backing off", status, attempt + 1)
                time.sleep(policy.delay(failures))
                failures += 1
    raise NaipError(
        f"gave up reading NAIP asset {href} after {policy.attempts} attempts (last error: {last}); "
        "the network or the blob storage is failing: try again later"
    )
