#!/usr/bin/env bash
# Install (if needed), then open SViTE Explorer on the shipped demo checkpoints and sweep, on localhost only.
#   bash scripts/app.sh --runs DIR   shows every run below DIR (any depth) instead of runs/ and the shipped sweep
# Other arguments go to streamlit (e.g. --server.port 8502).
set -euo pipefail
cd "$(dirname "$0")/.."
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --runs)
      if [ $# -lt 2 ] || [ ! -d "$2" ]; then
        echo "scripts/app.sh: error: --runs ${2:-}: not a folder" >&2
        exit 2
      fi
      SVITE_RUNS_DIR="$(cd "$2" && pwd)"; export SVITE_RUNS_DIR; shift 2 ;;
    --runs=*)
      dir="${1#--runs=}"
      if [ ! -d "$dir" ]; then echo "scripts/app.sh: error: --runs $dir: not a folder" >&2; exit 2; fi
      SVITE_RUNS_DIR="$(cd "$dir" && pwd)"; export SVITE_RUNS_DIR; shift ;;
    *) args+=("$1"); shift ;;
  esac
done
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/streamlit run app/main.py --server.address localhost "${args[@]}"
