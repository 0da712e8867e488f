"""End-to-end: the real server (``python -m web``) driven by headless Chromium through Selenium.

Pastes an essay and reads the score off the page, shows the error for an empty essay and
the warning for a too-short one, uploads a CSV, watches the table fill, downloads the scored
CSV, rejects a bad CSV (progress reset, error shown) and checks that teachers see no internal
model names or metrics unless they open "Technical details".
Set ``AES_WEB_SCREENSHOT=<png path>`` to also save a screenshot of the scored page.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from aes_core.serving.base import score_frame
from aes_core.serving.loader import load_scorer
from aes_core.serving.triton import free_port
from tests.conftest import write_profile
from tests.serving_support import repeated_paragraph_essay
from tests.web_support import build_storage, sample_essays, web_config, web_overrides
from web.essay_warnings import TOO_SHORT

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
PROJECT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason=f"{CHROMIUM} is absent: apt-get install chromium chromium-driver"),
]


@contextlib.contextmanager
def _serve(tmp: Path, storage: Path, name: str) -> Iterator[str]:
    """Run ``python -m web`` on a free port with a profile for ``storage``; yields its URL."""
    profile = write_profile(tmp, web_overrides(tmp, storage), name=name)
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(PROJECT)}
    log_path = tmp / f"{name}.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed in the teardown below
    proc = subprocess.Popen([sys.executable, "-m", "web", "--profile", str(profile),
                             "--port", str(port), "--no-triton"], cwd=PROJECT, env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"web server did not start:\n{log_path.read_text()}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory, tiny_backbone):
    """Start ``python -m web`` on a free port with a profile pointing at a tiny ensemble."""
    tmp = tmp_path_factory.mktemp("web_browser")
    storage = build_storage(tmp / "storage", tiny_backbone)
    with _serve(tmp, storage, "webtest") as url:
        yield {"url": url, "tmp": tmp, "cfg": web_config(tmp, storage)}


@pytest.fixture(scope="module")
def flag_site(tmp_path_factory, tiny_backbone):
    """The same page on a bundle that holds an essay flagger."""
    tmp = tmp_path_factory.mktemp("web_browser_flags")
    storage = build_storage(tmp / "storage", tiny_backbone, flags=True)
    with _serve(tmp, storage, "webflags") as url:
        yield {"url": url, "tmp": tmp, "cfg": web_config(tmp, storage)}


@pytest.fixture(scope="module")
def browser(site):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    downloads = site["tmp"] / "downloads"
    downloads.mkdir()
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--window-size=1200,1500",
                 f"--user-data-dir={site['tmp'] / 'chrome-profile'}"):
        opts.add_argument(flag)
    opts.add_experimental_option("prefs", {
        "download.default_directory": str(downloads), "download.prompt_for_download": False,
    })
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(30)
    driver.downloads = downloads
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, cond, timeout: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(cond)


def _visible_text(driver, element_id: str) -> str:
    el = driver.find_element("id", element_id)
    return el.text if el.is_displayed() else ""


def _set_essay(driver, text: str) -> None:
    box = driver.find_element("id", "essay-text")
    driver.execute_script("arguments[0].value = arguments[1];"
                          "arguments[0].dispatchEvent(new Event('input'));", box, text)


def _internal_names(site) -> list[str]:
    return list(load_scorer(site["cfg"]).ensemble.members)


def test_paste_an_essay_and_read_the_score(site, browser):
    essay = sample_essays(3).iloc[2]
    ref = score_frame(load_scorer(site["cfg"]),
                      pd.DataFrame({"essay_id": ["x"], "full_text": [essay["full_text"]]}))
    browser.get(site["url"] + "/")
    _wait(browser, lambda d: "ensemble of 2 models" in d.find_element("id", "model-info").text)

    # an empty essay shows a clear error and no score
    browser.find_element("id", "score-btn").click()
    assert "empty" in _wait(browser, lambda d: _visible_text(d, "paste-error"))
    assert not browser.find_element("id", "result").is_displayed()

    box = browser.find_element("id", "essay-text")
    _set_essay(browser, essay["full_text"][:-40])
    box.send_keys(essay["full_text"][-40:])  # real typing for the last characters
    assert f"{len(essay['full_text']):,} characters" in browser.find_element(
        "id", "char-count").text
    browser.find_element("id", "score-btn").click()
    _wait(browser, lambda d: d.find_element("id", "result").is_displayed())
    assert not browser.find_element("id", "paste-error").is_displayed()
    assert browser.find_element("id", "score-value").text == str(int(ref.score[0]))
    bars = browser.find_elements("css selector", "#spread-chart rect.bar")
    assert len(bars) == 6
    heights = [float(b.get_attribute("height")) for b in bars]
    assert int(max(range(6), key=heights.__getitem__)) == int(ref.spread[0].argmax())
    words = browser.find_element("css selector", '[data-stat="words"] .stat-value').text
    assert int(words.replace(",", "")) >= site["cfg"].web.min_words
    assert not browser.find_element("id", "paste-warnings").is_displayed()

    # teachers see no internal member names or metrics until they open the technical details
    page = browser.find_element("tag name", "body").text
    assert not [n for n in _internal_names(site) if n in page] and "QWK" not in page
    assert not browser.find_element("id", "members-table").is_displayed()
    browser.find_element("css selector", "#tech-details summary").click()
    _wait(browser, lambda d: d.find_element("id", "members-table").is_displayed())
    preds = [float(e.text) for e in browser.find_elements("css selector", ".member-pred")]
    assert preds == pytest.approx(ref.member_preds[0].round(2).tolist(), abs=0.011)
    tech = browser.find_element("id", "tech-details").text
    assert all(n in tech for n in _internal_names(site)) and "Validation QWK 0.500" in tech
    browser.find_element("css selector", "#tech-details summary").click()  # closed again
    shot = os.environ.get("AES_WEB_SCREENSHOT")
    if shot:
        _save_screenshot(browser, Path(shot))


def test_one_word_essay_gets_a_warning(site, browser):
    from selenium.webdriver.common.keys import Keys

    browser.get(site["url"] + "/")
    _wait(browser, lambda d: "ensemble of" in d.find_element("id", "model-info").text)
    box = browser.find_element("id", "essay-text")
    box.send_keys("Dogs")
    min_words = site["cfg"].web.min_words
    assert f"under {min_words:,} words" in browser.find_element("id", "char-count").text
    box.send_keys(Keys.CONTROL, Keys.ENTER)  # the keyboard shortcut scores too
    _wait(browser, lambda d: d.find_element("id", "result").is_displayed())
    assert browser.find_element("id", "score-value").text in list("123456")
    warning = browser.find_element("css selector", "#paste-warnings .warning")
    assert warning.is_displayed() and warning.get_attribute("data-code") == TOO_SHORT
    assert "too short to score reliably" in warning.text
    assert f"1 word; the model was trained on essays of at least {min_words:,} words" in (
        warning.text)
    # a long essay afterwards clears the warning
    _set_essay(browser, sample_essays(1).iloc[0]["full_text"])
    browser.find_element("id", "score-btn").click()
    _wait(browser, lambda d: not d.find_element("id", "paste-warnings").is_displayed())


def _save_screenshot(driver, path: Path) -> None:
    """The whole page as a compact palette PNG (for the README)."""
    import io

    from PIL import Image

    driver.execute_script("document.getElementById('essay-text').scrollTop = 0")
    height, chrome = driver.execute_script(
        "return [document.body.scrollHeight, window.outerHeight - window.innerHeight]")
    driver.set_window_size(1200, height + chrome)
    driver.execute_script("window.scrollTo(0, 0)")
    img = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    img.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def test_upload_a_csv_and_download_scores(site, browser):
    essays = sample_essays(9)
    essays = pd.concat([essays.iloc[:4], pd.DataFrame({"essay_id": ["short-one"],
                                                       "full_text": ["Hello"]}),
                        essays.iloc[4:]], ignore_index=True)
    path = site["tmp"] / "my class.csv"
    essays[["essay_id", "full_text"]].to_csv(path, index=False)
    ref = score_frame(load_scorer(site["cfg"]), essays)

    browser.get(site["url"] + "/")
    browser.find_element("id", "tab-csv").click()
    browser.find_element("id", "csv-file").send_keys(str(path))
    browser.find_element("id", "csv-btn").click()
    _wait(browser, lambda d: d.find_element("id", "csv-status").text.startswith("Done"))
    assert browser.find_element("id", "csv-progress").get_attribute("aria-valuenow") == "100"
    ids = [e.text for e in browser.find_elements("css selector", "#csv-table .essay-id")]
    scores = [int(e.text) for e in browser.find_elements("css selector", "#csv-table .row-score")]
    assert ids == essays["essay_id"].tolist()
    assert scores == ref.score.tolist()
    assert f"{len(essays)} essays scored" in browser.find_element("id", "csv-summary").text
    flags = [e.text for e in browser.find_elements("css selector", "#csv-table .row-warnings")]
    assert [bool(f) for f in flags] == [i == "short-one" for i in ids]
    assert "Too short" in flags[ids.index("short-one")]
    summary = browser.find_element("id", "csv-warn-summary")
    assert summary.is_displayed() and "1 essay needs a check" in summary.text
    assert "short-one: This essay is too short" in summary.text
    page = browser.find_element("tag name", "body").text
    assert not [n for n in _internal_names(site) if n in page] and "blended" not in page

    browser.find_element("id", "download-btn").click()
    target = browser.downloads / "scored_my class.csv"
    _wait(browser, lambda d: target.exists() and target.stat().st_size > 0, timeout=20)
    table = pd.read_csv(target, dtype={"essay_id": str}, keep_default_na=False)
    assert table["essay_id"].tolist() == ids and table["score"].tolist() == scores
    assert table["warnings"].tolist() == [TOO_SHORT if i == "short-one" else "" for i in ids]
    assert "(1 word;" in table["warning_details"][ids.index("short-one")]
    assert set(_internal_names(site)) <= set(table.columns)  # details stay in the file
    assert not Path(site["cfg"].web.keep_dir).exists()  # nothing kept unless asked


def test_bad_csv_shows_the_row_and_resets_the_progress(site, browser):
    bad = site["tmp"] / "bad.csv"
    bad.write_bytes(b"essay_id,full_text\na,fine essay\nb,caf\xe9\n")
    browser.get(site["url"] + "/")
    browser.find_element("id", "tab-csv").click()
    assert browser.find_element("id", "panel-csv").is_displayed()
    # no empty progress bar before anything is uploaded
    assert not browser.find_element("id", "csv-progress-wrap").is_displayed()
    assert not browser.find_element("id", "csv-progress").is_displayed()
    browser.find_element("id", "csv-file").send_keys(str(bad))
    browser.find_element("id", "csv-btn").click()
    msg = _wait(browser, lambda d: _visible_text(d, "csv-error"))
    assert "bad.csv, row 2" in msg and "UTF-8" in msg
    assert not browser.find_element("id", "csv-result").is_displayed()
    # the rejected upload leaves no stuck "Uploading…" and no progress bar
    assert not browser.find_element("id", "csv-progress-wrap").is_displayed()
    assert "Uploading" not in browser.find_element("tag name", "body").text


def test_keyboard_switches_tabs(site, browser):
    from selenium.webdriver.common.keys import Keys

    browser.get(site["url"] + "/")
    paste = browser.find_element("id", "tab-paste")
    paste.send_keys(Keys.ARROW_RIGHT)
    _wait(browser, lambda d: d.find_element("id", "panel-csv").is_displayed())
    active = browser.switch_to.active_element
    assert active.get_attribute("id") == "tab-csv"
    assert active.get_attribute("aria-selected") == "true"
    assert not browser.find_element("id", "panel-paste").is_displayed()
    active.send_keys(Keys.ARROW_LEFT)
    _wait(browser, lambda d: d.find_element("id", "panel-paste").is_displayed())
    assert browser.find_element("id", "tab-csv").get_attribute("tabindex") == "-1"


def test_pasted_repeated_paragraph_essay_shows_the_warning(flag_site, browser):
    """Browser test: a pasted repeated-paragraph essay shows the warning on the page."""
    original, gamed = repeated_paragraph_essay()
    browser.get(flag_site["url"] + "/")
    _wait(browser, lambda d: "ensemble of" in d.find_element("id", "model-info").text)

    _set_essay(browser, original)  # the essay as its student wrote it: no warning
    browser.find_element("id", "score-btn").click()
    _wait(browser, lambda d: d.find_element("id", "result").is_displayed())
    assert not browser.find_element("id", "paste-warnings").is_displayed()

    _set_essay(browser, gamed)  # every paragraph twice
    browser.find_element("id", "score-btn").click()
    _wait(browser, lambda d: d.find_element("id", "paste-warnings").is_displayed())
    warning = browser.find_element("css selector",
                                   '#paste-warnings .warning[data-code="repetition"]')
    assert warning.is_displayed() and "notice" not in warning.get_attribute("class")
    assert "Large parts of this essay are repeated" in warning.text
    evidence = warning.find_element("css selector", ".warning-evidence").text
    assert "duplicated paragraph(s)" in evidence
    starts = [" ".join(p.split())[:30] for p in original.split("\n\n") if p.strip()]
    assert any(s in evidence for s in starts)  # it quotes the repeated paragraph

    # the score on the page is the served one: capped by the bundle's flag policy
    body = json.dumps({"text": gamed}).encode()
    req = urllib.request.Request(flag_site["url"] + "/api/score", data=body,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        served = json.loads(r.read())
    assert "repetition" in served["flags"]
    cap = flag_site["cfg"].flags.cap_score_when_flagged
    assert served["score"] == min(served["model_score"], cap)
    assert browser.find_element("id", "score-value").text == str(served["score"])
    if served["model_score"] > served["score"]:
        assert f"capped at {served['score']}" in warning.text
