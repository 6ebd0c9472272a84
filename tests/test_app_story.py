"""Numbers as people read them (tables.py) and the one sentence each page opens with (story.py), checked
against the numbers they claim; the Retrain form's sliders follow the method."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from test_app_pages import ckpt, isolated, ok, open_page  # noqa: E402,F401

from app.text import story, tables  # noqa: E402
from sparsity_core import analysis  # noqa: E402
from sparsity_core.analysis.report import inspect_checkpoint  # noqa: E402
from sparsity_core.checkpoint import load_checkpoint  # noqa: E402


def test_numbers_read_as_integers_or_four_significant_digits():
    for value, text in [(400.0, "400"), (1000.0, "1000"), (12345.0, "12,345"), (0.6147314860270574, "0.6147"),
                        (86.3, "86.3"), (12345.678, "12,346"), (float("nan"), ""), (None, ""), (np.int64(7), "7"),
                        ("svite", "svite"), ([0.5, 400.0], "[0.5, 400]"), (2e-4, "0.0002"),
                        ({"a": 0.123456}, "a: 0.1235")]:
        assert tables.number(value) == text, value


def test_tables_get_human_column_names_and_keep_their_values():
    hist = analysis.history_table(load_checkpoint(ckpt("svite")).history)
    shown = tables.readable(hist)
    assert "update started at step" in shown.data.columns and "updates_started_at" not in shown.data.columns
    html = shown.to_html()
    step = hist["updates_started_at"].dropna().iloc[0]  # a float column holding whole numbers
    assert step == int(step) and f">{int(step)}<" in html and f"{step:.4f}" not in html
    long = next(v for v in hist.select_dtypes("float").stack() if len(repr(v)) > 8)  # e.g. a density 0.49999...
    assert repr(long) not in html  # shown to 3-4 significant figures
    assert shown.data["update started at step"].dropna().iloc[0] == step  # values untouched: they sort as numbers
    clash = tables.renamed(pd.DataFrame({"overall_density": [1.0], "density": [0.5]}))
    assert list(clash.columns) == ["overall_density", "density"]  # never two columns of one name


def test_the_overview_sentence_says_what_the_checkpoint_did():
    for name in ("svite-plus", "s2vite", "dense"):
        loaded = load_checkpoint(ckpt(name))
        doc = inspect_checkpoint(loaded)
        hist = analysis.history_table(loaded.history)
        flops = {"dense": 64.6e6, "sparse": 17.2e6, "ratio": 17.2 / 64.6}
        text = story.overview(doc, hist, flops)
        updates = int((hist["event"] == "update").sum())
        if name == "svite-plus":
            fired = hist["fired_density"].iloc[-1]
            assert text.startswith(f"SViTE+ held 50% of the weights and explored {round(100 * fired)}% of them over "
                                   f"{updates} updates; its token selector keeps 32 of 64 patches")
        elif name == "s2vite":
            alive = sum(sum(b["alive"]) for b in doc["heads"])
            assert text.startswith(f"S²ViTE kept {alive} of 24 attention heads and 920 of 1,536 MLP neurons over "
                                   f"{updates} updates")
        else:
            assert text.startswith(f"The dense model uses all {doc['params']:,} of its weights")
        assert f"validation top-1 {doc['metrics']['val_top1']:.1f}%" in text


def test_the_evolution_and_density_sentences_carry_their_numbers():
    loaded = load_checkpoint(ckpt("svite"))
    churn = analysis.mask_churn(loaded.history)
    dist, idx = analysis.snapshot_distances(loaded.history, "jaccard")
    text = story.evolution(churn, dist, idx, "jaccard")
    updates = churn[churn["event"] == "update"]
    assert text.startswith(f"{len(updates)} updates (steps {updates['step'].min()}–{updates['step'].max()})")
    assert f"Jaccard distance {dist[0, -1]:.2f}" in text
    table = analysis.layer_density_table(analysis.checkpoint_masks(loaded))
    text = story.density(table, erk=True)
    assert f"{int(table['numel'].sum()):,} weights" in text and "ERK" in text and "ERK" not in story.density(table)


def test_retrain_form_shows_only_the_sliders_of_the_chosen_method():
    at = open_page("retrain", "svite")
    present = {key: bool(at.get("slider") and [s for s in at.slider if s.key == key]) for key in
               ("rt_density", "rt_atten", "rt_other")}
    assert present == {"rt_density": True, "rt_atten": False, "rt_other": False}
    density = at.slider(key="rt_density").value
    at.selectbox(key="rt_method").set_value("s2vite").run()
    keys = {s.key for s in ok(at).slider}
    assert {"rt_atten", "rt_other"} <= keys and "rt_density" not in keys
    at.selectbox(key="rt_method").set_value("dense").run()
    assert not {"rt_density", "rt_atten", "rt_other"} & {s.key for s in ok(at).slider}
    at.selectbox(key="rt_method").set_value("svite").run()
    assert at.slider(key="rt_density").value == density and at.selectbox(key="rt_method").value == "svite"


def test_the_heads_sentence_says_what_pruned_heads_did_while_alive():
    frame = pd.DataFrame({"head": [0, 1, 2], "alive": [True, False, True], "iou": [0.5, np.nan, 0.3],
                          "chance": [0.1, 0.1, 0.1]})
    text = story.heads(2, [True, False, True], frame, "over the first 32 demo images")
    assert text.startswith("Block 2: 2 of 3 heads alive. Over the first 32 demo images, their top patches overlap "
                           "the object by IoU 0.40 on average (best: head 0, 0.50), where chance gives 0.10")
    assert "the pruned head 1 attends uniformly" in text and "probe" not in text
    never = pd.DataFrame({"head": [1, 1], "iou": [np.nan, np.nan]})
    assert "the head probe shows it never was alive" in story.heads(2, [True, False, True], frame, "x", never)
    once = pd.DataFrame({"head": [1, 1], "iou": [0.62, np.nan]})
    assert "head 1 looked at the object (IoU up to 0.62) while it was alive" in story.heads(
        2, [True, False, True], frame, "x", once)
    assert story.heads(0, [True, True], None, "x") == "Block 0: all 2 heads alive."


def test_the_runs_sentence_judges_the_best_configuration_against_the_seed_noise():
    groups = pd.DataFrame({"label": ["dense", "static 0.5", "SViTE 0.5"], "n": [3, 3, 3],
                           "mean": [87.5, 82.6, 82.2], "std": [2.2, 2.3, 1.5]})
    diffs = pd.DataFrame({"label": ["dense", "dense"], "baseline": ["static 0.5", "SViTE 0.5"],
                          "mean_diff": [4.9, 5.3], "ci_low": [-0.5, 1.0], "ci_high": [10.3, 9.6]})
    text = story.runs(9, groups, diffs)
    assert text.startswith("9 runs of 3 configurations. Best: dense, 87.5% top-1 (± 2.2 over 3 seeds)")
    assert "+4.9 points against static 0.5 (95% interval -0.5 to +10.3: within the seed noise)" in text
    assert "+5.3 points against SViTE 0.5 (95% interval +1.0 to +9.6)." in text
    assert story.runs(2, groups.assign(n=0), diffs.iloc[0:0]) == "2 runs, none finished yet."
    one = groups.assign(n=1, std=float("nan"))
    assert story.runs(3, one, diffs.iloc[0:0]) == "3 runs of 3 configurations. Best: dense, 87.5% top-1 (1 seed)."
    # dense and static as the baselines (the page's default): dense is best, so the best of the others is named
    against = pd.DataFrame({"label": ["SViTE 0.5", "SViTE 0.5", "static 0.5"], "baseline": ["dense", "static 0.5", "dense"],
                            "mean_diff": [-5.3, -0.4, -4.9], "ci_low": [-9.6, -4.0, -10.3], "ci_high": [-1.0, 3.2, 0.5]})
    text = story.runs(9, groups, against)
    assert text.startswith("9 runs of 3 configurations. Best: dense, 87.5% top-1 (± 2.2 over 3 seeds). Best of the "
                           "others: SViTE 0.5, 82.2% top-1 (± 1.5 over 3 seeds): -5.3 points against dense (95% "
                           "interval -9.6 to -1.0); -0.4 points against static 0.5 (95% interval -4.0 to +3.2: within "
                           "the seed noise).")
    assert "static 0.5, 82.6%" not in text  # a baseline is not one of "the others"
