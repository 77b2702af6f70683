"""Throughput of ``geofm fetch`` against a local file server, and what its safety costs.

The server is the fake LP DAAC of ``tests/data/remote/fake_nasa.py`` (werkzeug, in its own
process so that it does not share the GIL with the client, bearer token auth) serving ``--files`` files of ``--mb`` MB each. Measured in
the same run, interleaved ``--repeats`` times:

* ``geofm``: :func:`geofm.data.remote.fetch.fetch` (``.part`` + read-as-it-arrives + length
  check + rename + JSONL log) with ``--workers`` threads;
* ``plain``: the usual hand-written loop, ``requests.get(stream=True)`` + ``iter_content(1 MiB)``
  straight to the final name, same number of threads, no checks.

Usage: ``.venv/bin/python bench/fetch.py [--files 16 --mb 8 --workers 4 --repeats 3]``
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "data" / "remote"))

from fake_nasa import TOKEN, FakeNasa, hls_item  # noqa: E402

from geofm.data.remote import fetch as F  # noqa: E402
from geofm.data.remote.earthdata import Credentials  # noqa: E402


def plain(urls: list[str], out: Path, workers: int) -> None:
    import requests

    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {TOKEN}"

    def one(url: str) -> None:
        with session.get(url, stream=True, timeout=60) as r:
            r.raise_for_status()
            with open(out / url.rsplit("/", 1)[1], "wb") as f:
                for chunk in r.iter_content(1 << 20):
                    f.write(chunk)

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, urls))


def _serve(files, port_q, stop_ev) -> None:
    import logging

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = FakeNasa(files, []).start()
    port_q.put(server.port)
    stop_ev.wait()
    server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=16)
    ap.add_argument("--mb", type=float, default=8.0)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    size = int(args.mb * 1e6)
    bands = [f"B{i:02d}" for i in range(1, args.files + 1)]
    gid = "HLS.S30.T10SEG.2021123T184919.v2.0"
    files = {f"HLSS30.020/{gid}/{gid}.{b}.tif": b"II*\x00" + rng.bytes(size - 4) for b in bands}
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    port_q, stop_ev = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=_serve, args=(files, port_q, stop_ev), daemon=True)
    proc.start()
    port = port_q.get(timeout=60)
    item = hls_item(gid, [-123, 37, -122, 38], 1.0, bands,
                    lambda key: f"http://127.0.0.1:{port}/lp-prod-protected/{key}")
    urls = [item["assets"][b]["href"] for b in bands]
    creds = Credentials(token=TOKEN, source="bench")
    total_mb = size * args.files / 1e6
    times: dict[str, list[float]] = {"geofm": [], "plain": []}
    try:
        for _ in range(args.repeats):
            for name in ("plain", "geofm"):
                tmp = Path(tempfile.mkdtemp(prefix="geofm-bench-fetch-"))
                t = time.perf_counter()
                if name == "geofm":
                    res = F.fetch([item], tmp, bands=bands, workers=args.workers, creds=creds)
                    assert len(res.downloaded) == args.files and not res.failed
                else:
                    plain(urls, tmp, args.workers)
                times[name].append(time.perf_counter() - t)
                shutil.rmtree(tmp)
    finally:
        stop_ev.set()
        proc.join(10)
    print(f"{args.files} files x {args.mb:g} MB, {args.workers} threads, werkzeug server in another process, "
          f"best of {args.repeats}")
    print(f"{'':8} {'best s':>8} {'MB/s':>8}")
    for name, ts in times.items():
        print(f"{name:8} {min(ts):8.2f} {total_mb / min(ts):8.1f}")
    print(f"geofm / plain throughput: {min(times['plain']) / min(times['geofm']):.2f}")


if __name__ == "__main__":
    main()
