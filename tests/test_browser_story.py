"""Talk mode in a real browser: every page of the talk path opens, at 1920×1080, on its headline chart and its
one sentence (the whole chart on the first screen, no scrolling); every page answers at its own address,
``?talk=1`` included; no figure title runs into a subplot title. Screenshots of each first screen and of
the Heads view go to ``test-artifacts/browser/`` (first-screen-*.png, heads-*.png)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_browser import (  # noqa: E402,F401  (pw and server are fixtures)
    ARTIFACTS,
    _no_errors,
    _screenshot_whole_page,
    _settle,
    browser_page,
    pw,
    server,
)

from app.widgets.ui import PAGES, TALK_PATH  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.browser
TITLES = {key: title for key, title, _ in PAGES}
FIRST_SCREEN = """() => {
  const box = e => { const r = e.getBoundingClientRect(); return {x: r.x, y: r.y, w: r.width, h: r.height}; };
  const story = document.querySelector('.st-key-story');
  return {
    story: story ? {...box(story), text: story.innerText} : null,
    plots: [...document.querySelectorAll('.js-plotly-plot')].map(p => ({
      box: box(p), title: (p.querySelector('.gtitle') || {textContent: ''}).textContent,
      gtitle: p.querySelector('.gtitle') ? box(p.querySelector('.gtitle')) : null,
      drawn: p.querySelectorAll('.nsewdrag, .imagelayer image, .im image').length,
      annotations: [...p.querySelectorAll('.annotation')].map(a => ({...box(a), text: a.textContent})),
    })),
  };
}"""


@pytest.fixture(scope="module")
def browser_1080(pw, tmp_path_factory):  # noqa: F811
    ctx, pg = browser_page(pw, tmp_path_factory.mktemp("profile-1080"), 1920, 1080, 120)
    yield pg
    ctx.close()


def _open(pg, url: str, title: str) -> dict:
    pg.goto(url)
    pg.wait_for_selector(f'h1:has-text("{title}")')
    pg.wait_for_selector(".js-plotly-plot .main-svg")
    _settle(pg, quiet_s=1.5, timeout_s=180)
    time.sleep(1.0)  # plotly lays out after its first paint
    return pg.evaluate(FIRST_SCREEN)


def _overlap(a: dict, b: dict) -> bool:
    return a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"] and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]


def _first_screen(pg, url: str, key: str) -> None:
    seen = _open(pg, url, TITLES[key])
    pg.screenshot(path=str(ARTIFACTS / f"first-screen-{key}.png"))  # what the room sees before any scrolling
    _no_errors(pg, f"{TITLES[key]} in talk mode")
    story = seen["story"]
    assert story and len(story["text"].split()) >= 8, f"{key}: no sentence under the header"
    assert story["y"] + story["h"] <= 1080, f"{key}: the sentence is below the first screen"
    whole = [p for p in seen["plots"] if p["drawn"] and p["box"]["y"] >= 0 and p["box"]["y"] + p["box"]["h"] <= 1080]
    assert whole, f"{key}: no chart fits the first screen: {[(p['title'], p['box']) for p in seen['plots']]}"
    for p in seen["plots"]:
        for a in p["annotations"]:
            assert not (p["gtitle"] and _overlap(p["gtitle"], a)), f"{key}: '{p['title']}' runs into '{a['text']}'"


@pytest.mark.parametrize("key", [k for k in TALK_PATH if k != "runs"])
def test_every_talk_page_opens_on_its_headline_chart_and_sentence(server, browser_1080, key):  # noqa: F811
    _first_screen(browser_1080, f"{server['url']}/{key}?talk=1", key)


@pytest.mark.parametrize("key", [k for k, _, _ in PAGES])
def test_every_page_answers_at_its_own_address(server, browser_1080, key):  # noqa: F811
    for query in ("?talk=1", ""):
        pg = browser_1080
        pg.goto(f"{server['url']}/{key}{query}")
        pg.wait_for_selector(f'h1:has-text("{TITLES[key]}")')
        _settle(pg, quiet_s=1.0, timeout_s=180)
        text = pg.locator("body").inner_text()
        assert "Page not found" not in text, f"/{key}{query}"
        _no_errors(pg, f"/{key}{query}")


def test_heads_view_screenshots(server, browser_1080):  # noqa: F811
    """The Heads view as the talk shows it (S²ViTE demo, pruned heads) and in normal mode (the sidebar's)."""
    pg = browser_1080
    for query, name in (("?talk=1", "heads-talk"), ("", "heads")):
        seen = _open(pg, f"{server['url']}/heads{query}", "Heads")
        grid = [p for p in seen["plots"] if p["title"].startswith(("Class-token attention", "Per-head rollout"))]
        assert grid and grid[0]["drawn"] >= 7, seen["plots"]  # the model input and one map per head
        pg.screenshot(path=str(ARTIFACTS / f"{name}-first-screen.png"))
        _screenshot_whole_page(pg, ARTIFACTS / f"{name}.png", 1920, 1080)
        _no_errors(pg, f"Heads {query}")


def test_the_runs_page_opens_a_talk_on_its_plots_when_there_is_a_sweep(server, browser_1080):  # noqa: F811
    """The Runs page joins the talk path (first) once there are runs: four runs here, copies of the demos."""
    import shutil

    for name in ("dense", "svite", "svite-plus", "s2vite"):
        (server["runs"] / f"talk-{name}").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / "checkpoints" / f"{name}.safetensors",
                        server["runs"] / f"talk-{name}" / "checkpoint.safetensors")
    _first_screen(browser_1080, f"{server['url']}/runs?talk=1", "runs")
