"""The prepared GPU check script runs end to end on the CPU (its smoke mode), so it is ready the day a
GPU is at hand: topology updates happen during the timed steps and its own correctness checks pass."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke_run_on_cpu() -> None:
    cmd = [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--device", "cpu", "--model", "vit_tiny_demo",
           "--steps", "8", "--blocks", "2", "--batch-size", "4", "--update-frequency", "3"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout)
    assert result["masked_weights_zero"] is True
    assert result["budget_exact"] is True
    assert result["topology_updates"] >= 3  # 14 steps at an update every 3 steps (t_end 0.8 of 36)
    assert abs(result["density"] - 0.5) < 0.01
    assert result["dense_images_per_s"] > 0 and result["sparse_images_per_s"] > 0
    assert result["sparse_over_dense_step_time"] > 0


@pytest.mark.skipif(torch.cuda.is_available(),
                    reason="a GPU is present: the default path is the real check, not the no-GPU message")
def test_gpu_check_says_clearly_when_there_is_no_gpu() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py")], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode != 0
    assert "no CUDA device here" in proc.stderr
    assert "Traceback" not in proc.stderr
