"""scratchnst.app.studio.static: the page in a real browser (Playwright driving the system's Chromium,
Debian's `chromium` package, which .ci/run installs): upload two images, set the size, Start, watch
the preview change and the loss chart grow, Stop, Download, reload and find the run in the history;
a screenshot that is not blank. Skipped, saying why, only where Playwright or Chromium is missing."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from PIL import Image

sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs Playwright: pip install -e '.[test]'")
CHROMIUM = os.environ.get("SCRATCHNST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium: apt-get install chromium (or set SCRATCHNST_CHROMIUM)")
WAIT_MS = 120_000  # conftest's DEADLINE_S: reaching it is a failure, never a verdict on speed

# Counts the preview's decoded pictures: each `load` of #picture with a new src.
_WATCH = """() => {
  window.previews = 0;
  document.getElementById("picture").addEventListener("load", () => { window.previews += 1; });
}"""


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def test_a_run_in_the_page(studio, browser, pictures, tmp_path):
    content, style = pictures.save("content.png", 64, 48), pictures.save("style.png", 48, 56)
    page = browser.new_page(accept_downloads=True)
    page.set_default_timeout(WAIT_MS)
    page.goto(studio.base + "/")
    page.wait_for_selector("body[data-ready=true]")
    page.set_input_files("#content-file", str(content))
    page.set_input_files("#style-file", str(style))
    page.wait_for_selector("#content-thumbs img")
    page.wait_for_selector("#style-thumbs img")
    page.fill("#size", "48")
    page.fill("#iterations", "2000")  # never reached: the test stops it
    page.click("summary:has-text('More')")
    page.fill("input[name=scales]", "1")
    page.evaluate(_WATCH)
    page.click("#start")
    page.wait_for_function("window.previews >= 3")  # the preview changed at least twice
    page.wait_for_function("Number(document.getElementById('chart').dataset.points) >= 3")
    grown = int(page.get_attribute("#chart", "data-points"))
    page.wait_for_function(f"Number(document.getElementById('chart').dataset.points) > {grown}")  # and it grows
    run_id = page.text_content("#run-title").split()[-1]
    page.click("#stop")
    page.wait_for_function("document.getElementById('status').textContent === 'stopped'")
    with page.expect_download() as download:
        page.click("#download-png")
    saved = tmp_path / "downloaded.png"
    download.value.save_as(saved)
    assert Image.open(saved).size == (48, 36)
    shot = tmp_path / "studio.png"
    page.screenshot(path=str(shot))
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.std() > 10, "the screenshot is blank"
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    page.wait_for_selector(f"#runs li[data-id='{run_id}']")
    assert "stopped" in page.text_content(f"#runs li[data-id='{run_id}']")
