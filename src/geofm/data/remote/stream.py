"""Read a manifest's COGs in place over HTTPS (``geofm ingest MANIFEST``): URLs + GDAL settings.

GDAL's ``/vsicurl/`` reads only the byte ranges it needs. It gets the same Earthdata
credentials as ``geofm fetch``: a bearer header for a token, or, for a username and
password (environment or netrc), the session cookie of one login made here through the
redirect flow, saved to a private cookie file that GDAL sends with every request.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
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
