#!/usr/bin/env bash
# Install (if needed), then a short SViTE training run (density 0.5) on the built-in demo data, and describe it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
OUT=${OUT:-runs/demo-$(date +%Y%m%d-%H%M%S)}
.venv/bin/svite train --model vit_tiny_demo --data demo --epochs 2 --method svite --density 0.5 --update-frequency 50 --out "$OUT"
.venv/bin/svite inspect "$OUT/checkpoint.safetensors"
