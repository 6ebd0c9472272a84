#!/usr/bin/env bash
# Create .venv (if missing) and install SViTE Explorer with its test extras.
# torch is pinned to 2.13.0: on this project's machines its CPU wheel lies on disk (/opt/wheels) and pip
# takes it from there; an open range would pull a multi-GB CUDA build. torchvision 0.28.0 is the release
# paired with it (timm imports torchvision; sparsity_core/_compat.py explains the small shim that a CPU
# torch needs next to PyPI's torchvision). Repeating the pins on the same line keeps pip from upgrading.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0" "torchvision==0.28.0" -e ".[test]"
.venv/bin/python -c "import sparsity_core, timm, torch; print('installed: torch', torch.__version__, '| timm', timm.__version__)"
