#!/usr/bin/env bash
# Install (if needed), then open SViTE Explorer on the shipped demo checkpoints, on localhost only.
# Extra arguments go to streamlit (e.g. --server.port 8502).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/streamlit run app/main.py --server.address localhost "$@"
