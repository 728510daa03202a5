"""Remake the README's viewer screenshots from a demo folder (`make demo` first):

    python docs/images/viewer_screenshots.py demo_out [--slide synth_006]

Serves the folder on 127.0.0.1, drives Debian's chromium with Playwright, and writes
docs/images/viewer.jpg (a test slide with its heatmap, annotations and FROC outcomes) and
docs/images/viewer_search.jpg (zoomed on a lesion, with the similar regions of a click).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from playwright.sync_api import sync_playwright

from exaslide.viewer import serve_in_thread

HERE = Path(__file__).resolve().parent
SETTLED = """() => {
    const s = window.exaslide;
    if (!s || !s.opened || !s.overlaysReady) return false;
    const w = s.viewer.world;
    for (let i = 0; i < w.getItemCount(); i += 1) {
        const item = w.getItemAt(i);
        if (item.getOpacity() > 0 && !item.getFullyLoaded()) return false;
    }
    const vp = s.viewer.viewport;
    return Math.abs(vp.getZoom(true) / vp.getZoom(false) - 1) < 1e-6;
}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--slide", default="synth_006")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    with serve_in_thread([args.folder]) as running, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"))
        page = browser.new_page(viewport={"width": 1400, "height": 820})
        page.goto(f"{running.url}#slide={args.slide}")
        page.wait_for_function(SETTLED, timeout=60_000)
        page.wait_for_timeout(500)
        page.screenshot(path=args.out / "viewer.jpg", quality=85)
        lesion = page.evaluate("""() => {
            const a = window.exaslide.overlays.find(o => o.kind === "annotations");
            const ring = a.features.find(f => f.type === "polygon").rings[0];
            const xs = ring.map(p => p[0]), ys = ring.map(p => p[1]);
            const middle = (v) => (Math.min(...v) + Math.max(...v)) / 2;
            return [middle(xs), middle(ys)];
        }""")
        page.goto(f"{running.url}#slide={args.slide}&x={lesion[0]:.0f}&y={lesion[1]:.0f}"
                  "&zoom=0.5")
        page.reload()
        page.wait_for_function(SETTLED, timeout=60_000)
        box = page.locator("#viewer").bounding_box()
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.locator("#results-list .result img").first.wait_for(timeout=60_000)
        page.wait_for_load_state("networkidle")
        page.wait_for_timeout(500)
        page.screenshot(path=args.out / "viewer_search.jpg", quality=85)
        browser.close()


if __name__ == "__main__":
    main()
