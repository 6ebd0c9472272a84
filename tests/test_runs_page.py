"""The Runs page under AppTest on a folder of real tiny runs at different depths: one finished, one
still running (a real training process holding its run lock), one failed (a real divergence), plus a
truncated checkpoint that must become a one-line note, not a crash."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from sweeps import stop, three_runs

from app import settings
from sparsity_core import runs

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "app" / "main.py")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    with three_runs(root) as runs:
        broken = root / "c" / "d" / "torn_s0"
        broken.mkdir(parents=True)
        data = (runs["finished"] / "checkpoint.safetensors").read_bytes()
        (broken / "checkpoint.safetensors").write_bytes(data[: len(data) // 2])
        shutil.copy(runs["finished"] / "config.json", broken / "config.json")  # listed from its config, checkpoint noted
        yield root, runs


@pytest.fixture
def env(folder, tmp_path, monkeypatch):
    root, _ = folder
    monkeypatch.setenv("SVITE_RUNS_DIR", str(root))
    monkeypatch.setenv("SVITE_UPLOADS_DIR", str(tmp_path / "uploads"))
    monkeypatch.setenv("SVITE_RUNS_REFRESH_S", "0")
    return folder


def _runs_page() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=60)
    at.switch_page("../pages/runs.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    return at


def test_runs_page_shows_finished_running_and_failed_runs_at_any_depth(env):
    at = _runs_page()
    table = at.dataframe[0].value.set_index("run")
    assert set(table.index) == {"svite_s0", "a/dense_s2", "a/b/static_s1", "c/d/torn_s0"}
    assert table.loc["svite_s0", "status"] == "finished" and table.loc["svite_s0", "progress"] == 1.0
    assert table.loc["svite_s0", "top-1 %"] > 0 and table.loc["svite_s0", "topology updates"] >= 1
    assert 0.45 < table.loc["svite_s0", "density"] < 0.55 and 0 < table.loc["svite_s0", "FLOPs % of dense"] < 100
    running = table.loc["a/dense_s2"]
    assert running["status"] == "running" and 0 < running["progress"] < 1 and running["of steps"] == 16000
    failed = table.loc["a/b/static_s1"]
    assert failed["status"] == "failed" and "training diverged: loss is nan" in failed["last error"]
    assert table.loc["c/d/torn_s0", "status"] == "failed"  # no checkpoint it could read, no end record
    assert at.caption[0].value.startswith("4 runs: 1 finished, 1 running, 2 failed")
    notes = " ".join(t.value for t in at.text)
    assert "c/d/torn_s0: checkpoint skipped" in notes and "truncated" in notes and "Traceback" not in notes
    grouped = at.dataframe[1].value.set_index("configuration")
    label = table.loc["svite_s0", "configuration"]  # shared with the torn run: the same config, another folder
    assert label == table.loc["c/d/torn_s0", "configuration"] == "SViTE d0.5"
    assert grouped.loc[label, "n"] == 1 and grouped.loc[label, "top-1 % mean"] == pytest.approx(table.loc["svite_s0", "top-1 %"])
    specs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    titles = [s["layout"]["title"]["text"] for s in specs]
    assert any(t.startswith("Learning curves") for t in titles), titles
    assert sum("against density" in t or "against FLOPs" in t for t in titles) == 2, titles
    vs_density = specs[[i for i, t in enumerate(titles) if "against density" in t][0]]
    assert any(a.get("text") == "chance 10%" for a in vs_density["layout"].get("annotations", []))


def test_filters_narrow_the_table_and_the_grouped_view(env):
    at = _runs_page()
    at.multiselect(key="runs_status").set_value(["failed"]).run()
    table = at.dataframe[0].value
    assert set(table["status"]) == {"failed"} and len(table) == 2
    at.multiselect(key="runs_status").set_value([]).run()
    at.text_input(key="runs_query").set_value("svite").run()
    assert list(at.dataframe[0].value["run"]) == ["svite_s0"]


def test_without_a_runs_dir_the_app_opens_on_the_shipped_records(folder, tmp_path, monkeypatch):
    """A fresh clone: no SVITE_RUNS_DIR, run records in checkpoints/runs/ -> the Runs page first, with them."""
    root, _ = folder
    ckpts = tmp_path / "checkpoints"
    written, notes = runs.export_records(root, ckpts / "runs")
    assert len(written) == 3 and sum(p.stat().st_size for p in written) < 64_000
    assert notes[-1] == "a/dense_s2: still running, not exported (export again when it has finished)"
    monkeypatch.delenv("SVITE_RUNS_DIR", raising=False)
    monkeypatch.setattr(settings, "runs_dir", lambda: tmp_path / "clone" / "runs")  # a fresh clone: no runs/
    monkeypatch.setenv("SVITE_CHECKPOINTS_DIR", str(ckpts))
    monkeypatch.setenv("SVITE_UPLOADS_DIR", str(tmp_path / "uploads"))
    at = AppTest.from_file(APP, default_timeout=60).run()  # the default page
    assert not at.exception and [t.value for t in at.title] == ["Runs"]
    table = at.dataframe[0].value.set_index("run")
    shipped = {n for n in table.index if n.startswith("shipped/")}
    assert shipped == {"shipped/svite_s0", "shipped/a/b/static_s1", "shipped/c/d/torn_s0"}  # not the running one
    assert table.loc["shipped/svite_s0", "status"] == "finished" and table.loc["shipped/svite_s0", "top-1 %"] > 0
    assert any(json.loads(c.proto.spec)["layout"]["title"]["text"].startswith("Learning curves")
               for c in at.get("plotly_chart"))


def test_a_run_that_appears_or_stops_shows_up_without_a_restart(env):
    """Last in the module: it stops the running run."""
    root, runs = env
    at = _runs_page()
    assert "late/svite_s5" not in set(at.dataframe[0].value["run"])
    shutil.copytree(runs["finished"], root / "late" / "svite_s5")  # e.g. copied over from a cluster
    stop(runs["proc"])  # the running run ends (SIGTERM: interrupted, no end record)
    at.run()
    table = at.dataframe[0].value.set_index("run")
    assert table.loc["late/svite_s5", "status"] == "finished"
    assert table.loc["a/dense_s2", "status"] == "failed"
    assert "without an end record" in table.loc["a/dense_s2", "last error"]


def test_the_shipped_sweep_opens_first_with_every_method_over_five_seeds(tmp_path, monkeypatch):
    """The sweep this repository ships (checkpoints/runs/, records without weights): a fresh clone opens on
    it, every method of the paper with its baselines over 5 seeds, and paired differences against dense and
    static over the seeds they share, from the same function as the docs' tables."""
    monkeypatch.delenv("SVITE_RUNS_DIR", raising=False)
    monkeypatch.setattr(settings, "runs_dir", lambda: tmp_path / "clone" / "runs")
    monkeypatch.setenv("SVITE_UPLOADS_DIR", str(tmp_path / "uploads"))
    shipped = ROOT / "checkpoints" / "runs"
    records = list(shipped.rglob(runs.RECORD_NAME))
    assert sum(p.stat().st_size for p in records) <= 2 * 2**20
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception and not at.error and [t.value for t in at.title] == ["Runs"]
    table = at.dataframe[0].value
    assert len(table) == len(records) and set(table["status"]) == {"finished"}
    grouped = at.dataframe[1].value.set_index("configuration")
    for method in ("dense", "static", "SViTE", "S²ViTE", "SViTE+"):
        rows = grouped[grouped["method"] == method]
        assert (rows["n"] >= 5).any(), f"{method}: fewer than 5 seeds in the shipped sweep"
    diffs = at.dataframe[2].value
    assert {"dense", "static"} <= set(diffs["minus"])
    assert (diffs["n"] >= 5).any() and diffs.loc[diffs["n"] >= 2, "95% low"].notna().all()
