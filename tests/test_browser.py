"""The app in a real browser: `streamlit run` on a free localhost port, driven by Playwright through
Debian's Chromium (/usr/bin/chromium; `playwright install` cannot download here).

Visits every page, checks that plotly charts rendered and that no exception or error box appears,
uploads a broken checkpoint and sees the one-line message (the app stays up), launches a one-epoch
retrain from the form, reloads the page, and sees the run finish and reach the picker. Screenshots
go to ``test-artifacts/browser/``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts" / "browser"
CHROME_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PAGES = [("", "Overview"), ("density", "Layer density"), ("evolution", "Mask evolution"),
         ("patches", "Patch maps"), ("compare", "Compare")]
ERRORS = '[data-testid="stException"], [data-testid="stAlertContentError"]'

pytestmark = pytest.mark.browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _checkpoints_dir() -> Path:
    return Path(os.environ.get("SVITE_CHECKPOINTS_DIR", ROOT / "checkpoints"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`streamlit run app/main.py` on a free port, with its own (empty) runs and uploads folders."""
    assert CHROMIUM.exists(), "Debian's chromium is missing: scripts/test.sh installs it with apt"
    ckpts = _checkpoints_dir()
    sparse = [p for p in ckpts.glob("svite*.safetensors")]
    assert sparse, f"no SViTE demo checkpoint in {ckpts}: run `python scripts/make_demo_checkpoints.py`"
    tmp = tmp_path_factory.mktemp("browser")
    port = _free_port()
    env = {**os.environ, "SVITE_RUNS_DIR": str(tmp / "runs"), "SVITE_UPLOADS_DIR": str(tmp / "uploads"),
           "SVITE_CHECKPOINTS_DIR": str(ckpts), "HF_HUB_OFFLINE": "1"}
    log = open(tmp / "streamlit.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", "app/main.py", "--server.port", str(port),
                             "--server.headless", "true", "--server.address", "localhost",
                             "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://localhost:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert proc.poll() is None, (tmp / "streamlit.log").read_text()[-2000:]
            assert time.time() < deadline, "streamlit did not start within 60 s"
            time.sleep(0.3)
        yield {"url": url, "runs": tmp / "runs", "tmp": tmp}
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
        log.close()


@pytest.fixture(scope="module")
def page(server, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(str(tmp_path_factory.mktemp("chromium-profile")),
                                                    executable_path=str(CHROMIUM), args=CHROME_ARGS, headless=True,
                                                    viewport={"width": 1400, "height": 2400})
        pg = ctx.pages[0] if ctx.pages else ctx.new_page()
        pg.set_default_timeout(60_000)
        yield pg
        ctx.close()


def _settle(pg, quiet_s: float = 1.0, timeout_s: float = 90) -> None:
    """Wait until the script has finished running (no status widget) for ``quiet_s``."""
    pg.wait_for_selector('[data-testid="stApp"]')
    deadline = time.time() + timeout_s
    quiet_since = None
    while time.time() < deadline:
        running = pg.locator('[data-testid="stStatusWidget"]').count() > 0
        if running:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.time()
        elif time.time() - quiet_since >= quiet_s:
            return
        time.sleep(0.2)
    raise AssertionError("the app kept running for too long")


def _no_errors(pg, where: str) -> None:
    boxes = pg.locator(f'[data-testid="stMain"] :is({ERRORS})')
    texts = [boxes.nth(i).inner_text()[:300] for i in range(boxes.count())]
    assert not texts, f"{where}: error box or traceback: {texts}"
    assert "Traceback" not in pg.locator('[data-testid="stMain"]').inner_text()


def test_every_page_renders_its_plots(page, server):
    for path, title in PAGES:
        page.goto(f"{server['url']}/{path}")
        page.wait_for_selector(".js-plotly-plot")
        _settle(page)
        page.wait_for_selector(f'h1:has-text("{title}")')
        n = page.locator(".js-plotly-plot").count()
        page.screenshot(path=str(ARTIFACTS / f"{path or 'overview'}.png"), full_page=True)
        assert n >= 1, f"{title}: no plot rendered"
        _no_errors(page, title)
        # every plot has its toolbar, whose camera button downloads a PNG
        assert page.locator(".modebar-btn[data-title*='PNG' i]").count() >= n


def test_bad_upload_shows_a_clear_message_and_the_app_stays_up(page, server):
    bad = server["tmp"] / "broken.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + b"\x00" * 64)
    page.goto(f"{server['url']}/density")
    _settle(page)
    page.locator('[data-testid="stSidebar"] input[type="file"]').set_input_files(str(bad))
    msg = page.locator('[data-testid="stSidebar"] [data-testid="stAlertContentError"]')
    msg.wait_for()
    _settle(page)
    text = msg.inner_text()
    page.screenshot(path=str(ARTIFACTS / "bad_upload.png"), full_page=True)
    assert "Cannot use this upload" in text and "broken.safetensors" in text and "Traceback" not in text
    assert len(text.strip().splitlines()) == 1
    # the app is still up and still shows the page
    assert page.locator(".js-plotly-plot").count() >= 1
    _no_errors(page, "after the bad upload")


def test_one_epoch_retrain_survives_a_reload_finishes_and_reaches_the_picker(page, server):
    page.goto(f"{server['url']}/retrain")
    _settle(page)
    for label, value in (("Epochs", "1"), ("Train images (demo)", "256"), ("Validation images (demo)", "64"),
                         ("Batch size", "32")):
        box = page.get_by_label(label, exact=True)
        box.fill(value)
    page.get_by_role("button", name="Launch training").click()
    page.get_by_text("Launched app-").wait_for()
    page.reload()  # a new browser session: the run registry on disk still knows the run and follows it
    page.get_by_text("finished", exact=False).first.wait_for(timeout=120_000)
    _settle(page)
    page.screenshot(path=str(ARTIFACTS / "retrain.png"), full_page=True)
    _no_errors(page, "Retrain")
    runs = list(server["runs"].glob("app-*/checkpoint.safetensors"))
    assert len(runs) == 1
    assert page.locator(".js-plotly-plot").count() >= 1  # the run's curves
    page.get_by_role("button", name="Open this checkpoint in the explorer").click()
    _settle(page)
    picker = page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"] input').first
    assert picker.input_value() == f"run · {runs[0].parent.name}"
    page.locator('[data-testid="stSidebarNav"] a:has-text("Overview")').click()  # same session: keeps the pick
    page.wait_for_selector('h1:has-text("Overview")')
    _settle(page)
    assert runs[0].parent.name in page.locator('[data-testid="stMain"]').inner_text()
    _no_errors(page, "Overview of the new run")
