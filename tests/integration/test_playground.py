"""The web playground in headless Chromium (Debian's chromium + chromium-driver, driven by selenium): a prompt
submitted in the page shows intermediate denoising frames (masks still visible) and then the final text; in
picture mode a caption shows the picture being drawn (masked patches, then the finished picture)."""

import shutil

import pytest

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

import dlm  # noqa: E402

from .test_serve import Server  # noqa: E402
from .test_serve_images import from_url, has_masked_patch, multimodal_folder  # noqa: E402

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs Debian chromium + chromium-driver")


@pytest.fixture(scope="module")
def browser():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(a)
    d = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield d
    d.quit()


@pytest.fixture(scope="module")
def server():
    s = Server(dlm.load("builtin"), model_name="builtin")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def picture_server(tmp_path_factory):
    s = Server(dlm.load(multimodal_folder(tmp_path_factory.mktemp("mm"))), model_name="tiny-mm")
    yield s
    s.stop()


def _set(browser, **fields):
    for name, value in fields.items():
        box = browser.find_element(By.ID, name)
        box.clear()
        box.send_keys(str(value))


def _watch(browser, look):
    """Call `look()` on every poll (selenium's WebDriverWait, 20 ms apart) until it returns True (the page says
    done), or give up after a minute: the page's state is then asserted by the caller, not the time taken."""
    try:
        WebDriverWait(browser, 60, poll_frequency=0.02).until(lambda _: look())
    except TimeoutException:
        pass


def _run(browser):
    canvas = browser.find_element(By.ID, "canvas")
    seen = []

    def look():
        if not seen and "░" in canvas.text and int(canvas.get_attribute("data-frames") or 0) >= 1:
            seen.append(True)  # an intermediate frame: some positions still masked
        return canvas.get_attribute("data-done") == "true"

    _watch(browser, look)
    return canvas, bool(seen)


def test_playground_shows_frames_then_the_text(browser, server):
    browser.get(server.url + "/")
    assert "dlm playground" in browser.title
    _set(browser, max_tokens=32, steps=32, delay=40)
    browser.find_element(By.ID, "go").click()
    canvas, seen_masked = _run(browser)
    assert seen_masked, "no intermediate frame with masks was shown"
    assert canvas.get_attribute("data-done") == "true"
    frames = int(canvas.get_attribute("data-frames"))
    assert frames >= 2
    final = canvas.get_attribute("data-text")
    assert "░" not in canvas.text and canvas.text.startswith("def fibonacci(n):") and final.strip() in canvas.text
    assert "done:" in browser.find_element(By.ID, "status").text


def test_playground_infill_mode(browser, server):
    browser.get(server.url + "/")
    browser.find_element(By.CSS_SELECTOR, "input[name=mode][value=infill]").click()
    assert browser.find_element(By.ID, "suffix").is_displayed()
    _set(browser, max_tokens=8, steps=8, block_length=8)
    browser.find_element(By.ID, "go").click()
    canvas, seen_masked = _run(browser)
    assert seen_masked and canvas.get_attribute("data-done") == "true"
    assert canvas.text.rstrip().endswith("return result")  # the suffix stays where it is


def test_playground_picture_mode_shows_the_picture_being_drawn(browser, picture_server):
    """A caption in picture mode: the <img> (scaled up, pixelated) shows a frame with masked patches, then the
    finished picture, both PNG data URLs of the model's size."""
    browser.get(picture_server.url + "/")
    browser.find_element(By.CSS_SELECTOR, "input[name=mode][value=picture]").click()
    img = browser.find_element(By.ID, "picture")
    assert img.is_displayed() and not browser.find_element(By.ID, "canvas").is_displayed()
    assert img.value_of_css_property("image-rendering") == "pixelated" and img.size["width"] > 16  # scaled up
    _set(browser, prompt="a blue square", steps=16, temperature=0, delay=80)
    browser.find_element(By.ID, "go").click()
    read = "const i = document.getElementById('picture'); return [i.src, i.dataset.masked, i.dataset.done];"
    frames = []

    def look():
        src, masked, done = browser.execute_script(read)
        if not frames and src and int(masked or 0) > 0 and done != "true":
            frames.append(src)  # a frame with some patches still masked
        return done == "true"

    _watch(browser, look)
    src, _, done = browser.execute_script(read)
    assert done == "true", browser.find_element(By.ID, "status").text
    intermediate = frames[0] if frames else None
    assert intermediate is not None, "no intermediate frame with masked patches was shown"
    assert intermediate.startswith("data:image/png;base64,") and src.startswith("data:image/png;base64,")
    assert src != intermediate
    first, final = from_url(intermediate), from_url(src)
    assert first.size == final.size == (16, 16)
    assert has_masked_patch(first) and not has_masked_patch(final)
    assert int(img.get_attribute("data-frames")) >= 2 and "done:" in browser.find_element(By.ID, "status").text


def test_playground_picture_mode_is_off_for_a_text_model(browser, server):
    browser.get(server.url + "/")
    assert not browser.find_element(By.CSS_SELECTOR, "input[name=mode][value=picture]").is_enabled()
