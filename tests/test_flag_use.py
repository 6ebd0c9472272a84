"""No silent no-ops (issue 19): a typed ``svite train`` flag the chosen method or setup does not use is
named on stderr, one line per flag; it warns when the setting that turns it off was typed too (a sweep
passes one flag set to every method), and is refused when that setting is a default nobody typed."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sparsity_core.cli import build_parser, main, train_config
from sparsity_core.training.config import TrainConfig
from sparsity_core.training.flags import FLAG_USE, NOT_A_FLAG, typed_flags, unused_flags

TINY = ["--model", "vit_tiny_demo", "--embed-dim", "48", "--depth", "2", "--num-heads", "4", "--train-size", "64",
        "--val-size", "32", "--batch-size", "32", "--epochs", "1", "--max-steps", "1", "--quiet"]


def _train_dests() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return {a.dest for a in sub.choices["train"]._actions if a.dest != "help"}


def test_every_field_and_every_flag_says_when_it_is_used():
    """A new TrainConfig field or train flag must be entered in flag_use.FLAG_USE (this fails until it is)."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    dests = _train_dests()
    assert (fields | dests) - set(FLAG_USE) == set(), "add these to sparsity_core/training/flags.py FLAG_USE"
    assert set(FLAG_USE) - (fields | dests) == set(), "FLAG_USE names flags that no longer exist"
    not_flags = {name for name, needs in FLAG_USE.items() if needs is NOT_A_FLAG}
    assert not_flags & dests == set(), "a field marked NOT_A_FLAG has a command-line flag"
    assert dests - fields == {"quiet"}  # the one CLI-only flag


def _typed(argv: list[str]) -> list[str]:
    return typed_flags(build_parser(), "train", argv)


def _lines(argv: list[str]) -> list[tuple[str, bool]]:
    full = ["train", "--out", "x", *argv]
    return [(u.message, u.refuse) for u in unused_flags(train_config(build_parser().parse_args(full)), _typed(full))]


# (typed flags, [(line, refused)]): every row of the table, each way round
CASES = [
    (["--method", "dense", "--density", "0.3"], [("--density has no effect with --method dense", False)]),
    (["--density", "0.3"], [("--density has no effect with --method dense (the default); pass --method static, "
                              "oneshot or svite to use it, or leave --density out", True)]),
    (["--method", "s2vite", "--sparse-init", "ER"], [("--sparse-init has no effect with --method s2vite", False)]),
    (["--method", "svite", "--atten-density", "0.5", "--other-density", "0.5", "--head-growth", "gradient-norm"],
     [("--atten-density has no effect with --method svite", False),
      ("--other-density has no effect with --method svite", False),
      ("--head-growth has no effect with --method svite", False)]),
    (["--method", "static", "--update-frequency", "50", "--death-rate", "0.3", "--decay-schedule", "constant",
      "--t-end", "0.5", "--update-start", "warmup", "--growth", "random", "--grown-moments", "zero-avg",
      "--death", "magnitude-mature"],
     [(f"{f} has no effect with --method static", False) for f in
      ("--update-frequency", "--death-rate", "--decay-schedule", "--t-end", "--update-start", "--growth",
       "--grown-moments", "--death")]),
    (["--method", "s2vite", "--death", "magnitude-mature", "--include", "*qkv*", "--exclude", "head*"],
     [("--death has no effect with --method s2vite", False), ("--include has no effect with --method s2vite", False),
      ("--exclude has no effect with --method s2vite", False)]),
    (["--method", "svite", "--oneshot-at", "0.3"], [("--oneshot-at has no effect with --method svite", False)]),
    (["--method", "svite", "--mask-path", "d.json"],
     [("--mask-path has no effect with --sparse-init fixed_ERK (the default); pass --sparse-init custom to use it, "
       "or leave --mask-path out", True)]),
    (["--method", "svite", "--sparse-init", "ER", "--mask-path", "d.json"],
     [("--mask-path has no effect with --sparse-init ER", False)]),
    (["--method", "dense", "--sparse-init", "custom", "--mask-path", "d.json"],
     [("--sparse-init has no effect with --method dense", False), ("--mask-path has no effect with --method dense",
                                                                     False)]),
    (["--selector-block", "2"], [("--selector-block has no effect without a token selector (neither --keep-ratio nor "
                                  "--token-number was given); pass --keep-ratio R or --token-number K to use it, or "
                                  "leave --selector-block out", True)]),
    (["--method", "svite", "--selector-scorer", "mlp", "--selector-mode", "zero", "--selector-keep-warmup", "0"],
     [(f"{f} has no effect without a token selector", True) for f in
      ("--selector-scorer", "--selector-mode", "--selector-keep-warmup")]),
    (["--aa", "rand-m9-mstd0.5-inc1"], [("--aa has no effect with --data demo (the default); pass --data DIR (an image "
                                         "folder; the demo images are generated, never augmented) to use it, or leave "
                                         "--aa out", True)]),
    (["--data", "demo", "--aa", "rand-m9-mstd0.5-inc1"], [("--aa has no effect with --data demo", False)]),
    (["--resume", "r", "--init", "c.safetensors"], [("--init has no effect with --resume", False)]),
    # used: nothing to say
    (["--method", "svite", "--density", "0.3", "--update-frequency", "9", "--death", "magnitude-mature"], []),
    (["--method", "s2vite", "--atten-density", "0.5", "--growth", "random", "--keep-ratio", "0.5",
      "--selector-block", "1", "--selector-mode", "gather"], []),
    (["--method", "oneshot", "--oneshot-at", "0.3", "--sparse-init", "custom", "--mask-path", "d.json"], []),
    (["--token-number", "8", "--selector-scorer", "mlp"], []),  # a selector on a dense backbone
    (["--data", "/some/folder", "--aa", "rand-m9-mstd0.5-inc1", "--init", "c.safetensors"], []),
]


@pytest.mark.parametrize("argv,expected", CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_each_unused_flag_is_one_line_warned_or_refused(argv, expected):
    got = _lines(argv)
    assert [refused for _, refused in got] == [refused for _, refused in expected]
    for (line, _), (want, _) in zip(got, expected, strict=True):
        assert line.startswith(want), line


def test_only_typed_flags_count():
    # the default value typed counts (the user asked for it); an untyped default never does
    assert _typed(["train", "--out", "x", "--method", "dense", "--density", "0.5"]) == ["out", "method", "density"]
    assert _typed(["train", "--out=x", "--dens", "0.3", "--include", "a", "--include", "b"]) == [
        "out", "density", "include"]
    assert _lines(["--method", "dense"]) == [] and _lines([]) == []
    assert _lines(["--method", "dense", "--density", "0.5"]) == [("--density has no effect with --method dense", False)]


def _stderr_lines(capsys) -> list[str]:
    return [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("checkpoint: ")]


@pytest.mark.parametrize("method", ["dense", "static", "oneshot", "svite", "s2vite"])
def test_a_sweep_runs_every_method_with_the_same_flags(tmp_path, capsys, method):
    """One flag set for every method: each run starts, and names exactly the flags it does not use."""
    sweep = ["--density", "0.4", "--update-frequency", "50", "--atten-density", "0.5", "--oneshot-at", "0.5"]
    assert main(["train", *TINY, "--method", method, *sweep, "--out", str(tmp_path / method)]) == 0
    unused = {"dense": ["density", "update-frequency", "atten-density", "oneshot-at"],
              "static": ["update-frequency", "atten-density", "oneshot-at"],
              "oneshot": ["update-frequency", "atten-density"],
              "svite": ["atten-density", "oneshot-at"],
              "s2vite": ["density", "oneshot-at"]}[method]
    assert _stderr_lines(capsys) == [f"svite train: warning: --{f} has no effect with --method {method}" for f in unused]
    assert (tmp_path / method / "checkpoint.safetensors").is_file()


def test_the_issues_examples_on_the_command_line(tmp_path, capsys):
    assert main(["train", *TINY, "--method", "dense", "--density", "0.3", "--out", str(tmp_path / "a")]) == 0
    assert _stderr_lines(capsys) == ["svite train: warning: --density has no effect with --method dense"]
    assert main(["train", *TINY, "--selector-block", "2", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("svite train: error: --selector-block has no effect without a token selector")
    assert err.count("\n") == 1 and not (tmp_path / "b").exists()


def test_inspect_num_heads_on_our_own_file_says_it_does_nothing(tmp_path, capsys):
    ckpt = Path(__file__).resolve().parents[1] / "checkpoints" / "dense.safetensors"
    assert main(["inspect", str(ckpt), "--num-heads", "3"]) == 0
    assert capsys.readouterr().err == (f"svite inspect: warning: --num-heads has no effect on {ckpt}: the checkpoint "
                                       "records its architecture\n")


def test_the_retrain_page_passes_no_flag_its_run_does_not_use():
    from app.retrain import registry

    for method in ("dense", "static", "oneshot", "svite", "s2vite"):
        for keep in (0.0, 0.5):
            cmd = registry.RunForm(method=method, keep_ratio=keep, init="/x/c.safetensors").command(Path("/tmp/o"))
            argv = cmd[cmd.index("train"):]
            args = build_parser().parse_args(argv)
            assert unused_flags(train_config(args), _typed(argv)) == [], (method, keep)


def test_docs_cli_names_every_command_and_flag():
    """docs/cli.md is the contract: every command and every flag of every command is in it."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for command, p in sub.choices.items():
        assert f"`svite {command}" in text, command
        for action in p._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help"):
                    assert option in text, f"svite {command} {option} is not in docs/cli.md"
