"""The Runs page in a real browser: pick a run in the table, open it on every page, and see it on
Overview with its learning curve. Screenshots at 1920×1080 go to ``test-artifacts/runs/``.

`streamlit run` on a free port with ``SVITE_RUNS_DIR`` set to a folder of two real tiny runs, driven
by Playwright through Debian's Chromium (as ``test_browser.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sweeps import finished
from test_browser import CHROME_ARGS, CHROMIUM, _no_errors, _settle, streamlit_server

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts" / "runs"

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser_runs")
    finished(tmp / "runs" / "exp" / "static_s0", method="static", density=0.5)
    finished(tmp / "runs" / "exp" / "svite_s0", method="svite", density=0.5, update_frequency=4)
    with streamlit_server(tmp, tmp / "runs") as url:
        yield url


def test_pick_a_run_on_the_runs_page_and_see_its_curve_on_overview(server, tmp_path):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=str(CHROMIUM),
                                                    args=CHROME_ARGS, headless=True,
                                                    viewport={"width": 1920, "height": 1080})
        pg = ctx.pages[0] if ctx.pages else ctx.new_page()
        pg.set_default_timeout(60_000)
        pg.goto(server)  # two runs: the Runs page is the first page
        pg.wait_for_selector('h1:has-text("Runs")')
        pg.wait_for_selector(".js-plotly-plot")
        _settle(pg)
        _no_errors(pg, "Runs")
        pg.screenshot(path=str(ARTIFACTS / "runs_page.png"))
        grid = pg.locator('[data-testid="stDataFrame"]').first
        grid.scroll_into_view_if_needed()
        box = grid.bounding_box()
        # rows are sorted by name: exp/static_s0, then exp/svite_s0; tick the second row's box
        pg.mouse.click(box["x"] + 16, box["y"] + 35 + 35 + 17)
        pg.get_by_role("button", name="Open on every page").click()
        _settle(pg)
        pg.get_by_text("Picked: exp/svite_s0").wait_for()
        pg.locator('[data-testid="stSidebarNav"] a:has-text("Overview")').click()
        pg.wait_for_selector('h1:has-text("Overview")')
        pg.wait_for_selector('h3:has-text("Learning curve")')
        _settle(pg)
        _no_errors(pg, "Overview")
        picker = pg.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"] input').first
        assert picker.input_value() == "run · exp/svite_s0"
        curve = pg.locator(".js-plotly-plot", has_text="Learning curves: run · exp/svite_s0")
        curve.wait_for()
        assert curve.locator(".scatterlayer .trace").count() >= 4  # top-1, loss, LR, fired (+ the updates)
        curve.scroll_into_view_if_needed()
        pg.screenshot(path=str(ARTIFACTS / "overview_curve.png"))
        ctx.close()


def test_the_shipped_sweep_at_1920x1080(tmp_path):
    """The sweep a fresh clone opens on, as a presenter sees it: the Runs page's first screen, the paper's
    plots (top-1 against density and FLOPs) and the learning curves with the topology updates."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with streamlit_server(tmp_path, ROOT / "checkpoints" / "runs") as url, sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=str(CHROMIUM),
                                                    args=CHROME_ARGS, headless=True,
                                                    viewport={"width": 1920, "height": 1080})
        pg = ctx.pages[0] if ctx.pages else ctx.new_page()
        pg.set_default_timeout(60_000)
        pg.goto(url)
        pg.wait_for_selector('h1:has-text("Runs")')
        pg.wait_for_selector(".js-plotly-plot")
        _settle(pg)
        _no_errors(pg, "Runs")
        pg.screenshot(path=str(ARTIFACTS / "shipped_sweep_first_screen.png"))
        for title, name in (("against density", "shipped_sweep_vs_density"), ("Learning curves", "shipped_sweep_curves")):
            plot = pg.locator(".js-plotly-plot", has_text=title).first
            plot.wait_for()
            plot.scroll_into_view_if_needed()
            _settle(pg)
            assert plot.locator(".scatterlayer .trace").count() >= 5, title  # five methods at least
            pg.screenshot(path=str(ARTIFACTS / f"{name}.png"))
        ctx.close()
