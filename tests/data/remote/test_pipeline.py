"""``geofm search | fetch | ingest`` end to end against the fake NASA server, and kill -9 + rerun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from fake_nasa import TOKEN

from geofm.cli import main
from geofm.data import store


def _search(nasa, out, *extra):
    argv = ["search", "--collections", "HLSS30,HLSL30_2.0", "--tiles", "10SEG", "--start", "2021-05-01", "--end",
            "2021-09-30", "--max-cloud", "30", "--out", str(out), "--stac-url", nasa.stac_url, "--page-interval",
            "0", *extra]
    assert main(argv) == 0
    return json.loads(out.read_text())


def _chips(path):
    meta = store.read_metadata(str(path))
    return meta, store.ShardReader(str(path)).read(meta["slot"])


def test_search_fetch_ingest_and_streamed_ingest(nasa, tmp_path, no_earthdata_env, capsys):
    nasa.faults["ignore_cloud_filter"] = True
    manifest = tmp_path / "manifest.json"
    doc = _search(nasa, manifest, "--quicklook", str(tmp_path / "footprints.png"))
    out = capsys.readouterr().out
    assert len(doc["features"]) == 4 and "4 granule(s)" in out and "1 above --max-cloud dropped here" in out
    assert (tmp_path / "footprints.png").stat().st_size > 5000
    no_earthdata_env.setenv("EARTHDATA_TOKEN", TOKEN)
    assert main(["fetch", str(manifest), "--out", str(tmp_path / "hls"), "--workers", "2"]) == 0
    assert "28 file(s) downloaded" in capsys.readouterr().out
    common = ["--chip-size", "32", "--frames", "3", "--max-cloud", "1", "--scheduler", "sync"]
    assert main(["ingest", str(tmp_path / "hls"), "--out", str(tmp_path / "local.zarr"), *common]) == 0
    n_file_requests = len(nasa.requests_to("/lp-prod-protected/"))
    # the same manifest, streamed: GDAL reads byte ranges with the bearer token
    assert main(["ingest", str(manifest), "--out", str(tmp_path / "streamed.zarr"), *common]) == 0
    streamed = nasa.requests_to("/lp-prod-protected/")[n_file_requests:]
    assert streamed and all(r["range"] for r in streamed if r["method"] == "GET")
    assert all(r["auth_value"] == f"Bearer {TOKEN}" for r in streamed)
    assert "GDAL_HTTP_BEARER" not in os.environ  # restored after the run
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    assert main(["ingest", str(empty), "--out", str(tmp_path / "e.zarr"), *common]) == 2
    assert "empty.json' holds no granule" in capsys.readouterr().err
    (m1, c1), (m2, c2) = _chips(tmp_path / "local.zarr"), _chips(tmp_path / "streamed.zarr")
    assert len(m1["slot"]) == len(m2["slot"]) == 4  # one 3-frame series of 64 px, 2x2 chips of 32 px
    np.testing.assert_array_equal(c1, c2)
    assert list(m1["dates"][0]) == ["2021-05-03", "2021-05-30", "2021-06-12"]  # S30, L30, S30


def test_streamed_ingest_with_netrc_cookie_login(nasa, tmp_path, netrc_login, monkeypatch):
    manifest = tmp_path / "m.json"
    _search(nasa, manifest, "--max-items", "3")
    common = ["--chip-size", "32", "--frames", "3", "--max-cloud", "1", "--scheduler", "sync"]
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    assert main(["ingest", str(manifest), "--out", str(tmp_path / "s.zarr"), *common]) == 0
    assert list(temp.iterdir()) == []  # the login's cookie folder is gone
    meta, chips = _chips(tmp_path / "s.zarr")
    assert len(meta["slot"]) == 4 and chips.shape == (4, 3, 6, 32, 32)
    assert len(nasa.requests_to("/oauth/authorize")) == 1  # one login; GDAL used its cookie
    assert all(r["auth"] == "" for r in nasa.log if not r["host"].startswith("localhost"))


def test_fetch_cli_exit_code_and_failed_list(nasa, tmp_path, no_earthdata_env, capsys):
    manifest = tmp_path / "m.json"
    doc = _search(nasa, manifest, "--max-items", "1")
    it = doc["features"][0]
    nasa.faults["missing"] = {it["assets"]["B03"]["href"].rsplit("/", 1)[1]}
    no_earthdata_env.setenv("EARTHDATA_TOKEN", TOKEN)
    assert main(["fetch", str(manifest), "--out", str(tmp_path / "d"), "--retries", "1"]) == 1
    err = capsys.readouterr().err
    assert f"{it['id']} B03:" in err and "404" in err
    nasa.faults["expired_token"] = True
    assert main(["fetch", str(manifest), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "EARTHDATA_TOKEN" in err and TOKEN not in err and "Traceback" not in err


def _size(path: Path) -> int:
    """Size of a file the running fetch may rename away at any moment (0 once gone)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def test_kill_9_then_rerun_gives_complete_identical_files(nasa, tmp_path, no_earthdata_env):
    manifest = tmp_path / "m.json"
    doc = _search(nasa, manifest)
    out = tmp_path / "hls"
    env = dict(os.environ, EARTHDATA_TOKEN=TOKEN)
    nasa.faults["slow"] = 20_000  # bytes/s: a file (2 chunks of 4 kB) takes 0.4 s
    cmd = [sys.executable, "-m", "geofm.cli", "fetch", str(manifest), "--out", str(out), "--workers", "2"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(tmp_path / "err.txt", "w"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # kill once a few files are done and others are half-written
        parts = [p for p in out.rglob("*.part") if _size(p) > 0]  # a part may be renamed meanwhile
        if len(list(out.rglob("*.tif"))) >= 3 and parts:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    parts = {p.with_suffix(""): p.stat().st_size for p in out.rglob("*.part") if p.stat().st_size > 0}
    done_before = set(out.rglob("*.tif"))
    assert parts and done_before, (tmp_path / "err.txt").read_text()
    nasa.faults["slow"] = 0
    n = len(nasa.log)
    no_earthdata_env.setenv("EARTHDATA_TOKEN", TOKEN)
    assert main(cmd[3:]) == 0  # the rerun, in this process
    # complete, byte-identical files; nothing left half-written
    expected = {}
    for it in doc["features"]:
        for k in ("B02", "B03", "B04", "Fmask"):
            key = it["assets"][k]["href"].split("/lp-prod-protected/")[1]
            expected[out / it["id"] / key.rsplit("/", 1)[1]] = nasa.files[key]
    for path, data in expected.items():
        assert path.read_bytes() == data
    assert not list(out.rglob("*.part")) and len(list(out.rglob("*.tif"))) == 28
    # nothing downloaded twice: finished files were not asked for, half files resumed where they stopped
    asked = {r["path"].rsplit("/", 1)[1]: r["range"] for r in nasa.log[n:] if "/lp-prod-protected/" in r["path"]}
    assert not {p.name for p in done_before} & set(asked)
    for path, size in parts.items():
        assert asked[path.name] == f"bytes={size}-"
    assert len(asked) == 28 - len(done_before)
    log = [json.loads(x) for x in (out / "fetch-log.jsonl").read_text().splitlines()]
    assert sum(r["status"] == "skipped" for r in log) == len(done_before)


@pytest.mark.parametrize("bbox", [["--bbox", "-122.5,37.1,-121.9,37.6"], ["--bbox=-122.5,37.1,-121.9,37.6"],
                                  ["--bbox", "-122.5", "37.1", "-121.9", "37.6"]])
def test_search_bbox_west_of_greenwich_as_typed(bbox, nasa, tmp_path, capsys):
    out = tmp_path / "m.json"
    argv = ["search", *bbox, "--start", "2021-05-01", "--end", "2021-09-30", "--out", str(out),
            "--stac-url", nasa.stac_url, "--page-interval", "0"]
    assert main(argv) == 0, capsys.readouterr().err
    doc = json.loads(out.read_text())
    assert doc["geofm:search"]["bbox"] == [-122.5, 37.1, -121.9, 37.6]
    assert doc["features"]  # the fake service's 10SEG granules lie in that box


@pytest.mark.parametrize("bad", [{"--bbox": "1,2,3"}, {"--start": "2021-13-01"}, {"--end": "2021-04-01"},
                                 {"--collections": ""}])
def test_search_cli_errors(bad, nasa, tmp_path, capsys):
    opts = {"--bbox": "-123,36,-121,38", "--start": "2021-05-01", "--end": "2021-06-01", "--out": str(tmp_path / "m.json"),
            "--stac-url": nasa.stac_url, **bad}
    assert main(["search", *(f"{k}={v}" for k, v in opts.items())]) == 2  # --bbox=W,... : W may be negative
    err = capsys.readouterr().err
    assert f"error: {next(iter(bad))}" in err and "Traceback" not in err
    assert not (tmp_path / "m.json").exists()


def test_streamed_ingest_on_an_external_cluster_gets_the_credentials(nasa, tmp_path, netrc_login, no_earthdata_env):
    """Workers started before the ingest (an external ``--scheduler``) read the COGs with the token, then with
    the login cookie: each task sets the ingest's GDAL options in its worker, and removes them after."""
    from dask.distributed import Client, LocalCluster

    manifest = tmp_path / "m.json"
    _search(nasa, manifest, "--max-items", "3")
    common = ["--chip-size", "32", "--frames", "3", "--max-cloud", "1"]
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        assert all(v is None for v in client.run(lambda: os.environ.get("GDAL_HTTP_BEARER")).values())
        n0 = len(nasa.log)
        no_earthdata_env.setenv("EARTHDATA_TOKEN", TOKEN)  # the token wins over the netrc login
        assert main(["ingest", str(manifest), "--out", str(tmp_path / "t.zarr"), "--scheduler",
                     cluster.scheduler_address, *common]) == 0
        reads = [r for r in nasa.log[n0:] if r["path"].startswith("/lp-prod-protected/") and r["range"]]
        assert reads and all(r["auth_value"] == f"Bearer {TOKEN}" for r in reads)
        no_earthdata_env.delenv("EARTHDATA_TOKEN")
        n1 = len(nasa.log)
        assert main(["ingest", str(manifest), "--out", str(tmp_path / "c.zarr"), "--scheduler",
                     cluster.scheduler_address, *common]) == 0
        reads = [r for r in nasa.log[n1:] if r["path"].startswith("/lp-prod-protected/") and r["range"]]
        assert reads[0]["range"] == "bytes=0-0" and not reads[0]["cookie"]  # the client's login probe
        bad = [r for r in reads[1:] if r["auth_value"] or "urs_session=" not in (r["cookie"] or "")]
        assert len(reads) > 1 and not bad, bad[:2]
        assert len(nasa.requests_to("/oauth/authorize")) == 1  # one login, by the client; workers used its cookie
        # nothing left behind on the worker: no credentials in its environment, no cookie folder
        left = client.run(lambda: {k: v for k, v in os.environ.items() if k.startswith("GDAL_HTTP")})
        assert all(v == {} for v in left.values())
    (m1, c1), (_m2, c2) = _chips(tmp_path / "t.zarr"), _chips(tmp_path / "c.zarr")
    assert len(m1["slot"]) == 4
    np.testing.assert_array_equal(c1, c2)


def test_worker_gdal_options_hide_their_values_and_leave_nothing(tmp_path, monkeypatch):
    from pathlib import Path

    from geofm.data.remote.stream import WorkerGdalOptions
    from geofm.errors import DataError

    jar = tmp_path / "cookies.txt"
    jar.write_text("# Netscape HTTP Cookie File\nlocalhost\tFALSE\t/\tFALSE\t2000000000\turs_session\tabc\n")
    opts = WorkerGdalOptions({"GDAL_HTTP_BEARER": "s3cr3t", "GDAL_HTTP_COOKIEFILE": str(jar),
                              "GDAL_HTTP_COOKIEJAR": str(jar)})
    assert "s3cr3t" not in repr(opts) and "abc" not in repr(opts) and "cookies" in repr(opts)
    monkeypatch.delenv("GDAL_HTTP_BEARER", raising=False)
    with opts.applied():
        copy = Path(os.environ["GDAL_HTTP_COOKIEFILE"])
        assert copy != jar and copy.read_text() == jar.read_text() and copy.stat().st_mode & 0o777 == 0o600
        with opts.applied():  # a second task of the same ingest in the same worker
            assert os.environ["GDAL_HTTP_BEARER"] == "s3cr3t"
        assert os.environ["GDAL_HTTP_BEARER"] == "s3cr3t"  # still running: the first task keeps them
        with pytest.raises(DataError, match="another ingest"):
            with WorkerGdalOptions({"GDAL_HTTP_BEARER": "other"}).applied():
                pass
    assert "GDAL_HTTP_BEARER" not in os.environ and "GDAL_HTTP_COOKIEFILE" not in os.environ
    assert not copy.exists() and not copy.parent.exists()
