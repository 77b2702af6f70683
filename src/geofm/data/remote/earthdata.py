"""Earthdata Login, and the HTTP sessions geofm uses: every retry and every credential is here.

Credentials are looked up the way users already have them, first found wins:

1. ``EARTHDATA_TOKEN``: a bearer token (generated on the login host's "Generate Token"
   page). It is sent to the host of each requested URL only; requests strips it when a
   redirect leads to another host (e.g. a signed S3 URL).
2. ``EARTHDATA_USERNAME`` and ``EARTHDATA_PASSWORD``.
3. ``~/.netrc`` (or the file ``$NETRC`` names), ``machine urs.earthdata.nasa.gov``.

2 and 3 use Earthdata's redirect + cookie flow: the data host redirects an anonymous
request to the login host, which gets the basic credentials (only the login host ever
sees them), redirects back with a code, and the data host sets a session cookie that the
session keeps for every later file. ``EARTHDATA_LOGIN_HOST`` changes the login host
(e.g. ``uat.urs.earthdata.nasa.gov``).

Retries: exponential backoff with jitter on 429/5xx and connection errors, honouring
``Retry-After`` (urllib3 ``Retry``); a :class:`Throttle` keeps a polite interval between
requests. Secrets never appear in logs or messages (:func:`redact`).
"""

from __future__ import annotations

import logging
import netrc
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from geofm.errors import AuthError, ConfigError

log = logging.getLogger(__name__)

DEFAULT_LOGIN_HOST = "urs.earthdata.nasa.gov"
#: HTTP statuses worth retrying: rate limited, and the server's transient failures.
RETRY_STATUS = (429, 500, 502, 503, 504)
HOW_TO_LOGIN = (
    "set EARTHDATA_TOKEN (a token from https://{host}/ -> Generate Token), or EARTHDATA_USERNAME and "
    "EARTHDATA_PASSWORD, or add 'machine {host} login USER password PASS' to ~/.netrc (or the file $NETRC names); "
    "an account is free at https://{host}/users/new")


@dataclass(frozen=True)
class Credentials:
    """Earthdata Login credentials; ``source`` says where they came from (never the secret)."""

    token: str | None = field(default=None, repr=False)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    login_host: str = DEFAULT_LOGIN_HOST
    source: str = "none"

    @property
    def secrets(self) -> tuple[str, ...]:
        """The token and password (those long enough to be told apart from ordinary text)."""
        return tuple(s for s in (self.token, self.password) if s and len(s) >= 4)

    @property
    def how_to_login(self) -> str:
        return HOW_TO_LOGIN.format(host=self.login_host)


def find_credentials(env: Mapping[str, str] | None = None, login_host: str | None = None) -> Credentials:
    """Credentials from ``EARTHDATA_TOKEN``, ``EARTHDATA_USERNAME``/``_PASSWORD`` or netrc (in that order).

    Returns ``Credentials(source="none")`` when nothing is set; public files still download.
    """
    env = os.environ if env is None else env
    host = login_host or env.get("EARTHDATA_LOGIN_HOST") or DEFAULT_LOGIN_HOST
    if env.get("EARTHDATA_TOKEN"):
        return Credentials(token=env["EARTHDATA_TOKEN"].strip(), login_host=host, source="EARTHDATA_TOKEN")
    user, pw = env.get("EARTHDATA_USERNAME"), env.get("EARTHDATA_PASSWORD")
    if user or pw:
        if not (user and pw):
            raise ConfigError("EARTHDATA_USERNAME and EARTHDATA_PASSWORD must be set together; found only "
                              + ("EARTHDATA_USERNAME" if user else "EARTHDATA_PASSWORD"))
        return Credentials(username=user, password=pw, login_host=host, source="EARTHDATA_USERNAME")
    path = Path(env["NETRC"]) if env.get("NETRC") else Path(env.get("HOME", str(Path.home()))) / ".netrc"
    if path.is_file():
        try:
            entry = netrc.netrc(str(path)).authenticators(host)
        except (netrc.NetrcParseError, OSError) as e:
            raise ConfigError(f"cannot read netrc file '{path}': {e}") from e
        if entry and entry[0] and entry[2]:
            return Credentials(username=entry[0], password=entry[2], login_host=host, source=f"netrc '{path}'")
    return Credentials(login_host=host)


def redact(text: str, creds: Credentials | None) -> str:
    """``text`` with every secret of ``creds`` replaced by ``***``."""
    for s in creds.secrets if creds else ():
        text = text.replace(s, "***")
    return text


def retry_policy(retries: int, backoff: float = 0.5, backoff_max: float = 60.0):
    """urllib3 ``Retry``: ``retries`` attempts on connection errors and :data:`RETRY_STATUS`, any method.

    Waits ``backoff * 2**n`` seconds (at most ``backoff_max``) plus up to ``backoff`` s of
    jitter, or what the server's ``Retry-After`` asks for on 429/503.
    """
    from urllib3.util.retry import Retry

    return Retry(total=retries, connect=retries, read=retries, status=retries, redirect=False, other=0,
                 allowed_methods=None, status_forcelist=RETRY_STATUS, backoff_factor=backoff,
                 backoff_max=backoff_max, backoff_jitter=backoff, respect_retry_after_header=True,
                 raise_on_status=False, raise_on_redirect=False)


class Throttle:
    """At least ``min_interval`` seconds between successive calls (thread-safe): a polite request rate."""

    def __init__(self, min_interval: float) -> None:
        self.min_interval = min_interval
        self._last = 0.0
        self._lock = threading.Lock()

    def __call__(self, request=None):
        with self._lock:
            wait = self._last + self.min_interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._last = time.monotonic()
        return request


def _session_class():
    import requests

    class EarthdataSession(requests.Session):
        """A requests session that sends each credential only where it belongs.

        The bearer token goes to the host of the URL asked for; basic credentials go to the
        login host only, including when a redirect leads there. Environment settings
        (``~/.netrc``) are not consulted by requests itself: :func:`find_credentials` did.
        """

        def __init__(self, creds: Credentials) -> None:
            super().__init__()
            self.creds = creds
            self.trust_env = False

        def _is_login_host(self, url: str) -> bool:
            return (urlparse(url).hostname or "").lower() == self.creds.login_host.split(":")[0].lower()

        def prepare_request(self, request):
            p = super().prepare_request(request)
            if self._is_login_host(p.url):
                self._basic(p)
            elif self.creds.token:
                p.headers["Authorization"] = f"Bearer {self.creds.token}"
            return p

        def rebuild_auth(self, prepared_request, response):
            super().rebuild_auth(prepared_request, response)  # drops Authorization when the host changes
            if self._is_login_host(prepared_request.url):
                self._basic(prepared_request)

        def _basic(self, p) -> None:
            if self.creds.username and self.creds.password:
                p.prepare_auth((self.creds.username, self.creds.password))

    return EarthdataSession


def make_session(creds: Credentials | None = None, retries: int = 8, backoff: float = 0.5, pool: int = 8):
    """A ``requests.Session`` with Earthdata auth (:class:`Credentials`) and :func:`retry_policy` retries."""
    from requests.adapters import HTTPAdapter

    s = _session_class()(creds or Credentials())
    adapter = HTTPAdapter(max_retries=retry_policy(retries, backoff), pool_connections=pool, pool_maxsize=pool)
    s.mount("http://", adapter)
    s.mount("https://", adapter)
    s.headers["User-Agent"] = "geofm"
    return s


def check_auth(response, creds: Credentials, what: str) -> None:
    """Raise :class:`AuthError` with how-to-login advice if ``response`` is a 401/403."""
    if response.status_code in (401, 403):
        url = redact(response.url.split("?")[0], creds)
        if creds.source == "none":
            hint = f"no Earthdata credentials found: {creds.how_to_login}"
        else:
            hint = (f"the credentials from {creds.source} were refused (expired token or wrong password?): "
                    f"{creds.how_to_login}")
        raise AuthError(f"{what}: HTTP {response.status_code} from '{url}'; {hint}")


# --------------------------------------------------------------------------- GDAL (streamed reads)
def gdal_env(creds: Credentials, cookie_file: str | None = None, retries: int = 8) -> dict[str, str]:
    """GDAL config options to read COGs over HTTPS with ``creds`` (``/vsicurl/``).

    Token: a bearer header. Basic credentials: a cookie jar from a prior login
    (:func:`login_cookies`), which GDAL sends with every range request.
    """
    env = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.TIF,.tiff",
           "GDAL_HTTP_MAX_RETRY": str(retries), "GDAL_HTTP_RETRY_DELAY": "1",
           "GDAL_HTTP_RETRY_CODES": ",".join(str(s) for s in RETRY_STATUS), "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
           "GDAL_HTTP_MULTIPLEX": "YES", "VSI_CACHE": "TRUE",
           # curl would send netrc passwords along every redirect, to any host: the login is done here instead
           "GDAL_HTTP_NETRC": "NO"}
    if creds.token:
        env["GDAL_HTTP_AUTH"] = "BEARER"
        env["GDAL_HTTP_BEARER"] = creds.token
    if cookie_file:
        env["GDAL_HTTP_COOKIEFILE"] = cookie_file
        env["GDAL_HTTP_COOKIEJAR"] = cookie_file
    return env


def login_cookies(session, url: str, cookie_file: str | Path) -> Path:
    """Log in through the redirect flow by asking for one byte of ``url``; save the cookies (Netscape format).

    The file is created with mode 0600: it holds a session cookie.
    """
    from http.cookiejar import MozillaCookieJar

    from geofm.errors import RemoteError

    with session.get(url, headers={"Range": "bytes=0-0"}, stream=True, timeout=60) as r:
        check_auth(r, session.creds, f"logging in to read '{url}'")
        if r.status_code >= 400:
            raise RemoteError(f"logging in to read '{url}': HTTP {r.status_code}")
    import copy

    jar = MozillaCookieJar(str(cookie_file))
    for c in session.cookies:
        c = copy.copy(c)
        if c.expires is None:  # a session cookie: curl needs a number in the file
            c.expires = int(time.time()) + 12 * 3600
            c.discard = False
        jar.set_cookie(c)
    path = Path(cookie_file)
    path.touch(mode=0o600, exist_ok=True)
    jar.save(ignore_discard=True, ignore_expires=True)
    os.chmod(path, 0o600)
    return path
