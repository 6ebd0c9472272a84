"""Where the app looks for things: shipped checkpoints, runs, uploads (each overridable by env var)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
#: Running from a checkout of the repository (``bash scripts/app.sh``), not from an installed package
#: (``pip install`` + ``svite app``): only a checkout has the shipped demo checkpoints beside the code.
IS_CHECKOUT = (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "pages").is_dir()

#: File types the checkpoint loader accepts (safetensors, and torch pickles loaded with weights_only).
CHECKPOINT_SUFFIXES: tuple[str, ...] = (".safetensors", ".pth", ".pt", ".bin")
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
#: Upload cap in MB when Streamlit's own ``server.maxUploadSize`` is not readable.
DEFAULT_UPLOAD_MB = 400
#: Largest image upload (MB) for the patch maps page.
IMAGE_UPLOAD_MB = 20


def pages_dir() -> Path:
    """The page scripts: ``pages/`` of a checkout, ``app/pages`` of an installed package (setup.py puts them there)."""
    return REPO_ROOT / "pages" if IS_CHECKOUT else Path(__file__).resolve().parent / "pages"


def checkpoints_dir() -> Path:
    """The shipped demo checkpoints (``SVITE_CHECKPOINTS_DIR`` overrides, e.g. in tests)."""
    return Path(os.environ.get("SVITE_CHECKPOINTS_DIR", REPO_ROOT / "checkpoints")).expanduser()


def runs_dir() -> Path:
    """Training runs, including the ones the Retrain page launches (``SVITE_RUNS_DIR`` overrides; ``svite
    app --runs DIR`` sets it). Default: the checkout's ``runs/``, or the current folder's for an installed app."""
    default = REPO_ROOT / "runs" if IS_CHECKOUT else Path.cwd() / "runs"
    return Path(os.environ.get("SVITE_RUNS_DIR", default)).expanduser()


def shipped_runs_dir() -> Path:
    """The sweep that ships with the app: run records without weights (``checkpoints/runs/``)."""
    return checkpoints_dir() / "runs"


def sweep_roots() -> list[Path]:
    """The folders the Runs page and the picker search for runs (at any depth): ``SVITE_RUNS_DIR`` alone
    when it is set (``bash scripts/app.sh --runs DIR``), else ``runs/`` and the shipped sweep."""
    if os.environ.get("SVITE_RUNS_DIR"):
        return [runs_dir()]
    return [p for p in (runs_dir(), shipped_runs_dir()) if p.is_dir()] or [runs_dir()]


def uploads_dir() -> Path:
    """Where uploaded checkpoints are kept for this machine (``SVITE_UPLOADS_DIR`` overrides)."""
    default = Path(tempfile.gettempdir()) / "svite-explorer-uploads"
    return Path(os.environ.get("SVITE_UPLOADS_DIR", default)).expanduser()


def upload_limit_mb() -> int:
    """The upload cap: Streamlit's ``server.maxUploadSize`` (set in .streamlit/config.toml)."""
    try:
        import streamlit as st

        return int(st.get_option("server.maxUploadSize"))
    except Exception:  # outside a Streamlit runtime
        return DEFAULT_UPLOAD_MB


def torch_threads() -> int:
    """Torch threads for the app's own analyses (``SVITE_APP_THREADS`` overrides; default 1).

    The app's models are small and its work comes in small pieces (one image, one layer): on a 2-core
    machine with other work running (load average 2 and up) two intra-op threads wait on each other, and
    measured on the SViTE+ demo at load 7, one thread made a keep map 14× and integrated gradients 7×
    faster (8 vs 108 ms, 289 vs 1979 ms). Training runs are separate processes and keep torch's default.
    """
    try:
        return max(1, int(os.environ.get("SVITE_APP_THREADS", "1")))
    except ValueError:
        return 1
