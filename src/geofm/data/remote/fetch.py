"""Download the band files of a STAC manifest, resumably, over HTTPS (Earthdata Login) or S3.

Each asset is written to ``DIR/<granule id>/<file name>``: bytes go to ``NAME.part``; an
interrupted download resumes with a ``Range`` request; the length is checked against
``Content-Length`` (or ``Content-Range``) and only then is the file renamed to its name.
A file that exists under its final name is therefore complete, and is skipped: a rerun
after any interruption (even ``kill -9``) downloads only what is missing.

A 200 answer whose body is an HTML page (a login or EULA page) is an error, never a
``.tif``; 401/403 stops the whole fetch with a message that says how to log in. Every
outcome is appended to ``DIR/fetch-log.jsonl`` (one JSON object per asset).

``access="s3"`` (in-region, us-west-2) reads ``s3://`` objects with temporary credentials
from LP DAAC's ``/s3credentials`` endpoint, refreshed before they expire.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from geofm.bands import L30_BANDS, MODEL_BANDS, S30_BANDS
from geofm.data.remote.earthdata import Credentials, check_auth, find_credentials, make_session, redact
from geofm.errors import AuthError, ConfigError, DataError, RemoteError

log = logging.getLogger(__name__)

#: The six model bands of each HLS collection, plus Fmask.
PRITHVI_ASSETS: dict[str, tuple[str, ...]] = {
    "HLSS30": (*(S30_BANDS[b] for b in MODEL_BANDS), "Fmask"),
    "HLSL30": (*(L30_BANDS[b] for b in MODEL_BANDS), "Fmask"),
}
DEFAULT_S3_CREDENTIALS_URL = "https://data.lpdaac.earthdatacloud.nasa.gov/s3credentials"
LOG_NAME = "fetch-log.jsonl"
CHUNK = 1 << 20
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


class PermanentError(RemoteError):
    """A download failure that retrying will not fix (missing file, HTML page instead of data)."""


class NotDataError(PermanentError):
    """The server answered a web page (login, EULA, error page) where a data file was expected."""


@dataclass(frozen=True)
class Download:
    item_id: str
    asset: str
    url: str
    path: Path


@dataclass
class FetchResult:
    downloaded: list[Download] = field(default_factory=list)
    skipped: list[Download] = field(default_factory=list)  # already complete
    failed: list[tuple[Download, str]] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0


def product_of(item: dict) -> str:
    """``HLSS30`` or ``HLSL30`` from an item's collection or id."""
    coll = str(item.get("collection", ""))
    for p in PRITHVI_ASSETS:
        if coll.upper().startswith(p):
            return p
    iid = item["id"]
    if iid.startswith("HLS.S30."):
        return "HLSS30"
    if iid.startswith("HLS.L30."):
        return "HLSL30"
    raise DataError(f"item '{iid}' is not an HLS granule (collection {coll!r}): give --bands explicitly")


def parse_bands(spec: str) -> str | tuple[str, ...]:
    """``prithvi`` or a comma-separated list of asset keys (``B02,B8A,Fmask``)."""
    spec = spec.strip()
    if spec.lower() == "prithvi":
        return "prithvi"
    keys = tuple(k.strip() for k in spec.split(",") if k.strip())
    if not keys:
        raise ConfigError(f"--bands '{spec}': expected 'prithvi' or asset keys such as B02,B03,Fmask")
    return keys


def plan_downloads(items: Sequence[dict], out_dir: str | Path, bands: str | Sequence[str] = "prithvi",
                   access: str = "https") -> tuple[list[Download], list[tuple[str, str]]]:
    """The downloads for ``items``: only the requested assets. Returns (downloads, missing (item, asset))."""
    out = Path(out_dir)
    todo, missing = [], []
    for it in items:
        keys = PRITHVI_ASSETS[product_of(it)] if bands == "prithvi" else tuple(bands)
        for k in keys:
            a = it["assets"].get(k)
            if a is None:
                missing.append((it["id"], k))
                continue
            url = asset_url(a, access)
            name = urlparse(url).path.rsplit("/", 1)[-1]
            if not name or name in (".", "..") or "\\" in name or "/" in it["id"]:
                raise DataError(f"asset {k} of item '{it['id']}' has no usable file name in '{url}'")
            todo.append(Download(it["id"], k, url, out / it["id"] / name))
    return todo, missing


def asset_url(asset: dict, access: str) -> str:
    """The asset's https href, or for ``access="s3"`` its ``alternate.s3`` href (else derived from the path)."""
    href = asset["href"]
    if access != "s3" or href.startswith("s3://"):
        return href
    alt = ((asset.get("alternate") or {}).get("s3") or {}).get("href")
    if alt:
        return alt
    p = urlparse(href)
    return f"s3://{p.path.lstrip('/')}"  # LP DAAC: https://HOST/BUCKET/KEY <-> s3://BUCKET/KEY


# --------------------------------------------------------------------------- sources
@dataclass
class _Body:
    start: int  # byte offset of the first chunk (0 when the server ignored the Range)
    total: int | None  # full length of the file, if the server said
    chunks: Iterator[bytes]
    content_type: str = ""


class HttpSource:
    """HTTPS (Earthdata Login) reads: one session per thread, one cookie jar for all (one login serves all)."""

    def __init__(self, creds: Credentials, retries: int = 8, backoff: float = 0.5, timeout: float = 60.0) -> None:
        from requests.cookies import RequestsCookieJar

        self.creds, self.retries, self.backoff, self.timeout = creds, retries, backoff, timeout
        self._local = threading.local()
        self._cookies = RequestsCookieJar()  # http.cookiejar locks around every access

    def session(self):
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = make_session(self.creds, self.retries, self.backoff)
            s.cookies = self._cookies
        return s

    @contextlib.contextmanager
    def open(self, url: str, offset: int) -> Iterator[_Body]:
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        r = self.session().get(url, headers=headers, stream=True, timeout=self.timeout)
        try:
            name = url.rsplit("/", 1)[-1]
            check_auth(r, self.creds, f"downloading '{name}'")
            if r.status_code == 200 and self.session()._is_login_host(r.url):
                # the login host answered its sign-in page: no (or unusable) credentials
                raise AuthError(f"downloading '{name}': redirected to the Earthdata sign-in page at "
                                f"'{r.url.split('?')[0]}'; {self.creds.how_to_login}")
            if r.status_code == 416 and offset:  # asked past the end: the .part may already be whole
                yield _Body(offset, _content_range_total(r.headers.get("Content-Range")), iter(()))
                return
            if r.status_code == 404:
                raise PermanentError(f"'{_clean(url, self.creds)}' does not exist (HTTP 404)")
            if r.status_code >= 400:
                raise PermanentError(f"'{_clean(url, self.creds)}': HTTP {r.status_code} after {self.retries} retries")
            if r.status_code == 206:
                start, total = _content_range(r.headers.get("Content-Range"), url)
            else:
                start, total = 0, _int(r.headers.get("Content-Length"))
            yield _Body(start, total, _read1_chunks(r.raw), r.headers.get("Content-Type", ""))
        finally:
            r.close()


def _read1_chunks(raw) -> Iterator[bytes]:
    """The body as it arrives (``read1``): when the connection drops, every byte received is already
    written to ``.part``, so the retry resumes exactly there."""
    while True:
        chunk = raw.read1(CHUNK)
        if not chunk:
            return
        yield chunk


class S3Source:
    """``s3://`` reads with LP DAAC temporary credentials, fetched from ``credentials_url`` and refreshed.

    The credentials (``accessKeyId``, ``secretAccessKey``, ``sessionToken``, ``expiration``)
    last an hour; they are renewed ``refresh_margin`` seconds before they expire.
    """

    def __init__(self, http: HttpSource, credentials_url: str = DEFAULT_S3_CREDENTIALS_URL,
                 endpoint_url: str | None = None, region: str = "us-west-2", refresh_margin: float = 300.0) -> None:
        self.http, self.credentials_url, self.endpoint_url = http, credentials_url, endpoint_url
        self.region, self.refresh_margin = region, refresh_margin
        self._lock = threading.Lock()
        self._client = None
        self._expires = 0.0
        self.refreshes = 0

    def client(self):
        with self._lock:
            if self._client is None or time.time() > self._expires - self.refresh_margin:
                self._client = self._new_client()
            return self._client

    def _new_client(self):
        import botocore.config
        import botocore.session

        s = self.http.session()
        r = s.get(self.credentials_url, timeout=self.http.timeout)
        check_auth(r, self.http.creds, "getting S3 credentials")
        if r.status_code != 200:
            raise RemoteError(f"'{self.credentials_url}' answered HTTP {r.status_code}, expected S3 credentials")
        try:
            c = r.json()
            key, secret, token = c["accessKeyId"], c["secretAccessKey"], c["sessionToken"]
            expires = dt.datetime.fromisoformat(c["expiration"].replace("Z", "+00:00"))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise RemoteError(f"'{self.credentials_url}' did not return S3 credentials "
                              f"(accessKeyId, secretAccessKey, sessionToken, expiration): {e!r}") from e
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=dt.timezone.utc)
        self._expires = expires.timestamp()
        self.refreshes += 1
        log.info("S3 credentials from %s, valid until %s", self.credentials_url, expires.isoformat())
        cfg = botocore.config.Config(retries={"max_attempts": self.http.retries, "mode": "standard"},
                                     max_pool_connections=16)
        return botocore.session.get_session().create_client(
            "s3", region_name=self.region, endpoint_url=self.endpoint_url, aws_access_key_id=key,
            aws_secret_access_key=secret, aws_session_token=token, config=cfg)

    @contextlib.contextmanager
    def open(self, url: str, offset: int) -> Iterator[_Body]:
        from botocore.exceptions import ClientError

        p = urlparse(url)
        kw = {"Bucket": p.netloc, "Key": p.path.lstrip("/")}
        if offset:
            kw["Range"] = f"bytes={offset}-"
        try:
            resp = self.client().get_object(**kw)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "")
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in ("InvalidRange",) or status == 416:
                yield _Body(offset, None, iter(()))
                return
            if code in ("NoSuchKey", "NoSuchBucket", "404"):
                raise PermanentError(f"'{url}' does not exist ({code})") from e
            if code in ("AccessDenied", "ExpiredToken", "InvalidAccessKeyId", "403"):
                raise AuthError(f"'{url}': S3 refused the temporary credentials from '{self.credentials_url}' "
                                f"({code}); --access s3 works only in AWS us-west-2; use --access https elsewhere")
            raise PermanentError(f"'{url}': S3 answered {code or status} after {self.http.retries} retries") from e
        body = resp["Body"]
        try:
            if "ContentRange" in resp:
                start, total = _content_range(resp["ContentRange"], url)
            else:
                start, total = 0, int(resp["ContentLength"])
            yield _Body(start, total, body.iter_chunks(CHUNK), resp.get("ContentType", ""))
        finally:
            body.close()


def _int(v: str | None) -> int | None:
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


def _content_range(v: str | None, url: str) -> tuple[int, int | None]:
    """``bytes START-END/TOTAL`` -> (START, TOTAL or None)."""
    try:
        unit, rest = v.split(" ", 1)
        span, total = rest.split("/")
        return int(span.split("-")[0]), (None if total == "*" else int(total))
    except (AttributeError, ValueError):
        raise RemoteError(f"'{url}': partial answer with an unreadable Content-Range {v!r}") from None


def _content_range_total(v: str | None) -> int | None:
    try:
        return int(v.rsplit("/", 1)[1])
    except (AttributeError, ValueError, IndexError):
        return None


def _clean(url: str, creds: Credentials) -> str:
    return redact(url.split("?")[0], creds)


# --------------------------------------------------------------------------- one file
class _Incomplete(RemoteError):
    """The body ended before the announced length (retried with a Range request)."""


def download_one(d: Download, source, retries: int = 8, backoff: float = 0.5,
                 progress: Callable[[int], None] | None = None, on_size: Callable[[int], None] | None = None,
                 stop: threading.Event | None = None) -> int:
    """Download ``d`` to ``d.path`` through ``NAME.part`` (resumed with Range); returns the bytes transferred.

    Connection drops and short bodies are retried up to ``retries`` times with backoff and
    jitter, each time from the bytes already on disk. Raises :class:`PermanentError`,
    :class:`AuthError` or :class:`RemoteError` (retries exhausted); the ``.part`` file of
    an HTML answer is removed, other ``.part`` files are kept for the next run.
    """
    import requests
    import urllib3.exceptions

    transient = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
                 urllib3.exceptions.HTTPError, _Incomplete, ConnectionError, TimeoutError)
    try:
        import botocore.exceptions

        transient += (botocore.exceptions.ConnectionError, botocore.exceptions.ReadTimeoutError,
                      botocore.exceptions.IncompleteReadError, botocore.exceptions.ResponseStreamingError)
    except ImportError:  # pragma: no cover - botocore comes with s3fs
        pass
    part = d.path.with_name(d.path.name + ".part")
    part.parent.mkdir(parents=True, exist_ok=True)
    moved, sized, attempt = 0, False, 0
    while True:
        if stop is not None and stop.is_set():
            raise RemoteError("stopped before completion")
        offset = part.stat().st_size if part.exists() else 0
        try:
            with source.open(d.url, offset) as body:
                if body.start != offset:
                    if body.start != 0:
                        raise RemoteError(f"'{d.url}': asked for bytes from {offset}, got bytes from {body.start}")
                    offset = 0  # the server ignored the Range: start over
                if body.total is not None and not sized and on_size:
                    on_size(body.total - offset)
                    sized = True
                if "text/html" in body.content_type.lower():
                    raise NotDataError(f"'{d.url}' answered an HTML page (login or EULA?), not a data file")
                with open(part, "r+b" if offset else "wb", buffering=0) as f:  # on disk as it arrives
                    f.seek(offset)
                    f.truncate()
                    first = offset == 0
                    for chunk in body.chunks:
                        if first and chunk:
                            _check_first_bytes(chunk, d)
                            first = False
                        f.write(chunk)
                        moved += len(chunk)
                        if progress:
                            progress(len(chunk))
                size = part.stat().st_size
                if body.total is not None and size != body.total:
                    raise _Incomplete(f"'{d.path.name}': {size} of {body.total} bytes")
                if body.total is None and size == 0:
                    raise _Incomplete(f"'{d.path.name}': empty answer")
            os.replace(part, d.path)
            return moved
        except NotDataError:
            part.unlink(missing_ok=True)  # never leave a login page where a .tif is expected
            raise
        except transient as e:
            if isinstance(e, requests.ConnectionError) and e.args and \
                    isinstance(e.args[0], urllib3.exceptions.MaxRetryError):
                # the session already retried the connection with backoff: do not multiply its retries
                raise RemoteError(f"'{d.path.name}': {e}") from e
            attempt += 1
            if attempt > retries:
                raise RemoteError(f"'{d.path.name}': gave up after {retries} retries: {e}") from e
            wait = min(backoff * 2 ** (attempt - 1), 30.0) + random.uniform(0, backoff)
            log.info("%s: %s; retry %d/%d in %.1f s (resuming at byte %d)", d.path.name, e, attempt, retries, wait,
                     part.stat().st_size if part.exists() else 0)
            time.sleep(wait)


def _check_first_bytes(chunk: bytes, d: Download) -> None:
    head = chunk[:512].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml")) or b"<html" in head[:200]:
        raise NotDataError(f"'{d.url}' answered an HTML page (login or EULA?), not a data file")
    if d.path.suffix.lower() in (".tif", ".tiff") and chunk[:4] not in _TIFF_MAGIC and len(chunk) >= 4:
        raise NotDataError(f"'{d.url}' is not a GeoTIFF (first bytes {chunk[:8]!r})")


# --------------------------------------------------------------------------- many files
def fetch(items: Sequence[dict], out_dir: str | Path, *, bands: str | Sequence[str] = "prithvi", workers: int = 4,
          retries: int = 8, backoff: float = 0.5, access: str = "https", creds: Credentials | None = None,
          s3_credentials_url: str = DEFAULT_S3_CREDENTIALS_URL, s3_endpoint_url: str | None = None,
          progress: Callable[[int], None] | None = None, on_size: Callable[[int], None] | None = None) -> FetchResult:
    """Download the requested assets of ``items`` into ``out_dir`` (see the module docstring).

    Returns a :class:`FetchResult`; failed assets are listed in it (and in the JSONL log).
    Raises :class:`AuthError` when the server refuses the credentials (nothing more is tried).
    """
    if access not in ("https", "s3"):
        raise ConfigError(f"--access '{access}': expected https or s3")
    if workers < 1:
        raise ConfigError(f"--workers {workers}: expected at least 1")
    t0 = time.perf_counter()
    creds = creds if creds is not None else find_credentials()
    log.info("Earthdata credentials: %s", creds.source)
    todo, missing = plan_downloads(items, out_dir, bands, access)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = FetchResult()
    http = HttpSource(creds, retries, backoff)
    source = S3Source(http, s3_credentials_url, s3_endpoint_url) if access == "s3" else http
    lock = threading.Lock()
    stop = threading.Event()
    auth_error: list[AuthError] = []
    log_file = open(out / LOG_NAME, "a", encoding="utf-8")

    def record(d: Download | None, status: str, **extra) -> None:
        row = {"time": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "status": status}
        if d is not None:
            row.update(item=d.item_id, asset=d.asset, url=_clean(d.url, creds), path=str(d.path))
        row.update(extra)
        with lock:
            log_file.write(json.dumps(row) + "\n")
            log_file.flush()

    for iid, key in missing:
        msg = f"item '{iid}' has no asset '{key}'"
        res.failed.append((Download(iid, key, "", out / iid), msg))
        record(None, "failed", item=iid, asset=key, error=msg)

    def one(d: Download) -> None:
        if d.path.exists():
            with lock:
                res.skipped.append(d)
            record(d, "skipped", bytes=d.path.stat().st_size)
            return
        if stop.is_set():
            with lock:
                res.failed.append((d, "not started: the fetch stopped on an authentication error"))
            record(d, "failed", error="not started")
            return
        t = time.perf_counter()
        try:
            n = download_one(d, source, retries, backoff, progress, on_size, stop)
        except AuthError as e:
            stop.set()
            msg = redact(str(e), creds)
            with lock:
                auth_error.append(AuthError(msg))
                res.failed.append((d, msg))
            record(d, "failed", error=msg)
            return
        except (RemoteError, OSError) as e:
            msg = redact(str(e), creds)
            log.warning("%s failed: %s", d.path.name, msg)
            with lock:
                res.failed.append((d, msg))
            record(d, "failed", error=msg, seconds=round(time.perf_counter() - t, 3))
            return
        with lock:
            res.downloaded.append(d)
            res.bytes += n
        record(d, "done", bytes=d.path.stat().st_size, transferred=n, seconds=round(time.perf_counter() - t, 3))

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(one, todo))
    finally:
        log_file.close()
    res.seconds = time.perf_counter() - t0
    if auth_error:
        raise auth_error[0]
    return res
