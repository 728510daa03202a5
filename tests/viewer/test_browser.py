"""The viewer as a person uses it: Playwright drives a real headless Chromium (Debian's
package; `make test` installs it where absent) against a real viewer server on 127.0.0.1.

Without a Chromium these tests skip, unless EXASLIDE_REQUIRE_BROWSER=1 (set by CI), where
they fail: a missing browser must not pass as green."""

from __future__ import annotations

import io
import os
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from exaslide.viewer import serve_in_thread

WAIT_MS = 20_000  # the longest any one wait may take: a hang fails, it never stalls CI
VIEWPORT = {"width": 1200, "height": 800}
TILE = re.compile(r"/slides/[^/]+_files/(\d+)/\d+_\d+\.jpeg")


def _chromium() -> str | None:
    return (os.environ.get("EXASLIDE_CHROMIUM") or shutil.which("chromium")
            or shutil.which("chromium-browser") or shutil.which("google-chrome"))


@pytest.fixture(scope="module")
def browser():
    executable = _chromium()
    required = os.environ.get("EXASLIDE_REQUIRE_BROWSER") == "1"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if required:
            pytest.fail("EXASLIDE_REQUIRE_BROWSER=1 but playwright is not installed")
        pytest.skip("playwright is not installed")
    if executable is None:
        if required:
            pytest.fail("EXASLIDE_REQUIRE_BROWSER=1 but no chromium on PATH "
                        "(apt-get install chromium)")
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True)
        yield browser
        browser.close()


class Page:
    """A browser tab on the viewer that records the tile levels it requested and every
    response with an error status."""

    def __init__(self, browser, base: str):
        self.context = browser.new_context(viewport=VIEWPORT)
        self.page = self.context.new_page()
        self.page.set_default_timeout(WAIT_MS)
        self.base = base
        self.levels: list[int] = []
        self.failures: list[str] = []
        self.console_errors: list[str] = []
        self.page.on("request", self._on_request)
        self.page.on("response", self._on_response)
        self.page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))

    def _on_request(self, request) -> None:
        match = TILE.search(request.url)
        if match:
            self.levels.append(int(match.group(1)))

    def _on_response(self, response) -> None:
        if response.status >= 400:
            self.failures.append(f"{response.status} {response.url}")

    def open(self, suffix: str = "") -> Page:
        self.page.goto(self.base + "/" + suffix)
        self.settle()
        return self

    def settle(self) -> None:
        """Wait until the slide is open, its overlays are placed, every visible image in
        the view has drawn its tiles and no animation runs."""
        self.page.wait_for_function(
            """() => {
                const s = window.exaslide;
                if (!s || !s.opened || !s.overlaysReady || s.tilesLoaded === 0) return false;
                const world = s.viewer.world;
                for (let i = 0; i < world.getItemCount(); i += 1) {
                    const item = world.getItemAt(i);  // hidden overlays load nothing
                    if (item.getOpacity() > 0 && !item.getFullyLoaded()) return false;
                }
                const vp = s.viewer.viewport;  // and no animation is running
                return Math.abs(vp.getZoom(true) / vp.getZoom(false) - 1) < 1e-6
                    && vp.getCenter(true).distanceTo(vp.getCenter(false)) < 1e-9;
            }""")
        self.page.wait_for_load_state("networkidle")

    def js(self, expression: str):
        return self.page.evaluate(expression)

    def screenshot(self) -> np.ndarray:
        self.js("window.exaslide.viewer.forceRedraw()")
        self.page.wait_for_timeout(200)  # two animation frames and then some
        png = self.page.locator("#viewer").screenshot()
        return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)

    def centre(self) -> tuple[float, float, float]:
        """The view's centre in level-0 px and its zoom in screen px per level-0 px."""
        return tuple(self.js("""() => {
            const s = window.exaslide, vp = s.viewer.viewport, c = vp.getCenter(true);
            const a = vp.pixelFromPoint(new OpenSeadragon.Point(0, 0), true);
            const b = vp.pixelFromPoint(new OpenSeadragon.Point(1, 0), true);
            return [c.x * s.slide.width, c.y * s.slide.width, (b.x - a.x) / s.slide.width];
        }"""))

    def shared_link(self) -> str:
        """The URL hash once the page has written the current view into it."""
        self.page.wait_for_function("""() => {
            const s = window.exaslide, c = s.viewer.viewport.getCenter(true);
            const h = new URLSearchParams(location.hash.slice(1));
            return Math.abs(h.get("x") - c.x * s.slide.width) <= 1
                && Math.abs(h.get("y") - c.y * s.slide.width) <= 1;
        }""")
        return self.js("location.hash")

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def tab(browser, viewer_server):
    page = Page(browser, viewer_server)
    yield page
    page.close()


def _changed(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of pixels that differ by more than a little."""
    return float((np.abs(a - b).max(axis=2) > 16).mean())


def test_page_opens_a_slide_tiles_arrive_and_the_corrupt_one_shows_its_error(tab, viewer_data):
    tab.open()
    slides = tab.page.locator("#slides .slide")
    assert slides.count() == 2
    broken = tab.page.locator("#slides .slide.error")
    assert broken.count() == 1 and "broken" in broken.inner_text()
    assert broken.locator(".detail").inner_text().strip()  # the reader's error, shown
    current = tab.page.locator("#slides .slide.current")
    assert current.get_attribute("data-id") == viewer_data.served_id
    assert "3001 × 2011" in current.inner_text()
    assert tab.levels and not tab.failures, tab.failures
    pixels = tab.screenshot()
    assert pixels.std() > 10  # the slide is drawn, not a blank canvas
    assert tab.page.locator("#scalebar").is_visible()
    assert re.search(r"(µm|mm)$", tab.page.locator("#scalebar .label").inner_text())
    names = tab.page.locator("#overlays .overlay").evaluate_all(
        "nodes => nodes.map(n => n.className)")
    for kind in ("heatmap", "mask", "annotations", "patches", "froc"):
        assert any(kind in name for name in names), (kind, names)
    assert not tab.page.locator("#overlays .error").count()
    assert not tab.console_errors, tab.console_errors


def test_zoom_and_pan_fetch_deeper_levels(tab):
    tab.open()
    first = max(tab.levels)
    viewer = tab.page.locator("#viewer")
    box = viewer.bounding_box()
    tab.page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for _ in range(8):
        tab.page.mouse.wheel(0, -400)
        tab.page.wait_for_timeout(100)
    tab.settle()
    zoomed = max(tab.levels)
    assert zoomed > first
    assert zoomed == 12  # 3001 px wide: ceil(log2(3001)) + 1 = 13 levels, 0..12
    before = len(tab.levels)
    x0, y0, zoom = tab.centre()
    assert zoom > 1  # past full resolution
    middle = box["y"] + box["height"] / 2
    for _ in range(3):  # three drags to the left, past the next tile column
        tab.page.mouse.move(box["x"] + box["width"] * 0.9, middle)
        tab.page.mouse.down()
        tab.page.mouse.move(box["x"] + box["width"] * 0.1, middle, steps=10)
        tab.page.mouse.up()
        tab.settle()
    x1, y1, _ = tab.centre()
    assert x1 - x0 > 3 * 0.8 * box["width"] / zoom * 0.9  # the view moved right
    assert abs(y1 - y0) < 1
    assert len(tab.levels) > before  # new tiles at the deep level came in
    assert not tab.failures, tab.failures


def test_overlay_toggle_opacity_and_threshold_change_pixels(tab):
    tab.open()
    heatmaps = tab.page.locator("#overlays .overlay.heatmap")
    assert heatmaps.count() == 2  # the CNN's and the MIL attention map
    assert heatmaps.nth(1).locator("input.toggle").is_checked() is False  # one at a time
    heatmap = heatmaps.first
    assert heatmap.locator("input.toggle").is_checked()
    assert heatmap.locator("canvas.colorbar").is_visible()
    with_heatmap = tab.screenshot()
    heatmap.locator("input.toggle").uncheck()
    without = tab.screenshot()
    assert _changed(with_heatmap, without) > 0.05
    heatmap.locator("input.toggle").check()
    assert _changed(tab.screenshot(), with_heatmap) < 0.01  # back as it was
    heatmap.locator("input.opacity").fill("1")
    opaque = tab.screenshot()
    assert _changed(opaque, with_heatmap) > 0.05
    heatmap.locator("input.threshold").fill("0.9")
    tab.page.wait_for_function(
        "() => window.exaslide.overlays.find(o => o.kind === 'heatmap').thresholdApplied")
    tab.settle()
    thresholded = tab.screenshot()
    assert _changed(thresholded, opaque) > 0.05
    # cells under the threshold vanish: the picture moves towards the bare slide
    assert np.abs(thresholded - without).mean() < np.abs(opaque - without).mean()
    mask = tab.page.locator("#overlays .overlay.mask")
    mask.locator("input.toggle").check()
    assert _changed(tab.screenshot(), thresholded) > 0.01
    assert not tab.failures, tab.failures


def test_click_finds_similar_regions_and_opening_one_lands_on_it(tab):
    tab.open()
    box = tab.page.locator("#viewer").bounding_box()
    tab.page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    results = tab.page.locator("#results-list .result")
    results.first.wait_for()
    assert tab.page.locator("#results").is_visible()
    assert 0 < results.count() <= 8
    assert "most similar" in tab.page.locator("#results-status").inner_text()
    served = tab.page.locator("#results-list .result button:not([disabled])")
    unserved = tab.page.locator("#results-list .result button[disabled]")
    assert served.count() + unserved.count() == results.count()
    hit = tab.js("window.exaslide.search.results.find(r => r.slide)")
    assert hit is not None
    thumbnails = tab.page.locator("#results-list img")
    assert thumbnails.count() == results.count()
    index = tab.js("window.exaslide.search.results.findIndex(r => r.slide)")
    results.nth(index).locator("button").click()
    tab.page.wait_for_function("() => window.exaslide.highlight")
    tab.settle()  # waits for the pan-and-zoom animation to end
    x, y, _ = tab.centre()
    size = hit["size"]
    assert abs(x - (hit["x"] + size / 2)) < 1 and abs(y - (hit["y"] + size / 2)) < 1
    assert not tab.failures, tab.failures


def test_url_hash_restores_a_shared_view(tab, browser, viewer_server, viewer_data):
    tab.open(f"#slide={viewer_data.served_id}&x=1000&y=700&zoom=1")
    x, y, zoom = tab.centre()
    assert abs(x - 1000) < 1 and abs(y - 700) < 1 and abs(zoom - 1) < 0.01
    assert max(tab.levels) == 12  # full resolution: the deepest level
    tab.page.mouse.move(600, 400)  # somewhere else, then share the link
    tab.page.mouse.wheel(0, 300)
    tab.settle()
    x, y, zoom = tab.centre()
    link = tab.shared_link()
    other = Page(browser, viewer_server)
    try:
        other.open(link)
        x2, y2, zoom2 = other.centre()
        assert abs(x2 - x) <= 1 and abs(y2 - y) <= 1 and abs(zoom2 / zoom - 1) < 0.01
    finally:
        other.close()


def test_unknown_slide_in_the_hash_is_a_visible_message(tab):
    tab.open("#slide=nope&x=1&y=1&zoom=1")
    banner = tab.page.locator("#banner")
    assert banner.is_visible() and "nope is not available" in banner.inner_text()


def test_missing_openseadragon_is_a_visible_message_not_a_hang(browser, viewer_server):
    tab = Page(browser, viewer_server)
    try:
        tab.page.route("**/openseadragon.min.js*", lambda route: route.fulfill(status=404))
        tab.page.goto(viewer_server + "/")
        banner = tab.page.locator("#banner")
        banner.wait_for()
        assert "Viewer assets missing" in banner.inner_text()
        assert "pip install -e ." in banner.inner_text()
    finally:
        tab.close()


def test_token_is_carried_by_every_request(browser, viewer_data):
    with serve_in_thread([viewer_data.root], token="s3cret") as running:
        tab = Page(browser, running.url.rstrip("/"))
        try:
            urls = []
            tab.page.on("request", lambda request: urls.append(request.url))
            tab.open("?token=s3cret")
            box = tab.page.locator("#viewer").bounding_box()
            tab.page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            tab.page.locator("#results-list .result img").first.wait_for()
            tab.page.wait_for_load_state("networkidle")
            assert not tab.failures, tab.failures
            own = [u for u in urls if u.startswith(running.url) and not u.startswith("data:")]
            assert any(TILE.search(u) for u in own) and any("/search?" in u for u in own)
            assert all("token=s3cret" in u for u in own), [u for u in own if "token" not in u]
        finally:
            tab.close()
