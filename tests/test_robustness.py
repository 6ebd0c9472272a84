"""Runs that survive kills and NaNs (issue: scale and robustness)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_train_config

import sparsity_core.training.loop as train_module
from sparsity_core.checkpoint import load_checkpoint
from sparsity_core.cli import main
from sparsity_core.errors import SviteError
from sparsity_core.training.loop import train

KILL_ARGS = ["--model", "vit_tiny_demo", "--embed-dim", "48", "--depth", "2", "--num-heads", "4",
             "--train-size", "512", "--val-size", "64", "--batch-size", "32", "--epochs", "4", "--lr", "2e-3",
             "--checkpoint-every", "3", "--log-every", "1", "--quiet"]


def _svite(*extra: str) -> list[str]:
    return [sys.executable, "-m", "sparsity_core", "train", *KILL_ARGS, *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}


def _steps_logged(metrics: Path) -> int:
    return metrics.read_text().count('"kind": "step"') if metrics.exists() else 0


def _wait_for_steps(metrics: Path, target: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Block until the run has logged ``target`` steps (it logs every step) or has ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None and _steps_logged(metrics) < target:
        time.sleep(0.01)


def _kill_and_resume(tmp_path: Path, method_args: list[str], kills: int, seed: int) -> None:
    reference = tmp_path / "reference"
    subprocess.run(_svite("--out", str(reference), *method_args), check=True, env=_env(), timeout=600,
                   capture_output=True)
    run = tmp_path / "killed"
    metrics = run / "metrics.jsonl"
    rng = random.Random(seed)
    moments: list[int] = []
    updates_at_kill: list[int] = []  # topology updates the run had made when it was killed
    while len(moments) < kills:
        resume = ["--resume", str(run)] if (run / "checkpoint.safetensors").exists() else []
        # a random moment inside training: after a random number of further steps, plus a random
        # fraction of a step (so kills land in forward/backward, in the engine, or mid-checkpoint)
        target = _steps_logged(metrics) + rng.randint(1, 14)
        proc = subprocess.Popen(_svite("--out", str(run), *method_args, *resume), env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _wait_for_steps(metrics, target, proc)
        time.sleep(rng.uniform(0.0, 0.05))
        if proc.poll() is not None:  # it finished before the kill: start over from scratch
            assert proc.returncode == 0, proc.stderr.read().decode()
            for f in run.iterdir():
                f.unlink()
            continue
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        moments.append(_steps_logged(metrics))
        if (run / "checkpoint.safetensors").exists():
            loaded = load_checkpoint(run / "checkpoint.safetensors")  # the last checkpoint always loads
            assert (run / loaded.meta["resume_file"]).is_file()
            updates_at_kill.append(sum(s.info.get("event") == "update" for s in loaded.history))
    resume = ["--resume", str(run)] if (run / "checkpoint.safetensors").exists() else []
    done = subprocess.run(_svite("--out", str(run), *method_args, *resume), env=_env(), timeout=600,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    a = load_checkpoint(reference / "checkpoint.safetensors")
    b = load_checkpoint(run / "checkpoint.safetensors")
    for key, value in a.model.state_dict().items():
        assert torch.equal(value, b.model.state_dict()[key]), f"{key} differs after kills at {moments}"
    if a.masks is not None:
        assert a.masks.equal(b.masks)
    if method_args[method_args.index("--method") + 1] == "svite":
        # resume restores masks that moved: the run had updated its topology before some kill, and the
        # final masks are not the initial ones
        assert max(updates_at_kill, default=0) >= 1, f"no topology update before any kill ({updates_at_kill})"
        assert sum(s.info.get("event") == "update" for s in a.history) >= 3
        assert not a.history[0].masks.unpack().equal(a.masks)
    assert b.meta["complete"] is True and b.meta["step"] == a.meta["step"]
    steps = [json.loads(line).get("step") for line in (run / "metrics.jsonl").read_text().splitlines()
             if '"kind": "step"' in line]
    assert steps == sorted(set(steps)), "metrics of killed attempts were not cleaned up on resume"
    assert not list(run.glob(".*.tmp"))


def test_sigkill_at_random_moments_then_resume_is_bit_exact(tmp_path):
    # SViTE rather than dense: its resume must also restore masks, fired masks and the schedule; updates
    # from step 0 (at this size the default plateau start would never update, and "resume restores the
    # masks" would be checked on masks that never changed)
    _kill_and_resume(tmp_path, ["--method", "svite", "--density", "0.5", "--update-frequency", "4",
                                "--update-start", "0"], kills=5, seed=7)


@pytest.mark.slow
def test_sigkill_twenty_times_then_resume_is_bit_exact(tmp_path):
    _kill_and_resume(tmp_path, ["--method", "svite", "--density", "0.5", "--update-frequency", "4",
                                "--update-start", "0"], kills=20, seed=11)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    real_build = train_module.build_model
    forward_calls = {"n": 0}

    def poisoned_build(config):
        model = real_build(config)

        def inject(module, args, output):
            if module.training:
                forward_calls["n"] += 1
                if forward_calls["n"] == 11:  # the 11th training step (index 10)
                    return output * float("nan")
            return None

        model.register_forward_hook(inject)
        return model

    monkeypatch.setattr(train_module, "build_model", poisoned_build)
    out = tmp_path / "run"
    argv = ["train", "--model", "vit_tiny_demo", "--embed-dim", "48", "--depth", "2", "--num-heads", "4",
            "--train-size", "256", "--val-size", "64", "--batch-size", "32", "--epochs", "2", "--lr", "2e-3", "--quiet",
            "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "step 10" in err and "loss is nan" in err and err.count("\n") == 1
    kept = load_checkpoint(out / "checkpoint.safetensors")
    assert kept.meta["step"] == 8 and kept.meta["complete"] is False  # epoch 1's checkpoint, untouched
    assert (out / kept.meta["resume_file"]).is_file()
    monkeypatch.setattr(train_module, "build_model", real_build)
    clean = train(tiny_train_config(tmp_path / "clean", max_steps=8), show_progress=False, echo_metrics=False)
    for key, value in load_checkpoint(clean).model.state_dict().items():
        assert torch.equal(value, kept.model.state_dict()[key]), key
    assert not (out / ".lock").exists()


def test_nan_loss_error_is_a_svite_error(tmp_path, monkeypatch):
    real_build = train_module.build_model

    def nan_build(config):
        model = real_build(config)
        model.register_forward_hook(lambda m, a, o: o * float("nan"))
        return model

    monkeypatch.setattr(train_module, "build_model", nan_build)
    with pytest.raises(SviteError, match=r"at step 0 \(epoch 1\)"):
        train(tiny_train_config(tmp_path / "run"), show_progress=False, echo_metrics=False)
    assert not (tmp_path / "run" / "checkpoint.safetensors").exists()


def test_fresh_start_after_a_kill_before_the_first_checkpoint_cleans_the_metrics(tmp_path):
    """A run killed before its first checkpoint leaves step lines (the last one maybe torn) and nothing to
    resume; the fresh start that follows must not append to them (found by the 20-kill test)."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"kind": "start", "step": 0}\n{"kind": "step", "step": 1, "loss": 2.3}\n'
                                       '{"kind": "step", "step": 2, "lo')
    train(tiny_train_config(out=str(out), epochs=1, max_steps=3, log_every=1), show_progress=False,
          echo_metrics=False)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # no torn line left
    steps = [r["step"] for r in records if r["kind"] == "step"]
    assert steps == [1, 2, 3]
