#!/usr/bin/env bash
# Install (if needed) and run the main job: a demo SViTE training run on the built-in data, then describe it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
OUT=${OUT:-runs/demo-$(date +%Y%m%d-%H%M%S)}
.venv/bin/svite train --model vit_tiny_demo --data demo --epochs 2 --out "$OUT"
.venv/bin/svite inspect "$OUT/checkpoint.safetensors"
