"""End to end: the real page on 127.0.0.1, driven in headless Chromium (Debian's, FIELD_NOTES section 1).

Uploads a picture, presses the button, waits for the result, downloads the cloaked PNG and checks it: same size as
the input, L-inf within the budget, the very bytes the library wrote; then the zip of all results. With
``CLOAK_SCREENSHOT=1`` it also saves the page with its result to ``docs/screenshot.png`` (shown in the README).
"""

from __future__ import annotations

import json
import os
import socket
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cloak.imageio import load_artwork
from cloak.metrics import linf

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "screenshot.png"


def _playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing (apt-get install chromium; .ci/run installs it)"
        if os.environ.get("CI"):  # CI must really drive the page: a skip there would hide a broken install
            pytest.fail(message)
        pytest.skip(message)
    return sync_playwright


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _painting(height: int = 240, width: int = 320) -> np.ndarray:
    """A small landscape (sky, sun, hills, strokes), so that the screenshot looks like a page for artists."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    sky = np.stack([110 + 100 * y / height, 150 + 60 * y / height, 235 - 40 * y / height], axis=2)
    sun = ((x - 0.72 * width) ** 2 + (y - 0.28 * height) ** 2) < (0.09 * width) ** 2
    sky[sun] = [255, 214, 120]
    far = y > 0.55 * height + 0.08 * height * np.sin(x / width * 5.0)
    sky[far] = np.stack([70 + 0 * x, 120 + 30 * np.sin(x / 17.0), 90 + 0 * x], axis=2)[far]
    near = y > 0.72 * height + 0.06 * height * np.sin(x / width * 9.0 + 1.0)
    strokes = 18 * np.sin(x / 3.0 + y / 5.0)
    sky[near] = np.stack([140 + strokes, 110 + strokes, 50 + 0 * x], axis=2)[near]
    return np.clip(sky, 0, 255).astype(np.uint8)


@pytest.fixture
def server(tiny_components, tmp_path):
    """The real page (``gradio_app.serve``) with the tiny model, on a free port of 127.0.0.1."""
    import torch

    from gradio_app import serve
    from gradio_app.handlers import backend_for

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny images; a second thread only waits on a busy two-core machine
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    backend = backend_for(tiny_components, "tiny", work_root=tmp_path / "work")
    port = _free_port()
    demo = serve(backend, host="127.0.0.1", port=port, block=False)
    yield f"http://127.0.0.1:{port}/"
    demo.close()
    torch.set_num_threads(threads)


def test_cloak_an_image_in_the_browser(server, tmp_path):
    sync_playwright = _playwright()
    from playwright.sync_api import expect

    source = tmp_path / "landscape.png"
    Image.fromarray(_painting()).save(source)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True)
        try:
            page = browser.new_page(accept_downloads=True, viewport={"width": 1440, "height": 1000})
            page.goto(server)
            expect(page.locator("#protect")).to_be_visible(timeout=20_000)
            page.locator("#uploads input[type=file]").set_input_files(str(source))
            expect(page.locator("#estimate")).to_contain_text("Estimated time", timeout=20_000)
            page.locator("#protect").click()
            expect(page.locator("#summary")).to_contain_text("1 image protected", timeout=30_000)
            link = page.locator('#download-each a[download="landscape.png"]')
            with page.expect_download(timeout=10_000) as info:
                link.click()
            downloaded = tmp_path / "downloaded.png"
            info.value.save_as(downloaded)
            with page.expect_download(timeout=10_000) as info:
                page.locator('#download-all a[download="cloaked-images.zip"]').click()
            archive = tmp_path / "downloaded.zip"
            info.value.save_as(archive)
            if os.environ.get("CLOAK_SCREENSHOT") == "1":
                expect(page.locator("#before img, #after img").first).to_be_visible(timeout=10_000)
                page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()

    original, cloaked = load_artwork(source), load_artwork(downloaded)
    assert cloaked.size == original.size == (320, 240)
    assert 0 < linf(original.rgb, cloaked.rgb) <= 8  # the default preset's budget, measured on the download
    written = sorted((tmp_path / "work").glob("run-*/cloaked/landscape.png"))
    assert len(written) == 1 and downloaded.read_bytes() == written[0].read_bytes()  # what the library wrote
    with zipfile.ZipFile(archive) as zf:
        assert sorted(zf.namelist()) == ["landscape.cloak.json", "landscape.png"]
        assert zf.read("landscape.png") == downloaded.read_bytes()
        assert json.loads(zf.read("landscape.cloak.json"))["linf"] == linf(original.rgb, cloaked.rgb)
