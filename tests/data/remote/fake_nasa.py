"""A real HTTP server on 127.0.0.1 that plays NASA's CMR-STAC, the LP DAAC file server and Earthdata Login.

One werkzeug app, served from a thread, answers three roles:

* CMR-STAC at ``/stac/LPCLOUD``: landing page, conformance, GET/POST ``/search`` with
  collections, bbox, datetime and ``query`` on ``eo:cloud_cover``; pages clamped to
  ``page_size`` with a GET ``next`` link carrying a cursor, ``context`` and ``numberMatched``.
* LP DAAC files at ``/lp-prod-protected/...``: a bearer token or the session cookie is
  required; without them the answer is a redirect to the login host. ``Range`` is honoured.
  ``/s3credentials`` hands out temporary S3 keys to authenticated users.
* Earthdata Login at ``/oauth/authorize``, reached as ``localhost`` (another host name than
  the data host ``127.0.0.1``): basic credentials, then a redirect back with a code that the
  data host trades for a cookie.

``faults`` switches on the failures of the real services (see :class:`FakeNasa`). Every request
is recorded so that tests can check which host saw which credential.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import secrets
import threading
import time
import uuid
from collections import defaultdict
from urllib.parse import urlencode

from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

BUCKET = "lp-prod-protected"
CONFORMANCE = ["https://api.stacspec.org/v1.0.0/core", "https://api.stacspec.org/v1.0.0/item-search",
               "https://api.stacspec.org/v1.0.0-rc.1/item-search#query", "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
               "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson"]
# The test catalog (filled by conftest.py): tile 10SEG granules, one cloudy, one of another tile.
BBOX_10SEG = [-123.0, 36.95, -121.75, 37.95]
BBOX_11SKA = [-121.9, 36.9, -120.6, 37.9]
S30_DATES = ("2021-05-03", "2021-06-12", "2021-07-22")  # cloud cover 3, 12, 25 %
CLOUDY_ID = "HLS.S30.T10SEG.2021190T184919.v2.0"  # 85 % cloud: only returned when the service ignores the filter
L30_ID = "HLS.L30.T10SEG.2021150T183712.v2.0"
OTHER_TILE_ID = "HLS.S30.T11SKA.2021123T184919.v2.0"
TOKEN = "tok-" + "x" * 20
USER, PASSWORD = "alice", "s3cret-pw"
LOGIN_PAGE = b"<!DOCTYPE html><html><head><title>Earthdata Login</title></head><body>Please log in</body></html>"


class FakeNasa:
    """The server. ``files``: object key (``HLSS30.020/<id>/<name>``) -> bytes; ``items``: STAC items.

    Fault switches (``faults``; counters decrease with each faulty answer):
      search_429 / search_503: the next N search requests answer 429 (Retry-After: 1) / 503;
      ignore_cloud_filter: the search ignores ``query`` (as CMR-STAC once did);
      file_429 / file_503 {name: N}; truncate {name: N}: the body is cut at half with the full
      Content-Length; html {name}: 200 with a login page; missing {name}: 404;
      expired_token: every bearer token is refused (401); slow: bytes per second of file bodies;
      ignore_range: Range headers are ignored; login_page_200: the login host answers an anonymous
      request with its sign-in page and status 200 (as the real one does), not 401.
    """

    def __init__(self, files: dict[str, bytes], items: list[dict], users: dict[str, str] | None = None,
                 tokens: set[str] | None = None, page_size: int = 2, s3_lifetime: float = 3600.0) -> None:
        self.files = files
        self.items = items
        self.users = users or {USER: PASSWORD}
        self.tokens = tokens or {TOKEN}
        self.page_size = page_size
        self.s3_lifetime = s3_lifetime
        self.faults: dict = defaultdict(dict)
        self.faults.update(search_429=0, search_503=0, ignore_cloud_filter=False, expired_token=False, slow=0,
                           ignore_range=False, login_page_200=False)
        self.log: list[dict] = []
        self.codes: dict[str, str] = {}
        self.sessions: set[str] = set()
        self.cursors: dict[str, tuple[list[dict], int, int]] = {}
        self.s3_keys: list[dict] = []
        self._lock = threading.Lock()
        self._server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    # addresses
    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def login_base(self) -> str:
        return f"http://localhost:{self.port}"

    @property
    def stac_url(self) -> str:
        return f"{self.base}/stac/LPCLOUD"

    def file_url(self, key: str) -> str:
        return f"{self.base}/{BUCKET}/{key}"

    def start(self) -> FakeNasa:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def requests_to(self, path_part: str) -> list[dict]:
        return [r for r in self.log if path_part in r["path"]]

    # ------------------------------------------------------------------ app
    def app(self, environ, start_response):
        req = Request(environ)
        auth = req.headers.get("Authorization", "")
        with self._lock:
            self.log.append({"method": req.method, "host": req.host, "path": req.path, "auth": auth.split(" ")[0],
                             "auth_value": auth, "range": req.headers.get("Range"), "cookie": req.headers.get("Cookie")})
        path = req.path
        if path.startswith("/stac/LPCLOUD"):
            resp = self.stac(req, path[len("/stac/LPCLOUD"):].strip("/"))
        elif path == "/oauth/authorize":
            resp = self.authorize(req)
        elif path == "/urs_redirect":
            resp = self.urs_redirect(req)
        elif path == "/s3credentials":
            resp = self.authenticated(req) or self.s3credentials()
        elif path.startswith(f"/{BUCKET}/"):
            resp = self.authenticated(req) or self.serve_file(req, path[len(BUCKET) + 2:])
        else:
            resp = Response("not found", status=404)
        return resp(environ, start_response)

    # ------------------------------------------------------------------ CMR-STAC
    def stac(self, req: Request, sub: str) -> Response:
        base = self.stac_url
        if sub == "":
            return _json({"type": "Catalog", "id": "LPCLOUD", "stac_version": "1.0.0", "description": "fake LPCLOUD",
                          "conformsTo": CONFORMANCE,
                          "links": [{"rel": "self", "href": base, "type": "application/json"},
                                    {"rel": "root", "href": base, "type": "application/json"},
                                    {"rel": "conformance", "href": f"{base}/conformance"},
                                    {"rel": "data", "href": f"{base}/collections"},
                                    {"rel": "search", "href": f"{base}/search", "method": "GET",
                                     "type": "application/geo+json"},
                                    {"rel": "search", "href": f"{base}/search", "method": "POST",
                                     "type": "application/geo+json"}]})
        if sub == "conformance":
            return _json({"conformsTo": CONFORMANCE})
        if sub != "search":
            return _json({"message": "not found"}, 404)
        with self._lock:
            if self.faults["search_429"] > 0:
                self.faults["search_429"] -= 1
                return Response("slow down", status=429, headers={"Retry-After": "1"})
            if self.faults["search_503"] > 0:
                self.faults["search_503"] -= 1
                return Response("unavailable", status=503)
        cursor = req.args.get("cursor")
        if cursor:
            if cursor not in self.cursors:
                return _json({"message": f"bad cursor {cursor}"}, 400)
            matched, offset, limit = self.cursors[cursor]
        else:
            params = req.get_json(silent=True) if req.method == "POST" else _get_params(req.args)
            matched = [it for it in self.items if self._matches(it, params or {})]
            offset, limit = 0, min(int((params or {}).get("limit") or 10), self.page_size)
        page = matched[offset:offset + limit]
        links = [{"rel": "self", "href": f"{base}/search"}, {"rel": "root", "href": base}]
        if offset + limit < len(matched):
            nxt = uuid.uuid4().hex
            self.cursors[nxt] = (matched, offset + limit, limit)
            links.append({"rel": "next", "href": f"{base}/search?{urlencode({'cursor': nxt})}", "method": "GET",
                          "type": "application/geo+json"})
        return _json({"type": "FeatureCollection", "features": page, "links": links, "numberMatched": len(matched),
                      "numberReturned": len(page),
                      "context": {"returned": len(page), "limit": limit, "matched": len(matched)}},
                     headers={"Content-Type": "application/geo+json"})

    def _matches(self, it: dict, p: dict) -> bool:
        colls = p.get("collections")
        if colls and it["collection"] not in colls:
            return False
        if p.get("bbox"):
            w, s, e, n = p["bbox"]
            iw, is_, ie, in_ = it["bbox"]
            if iw > e or ie < w or is_ > n or in_ < s:
                return False
        if p.get("intersects"):
            xs = [c[0] for ring in _rings(p["intersects"]) for c in ring]
            ys = [c[1] for ring in _rings(p["intersects"]) for c in ring]
            iw, is_, ie, in_ = it["bbox"]
            if iw > max(xs) or ie < min(xs) or is_ > max(ys) or in_ < min(ys):
                return False
        if p.get("datetime"):
            a, b = p["datetime"].split("/")
            when = it["properties"]["datetime"]
            if when < a or when > b:
                return False
        q = (p.get("query") or {}).get("eo:cloud_cover")
        if q and not self.faults["ignore_cloud_filter"]:
            cc = it["properties"]["eo:cloud_cover"]
            if ("lte" in q and cc > q["lte"]) or ("lt" in q and cc >= q["lt"]):
                return False
        return True

    # ------------------------------------------------------------------ Earthdata Login
    def authenticated(self, req: Request) -> Response | None:
        """None if the request carries a valid token or session cookie; else the answer to send."""
        auth = req.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            if auth[7:] in self.tokens and not self.faults["expired_token"]:
                return None
            return Response("token expired or invalid", status=401)
        if req.cookies.get("urs_session") in self.sessions:
            return None
        state = req.full_path.rstrip("?")
        q = urlencode({"client_id": "fake", "response_type": "code", "redirect_uri": f"{self.base}/urs_redirect",
                       "state": state})
        return Response("", status=302, headers={"Location": f"{self.login_base}/oauth/authorize?{q}"})

    def authorize(self, req: Request) -> Response:
        if req.host.split(":")[0] != "localhost":
            return Response("login happens on the login host", status=400)
        auth = req.headers.get("Authorization", "")
        if not auth.startswith("Basic "):
            if self.faults["login_page_200"]:  # the real sign-in page answers 200
                return Response(LOGIN_PAGE, status=200, content_type="text/html")
            return Response(LOGIN_PAGE, status=401, headers={"WWW-Authenticate": 'Basic realm="Earthdata Login"'},
                            content_type="text/html")
        user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
        if self.users.get(user) != pw:
            return Response("wrong credentials", status=401)
        code = secrets.token_hex(8)
        self.codes[code] = user
        q = urlencode({"code": code, "state": req.args.get("state", "/")})
        return Response("", status=302, headers={"Location": f"{req.args['redirect_uri']}?{q}"})

    def urs_redirect(self, req: Request) -> Response:
        if req.args.get("code") not in self.codes:
            return Response("bad code", status=401)
        session = secrets.token_hex(8)
        self.sessions.add(session)
        r = Response("", status=302, headers={"Location": f"{self.base}{req.args.get('state', '/')}"})
        r.set_cookie("urs_session", session, httponly=True)
        return r

    def s3credentials(self) -> Response:
        exp = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=self.s3_lifetime)
        key = {"accessKeyId": "ASIA" + secrets.token_hex(6).upper(), "secretAccessKey": secrets.token_hex(16),
               "sessionToken": secrets.token_hex(24), "expiration": exp.strftime("%Y-%m-%d %H:%M:%S+00:00")}
        self.s3_keys.append(key)
        return _json(key)

    # ------------------------------------------------------------------ LP DAAC files
    def serve_file(self, req: Request, key: str) -> Response:
        name = key.rsplit("/", 1)[-1]
        f = self.faults
        with self._lock:
            for fault, status in (("file_429", 429), ("file_503", 503)):
                if f[fault].get(name, 0) > 0:
                    f[fault][name] -= 1
                    return Response("busy", status=status, headers={"Retry-After": "1"} if status == 429 else {})
            if name in f["missing"] or key not in self.files:
                return Response("NoSuchKey", status=404)
            if name in f["html"]:
                return Response(LOGIN_PAGE, status=200, content_type=f["html"][name])
            cut = f["truncate"].get(name, 0) > 0
            if cut:
                f["truncate"][name] -= 1
        data = self.files[key]
        start, end = 0, len(data) - 1
        rng = req.headers.get("Range")
        if rng and not f["ignore_range"]:
            a, _, b = rng.split("=")[1].partition("-")
            start, end = int(a), min(int(b) if b else len(data) - 1, len(data) - 1)
            if start >= len(data):
                return Response("", status=416, headers={"Content-Range": f"bytes */{len(data)}"})
        body = data[start:end + 1]
        headers = {"Content-Length": str(len(body)), "Accept-Ranges": "bytes", "Content-Type": "image/tiff"}
        partial = rng is not None and not f["ignore_range"]
        if partial:
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        if cut:
            headers["Connection"] = "close"
            body = body[:len(body) // 2]
        slow = f["slow"]

        def chunks():
            step = 4096
            for i in range(0, len(body), step):
                if slow:
                    time.sleep(step / slow)
                yield body[i:i + step]

        return Response(chunks(), status=206 if partial else 200, headers=headers, direct_passthrough=True)


def _json(obj, status: int = 200, headers: dict | None = None) -> Response:
    r = Response(json.dumps(obj), status=status, content_type="application/json")
    for k, v in (headers or {}).items():
        r.headers[k] = v
    return r


def _get_params(args) -> dict:
    p: dict = {}
    if "collections" in args:
        p["collections"] = args["collections"].split(",")
    if "bbox" in args:
        p["bbox"] = [float(v) for v in args["bbox"].split(",")]
    for k in ("datetime", "limit"):
        if k in args:
            p[k] = args[k]
    if "query" in args:
        p["query"] = json.loads(args["query"])
    return p


def _rings(geom: dict):
    if geom["type"] == "Polygon":
        return geom["coordinates"]
    return [r for poly in geom["coordinates"] for r in poly]


# ---------------------------------------------------------------------- HLS items and files
def hls_item(granule_id: str, bbox: list[float], cloud: float, asset_keys, file_url) -> dict:
    """A STAC item shaped like CMR-STAC's HLS items (assets keyed by band, hrefs on the file server)."""
    product = granule_id.split(".")[1]
    coll = f"HLS{product}_2.0"
    date = dt.datetime.strptime(granule_id.split(".")[3], "%Y%jT%H%M%S")
    w, s, e, n = bbox
    assets = {k: {"href": file_url(f"HLS{product}.020/{granule_id}/{granule_id}.{k}.tif"),
                  "title": f"Download {granule_id}.{k}.tif", "roles": ["data"]} for k in asset_keys}
    assets["browse"] = {"href": file_url(f"HLS{product}.020/{granule_id}/{granule_id}.jpg"), "roles": ["browse"],
                        "type": "image/jpeg"}
    return {"type": "Feature", "stac_version": "1.0.0", "id": granule_id, "collection": coll,
            "geometry": {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]},
            "bbox": bbox, "links": [],
            "properties": {"datetime": date.strftime("%Y-%m-%dT%H:%M:%S.000Z"), "eo:cloud_cover": cloud,
                           "platform": "Sentinel-2A" if product == "S30" else "LANDSAT-8"},
            "assets": assets}
