"""Read a manifest's COGs in place over HTTPS (``geofm ingest MANIFEST``): URLs + GDAL settings.

GDAL's ``/vsicurl/`` reads only the byte ranges it needs. It gets the same Earthdata
credentials as ``geofm fetch``: a bearer header for a token, or, for a username and
password (environment or netrc), the session cookie of one login made here through the
redirect flow, saved to a private cookie file that GDAL sends with every request.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)


def resolve_inputs(inputs: Sequence[str], bands="prithvi", creds=None,
                   workdir: str | Path | None = None) -> tuple[list[str], dict[str, str]]:
    """Replace each STAC manifest in ``inputs`` by its assets' https URLs; return (inputs, GDAL options).

    The options are empty when no manifest was given. With basic credentials the login
    happens here, once; its cookie file goes to ``workdir`` (default: a new private temp folder).
    """
    from geofm.data.remote import stac
    from geofm.data.remote.earthdata import find_credentials, gdal_env, login_cookies, make_session
    from geofm.data.remote.fetch import plan_downloads
    from geofm.errors import DataError

    out: list[str] = []
    urls: list[str] = []
    for x in inputs:
        if not stac.is_manifest(x):
            out.append(x)
            continue
        todo, missing = plan_downloads(stac.read_manifest(x), ".", bands)
        for iid, key in missing:
            log.warning("manifest '%s': item %s has no asset %s", x, iid, key)
        if not todo:
            raise DataError(f"manifest '{x}' holds no granule with the requested band files (is the search empty?)")
        urls += [d.url for d in todo]
    if not urls:
        return out, {}
    creds = creds if creds is not None else find_credentials()
    cookie_file = None
    if creds.username and not creds.token:
        workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="geofm-login-"))
        cookie_file = str(login_cookies(make_session(creds), urls[0], workdir / "cookies.txt"))
    log.info("%d COG(s) streamed over HTTPS; Earthdata credentials: %s", len(urls), creds.source)
    return out + urls, gdal_env(creds, cookie_file)


class WorkerGdalOptions:
    """The GDAL options of a streamed ingest, for the Dask workers that read the COGs.

    Workers of a LocalCluster inherit the environment, but those of an external cluster
    (``--scheduler``) were started before the ingest and on other machines: each task sets
    these options in its worker for as long as it runs (:meth:`applied`). The cookie jar of a
    username/password login travels as its text and becomes a private file on the worker.
    The repr names the options, never their values (Dask logs the arguments of failed tasks).
    """

    _lock = threading.Lock()
    _active: dict = {"key": None, "users": 0, "old": {}, "dir": None}

    def __init__(self, env: dict[str, str]):
        self.env = {k: v for k, v in env.items() if k not in ("GDAL_HTTP_COOKIEFILE", "GDAL_HTTP_COOKIEJAR")}
        cookie_file = env.get("GDAL_HTTP_COOKIEFILE")
        self.cookies = Path(cookie_file).read_text() if cookie_file else None

    def __repr__(self) -> str:
        return f"WorkerGdalOptions({sorted(self.env)}{', cookies' if self.cookies else ''})"

    def _key(self) -> tuple:
        return tuple(sorted(self.env.items())), self.cookies

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Set the options in this process's environment (GDAL reads them from there) while the block runs.

        Tasks of one ingest running at once in one worker share the setting; the last one to end
        restores the environment and removes the cookie file. Another ingest's credentials at the
        same time in the same worker are refused (:class:`~geofm.errors.DataError`).
        """
        from geofm.errors import DataError

        state = WorkerGdalOptions._active
        with WorkerGdalOptions._lock:
            if state["users"] and state["key"] != self._key():
                raise DataError("this Dask worker is streaming another ingest's COGs with other credentials: "
                                "run one streamed ingest at a time on a cluster")
            if not state["users"]:
                env = dict(self.env)
                if self.cookies is not None:
                    state["dir"] = tempfile.mkdtemp(prefix="geofm-login-")  # mode 0700
                    jar = Path(state["dir"]) / "cookies.txt"
                    jar.touch(mode=0o600)
                    jar.write_text(self.cookies)
                    env["GDAL_HTTP_COOKIEFILE"] = env["GDAL_HTTP_COOKIEJAR"] = str(jar)
                state["old"] = apply_gdal_env(env)
                state["key"] = self._key()
            state["users"] += 1
        try:
            yield
        finally:
            with WorkerGdalOptions._lock:
                state["users"] -= 1
                if not state["users"]:
                    restore_env(state["old"])
                    if state["dir"]:
                        shutil.rmtree(state["dir"], ignore_errors=True)
                    state.update(key=None, old={}, dir=None)


def apply_gdal_env(env: dict[str, str]) -> dict[str, str | None]:
    """Set GDAL options in ``os.environ`` (seen by this process and the Dask workers it starts).

    Returns the previous values, for :func:`restore_env`.
    """
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    return old


def restore_env(old: dict[str, str | None]) -> None:
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
