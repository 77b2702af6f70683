"""geofm fetch against the fake LP DAAC server: auth flows, resume, faults, status log."""

from __future__ import annotations

import json
import logging

import pytest
from fake_nasa import CLOUDY_ID, L30_ID, OTHER_TILE_ID, PASSWORD, TOKEN

from geofm.data.remote import earthdata
from geofm.data.remote import fetch as F
from geofm.errors import AuthError, ConfigError

S30_PRITHVI = ("B02", "B03", "B04", "B8A", "B11", "B12", "Fmask")
L30_PRITHVI = ("B02", "B03", "B04", "B05", "B06", "B07", "Fmask")


def _items(nasa, ids=None):
    skip = {CLOUDY_ID, OTHER_TILE_ID}  # their files are not on the server
    return [it for it in nasa.items if (it["id"] in ids if ids else it["id"] not in skip)]


def _expected(nasa, items, out):
    """final path -> the server's bytes, for the prithvi assets of ``items``."""
    exp = {}
    for it in items:
        keys = L30_PRITHVI if it["id"] == L30_ID else S30_PRITHVI
        for k in keys:
            key = it["assets"][k]["href"].split("/lp-prod-protected/")[1]
            exp[out / it["id"] / key.rsplit("/", 1)[1]] = nasa.files[key]
    return exp


def _token(env):
    env.setenv("EARTHDATA_TOKEN", TOKEN)
    return earthdata.find_credentials()


def test_credentials_order(no_earthdata_env, netrc_login):
    env = no_earthdata_env
    c = earthdata.find_credentials()
    assert (c.username, c.password, c.login_host) == ("alice", PASSWORD, "localhost") and "netrc" in c.source
    env.setenv("EARTHDATA_USERNAME", "bob")
    with pytest.raises(ConfigError, match="EARTHDATA_PASSWORD"):
        earthdata.find_credentials()
    env.setenv("EARTHDATA_PASSWORD", "pw")
    assert earthdata.find_credentials().username == "bob"
    env.setenv("EARTHDATA_TOKEN", TOKEN)
    c = earthdata.find_credentials()
    assert c.token == TOKEN and c.source == "EARTHDATA_TOKEN" and TOKEN not in repr(c)


def test_prithvi_bands_only_with_a_token(nasa, tmp_path, no_earthdata_env, caplog):
    caplog.set_level(logging.DEBUG)
    creds = _token(no_earthdata_env)
    items = _items(nasa)
    res = F.fetch(items, tmp_path, creds=creds, workers=3)
    exp = _expected(nasa, items, tmp_path)
    assert len(res.downloaded) == len(exp) == 3 * 7 + 7 and not res.failed
    for path, data in exp.items():
        assert path.read_bytes() == data
    assert not list(tmp_path.rglob("*.part"))
    fetched = {r["path"].rsplit(".", 2)[-2] for r in nasa.requests_to("/lp-prod-protected/")}
    assert fetched == set(S30_PRITHVI) | set(L30_PRITHVI)  # no B01, SAA, browse...
    assert all(r["auth_value"] == f"Bearer {TOKEN}" for r in nasa.requests_to("/lp-prod-protected/"))
    assert TOKEN not in caplog.text
    log = [json.loads(line) for line in (tmp_path / F.LOG_NAME).read_text().splitlines()]
    assert {r["status"] for r in log} == {"done"} and len(log) == len(exp)
    assert sum(r["bytes"] for r in log) == sum(len(v) for v in exp.values())
    # a rerun downloads nothing
    n = len(nasa.log)
    res2 = F.fetch(items, tmp_path, creds=creds)
    assert len(res2.skipped) == len(exp) and not res2.downloaded and len(nasa.log) == n


def test_netrc_login_through_a_redirect_to_the_login_host(nasa, tmp_path, netrc_login):
    items = _items(nasa, {L30_ID})
    res = F.fetch(items, tmp_path, workers=2)
    assert len(res.downloaded) == 7 and not res.failed
    for path, data in _expected(nasa, items, tmp_path).items():
        assert path.read_bytes() == data
    logins = nasa.requests_to("/oauth/authorize")
    assert 1 <= len(logins) <= 2  # the two threads share the session cookie: one login each at most
    assert all(r["host"].startswith("localhost") and r["auth"] == "Basic" for r in logins)
    # the password went to the login host only; later files used the session cookie
    assert all(r["auth"] == "" for r in nasa.log if not r["host"].startswith("localhost"))
    assert sum(1 for r in nasa.requests_to("/lp-prod-protected/") if r["cookie"]) >= 7


def test_wrong_or_missing_credentials_stop_with_how_to_log_in(nasa, tmp_path, no_earthdata_env):
    items = _items(nasa, {L30_ID})
    with pytest.raises(AuthError, match="no Earthdata credentials found: set EARTHDATA_TOKEN"):
        F.fetch(items, tmp_path / "a", workers=2)
    creds = _token(no_earthdata_env)
    nasa.faults["expired_token"] = True
    with pytest.raises(AuthError, match="EARTHDATA_TOKEN were refused") as e:
        F.fetch(items, tmp_path / "b", creds=creds, workers=2)
    assert TOKEN not in str(e.value)
    assert not [p for p in (tmp_path / "b").rglob("*.tif")]
    log = [json.loads(x) for x in (tmp_path / "b" / F.LOG_NAME).read_text().splitlines()]
    assert len(log) == 7 and {r["status"] for r in log} == {"failed"} and TOKEN not in json.dumps(log)


def test_wrong_netrc_password_and_sign_in_page(nasa, tmp_path, netrc_login, no_earthdata_env):
    items = _items(nasa, {L30_ID})
    netrc_login.write_text("machine localhost login alice password bad-pw-123\n")
    with pytest.raises(AuthError, match="credentials from netrc .* were refused") as e:
        F.fetch(items, tmp_path / "a", workers=1)
    assert "bad-pw-123" not in str(e.value) and "wrong password" in str(e.value)
    no_earthdata_env.delenv("NETRC")
    nasa.faults["login_page_200"] = True
    with pytest.raises(AuthError, match="sign-in page"):
        F.fetch(items, tmp_path / "b", workers=1)
    assert not list((tmp_path / "b").rglob("*.tif*"))


def test_faults_end_in_complete_files_or_clear_errors(nasa, tmp_path, no_earthdata_env):
    creds = _token(no_earthdata_env)
    items = _items(nasa)
    s30 = [it for it in items if it["id"] != L30_ID]
    name = lambda it, k: it["assets"][k]["href"].rsplit("/", 1)[1]  # noqa: E731
    nasa.faults["file_429"] = {name(s30[0], "B02"): 1}
    nasa.faults["file_503"] = {name(s30[0], "B03"): 2}
    nasa.faults["truncate"] = {name(s30[1], "B04"): 2, name(s30[1], "Fmask"): 1}
    nasa.faults["html"] = {name(s30[2], "B8A"): "text/html", name(s30[2], "B11"): "application/octet-stream"}
    nasa.faults["missing"] = {name(s30[2], "B12")}
    res = F.fetch(items, tmp_path, creds=creds, workers=4, backoff=0.05)
    failed = {d.path.name: msg for d, msg in res.failed}
    assert set(failed) == {name(s30[2], k) for k in ("B8A", "B11", "B12")}
    assert "HTML page" in failed[name(s30[2], "B8A")] and "HTML page" in failed[name(s30[2], "B11")]
    assert "404" in failed[name(s30[2], "B12")]
    exp = _expected(nasa, items, tmp_path)
    for path, data in exp.items():
        if path.name in failed:
            assert not path.exists() and not path.with_name(path.name + ".part").exists()
        else:
            assert path.read_bytes() == data, path.name
    # the cut bodies were resumed with Range, not restarted
    ranges = [r["range"] for r in nasa.requests_to(name(s30[1], "B04"))]
    assert ranges[0] is None and all(r and r.startswith("bytes=") for r in ranges[1:]) and len(ranges) == 3
    # the rerun fetches only the failed ones (still failing) and nothing else
    n = len(nasa.requests_to("/lp-prod-protected/"))
    res2 = F.fetch(items, tmp_path, creds=creds, backoff=0.05)
    assert len(res2.failed) == 3 and len(res2.skipped) == len(exp) - 3
    assert len(nasa.requests_to("/lp-prod-protected/")) - n == 3


def test_server_that_ignores_range_restarts_the_file(nasa, tmp_path, no_earthdata_env):
    creds = _token(no_earthdata_env)
    it = _items(nasa, {L30_ID})[0]
    nasa.faults["truncate"] = {it["assets"]["B02"]["href"].rsplit("/", 1)[1]: 1}
    nasa.faults["ignore_range"] = True
    res = F.fetch([it], tmp_path, creds=creds, bands=("B02",), backoff=0.01)
    assert len(res.downloaded) == 1
    path, data = next((p, d) for p, d in _expected(nasa, [it], tmp_path).items() if ".B02." in p.name)
    assert path.read_bytes() == data
    ranges = [r["range"] for r in nasa.requests_to(path.name)]
    assert len(ranges) == 2 and ranges[1].startswith("bytes=")  # asked to resume, got the whole file again


def test_s3_access_with_refreshed_credentials(nasa, tmp_path, no_earthdata_env):
    pytest.importorskip("moto")
    import boto3
    from moto.server import ThreadedMotoServer

    creds = _token(no_earthdata_env)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-west-2", aws_access_key_id="a",
                          aws_secret_access_key="b")
        s3.create_bucket(Bucket="lp-prod-protected", CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
        items = _items(nasa, {L30_ID})
        for k, v in nasa.files.items():
            if L30_ID in k:
                s3.put_object(Bucket="lp-prod-protected", Key=k, Body=v)
        nasa.s3_lifetime = 299  # expires within the 300 s refresh margin: renewed before each file
        res = F.fetch(items, tmp_path, creds=creds, access="s3", workers=1,
                      s3_credentials_url=f"{nasa.base}/s3credentials", s3_endpoint_url=endpoint)
        assert len(res.downloaded) == 7 and not res.failed
        for path, data in _expected(nasa, items, tmp_path).items():
            assert path.read_bytes() == data
        assert len(nasa.s3_keys) == 7  # one fresh set of keys per file
        assert not nasa.requests_to("/lp-prod-protected/")  # nothing over https
        nasa.s3_lifetime = 3600
        res = F.fetch(items, tmp_path / "again", creds=creds, access="s3", workers=2,
                      s3_credentials_url=f"{nasa.base}/s3credentials", s3_endpoint_url=endpoint)
        assert len(res.downloaded) == 7 and len(nasa.s3_keys) == 8  # one set for the whole run
    finally:
        server.stop()


def test_asset_urls_and_plan(nasa, tmp_path):
    it = _items(nasa, {L30_ID})[0]
    todo, missing = F.plan_downloads([it], tmp_path, "prithvi", access="s3")
    assert [d.asset for d in todo] == list(L30_PRITHVI) and not missing
    assert todo[0].url == f"s3://lp-prod-protected/HLSL30.020/{L30_ID}/{L30_ID}.B02.tif"
    todo, missing = F.plan_downloads([it], tmp_path, F.parse_bands("B02,B8A"))
    assert [d.asset for d in todo] == ["B02"] and missing == [(L30_ID, "B8A")]
    with pytest.raises(ConfigError):
        F.parse_bands(" , ")
