"""sparsity_core.runs: the run index, the numbers of a sweep, run records and ``svite runs``.

Runs are real tiny trainings (``tests/sweeps.py``); the paired differences are checked against
values computed by hand; the indexer is fed a symlink loop, an unreadable folder and a truncated
checkpoint."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sweeps import finished

from sparsity_core import analysis, runs
from sparsity_core.checkpoint import load_checkpoint
from sparsity_core.checkpoint.header import read_header
from sparsity_core.cli import main as svite
from sparsity_core.errors import CheckpointError
from sparsity_core.runs import index as index_module
from sparsity_core.training.loop import train


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Seven real tiny runs: SViTE and static on seeds 0 and 1, dense, S²ViTE and SViTE+ on seed 0."""
    root = tmp_path_factory.mktemp("sweep")
    for name, kw in {"svite": dict(method="svite", density=0.5, update_frequency=4),
                     "static": dict(method="static", density=0.5)}.items():
        for seed in (0, 1):
            finished(root / "exp_a" / f"{name}_s{seed}", seed=seed, **kw)
    finished(root / "exp_a" / "dense_s0", method="dense")
    finished(root / "exp_b" / "deeper" / "s2vite_s0", method="s2vite", update_frequency=4)
    finished(root / "exp_c" / "svite+_s0", method="svite", density=0.5, update_frequency=4, keep_ratio=0.5)
    return root


def _table(seeds: dict[str, dict[int, float]], status: dict[tuple[str, int], str] | None = None) -> pd.DataFrame:
    """A run table for the statistics alone (the index's columns; values chosen for hand computation)."""
    rows = []
    for label, values in seeds.items():
        for seed, top1 in values.items():
            rows.append({"name": f"{label}_s{seed}", "group": label, "method_label": label, "method": label,
                         "seed": seed, "top1": top1, "status": (status or {}).get((label, seed), "finished")})
    return index_module.table(rows)


# ----------------------------------------------------------------------------------------------
# statistics
def test_paired_differences_match_hand_computed_values():
    # A - B on the shared seeds 0..3: +2, +1, -1, +3 -> mean 1.25, sd sqrt(8.75 / 3) = 1.707825,
    # t(0.975, 3) = 3.182446 (tables), half width 3.182446 * 1.707825 / 2 = 2.717538.
    # B's seed 4 has no partner; A's failed seed 5 does not count.
    t = _table({"A": {0: 80.0, 1: 82.0, 2: 79.0, 3: 85.0, 5: 99.0}, "B": {0: 78.0, 1: 81.0, 2: 80.0, 3: 82.0, 4: 90.0}},
               status={("A", 5): "failed"})
    d = runs.paired_differences(t, ["B"]).set_index("label")
    row = d.loc["A"]
    assert row["n"] == 4 and row["seeds"] == "0,1,2,3"
    assert row["mean_diff"] == pytest.approx(1.25)
    assert row["sd"] == pytest.approx(1.707825, abs=1e-6)
    assert row["ci_low"] == pytest.approx(1.25 - 2.717538, abs=1e-5)
    assert row["ci_high"] == pytest.approx(1.25 + 2.717538, abs=1e-5)
    assert row["per_seed"] == "+2.00 / +1.00 / -1.00 / +3.00" and row["ahead"] == "3 of 4"
    g = runs.groups(t).set_index("label")
    # A: finished seeds 0..3 -> mean 81.5, sample std sqrt(21 / 3) = 2.645751; B: 5 seeds -> mean 82.2
    assert g.loc["A", "n"] == 4 and g.loc["A", "mean"] == pytest.approx(81.5)
    assert g.loc["A", "std"] == pytest.approx(math.sqrt(7.0)) and g.loc["B", "mean"] == pytest.approx(82.2)


def test_static_baselines_at_several_densities_each_pair_with_their_own_density():
    """Static masks at 0.5 and 0.1 are both baselines; SViTE at 0.1 is compared with static at 0.1 (and with
    dense), never with static at 0.5; one baseline per method is compared with everything."""
    rows = []
    for label, method, density, top1 in [("dense", "dense", 1.0, 90.0), ("static d0.5", "static", 0.5, 85.0),
                                         ("static d0.1", "static", 0.1, 60.0), ("svite d0.5", "SViTE", 0.5, 86.0),
                                         ("svite d0.1", "SViTE", 0.1, 63.0)]:
        for seed in (0, 1):
            rows.append({"name": f"{label}_s{seed}", "group": label, "method_label": method, "method": method,
                         "seed": seed, "top1": top1 + seed, "density": density, "status": "finished"})
    t = index_module.table(rows)
    assert runs.default_baselines(t) == ["dense", "static d0.5", "static d0.1"]
    d = runs.paired_differences(t)
    pairs = {(r.label, r.baseline): r.mean_diff for r in d.itertuples()}
    assert pairs == {("svite d0.5", "dense"): -4.0, ("svite d0.1", "dense"): -27.0,
                     ("svite d0.5", "static d0.5"): 1.0, ("svite d0.1", "static d0.1"): 3.0}


def test_one_shared_seed_gives_a_difference_without_an_interval():
    d = runs.paired_differences(_table({"A": {0: 70.0}, "B": {0: 68.5, 1: 60.0}}), ["B"]).iloc[0]
    assert d["n"] == 1 and d["mean_diff"] == pytest.approx(1.5) and math.isnan(d["ci_low"]) and math.isnan(d["sd"])
    assert runs.t_interval(np.array([]))[0] != runs.t_interval(np.array([]))[0]  # NaN: no seeds, no mean


def test_pareto_front_keeps_what_nothing_beats_on_both_axes():
    cost = [0.2, 0.5, 0.5, 1.0, 0.7, np.nan]
    acc = [70.0, 80.0, 79.0, 85.0, 80.0, 99.0]
    assert runs.pareto_front(cost, acc).tolist() == [True, True, False, True, False, False]


# ----------------------------------------------------------------------------------------------
# the index on real runs
def test_index_reads_every_run_at_any_depth_from_headers(sweep):
    table, notes = runs.index_runs(sweep)
    assert notes == []
    t = table.set_index("name")
    assert set(t.index) == {"exp_a/svite_s0", "exp_a/svite_s1", "exp_a/static_s0", "exp_a/static_s1", "exp_a/dense_s0",
                            "exp_b/deeper/s2vite_s0", "exp_c/svite+_s0"}
    assert (t["status"] == "finished").all() and (t["progress"] == 1.0).all()
    assert t.loc["exp_c/svite+_s0", "method_label"] == "SViTE+" and t.loc["exp_a/svite_s0", "method_label"] == "SViTE"
    assert t.loc["exp_a/svite_s0", "updates"] >= 1 and t.loc["exp_a/static_s0", "updates"] == 0
    for name in t.index:  # the header's numbers are the loaded checkpoint's
        loaded = load_checkpoint(t.loc[name, "checkpoint"])
        flops = analysis.flops_summary(loaded)
        assert t.loc[name, "flops"] == flops["sparse"] and t.loc[name, "flops_pct"] == pytest.approx(100 * flops["ratio"])
        assert t.loc[name, "params"] == sum(p.numel() for p in loaded.model.parameters())
        assert t.loc[name, "top1"] == loaded.meta["metrics"]["val_top1"]
        if loaded.masks is not None:
            masked_out = sum(int((~m).sum()) for m in loaded.masks.values())
            assert t.loc[name, "kept_params"] == t.loc[name, "params"] - masked_out
            fired = analysis.fired_rate(loaded.history)
            assert t.loc[name, "fired"] == pytest.approx(fired["fired"].iloc[-1])


def test_index_never_reads_weights(sweep, monkeypatch):
    """Indexing opens checkpoints for their header only: every read of a checkpoint stays far below its size."""
    real_open, read = open, {}

    class Counting(io.FileIO):
        def read(self, n=-1):
            data = super().read(n)
            read[self.name] = read.get(self.name, 0) + len(data)
            return data

    def counting_open(file, mode="r", *args, **kwargs):
        if str(file).endswith(".safetensors") and "b" in mode:
            return Counting(file, "r")
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", counting_open)
    runs.index_runs(sweep)
    for path, n in read.items():
        assert n < os.path.getsize(path) / 4, (path, n, os.path.getsize(path))
    assert len(read) == 7


def test_a_symlink_loop_an_unreadable_folder_and_a_truncated_checkpoint_are_notes(sweep, tmp_path, monkeypatch):
    root = tmp_path / "runs"
    shutil.copytree(sweep / "exp_a" / "svite_s0", root / "ok" / "svite_s0")
    (root / "ok" / "loop").symlink_to(root, target_is_directory=True)  # a link back up the tree
    (root / "secret").mkdir()
    shutil.copytree(sweep / "exp_a" / "static_s0", root / "secret" / "static_s0")
    torn = root / "torn.safetensors"  # a bare checkpoint cut in half by a failed copy
    data = (sweep / "exp_a" / "dense_s0" / "checkpoint.safetensors").read_bytes()
    torn.write_bytes(data[: len(data) // 2])
    (root / "garbage.pth").write_bytes(b"not a checkpoint at all")
    # the tests run as root, whom chmod 000 does not stop: make scandir refuse that folder as it would
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path) == root / "secret":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    table, notes = runs.index_runs(root)
    assert list(table["name"]) == ["ok/svite_s0"]
    text = "\n".join(notes)
    assert "ok/loop: skipped, a symbolic link back to a folder already searched" in text
    assert "secret: skipped, cannot be read (Permission denied)" in text
    assert "torn.safetensors: checkpoint skipped" in text and "truncated" in text
    assert "garbage.pth: checkpoint skipped" in text
    assert len(notes) == 4 and all("\n" not in n and "Traceback" not in n for n in notes)


@pytest.mark.parametrize("damage", ["truncated", "trailing", "overlap", "huge_header", "not_json", "bad_meta"])
def test_header_reader_refuses_damaged_files_with_one_line(sweep, tmp_path, damage):
    data = bytearray((sweep / "exp_a" / "svite_s0" / "checkpoint.safetensors").read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    if damage == "truncated":
        data = data[:-1]
    elif damage == "trailing":
        data += b"\0" * 8
    elif damage in ("overlap", "bad_meta"):
        if damage == "overlap":
            first = next(k for k in header if k != "__metadata__")
            header[first]["data_offsets"] = [0, header[first]["data_offsets"][1]]
            second = next(k for k in header if k not in ("__metadata__", first))
            header[second]["data_offsets"] = list(header[first]["data_offsets"])
        else:
            header["__metadata__"]["svite_explorer"] = json.dumps({"model_config": {"name": "vit_tiny_demo", "depth": 10_000}})
        blob = json.dumps(header).encode()
        data = struct.pack("<Q", len(blob)) + blob + data[8 + n:]
    elif damage == "huge_header":
        data[:8] = struct.pack("<Q", len(data) - 8)
    else:
        data[8:12] = b"!!!!"
    path = tmp_path / "x.safetensors"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as err:
        read_header(path)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_refresh_rereads_only_what_changed(sweep, tmp_path, monkeypatch):
    root = tmp_path / "runs"
    shutil.copytree(sweep / "exp_a", root)
    idx = runs.RunIndex(root)
    first = idx.refresh()
    calls = []
    real = index_module.read_run
    monkeypatch.setattr(index_module, "read_run", lambda f: calls.append(f.name) or real(f))
    assert idx.refresh().equals(first) and calls == []
    with open(root / "static_s1" / "wall_s.txt", "w") as fh:
        fh.write("12.5\n")
    again = idx.refresh().set_index("name")
    assert calls == ["static_s1"] and again.loc["static_s1", "wall_s"] == 12.5


# ----------------------------------------------------------------------------------------------
# curves
def test_a_checkpoint_carries_its_curve_and_keeps_it_across_a_resume(tmp_path):
    from conftest import tiny_train_config

    out = tmp_path / "run"
    train(tiny_train_config(out, epochs=3, max_steps=12), show_progress=False, echo_metrics=False)
    train(tiny_train_config(out, epochs=3, resume=str(out)), show_progress=False, echo_metrics=False)
    curve = read_header(out / "checkpoint.safetensors").meta["curve"]
    logged = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in logged if r["kind"] == "epoch"]
    assert [c["step"] for c in curve] == [r["step"] for r in epochs] == [8, 16, 24]
    assert [c["val_top1"] for c in curve] == [r["val_top1"] for r in epochs]
    assert all(0 < c["lr"] < 2e-3 for c in curve)
    (out / "metrics.jsonl").unlink()  # a copied checkpoint, alone: its curve comes from the file itself
    alone = runs.checkpoint_curves(out / "checkpoint.safetensors")
    assert alone.source == "checkpoint" and list(alone.epochs["val_top1"]) == [c["val_top1"] for c in curve]


def test_curves_carry_every_topology_update(sweep):
    c = runs.run_curves(sweep / "exp_a" / "svite_s0", "checkpoint")
    loaded = load_checkpoint(sweep / "exp_a" / "svite_s0" / "checkpoint.safetensors")
    updates = [i for i in range(len(loaded.history)) if loaded.history.infos[i].get("event") == "update"]
    assert list(c.events["step"]) == [loaded.history.steps[i] for i in updates]
    assert list(c.events["rate"]) == [loaded.history.infos[i]["rate"] for i in updates]
    churn = analysis.mask_churn(loaded.history)
    assert list(c.events["moved"]) == list(churn[churn["event"] == "update"]["grown"])
    logged = [json.loads(ln) for ln in (sweep / "exp_a" / "svite_s0" / "metrics.jsonl").read_text().splitlines()]
    assert c.source == "metrics.jsonl" and len(c.epochs) == 2
    assert list(c.steps["loss"]) == [r["loss"] for r in logged if r["kind"] == "step"]


def test_weights_only_checkpoints_say_that_no_curve_was_recorded(sweep, tmp_path):
    from safetensors.torch import save_file

    loaded = load_checkpoint(sweep / "exp_a" / "dense_s0" / "checkpoint.safetensors")
    save_file({k: v.contiguous() for k, v in loaded.model.state_dict().items()}, tmp_path / "timm.safetensors")
    c = runs.checkpoint_curves(tmp_path / "timm.safetensors")
    assert c.empty and c.note.startswith("no curve recorded: this file holds weights only")


# ----------------------------------------------------------------------------------------------
# records and the command line
def test_exported_records_give_the_same_tables_without_weights(sweep, tmp_path):
    written, notes = runs.export_records(sweep, tmp_path / "records")
    assert len(written) == 7 and notes == []
    assert all(p.name == "svite-run.json" and p.stat().st_size < 16_000 for p in written)
    assert not list((tmp_path / "records").rglob("*.safetensors"))
    original, _ = runs.index_runs(sweep)
    shipped, _ = runs.index_runs(tmp_path / "records")
    assert runs.results_markdown(shipped) == runs.results_markdown(original)
    a = runs.run_curves(sweep / "exp_a" / "svite_s1", "checkpoint")
    b = runs.run_curves(tmp_path / "records" / "exp_a" / "svite_s1", "record")
    pd.testing.assert_frame_equal(a.epochs.reset_index(drop=True), b.epochs[a.epochs.columns], check_dtype=False)
    pd.testing.assert_frame_equal(a.events, b.events[a.events.columns], check_dtype=False)


def _cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = svite(list(args))
    return code, out.getvalue(), err.getvalue()


def test_svite_runs_prints_the_same_tables_as_the_page(sweep):
    code, out, err = _cli("runs", str(sweep))
    assert code == 0 and err == ""
    table, _ = runs.index_runs(sweep)
    assert out.startswith(f"7 runs: 7 finished below {sweep}\n") and runs.results_markdown(table) in out
    assert "| svite | static | 2 | 0,1 |" in out  # SViTE minus static, paired over both seeds
    code, out, _ = _cli("runs", str(sweep), "--json", "--baseline", "dense")
    doc = json.loads(out)
    assert code == 0 and doc["baselines"] == ["dense"] and len(doc["runs"]) == 7
    assert {d["label"] for d in doc["differences"]} == {"svite", "static", "s2vite", "svite+"}


@pytest.mark.parametrize("args, message", [
    (["runs", "{missing}"], "no such folder"),
    (["runs", "{file}"], "not a folder"),
    (["runs", "{sweep}", "--baseline", "nope"], "--baseline nope: no such configuration"),
    (["runs", "{sweep}", "--export", "{sweep}/out"], "lies inside"),
    (["runs", "{sweep}", "--export", "{file}"], "exists and is not a folder"),
])
def test_svite_runs_bad_input_is_one_line_and_changes_nothing(sweep, tmp_path, args, message):
    (tmp_path / "f.txt").write_text("x")
    before = sorted(p.relative_to(sweep) for p in sweep.rglob("*"))
    fill = {"missing": str(tmp_path / "missing"), "file": str(tmp_path / "f.txt"), "sweep": str(sweep)}
    code, out, err = _cli(*[a.format(**fill) for a in args])
    assert code == 2 and out == "" and err.count("\n") == 1 and message in err and "Traceback" not in err
    assert sorted(p.relative_to(sweep) for p in sweep.rglob("*")) == before
    assert (tmp_path / "f.txt").read_text() == "x"


def test_app_sh_refuses_a_runs_folder_that_is_not_there(tmp_path):
    """`bash scripts/app.sh --runs DIR` checks DIR before installing or starting anything."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(["bash", str(root / "scripts" / "app.sh"), "--runs", str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == f"scripts/app.sh: error: --runs {tmp_path / 'missing'}: not a folder\n"


def test_a_configuration_is_what_the_run_computes():
    """Runs are grouped by the fields that take effect (the CLI's unused-flag table): a flag the method does
    not use, a resume, or a field added after the run was made does not split a sweep; a field that does
    change the run does."""
    from sparsity_core.runs.identity import group_key
    from sparsity_core.training.config import TrainConfig

    dense = TrainConfig(method="dense", seed=0).to_dict()
    assert group_key(dense) == group_key({**dense, "density": 0.3, "head_growth": "gradient-norm", "seed": 4})
    assert group_key(dense) == group_key({**dense, "resume": "runs/x", "out": "elsewhere"})
    assert group_key(dense) != group_key({**dense, "lr": 2e-3})
    s2 = TrainConfig(method="s2vite", head_growth="gradient-norm").to_dict()
    before_the_flag = {k: v for k, v in s2.items() if k != "head_growth"}  # ran with the former rule
    assert group_key(before_the_flag) == group_key(s2)
    assert group_key(before_the_flag) != group_key(TrainConfig(method="s2vite").to_dict())
    svite = TrainConfig(method="svite").to_dict()
    assert group_key(svite) != group_key({**svite, "update_frequency": 7})
    assert group_key({**svite, "method": "static"}) == group_key({**svite, "method": "static", "update_frequency": 7})
