"""Fixtures of the browser tier: ComfyUI's own frontend in headless Chromium, against real servers of each runtime
(0.3.75: the comfyui-frontend-package frontend; 2024-03: the frontend in its web/ folder) with tiny models.

The browser is Debian's chromium (``apt-get install -y chromium``; ``SUPIR_CHROMIUM`` names another binary),
driven by Playwright's Python package through ``executable_path``: nothing is downloaded. Without chromium or
Playwright the tier is skipped, or fails when ``SUPIR_REQUIRE_BROWSER=1`` (CI). Screenshots go to
``$SUPIR_TEST_ARTIFACTS/screenshots`` (default ``<repo>/test-artifacts/screenshots``).
"""
from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from ..server.conftest import _selected_runtimes, serving
from ..server.workflow_server import make_image
from ..workflow_tools import REPO, input_images, load_api, stems

CHROMIUM = os.environ.get("SUPIR_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
VIEWPORT = {"width": 1600, "height": 1000}
READY_TIMEOUT_MS = 90_000
EXTENSIONS = ("FSUPIR.SamplerEffectiveSettings", "FSUPIR.CaptionText", "FSUPIR.Tooltips")
INPUT_SIZE = (64, 48)  # the small image put under the workflows' input name


def _unavailable(message: str):
    if os.environ.get("SUPIR_REQUIRE_BROWSER") == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def playwright_api():
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        _unavailable(f"no Chromium at {CHROMIUM}: install Debian's chromium (apt-get update && apt-get install -y "
                     "chromium, as .ci/run does) or set SUPIR_CHROMIUM to a Chromium binary")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright's Python package is missing: pip install -r tests/requirements.txt "
                     "(no `playwright install` needed)")
    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def browser(playwright_api):
    browser = playwright_api.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield browser
    browser.close()


@pytest.fixture(scope="session")
def screenshots_dir() -> Path:
    root = Path(os.environ.get("SUPIR_TEST_ARTIFACTS") or REPO / "test-artifacts")
    path = root / "screenshots"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _check_extensions_served(server) -> None:
    """Each of the pack's JS files is listed by /extensions and answers 200."""
    urls = [u for u in server.get_json("/extensions") if "/fsupir_" in u]
    assert len(urls) >= 3, f"{server.runtime} lists no FSUPIR extension in /extensions: {urls}"
    for url in urls:
        try:
            urllib.request.urlopen(server.url + url, timeout=30).close()
            continue
        except urllib.error.HTTPError as e:
            status = e.code
        link = url.split("/")[2]
        hint = (" The pack's folder name in custom_nodes contains a space, under which aiohttp serves no static "
                "files; use a name without spaces (SUPIR_PACK_LINK)." if "%20" in link or " " in link else "")
        pytest.fail(f"{server.runtime}: GET {url} answered {status}: the frontend cannot load the pack's "
                    f"JavaScript.{hint}", pytrace=False)


@pytest.fixture(scope="module", params=[pytest.param(r, id=r) for r in _selected_runtimes()])
def ui_server(request, tmp_path_factory, models_root):
    """A server per runtime with the tiny models and a small image under each workflow's input image name."""
    with serving(request.param, tmp_path_factory, models_root) as server:
        inputs = server.log_path.parent / "input"
        for name in set().union(*(input_images(load_api(s)) for s in stems())):
            make_image(*INPUT_SIZE).save(inputs / name)
        settings = server.log_path.parent / "user" / "default" / "comfy.settings.json"
        settings.parent.mkdir(parents=True, exist_ok=True)  # no first-run template dialog, no minimap
        settings.write_text(json.dumps({"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False}))
        _check_extensions_served(server)
        yield server


class Frontend:
    """One browser page on a server's frontend, with its console errors."""

    def __init__(self, page, server):
        self.page, self.server = page, server
        self.errors: list[str] = []
        page.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))

    def open(self) -> None:
        self.page.goto(self.server.url, wait_until="load")
        names = json.dumps(list(EXTENSIONS))
        self.page.wait_for_function(
            f"window.app && app.graph && window.LiteGraph && (app.extensions ?? []).filter("
            f"e => {names}.includes(e.name)).length === {len(EXTENSIONS)}", timeout=READY_TIMEOUT_MS)
        self.page.keyboard.press("Escape")  # any welcome dialog

    def js(self, expression: str, arg=None):
        return self.page.evaluate(expression, arg)

    def ours(self) -> list[str]:
        """Console errors from the pack's JavaScript (js/fsupir_*.js, "[FSUPIR]" messages); the frontend's own
        offline noise (e.g. blocked requests to api.comfy.org about node IDs) is left out."""
        return [e for e in self.errors if "fsupir_" in e or "[FSUPIR]" in e]

    def screenshot(self, path: Path) -> None:
        self.page.screenshot(path=str(path))


@pytest.fixture(scope="module")
def frontend(browser, ui_server):
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    fe = Frontend(page, ui_server)
    fe.open()
    yield fe
    context.close()
