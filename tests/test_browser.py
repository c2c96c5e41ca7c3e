"""The HTML view and the playground in a real headless Chromium (Debian's `chromium` + `chromium-driver`, driven by
Selenium): expand a repeat in place, hover for a node's facts, select a block's circuit diagram; type a mistake into
the playground and see it located, fix it and see the table and diagrams follow. Screenshots go to tmp_path, and
are copied to $NNSPEC_SCREENSHOTS when that is set (CI keeps them as artefacts). Skips, saying why, only where
Chromium, its driver or Selenium is missing."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from nnspec.commands.serve import STARTER
from nnspec.pipeline import Pipeline
from nnspec.web.page import page_html, payload

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")
FC1 = "    h = relu(linear(x, d_hidden, name=fc1))"
FC1_LINE = STARTER.splitlines().index(FC1) + 1

if not (CHROMIUM and DRIVER):
    pytest.skip("needs Chromium and chromedriver (Debian: apt-get install chromium chromium-driver)",
                allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the dev extra)")
pytest.importorskip("uvicorn", reason="needs the web extra")

from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from nnspec.web.app import create_app  # noqa: E402
from nnspec.web.server import serving  # noqa: E402


@pytest.fixture(scope="module")
def browser():
    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", "--force-device-scale-factor=1"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=Service(DRIVER))
    yield driver
    driver.quit()


def _shot(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000          # a page was drawn, not a blank frame
    keep = os.environ.get("NNSPEC_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / name)
    return path


def _wait(driver, cond, timeout: float = 30):
    # the page redraws the view on each answer: an element read mid-redraw is stale, and read again
    return WebDriverWait(driver, timeout, poll_frequency=0.05,
                         ignored_exceptions=[StaleElementReferenceException]).until(lambda d: cond(d))


def test_html_view_expands_repeats_in_place_and_shows_facts(browser, tmp_path):
    d = 64
    result = Pipeline(ROOT / "examples" / "gpt2.yaml",
                      overrides={"n_layer": 2, "n_embd": d, "n_head": 4, "vocab_size": 101}).checked
    page = tmp_path / "gpt2.html"
    page.write_text(page_html(payload(result)))
    browser.get(page.as_uri())
    repeat = _wait(browser, lambda b: b.find_element(By.CSS_SELECTOR, '.block[data-kind="repeat"]'))
    assert "collapsed" in repeat.get_attribute("class")
    assert not repeat.find_elements(By.CSS_SELECTOR, ".node")         # the body is drawn when first opened
    repeat.find_element(By.CSS_SELECTOR, ".toggle").click()
    assert "collapsed" not in repeat.get_attribute("class")
    labels = [e.text for e in repeat.find_elements(By.CSS_SELECTOR, ":scope > .children > .node .label")]
    assert labels[0] == "x" and "ln_1" in labels and "ln_2" in labels
    assert "feeds the next iteration" in repeat.find_element(By.CSS_SELECTOR, ".loop").text
    # the attention call inside, expanded in place too; hover its qkv projection for its facts
    attn = repeat.find_element(By.CSS_SELECTOR, '.block[data-kind="call"][data-block="attention"]')
    attn.find_element(By.CSS_SELECTOR, ".toggle").click()
    qkv = next(n for n in attn.find_elements(By.CSS_SELECTOR, ".node") if n.text.startswith("qkv"))
    ActionChains(browser).move_to_element(qkv).perform()
    info = browser.find_element(By.ID, "info")
    facts = {e.get_attribute("data-fact"): e.text for e in info.find_elements(By.CSS_SELECTOR, "dd")}
    assert facts["params"] == f"{3 * d * d + 3 * d:,}" and facts["shape"] == "B x T x 3*n_embd"
    assert facts["op"] == "linear" and facts["dtype"] == "float32"
    # clicking the block shows its circuit diagram
    attn.find_element(By.CSS_SELECTOR, ".block-head").click()
    circuit = browser.find_element(By.ID, "circuit")
    assert circuit.get_attribute("data-block") == "attention"
    assert circuit.find_elements(By.CSS_SELECTOR, "svg [data-role='wire']")
    rows = browser.find_elements(By.CSS_SELECTOR, "#summary tr")
    assert rows[-1].text.startswith("total") and f"{result.params:,}" in rows[-1].text
    browser.execute_script("window.scrollTo(0, 0);")
    _shot(browser, tmp_path, "html_view.png")


def test_playground_locates_an_error_and_follows_the_fix(browser, tmp_path):
    with serving(create_app(STARTER, limit_s=30)) as url:
        browser.get(url + "/")
        status = browser.find_element(By.ID, "status")
        _wait(browser, lambda b: status.text.startswith("ok"))
        total = browser.find_elements(By.CSS_SELECTOR, "#summary tr")[-1]
        assert f"{64 * 256 + 256 + 256 * 10 + 10:,}" in total.text
        browser.find_element(By.CSS_SELECTOR, '.block[data-block="mlp"] .block-head').click()
        before = browser.find_element(By.CSS_SELECTOR, "#circuit svg").get_attribute("outerHTML")
        editor = browser.find_element(By.ID, "spec")
        # put the caret after `relu(linea` on the fc1 line and type one wrong letter, as a person would
        start = STARTER.index(FC1) + FC1.index("linear(") + len("linea")
        browser.execute_script("arguments[0].focus(); arguments[0].setSelectionRange(arguments[1], arguments[1]);",
                               editor, start)
        editor.send_keys("a")
        _wait(browser, lambda b: status.text.endswith("error(s)"))
        marked = browser.find_element(By.CSS_SELECTOR, "#gutter .err-line")
        assert marked.get_attribute("data-line") == str(FC1_LINE)
        assert browser.find_element(By.ID, "mark").get_attribute("data-line") == str(FC1_LINE)
        assert browser.find_element(By.ID, "mark").is_displayed()
        message = browser.find_element(By.CSS_SELECTOR, "#diagnostics .diagnostic").text
        assert message.startswith(f"line {FC1_LINE}, col {FC1.index('linear') + 1}:") and "lineaar" in message
        _shot(browser, tmp_path, "playground_error.png")
        # fix it (one backspace) and halve the hidden width from the dims box: table and diagram follow, no reload
        browser.execute_script("window.__same_page = true;")
        editor.send_keys("\b")
        _wait(browser, lambda b: status.text.startswith("ok"))
        assert not browser.find_elements(By.CSS_SELECTOR, "#gutter .err-line")
        # swap the activation: select `relu` on the fc1 line and type over it; the selected block's circuit redraws
        at = STARTER.index(FC1) + FC1.index("relu")
        browser.execute_script("arguments[0].setSelectionRange(arguments[1], arguments[1] + 4);", editor, at)
        editor.send_keys("silu")
        _wait(browser, lambda b: status.text.startswith("ok") and b.find_element(
            By.CSS_SELECTOR, "#circuit svg").get_attribute("outerHTML") != before)
        assert browser.find_element(By.ID, "circuit").get_attribute("data-block") == "mlp"
        assert "silu" in browser.find_element(By.CSS_SELECTOR, "#circuit svg").get_attribute("outerHTML")
        browser.find_element(By.ID, "sets").send_keys("d_hidden=128")
        want = f"{64 * 128 + 128 + 128 * 10 + 10:,}"
        _wait(browser, lambda b: want in b.find_elements(By.CSS_SELECTOR, "#summary tr")[-1].text)
        assert browser.execute_script("return window.__same_page === true;")   # updated in place
        _shot(browser, tmp_path, "playground.png")
