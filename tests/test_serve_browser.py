"""The drawing page in a real headless Chromium: draw with the mouse, read the label the page shows.

Screenshots go to test-artifacts/ (gitignored) for a person to look at.
"""

from __future__ import annotations

import itertools
import math
import re
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from lenet.model import SHAPE
from lenet.serve.app import create_app
from lenet.serve.server import background

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]  # fmt: skip
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


@pytest.fixture(scope="module")
def app():
    return create_app()


@pytest.fixture(scope="module")
def browser(tmp_path_factory, app):
    """Opens the page in a fresh Chromium profile: browser(**context options) -> page, ready to draw."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
    errors: list[str] = []
    with background(app) as url, sync_api.sync_playwright() as pw, ExitStack() as contexts:

        def open_page(**options):
            profile = tmp_path_factory.mktemp("chromium-profile")  # a fresh user-data-dir
            context = pw.chromium.launch_persistent_context(
                str(profile), executable_path=str(CHROMIUM), args=ARGS, headless=True, **options
            )
            contexts.callback(context.close)
            page = context.pages[0] if context.pages else context.new_page()
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.wait_for_selector("#facts dt:text('parameters')")
            return page

        yield open_page
    assert not errors, errors  # no JavaScript error on any page


@pytest.fixture(scope="module")
def page(browser):
    return browser(viewport={"width": 1000, "height": 900})


def stroke(page, points: list[tuple[float, float]]) -> None:
    """One pen stroke through `points`, given as fractions of the pad's width and height."""
    box = page.locator("#pad").bounding_box()
    xy = [(box["x"] + fx * box["width"], box["y"] + fy * box["height"]) for fx, fy in points]
    page.mouse.move(*xy[0])
    page.mouse.down()
    for x, y in xy[1:]:
        page.mouse.move(x, y, steps=3)
    page.mouse.up()


def settled_label(page) -> str:
    """The label the page shows once no prediction is pending."""
    page.wait_for_selector("body[data-state=idle]", timeout=10_000)
    return page.locator("#label").get_attribute("data-label")


def test_drawing_a_one_then_a_zero(page):
    page.keyboard.press("Escape")  # clears the pad (the Clear button is disabled while it is empty)
    assert settled_label(page) == ""
    stroke(page, [(0.5, 0.15 + 0.7 * i / 20) for i in range(21)])  # a vertical bar
    assert settled_label(page) == "1"
    assert page.locator("#bars li.top .digit").inner_text() == "1"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve-one.png"), full_page=True)

    page.click("#clear")
    assert settled_label(page) == ""
    loop = [
        (0.5 + 0.22 * math.sin(2 * math.pi * i / 40), 0.5 - 0.32 * math.cos(2 * math.pi * i / 40))
        for i in range(43)
    ]
    stroke(page, loop)
    assert settled_label(page) == "0"
    page.screenshot(path=str(ARTIFACTS / "serve-zero.png"), full_page=True)


def canvas_sizes(page, selector: str) -> list[list[int]]:
    return page.locator(selector).evaluate_all("cs => cs.map(c => [c.width, c.height])")


def test_the_pictures_follow_the_model_shape(page):
    """One conv1 canvas per filter, each conv1_side wide, and an input canvas of the image's side, as
    lenet.model.SHAPE says; drawing paints them all."""
    assert canvas_sizes(page, "canvas.fmap") == [[SHAPE.conv1_side] * 2] * SHAPE.conv1
    assert canvas_sizes(page, "canvas#input") == [[SHAPE.image] * 2]
    hint = page.locator(".seen .hint").inner_text()
    assert f"conv1's {SHAPE.conv1} {SHAPE.kernel}x{SHAPE.kernel} filters" in " ".join(hint.split())
    assert f"{SHAPE.parameter_count():,}-parameter" in page.locator("header .sub").inner_text()
    page.keyboard.press("Escape")
    stroke(page, [(0.5, 0.15 + 0.7 * i / 20) for i in range(21)])
    assert settled_label(page) == "1"
    lit = page.locator("canvas").evaluate_all(
        "cs => cs.filter(c => c.id !== 'pad').map(c => c.getContext('2d')"
        ".getImageData(0, 0, c.width, c.height).data.some((v, i) => i % 4 !== 3 && v > 0))"
    )
    assert lit == [True] * (1 + SHAPE.conv1)  # the input and every map show something


def test_the_page_builds_what_api_model_says(browser, app):
    """Served a model of another shape, the page makes that many canvases of that size: none is hard-coded."""
    other = {**SHAPE.to_dict(), "image": 32, "conv1": SHAPE.conv1 + 2, "conv1_side": 28}
    predictor = app.state.predictor
    facts = predictor.facts
    predictor.facts = {**facts, "shape": other}
    try:
        page = browser(viewport={"width": 1000, "height": 900})
    finally:
        predictor.facts = facts
    assert canvas_sizes(page, "canvas.fmap") == [[28, 28]] * (SHAPE.conv1 + 2)
    assert canvas_sizes(page, "canvas#input") == [[32, 32]]
    captions = page.locator(".maps figcaption").all_inner_texts()
    assert captions[0] == "32x32 input" and captions[-1] == f"conv1 map {SHAPE.conv1 + 2}"


def test_the_model_card_is_lenet_config_describe(page, app):
    """The card said "plain SGD, lr 0.008, 80 epochs, batch 256, init std 0.1 (fc 1)" for the shipped AdamW
    model: app.js built its own text. Now it shows /api/model's description, lenet.config.describe's."""
    card = dict(zip(page.locator("#facts dt").all_inner_texts(), page.locator("#facts dd").all_inner_texts(),
                    strict=True))  # fmt: skip
    assert card["recipe"] == app.state.predictor.facts["description"]
    assert card["recipe"].startswith("AdamW") and "He init" in card["recipe"] and "SGD" not in card["recipe"]


def test_undo_takes_back_the_last_stroke(page):
    page.keyboard.press("Escape")
    stroke(page, [(0.5, 0.15 + 0.7 * i / 20) for i in range(21)])
    assert settled_label(page) == "1"
    stroke(page, [(0.2, 0.5), (0.8, 0.5)])  # a cross-bar: no longer a plain 1
    settled_label(page)
    page.click("#undo")
    assert settled_label(page) == "1"
    page.click("#undo")
    assert settled_label(page) == ""
    assert page.locator("#label").inner_text() == "?"
    assert page.locator("#undo").is_disabled() and page.locator("#clear").is_disabled()


def test_drawing_with_a_finger(browser):
    """Touch input on a phone-sized screen: pointer events cover mouse, pen and touch alike."""
    page = browser(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True)
    cdp = page.context.new_cdp_session(page)
    box = page.locator("#pad").bounding_box()

    def touch(kind: str, fx: float = 0, fy: float = 0) -> None:
        x, y = box["x"] + fx * box["width"], box["y"] + fy * box["height"]
        points = [] if kind == "touchEnd" else [{"x": x, "y": y}]
        cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": points})

    corners = [(0.25, 0.2), (0.75, 0.2), (0.65, 0.45), (0.5, 0.8)]  # a 7: the bar, then down to the left
    touch("touchStart", *corners[0])
    for (x0, y0), (x1, y1) in itertools.pairwise(corners):
        for i in range(1, 9):
            touch("touchMove", x0 + (x1 - x0) * i / 8, y0 + (y1 - y0) * i / 8)
    touch("touchEnd")
    assert settled_label(page) == "7"
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve-phone-seven.png"), full_page=True)


def test_the_api_docs_work_with_the_network_cut_off(browser):
    """/docs was blank without internet (Swagger UI from a CDN). With every request to another host refused,
    Swagger UI and ReDoc both show the API, and none of them tried to reach another host."""
    page = browser(viewport={"width": 1200, "height": 900})
    base = page.url.rstrip("/")
    here = urlsplit(base).netloc
    outside: list[str] = []

    def only_here(route) -> None:
        if urlsplit(route.request.url).netloc == here:
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_here)
    page.goto(f"{base}/docs")
    page.wait_for_selector(".opblock-summary-path", timeout=30_000)
    paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert {"/api/predict", "/api/model", "/api/train/start", "/api/train/speed"} <= set(paths)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "docs-offline.png"))
    page.goto(f"{base}/redoc")
    page.wait_for_selector("text=Read one digit from an image", timeout=30_000)
    assert page.locator("link[rel~=icon]").get_attribute("href") == "/favicon.ico"
    assert (
        outside == []
    )  # (ReDoc's menu logo from its CDN is refused by the page's policy before any request)


def test_the_page_shows_the_runner_up_and_a_model_card(page):
    """It said '100.0% sure' on everything and had no data set, intended use or limits."""
    page.keyboard.press("Escape")
    stroke(page, [(0.5, 0.15 + 0.7 * i / 20) for i in range(21)])
    assert settled_label(page) == "1"
    said = page.locator("#confidence").inner_text()
    runner_up = page.locator("#confidence").get_attribute("data-runner-up")
    assert re.fullmatch(
        rf"(>99\.9|\d{{1,2}}\.\d)% sure \(calibrated\); runner-up {runner_up}: (<0\.1|\d+\.\d)%", said
    )
    assert runner_up != "1" and "100.0%" not in page.locator(".result").inner_text()
    card = page.locator("#card")
    assert card.locator("dt").all_inner_texts() == ["data set", "intended use", "limits", "confidence"]
    assert card.locator("dd").first.inner_text().startswith("MNIST")
    assert card.locator("li").count() >= 3
    page.screenshot(path=str(ARTIFACTS / "serve-card.png"), full_page=True)
