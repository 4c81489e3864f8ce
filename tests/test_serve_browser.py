"""The served page in a real browser: headless Chromium uploads a photo and shows its chart.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them when it can)
and the ``selenium`` package; without them the test is skipped and says which is missing.
Set ``PETALNET_SCREENSHOT=path.png`` to keep a screenshot of the page (docs/serve.png).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from conftest import draw_flower

_CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
_DRIVER = shutil.which("chromedriver")
_missing = [
    what
    for what, found in (
        ("the chromium browser (apt-get install chromium)", _CHROMIUM),
        ("chromedriver (apt-get install chromium-driver)", _DRIVER),
    )
    if not found
]
pytestmark = pytest.mark.skipif(bool(_missing), reason=f"needs {' and '.join(_missing)}")


@pytest.fixture
def server(fitted):
    uvicorn = pytest.importorskip("uvicorn")
    from petalnet.serve import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(create_app(fitted), host="127.0.0.1", port=port, log_level="error")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{port}/"
    srv.should_exit = True
    thread.join(10)


@pytest.fixture
def browser():
    """Headless Chromium through selenium; quit afterwards."""
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = str(_CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1100,650"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(str(_DRIVER)))
    yield driver
    driver.quit()


def test_upload_through_the_page_shows_the_top_label(server, browser, fitted, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    photo = tmp_path / "flower.png"
    draw_flower("4", seed=7, size=(240, 200)).save(photo)
    expected = fitted.predict(photo, topk=5)
    browser.get(server)
    browser.find_element(By.ID, "file").send_keys(str(photo))
    verdict = WebDriverWait(browser, 30).until(
        lambda d: d.find_element(By.ID, "verdict").get_attribute("data-label")
    )
    assert verdict == expected[0].label
    rows = browser.find_elements(By.CSS_SELECTOR, "#bars .row .label")
    assert [r.text for r in rows] == [p.label for p in expected]
    assert browser.find_element(By.ID, "error").text == ""
    WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "preview").is_displayed())
    if shot := os.environ.get("PETALNET_SCREENSHOT"):
        Path(shot).parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(shot)


def test_a_failed_upload_leaves_no_broken_image(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    page = tmp_path / "notes.jpg"
    page.write_text("<html>not a photo</html>")
    browser.get(server)
    browser.find_element(By.ID, "file").send_keys(str(page))
    error = WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "error").text or None)
    assert "notes.jpg" in error and "not a readable image" in error
    assert not browser.find_element(By.ID, "preview").is_displayed()
    assert "has-image" not in (browser.find_element(By.ID, "drop").get_attribute("class") or "")
