"""The viewer's page in a real browser: Debian's headless Chromium, driven by playwright's client.

The page must load from the server alone (every request to 127.0.0.1; anything else is aborted
and fails the test), reach the map's ``idle`` event, draw the class map's legend colours where
the class map says, show a pixel's values on click, and log no console error. The screenshot is
kept as an artifact: ``viewer.png`` in the test's tmp folder, and at ``$GEOFM_VIEW_SCREENSHOT``
when that is set. ``$GEOFM_VIEW_DEMO`` (a ``geofm demo`` output folder) adds a screenshot of
the viewer on those outputs (how docs/img/viewer.png is made, see docs/view.md).

Without Chromium the test skips, except under CI (``CI=true``), where a missing browser fails.
"""

from __future__ import annotations

import io
import os
import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from view_fixtures import CLASS_NAMES, SIZE  # this folder is on sys.path (pytest's rootdir-relative imports)

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-default-apps", "--disable-extensions", "--mute-audio"]
VIEWPORT = {"width": 1100, "height": 720}
IN_CI = os.environ.get("CI", "").lower() == "true"


def chromium_path() -> str:
    for candidate in (os.environ.get("GEOFM_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    if IN_CI:
        pytest.fail("Chromium is missing: .ci/run installs Debian's chromium package")
    pytest.skip("Chromium not found (apt-get install chromium): skipping the browser test")


@pytest.fixture(scope="module")
def browser():
    exe = chromium_path()
    if IN_CI:
        from playwright.sync_api import sync_playwright
    else:
        sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    with sync_playwright() as p:  # each launch gets a new, empty profile folder from playwright
        b = p.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


class Page:
    """A page of the viewer with every request, console error and page error recorded."""

    def __init__(self, browser, url: str):
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.aborted: list[str] = []
        self.context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1, service_workers="block")
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(url)

    def _route(self, route):
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:  # offline: nothing leaves the machine
            self.aborted.append(route.request.url)
            route.abort()

    def wait_idle(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while self.page.evaluate("window.__geofmIdle === true") is not True:
            assert time.monotonic() < deadline, f"the map never became idle; errors: {self.errors}"
            time.sleep(0.1)

    def project(self, lon: float, lat: float) -> tuple[int, int]:
        x, y = self.page.evaluate("([lon, lat]) => { const p = window.__geofmMap.project([lon, lat]); "
                                  "return [p.x, p.y]; }", [lon, lat])
        return round(x), round(y)

    def screenshot(self, path: Path) -> np.ndarray:
        from PIL import Image

        png = self.page.screenshot()
        path.write_bytes(png)
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))

    def close(self) -> None:
        self.context.close()


def keep(png: Path) -> None:
    """Copy the screenshot to ``$GEOFM_VIEW_SCREENSHOT`` (when set) as a small palette PNG."""
    from PIL import Image

    target = os.environ.get("GEOFM_VIEW_SCREENSHOT")
    if target:
        Path(target).parent.mkdir(parents=True, exist_ok=True)
        small = Image.open(png).convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE)
        small.save(target, optimize=True)


def test_page_draws_the_class_map_offline_without_errors(browser, view_server, view_data, tmp_path):
    import rasterio
    from rasterio.warp import transform

    page = Page(browser, view_server.url)
    try:
        page.wait_idle()
        shot = page.screenshot(tmp_path / "viewer.png")
        keep(tmp_path / "viewer.png")
        layers = page.page.evaluate("fetch('/layers.json').then((r) => r.json())")
        legend = {e["name"]: tuple(int(e["color"][i:i + 2], 16) for i in (1, 3, 5))
                  for e in next(la for la in layers if la["kind"] == "classes")["legend"]}
        # centres of the class blocks (row, col) -> where the screenshot must show each class's colour
        blocks = {"land": (3 * SIZE // 4, SIZE // 4), "water": (SIZE // 4, 3 * SIZE // 4),
                  "burn": (3 * SIZE // 4, 3 * SIZE // 4)}
        with rasterio.open(view_data["classes"]) as src:
            for name, (row, col) in blocks.items():
                x, y = src.xy(row, col)
                (lon,), (lat,) = transform(src.crs, "EPSG:4326", [x], [y])
                px, py = page.project(lon, lat)
                assert 0 <= px < VIEWPORT["width"] - 300 and 0 <= py < VIEWPORT["height"], (name, px, py)
                patch = shot[py - 3:py + 4, px - 3:px + 4].reshape(-1, 3).astype(int)
                assert np.abs(patch - legend[name]).max() <= 3, (name, patch[0], legend[name])
        assert set(legend) == set(CLASS_NAMES)

        # click: a popup with the class name under the pointer
        x, y = src.xy(*blocks["burn"])
        (lon,), (lat,) = transform(src.crs, "EPSG:4326", [x], [y])
        page.page.mouse.click(*page.project(lon, lat))
        popup = page.page.wait_for_selector(".popup", timeout=30_000)
        text = popup.inner_text()
        assert "burn (2)" in text and "flood_map" in text

        hosts = {urlsplit(u).hostname or urlsplit(urlsplit(u).path).hostname for u in page.requests}
        assert hosts == {"127.0.0.1"}, page.requests
        assert any("/tiles/" in u for u in page.requests) and not page.aborted
        assert page.errors == []
    finally:
        page.close()


@pytest.mark.skipif(not os.environ.get("GEOFM_VIEW_DEMO"), reason="set GEOFM_VIEW_DEMO=outputs/demo to run")
def test_screenshot_of_the_demo_outputs(browser, tmp_path):
    """The viewer on ``$GEOFM_VIEW_DEMO`` (paths separated by ':'): the top class map swiped against the
    first reflectance layer, with the values popup of the map's centre."""
    from geofm.viz import serve

    srv = serve(os.environ["GEOFM_VIEW_DEMO"].split(os.pathsep), port=0)
    try:
        page = Page(browser, srv.url)
        page.wait_idle()
        layers = page.page.evaluate("fetch('/layers.json').then((r) => r.json())")
        inputs = next(la for la in layers if la["kind"] == "reflectance")
        page.page.select_option("#swipe-left", layers[-1]["id"])
        page.page.select_option("#swipe-right", inputs["id"])
        page.page.check("#swipe-on")
        deadline = time.monotonic() + 60
        while page.page.evaluate("window.__geofmSwipeIdle === true") is not True:
            assert time.monotonic() < deadline, page.errors
            time.sleep(0.1)
        page.wait_idle()
        box = page.page.locator("#map").bounding_box()
        page.page.mouse.click(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.4)
        page.page.wait_for_selector(".popup", timeout=30_000)
        time.sleep(0.5)
        page.screenshot(tmp_path / "viewer.png")
        keep(tmp_path / "viewer.png")
        assert page.errors == [] and not page.aborted
        page.close()
    finally:
        srv.stop()
