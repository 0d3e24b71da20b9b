"""The attention explorer in a real browser: headless Chromium (Debian's package) driven by Playwright.

Clicking a word must draw that word's heatmap where its attention is (checked on canvas pixels), the
layer/head selector must redraw it, hovering must preview another word, and the page must run its
script under its own Content-Security-Policy without errors or network requests.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pytest

from crossfuse.lab.runner import run_lab
from crossfuse.viz.html import write_report
from fake_experiments import BLUE_CELLS, GRID, RED_CELLS, install, run_explorer

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="python package playwright is not installed")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no browser: {CHROMIUM} missing (run `make browser` to install Debian's chromium)")
    with sync_api.sync_playwright() as playwright:
        try:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        except Exception as error:  # only a browser that cannot start is a reason to skip
            pytest.skip(f"no browser: chromium did not start: {type(error).__name__}: {error}"[:300])
        yield browser
        browser.close()


PIXELS = """(canvas) => {
  const d = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let h = 0; for (let i = 0; i < d.length; i++) h = (h * 31 + d[i]) >>> 0;
  return h;
}"""
ALPHA_AT_CELL = """(canvas, [r, c, grid]) => {
  const x = Math.floor((c + 0.5) * canvas.width / grid), y = Math.floor((r + 0.5) * canvas.height / grid);
  return canvas.getContext("2d").getImageData(x, y, 1, 1).data[3];
}"""


def _alpha(canvas, cells: list[tuple[int, int]]) -> float:
    return sum(canvas.evaluate(ALPHA_AT_CELL, [r, c, GRID]) for r, c in cells) / len(cells)


def test_click_word_switch_head_and_hover(browser, tmp_path, monkeypatch) -> None:
    install(monkeypatch, {"explorer": run_explorer})
    lab = run_lab(size="quick", out=tmp_path / "run", stream=io.StringIO())
    report = write_report(lab.out)
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("request", lambda r: None if r.url.startswith(("file:", "data:")) else problems.append(f"request {r.url}"))
    page.goto(report.as_uri())

    canvas = page.locator("figure.ex canvas.heat").first
    select = page.locator("figure.ex select.head").first
    tokens = page.locator("figure.ex .tok")
    # the script ran (allowed by the page's CSP hash) and chose "mean" by default; only the boxes are drawn
    assert canvas.get_attribute("data-view") == "mean"
    assert canvas.get_attribute("data-token") == ""
    blank = canvas.evaluate(PIXELS)
    # the heatmap canvas lies exactly over the image, so patches and boxes line up with the picture
    image_box, canvas_box = page.locator("figure.ex img").first.bounding_box(), canvas.bounding_box()
    assert image_box is not None and canvas_box is not None and image_box["width"] > 100
    assert all(abs(image_box[k] - canvas_box[k]) < 0.5 for k in ("x", "y", "width", "height"))

    # click "red": its heatmap is drawn, strong on the red square's patches, faint on the blue square's
    tokens.nth(1).click()
    assert canvas.get_attribute("data-token") == "red"
    red_mean = canvas.evaluate(PIXELS)
    assert red_mean != blank
    assert _alpha(canvas, RED_CELLS) > 150 > 60 > _alpha(canvas, BLUE_CELLS)
    assert "share in boxes" in page.locator("figure.ex .status").first.inner_text()

    # switch to a head where "red" attends to the blue square: the heatmap moves
    select.select_option("layer 2 / head 3")
    assert canvas.get_attribute("data-view") == "layer 2 / head 3"
    red_swapped = canvas.evaluate(PIXELS)
    assert red_swapped not in (blank, red_mean)
    assert _alpha(canvas, BLUE_CELLS) > 150 > 60 > _alpha(canvas, RED_CELLS)
    # switch heatmap method: "gradient" (listed second, after the default "mean") moves it the same way
    assert select.locator("option").nth(1).get_attribute("value") == "gradient"
    select.select_option("gradient")
    assert canvas.get_attribute("data-view") == "gradient"
    assert _alpha(canvas, BLUE_CELLS) > 150 > 60 > _alpha(canvas, RED_CELLS)
    # back to "mean": the same picture as before (drawing is a function of word and head only)
    select.select_option("mean")
    assert canvas.evaluate(PIXELS) == red_mean

    # hovering "blue" previews it; leaving the word returns to the pinned "red"
    tokens.nth(5).hover()
    assert canvas.get_attribute("data-token") == "blue"
    assert _alpha(canvas, BLUE_CELLS) > 150
    page.mouse.move(5, 5)
    assert canvas.get_attribute("data-token") == "red"
    assert canvas.evaluate(PIXELS) == red_mean

    shot = tmp_path / "explorer.png"
    page.locator("figure.ex").first.screenshot(path=str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
    digest = hashlib.sha256(shot.read_bytes()).hexdigest()[:12]
    print(f"explorer screenshot: {shot} ({digest})")
    assert problems == []
    page.close()
