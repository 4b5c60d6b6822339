"""The drawing page of `anynet serve` in a real browser: headless Chromium driven by Selenium.

Debian's `chromium` and `chromedriver` (apt-get install chromium chromium-driver; .ci/run does it
in CI) are used by path, so Selenium never looks for a browser on the network. The model is
trained here, in seconds, on genuine MNIST (784-64-10, 3 epochs, ~97%): a synthetic model
could not read drawn digits. The tests draw digits with mouse strokes on the canvas, upload
MNIST-style pictures through the file chooser, and clear the pad; they wait for what the page
shows, never for a time (the timeouts are hang guards).

Skips, saying why, without chromium and chromedriver, Selenium, or genuine MNIST.
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import threading
from pathlib import Path

import pytest

pytest.importorskip("PIL")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed "
                                 "(pip install 'anynet[test,browser]')")

from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.actions import interaction  # noqa: E402
from selenium.webdriver.common.actions.action_builder import ActionBuilder  # noqa: E402
from selenium.webdriver.common.actions.pointer_input import PointerInput  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from anynet.cli import main  # noqa: E402
from anynet.modelio import load_model  # noqa: E402
from anynet.serve.predictor import Predictor  # noqa: E402
from anynet.serve.server import Server  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "docs" / "digits"
HANG = 60  # seconds: hang guard only


def _find(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def browser(backend_name):
    if backend_name != "numpy":  # the page is the same on every backend (test_serve.py is not)
        pytest.skip("the browser tests run in the numpy session only")
    chromium = os.environ.get("ANYNET_CHROMIUM") or _find("chromium", "chromium-browser")
    driver_path = os.environ.get("ANYNET_CHROMEDRIVER") or _find("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("no chromium/chromedriver installed (apt-get install chromium "
                    "chromium-driver); the browser tests need a real browser")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1000,760", "--force-device-scale-factor=1",
                 "--no-first-run", "--disable-extensions"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(HANG)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def mnist_model(tmp_path_factory, mnist_dir) -> Path:
    """784-64-10 trained for 3 epochs on genuine MNIST: ~97% in a few seconds."""
    path = tmp_path_factory.mktemp("browser") / "mnist64.npz"
    code = main(["train", "--hidden", "64", "--epochs", "3", "--data-dir", str(mnist_dir),
                 "--out", str(path), "--quiet", "--threads", "1"])
    assert code == 0
    return path


def serving(model_path):
    """A server of the model file on 127.0.0.1 in a thread: yields its URL, then stops it."""
    net, record = load_model(model_path)
    yield from serving_predictor(Predictor(net, record, model_path))


def serving_predictor(predictor):
    """A server of `predictor` on 127.0.0.1 in a thread: yields its URL, then stops it."""
    server = Server(("127.0.0.1", 0), predictor, log=False)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.url
    server.shutdown()
    server.server_close()
    predictor.close()
    thread.join(HANG)


@pytest.fixture(scope="module")
def page_url(mnist_model):
    yield from serving(mnist_model)


@pytest.fixture
def page(browser, page_url):
    browser.get_log("browser")  # drop what earlier tests' pages said
    browser.get(page_url)
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#bars li"))  # model described
    return browser


def wait(driver, condition):
    return WebDriverWait(driver, HANG).until(condition)


def settled(driver) -> bool:
    return driver.find_element(By.TAG_NAME, "body").get_attribute("data-busy") == "0"


def shown(driver) -> str:
    """The class the page names once it is done, or "" while it is busy."""
    return driver.find_element(By.ID, "prediction").text if settled(driver) else ""


def draw(driver, strokes: list[list[tuple[float, float]]]) -> None:
    """Draw strokes on the pad with the mouse; points in [0, 1] x [0, 1] of the pad."""
    pad = driver.find_element(By.ID, "pad")
    width, height = pad.size["width"], pad.size["height"]
    for points in strokes:
        # offsets from the pad's centre (Selenium 4)
        xy = [(round((x - 0.5) * width), round((y - 0.5) * height)) for x, y in points]
        actions = ActionChains(driver, duration=10)
        actions.move_to_element_with_offset(pad, *xy[0]).click_and_hold()
        for (x0, y0), (x1, y1) in itertools.pairwise(xy):
            actions.move_by_offset(x1 - x0, y1 - y0)
        actions.release().perform()


def draw_with(driver, kind: str, points: list[tuple[float, float]]) -> None:
    """One stroke with a touch or pen pointer (W3C actions), points in [0, 1] of the pad."""
    pad = driver.find_element(By.ID, "pad")
    width, height = pad.size["width"], pad.size["height"]
    pointer = PointerInput(kind, kind)
    builder = ActionBuilder(driver, mouse=pointer, duration=10)
    xy = [(round((x - 0.5) * width), round((y - 0.5) * height)) for x, y in points]
    pointer.create_pointer_move(duration=0, x=xy[0][0], y=xy[0][1], origin=pad)
    pointer.create_pointer_down(button=0)
    for x, y in xy[1:]:
        pointer.create_pointer_move(duration=10, x=x, y=y, origin=pad)
    pointer.create_pointer_up(button=0)
    builder.perform()


def ring(cx=0.5, cy=0.5, rx=0.24, ry=0.34, n=36) -> list[tuple[float, float]]:
    return [(cx + rx * math.sin(2 * math.pi * i / n), cy - ry * math.cos(2 * math.pi * i / n))
            for i in range(n + 2)]


def line(x0, y0, x1, y1, n=12) -> list[tuple[float, float]]:
    return [(x0 + (x1 - x0) * i / n, y0 + (y1 - y0) * i / n) for i in range(n + 1)]


DRAWN = {
    "1": [line(0.52, 0.15, 0.48, 0.85)],
    "0": [ring()],
    "7": [line(0.25, 0.2, 0.75, 0.2, 8) + line(0.75, 0.2, 0.42, 0.85)[1:]],
}


def bar_probabilities(driver) -> dict[int, float]:
    items = driver.find_elements(By.CSS_SELECTOR, "#bars li")
    return {int(li.get_attribute("data-class")): float(li.get_attribute("data-probability") or 0)
            for li in items}


@pytest.mark.realdata
@pytest.mark.parametrize("digit", sorted(DRAWN))
def test_drawn_digit_is_recognised(page, digit):
    draw(page, DRAWN[digit])
    wait(page, lambda d: shown(d) not in ("", "–"))
    assert shown(page) == digit, bar_probabilities(page)
    probs = bar_probabilities(page)
    assert sorted(probs) == list(range(10)) and max(probs, key=probs.get) == int(digit)
    top = page.find_element(By.CSS_SELECTOR, "#bars li.top")
    assert top.get_attribute("data-class") == digit
    # the bar is drawn as long as its probability (after its 120 ms transition)
    track = top.find_element(By.CSS_SELECTOR, ".track").size["width"]
    wait(page, lambda d: top.find_element(By.CSS_SELECTOR, ".fill").size["width"]
         >= 0.9 * probs[int(digit)] * track > 0)
    # the 28x28 image the network saw is drawn, and has ink
    ink = page.execute_script(
        "const d = document.getElementById('seen').getContext('2d')"
        ".getImageData(0, 0, 28, 28).data; let s = 0;"
        "for (let i = 0; i < d.length; i += 4) s += d[i]; return s;")
    assert ink > 0


@pytest.mark.realdata
def test_page_runs_without_console_errors(page):
    """No script error, no request the Content-Security-Policy blocks, no missing file."""
    draw(page, DRAWN["1"])
    wait(page, lambda d: shown(d) == "1")
    severe = [e for e in page.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []


@pytest.mark.realdata
def test_answers_come_while_drawing(page):
    """The first touch of the pen is sent at once and the finished stroke once more: the page
    shows at least two answers for one stroke, and the last is for the whole digit."""
    draw(page, DRAWN["0"])
    wait(page, lambda d: shown(d) == "0")
    assert int(page.find_element(By.TAG_NAME, "body").get_attribute("data-shown")) >= 2


@pytest.mark.realdata
@pytest.mark.parametrize("kind", [interaction.POINTER_TOUCH, interaction.POINTER_PEN])
def test_touch_and_pen_draw_too(page, kind):
    draw_with(page, kind, DRAWN["1"][0])
    wait(page, lambda d: shown(d) not in ("", "–"))
    assert shown(page) == "1", bar_probabilities(page)


@pytest.mark.realdata
@pytest.mark.parametrize("picture", sorted(p.name for p in DIGITS.glob("*.png")))
def test_uploaded_picture_is_recognised(page, picture):
    expected = {"four.png": "4", "seven.png": "7", "two.png": "2"}[picture]
    page.find_element(By.ID, "file").send_keys(str(DIGITS / picture))
    wait(page, lambda d: shown(d) not in ("", "–"))
    assert shown(page) == expected, bar_probabilities(page)


def drop_file(driver, path: Path, mime: str) -> None:
    """Drop a file on the drawing card, as a user dragging it from their desktop does."""
    import base64

    driver.execute_script(
        "const bytes = Uint8Array.from(atob(arguments[0]), c => c.charCodeAt(0));"
        "const dt = new DataTransfer();"
        "dt.items.add(new File([bytes], arguments[1], {type: arguments[2]}));"
        "const zone = document.getElementById('drop');"
        "zone.dispatchEvent(new DragEvent('dragover', {dataTransfer: dt, bubbles: true,"
        " cancelable: true}));"
        "zone.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true,"
        " cancelable: true}));",
        base64.b64encode(path.read_bytes()).decode(), path.name, mime)


@pytest.mark.realdata
def test_dropped_picture_is_recognised(page, tmp_path):
    drop_file(page, DIGITS / "seven.png", "image/png")
    wait(page, lambda d: shown(d) not in ("", "–"))
    assert shown(page) == "7", bar_probabilities(page)
    # another format is refused on the page, before any request
    gif = tmp_path / "seven.gif"
    from PIL import Image

    Image.open(DIGITS / "seven.png").save(gif)
    drop_file(page, gif, "image/gif")
    wait(page, lambda d: d.find_element(By.ID, "message").text)
    assert "not a PNG or JPEG" in page.find_element(By.ID, "message").text


@pytest.mark.realdata
def test_clear_empties_the_pad_and_the_answer(page):
    draw(page, DRAWN["1"])
    wait(page, lambda d: shown(d) == "1")
    page.find_element(By.ID, "clear").click()
    wait(page, settled)
    assert page.find_element(By.ID, "prediction").text == "–"
    assert set(bar_probabilities(page).values()) == {0.0}
    blank = page.execute_script(
        "const c = document.getElementById('pad'), d = c.getContext('2d')"
        ".getImageData(0, 0, c.width, c.height).data;"
        "return d.every(v => v === 255);")
    assert blank
    # and the next drawing is read afresh
    draw(page, DRAWN["0"])
    wait(page, lambda d: shown(d) not in ("", "–"))
    assert shown(page) == "0"


@pytest.mark.realdata
def test_model_description_and_errors_on_the_page(page, tmp_path):
    model = page.find_element(By.ID, "model").text
    assert "784-64-10" in model and "test accuracy" in model and "trained" in model
    blank = tmp_path / "blank.png"
    from PIL import Image

    Image.new("L", (64, 64), 255).save(blank)
    page.find_element(By.ID, "file").send_keys(str(blank))
    wait(page, lambda d: d.find_element(By.ID, "message").text)
    assert "blank" in page.find_element(By.ID, "message").text
    assert page.find_element(By.ID, "prediction").text == "–"


# --- a model file from a stranger: its record is shown as text, never as markup ---------------

HOSTILE_RECORD = {
    "trained_at": '<meta http-equiv="refresh" content="0; url=/api/model">'
                  '<form id="phish" action="/steal"><input type="password" name="pw"></form>'
                  '<img src="/nope" onerror="document.body.dataset.pwned = 1">',
    "metrics": {"test_accuracy": 0.5, "epochs": 1},
    "data": {"source": "<script>document.body.dataset.pwned = 1</script>"},
}


@pytest.fixture(scope="module")
def hostile_url(tmp_path_factory):
    """A server for a small model whose record holds markup (no MNIST needed)."""
    import numpy as np

    from anynet.modelio import save_model
    from anynet.network import TwoLayerNet

    path = tmp_path_factory.mktemp("hostile") / "hostile.npz"
    rng = np.random.default_rng(0)
    params = {"W1": rng.normal(0, 0.05, (784, 4)), "b1": np.zeros(4),
              "W2": rng.normal(0, 0.5, (4, 10)), "b2": np.zeros(10)}
    save_model(path, TwoLayerNet.from_params({k: v.astype(np.float32) for k, v in params.items()}),
               HOSTILE_RECORD)
    yield from serving(path)


def test_markup_in_a_model_file_is_shown_as_text(browser, hostile_url):
    """The record's trained_at holds a <meta refresh>, a password form and an <img onerror>: the
    page shows them as characters; none becomes an element, nothing runs, nothing navigates."""
    browser.get_log("browser")  # drop what earlier tests' pages said
    browser.get(hostile_url)
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#bars li"))  # model described
    model = browser.find_element(By.ID, "model")
    assert '<meta http-equiv="refresh"' in model.text and "<form" in model.text
    assert model.find_elements(By.CSS_SELECTOR, "*") == model.find_elements(By.TAG_NAME, "b")
    for selector in ("meta[http-equiv]", "form", "input[type=password]", "img"):
        assert browser.find_elements(By.CSS_SELECTOR, selector) == [], selector
    # a round trip to the server later, the page is still where it was: no refresh happened
    page = browser.current_url
    browser.find_element(By.ID, "file").send_keys(str(DIGITS / "seven.png"))
    wait(browser, lambda d: shown(d) not in ("", "–"))
    assert browser.current_url == page
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-pwned") is None
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []


# --- a committee: the page lists its members, as text ----------------------------------------

HOSTILE_NAME = '<img src=x onerror="document.body.dataset.pwned=1">.npz'


@pytest.fixture(scope="module")
def committee_url(mnist_model, tmp_path_factory):
    """A server for a committee of two: the MNIST model, and a copy of it whose file name holds
    markup (a name a stranger may give a file)."""
    import shutil

    from anynet.committee import load_committee

    copy = tmp_path_factory.mktemp("committee") / HOSTILE_NAME
    shutil.copy(mnist_model, copy)
    yield from serving_predictor(Predictor(load_committee([mnist_model, copy])))


@pytest.mark.realdata
def test_a_committee_lists_its_members_and_their_readings(browser, committee_url):
    browser.get_log("browser")
    browser.get(committee_url)
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#bars li"))
    assert browser.find_element(By.ID, "model").text == \
        "committee of 2 networks: the mean of their probabilities"
    members = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#members li")]
    assert len(members) == 2 and members[0].startswith("mnist64.npz: 784-64-10 · test accuracy")
    assert members[1].startswith(HOSTILE_NAME + ": 784-64-10")
    assert browser.find_elements(By.CSS_SELECTOR, "img") == []
    browser.find_element(By.ID, "file").send_keys(str(DIGITS / "seven.png"))
    wait(browser, lambda d: shown(d) not in ("", "–"))
    assert shown(browser) == "7"
    assert browser.find_element(By.ID, "votes").text == "all 2 members read 7"
    assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-pwned") is None
    severe = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []
