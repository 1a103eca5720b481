"""The training page (/train) in a real headless Chromium: start, watch, pause, resume, stop, bad lr, a pair.

Runs train on the real MNIST split (1 epoch: 550 steps, ~1 s on an idle laptop core). Screenshots go to
test-artifacts/ (gitignored) for a person to look at.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from lenet.config import TrainConfig
from lenet.model import make_model
from lenet.runs import RunDir, read_jsonl
from lenet.serve.app import create_app
from lenet.serve.server import background

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]  # fmt: skip
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
SLOW = 120_000  # ms: a run on a busy machine


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("live") / "runs"


@pytest.fixture(scope="module")
def page(runs_dir, mnist_split):
    sync_api = pytest.importorskip("playwright.sync_api")
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium")
    app = create_app(runs_dir=runs_dir)
    app.state.live.load = lambda dataset, device: mnist_split  # the session's copy: no second read
    errors: list[str] = []
    with background(app) as url, sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 1300})
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"{url}/train")
        page.wait_for_function("document.querySelector('input[name=lr]').value !== ''")
        yield page
        browser.close()
        for run in app.state.live.runs:  # never leave a thread training
            run.stopping = True
            run.go.set()
            run.thread.join(timeout=30)
    assert not errors, errors  # no JavaScript error


def settings(page, **values) -> None:
    """Fill the form: the defaults, then `values` (compare_lr=None unticks the pair)."""
    page.select_option("#preset", "")
    for name, value in {"lr": "0.01", "init_std": "0.1", "batch_size": "100", "epochs": "1", "seed": "0",
                        **values}.items():  # fmt: skip
        if name == "compare_lr":
            continue
        page.fill(f"input[name={name}]", str(value))
    page.set_checked("#compare", values.get("compare_lr") is not None)
    if values.get("compare_lr") is not None:
        page.fill("#compare-lr", str(values["compare_lr"]))


def attribute(page, selector: str, name: str) -> str:
    return page.locator(selector).first.get_attribute(name) or ""


def test_a_run_from_the_page(page, runs_dir, mnist_split):
    settings(page, epochs=2)  # 2 epochs: long enough for several events on a busy machine
    page.click("#start")
    page.wait_for_selector(".run .digits[data-top*=':']", timeout=SLOW)
    page.wait_for_selector("body[data-state=finished]", timeout=SLOW)
    page.wait_for_selector(".run .f-test[data-accuracy]", timeout=SLOW)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "train-one-run.png"), full_page=True)
    assert int(attribute(page, "#loss", "data-updates")) >= 3  # the curve was redrawn as it grew
    assert int(attribute(page, "#loss", "data-points")) == 22  # 2 x 550 steps: a point per 50 and the last
    assert int(attribute(page, "#acc", "data-points")) == 2
    final_top = attribute(page, ".run .digits", "data-top").split(";")
    assert len(final_top) == 50
    # the bars moved: the trained network's first guesses are not the untrained one's (how many events the
    # page saw during a 1-epoch run depends on the machine's load, so compare with the start itself)
    untrained = make_model(TrainConfig(seed=0))(mnist_split.test_x[:50]).argmax(1).tolist()
    trained = [int(top.split(":")[0]) for top in final_top]
    assert sum(a == b for a, b in zip(trained, mnist_split.test_y[:50].tolist(), strict=True)) >= 40
    assert trained != untrained
    assert re.fullmatch(r"\d{2}\.\d\d%", page.locator(".run .f-test").inner_text())
    assert float(attribute(page, ".run .f-test", "data-accuracy")) > 0.8
    assert page.locator(".run .digit-cell").count() == 50
    name = attribute(page, ".run", "data-name")
    assert RunDir(runs_dir / name).finished()


def test_pause_resume_and_stop(page):
    settings(page, epochs=5)
    page.click("#start")
    page.wait_for_function("Number(document.getElementById('loss').dataset.points) >= 1", timeout=SLOW)
    page.click("#pause")
    page.wait_for_selector("body[data-state=paused]", timeout=SLOW)
    assert page.locator("#resume").is_enabled() and page.locator("#pause").is_disabled()
    step = page.locator(".run .f-epoch").inner_text()
    page.wait_for_timeout(600)
    assert page.locator(".run .f-epoch").inner_text() == step  # no step while paused
    page.click("#resume")
    page.wait_for_function(f"document.querySelector('.run .f-epoch').textContent !== {step!r}", timeout=SLOW)
    page.click("#stop")
    page.wait_for_selector("body[data-state=stopped]", timeout=SLOW)
    assert page.locator("#start").is_enabled() and page.locator("#stop").is_disabled()


def test_the_lr_changed_from_the_page(page, runs_dir):
    settings(page, epochs=3)
    page.click("#start")
    page.wait_for_function("Number(document.getElementById('loss').dataset.points) >= 1", timeout=SLOW)
    page.click("#pause")
    page.wait_for_selector("body[data-state=paused]", timeout=SLOW)
    panel = page.locator(".run").last
    panel.locator("input[name=new_lr]").fill("0.03")
    panel.locator(".set-lr button").click()
    page.wait_for_function(
        "[...document.querySelectorAll('.run .f-lr')].pop().textContent.includes('0.03 from the next epoch')",
        timeout=SLOW,
    )
    page.click("#resume")
    page.wait_for_selector("body[data-state=finished]", timeout=SLOW)
    assert panel.locator(".f-lr").inner_text() == "0.0300"
    folder = runs_dir / panel.get_attribute("data-name")
    rows = read_jsonl(folder / "metrics.jsonl")
    # The new lr starts with the epoch after the one the run was paused in: epoch 2 when the pause came in
    # epoch 1, epoch 3 on a machine fast enough to be in epoch 2 by then. config.json records which.
    [[first, lr]] = json.loads((folder / "config.json").read_text())["lr_changes"]
    assert lr == 0.03 and first in (1, 2)
    assert [r["lr"] for r in rows] == [0.01] * first + [0.03] * (3 - first)


def test_a_bad_lr_shows_the_message(page):
    settings(page, lr="-1")
    page.click("#start")
    page.wait_for_selector("#error:not([hidden])")
    assert page.locator("#error").inner_text() == "--lr must be > 0 (got -1.0)"
    settings(page, lr="lots")
    page.click("#start")
    page.wait_for_function("document.getElementById('error').textContent.includes(\"'lots'\")")
    assert page.locator("#error").inner_text() == "--lr must be a float (got 'lots')"


def test_side_by_side(page, runs_dir):
    settings(page, epochs=1, compare_lr="0.1")
    page.click("#start")
    page.wait_for_function("document.querySelectorAll('.run').length === 2", timeout=SLOW)
    assert page.locator("#error").is_hidden()
    page.wait_for_selector("body[data-state=finished]", timeout=SLOW)
    both = "document.querySelectorAll('.run .f-test[data-accuracy]').length === 2"
    page.wait_for_function(both, timeout=SLOW)
    page.screenshot(path=str(ARTIFACTS / "train-side-by-side.png"), full_page=True)
    labels = page.locator(".run .run-label").all_inner_texts()
    assert labels == ["custom, lr 0.01", "custom, lr 0.1"]
    accuracies = [float(a.get_attribute("data-accuracy")) for a in page.locator(".run .f-test").all()]
    assert accuracies[0] > 0.8  # lr 0.01 learns in one epoch; lr 0.1 may stall (the report's claim B)
    assert int(attribute(page, "#loss", "data-points")) == 22  # both curves
    names = [n.get_attribute("data-name") for n in page.locator(".run").all()]
    configs = [RunDir(runs_dir / n).read_config() for n in names]
    assert [c.lr for c in configs] == [0.01, 0.1] and configs[0].seed == configs[1].seed


def test_drawing_against_a_runs_weights(page):
    """After test_side_by_side's pair: a 1 drawn on the small pad, read with the lr-0.01 run's weights."""
    page.select_option("#against", index=0)
    page.click("#live-clear")
    box = page.locator("#livepad").bounding_box()
    x = box["x"] + box["width"] * 0.5
    page.mouse.move(x, box["y"] + box["height"] * 0.15)
    page.mouse.down()
    page.mouse.move(x, box["y"] + box["height"] * 0.85, steps=8)
    page.mouse.up()
    page.wait_for_function("document.getElementById('live-label').dataset.label !== ''", timeout=SLOW)
    assert page.locator("#live-label").get_attribute("data-label") == "1"
    name = attribute(page, ".run", "data-name")  # the first run: lr 0.01
    assert page.locator("#live-about").inner_text().endswith(f"sure, with {name}'s weights now")
    page.screenshot(path=str(ARTIFACTS / "train-draw.png"), full_page=True)


class Recorder:
    """ASGI middleware that notes each request's method, path and answer status: proof that a request the
    browser sent arrived (and was refused), not that the browser never sent it."""

    def __init__(self, app) -> None:
        self.app, self.seen = app, []

    async def __call__(self, scope, receive, send) -> None:
        async def sending(message) -> None:
            if message["type"] == "http.response.start":
                self.seen.append((scope["method"], scope["path"], message["status"]))
            await send(message)

        await self.app(scope, receive, sending)


ATTACK = """async (target) => {
  const url = target + "/api/train/start", body = JSON.stringify({epochs: 1, name: "evil"});
  // the issue's attack: a simple cross-site POST, sent without asking (its answer cannot be read)
  await fetch(url, {method: "POST", mode: "no-cors", headers: {"Content-Type": "text/plain"}, body});
  let json = "answered";  // JSON needs a CORS preflight first, which the server does not approve
  await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"}, body}).catch(() => {
    json = "blocked";
  });
  const frame = document.createElement("iframe");  // and an HTML form, posted into a hidden frame
  frame.name = "sink";
  document.body.append(frame);
  const form = Object.assign(document.createElement("form"),
                             {method: "POST", action: url, enctype: "text/plain", target: "sink"});
  form.append(Object.assign(document.createElement("input"), {name: '{"epochs": 1, "x": "', value: '"}'}));
  document.body.append(form);
  await new Promise((done) => { frame.onload = done; form.submit(); });
  return json;
}"""


def test_a_page_of_another_site_cannot_start_a_training(page, tmp_path):
    """Issue 25: any page the user visited could start a training on their `lenet serve` with a simple POST.
    A page served from another origin (localhost:OTHER, against 127.0.0.1:PORT) tries three ways in a real
    Chromium; each request arrives and is refused, and nothing starts."""
    import http.server
    import threading

    app = create_app(runs_dir=tmp_path / "runs")
    recorder = Recorder(app)

    class Evil(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<!doctype html><title>another site</title><p>hello</p>")

        def log_message(self, *args) -> None:
            pass

    evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Evil)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    tab = page.context.browser.new_page()
    try:
        with background(recorder) as url:
            tab.goto(f"http://localhost:{evil.server_address[1]}/")
            assert tab.evaluate(ATTACK, url) == "blocked"
            assert not app.state.live.runs and not (tmp_path / "runs").exists()
            posts = [(m, s) for m, p, s in recorder.seen if p == "/api/train/start"]
            assert posts.count(("POST", 403)) == 2, recorder.seen  # the fetch and the form: refused
            assert ("POST", 200) not in posts and ("OPTIONS", 405) in posts  # the preflight: not approved
    finally:
        tab.close()
        evil.shutdown()
