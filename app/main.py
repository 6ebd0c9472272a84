"""SViTE Explorer: ``streamlit run app/main.py`` (or ``bash scripts/app.sh``).

The entry script only sets the page up, draws the sidebar (talk mode, checkpoint picker, upload) and
hands over to the page the user is on; the pages live in the top-level ``pages/`` folder.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parent.parent)
if _ROOT not in sys.path:  # `streamlit run app/main.py` puts app/ on the path, not the repository root
    sys.path.insert(0, _ROOT)

import os  # noqa: E402

# Nothing the app loads comes from a hub: keep Hugging Face offline for this process and the runs it starts
# (the library leaves a caller's environment alone; its CLI and this app decide for themselves).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import streamlit as st  # noqa: E402

# The first page of a fresh server imports torch, torchvision and timm (5-15 s on a busy 2-core machine):
# say so at once instead of showing a blank page; later runs find them imported and skip this.
_starting = st.empty() if "sparsity_core" not in sys.modules else None
if _starting is not None:
    _starting.info("Starting the explorer: loading torch and timm (first page after a server start only)…",
                   icon=":material/hourglass_top:")

import sparsity_core  # noqa: E402,F401  (before timm: installs the torchvision shim, keeps the hub offline)
from app.widgets import ui  # noqa: E402

if _starting is not None:
    _starting.empty()

_t0 = time.perf_counter()
try:
    ui.configure_page()
    page = st.navigation(ui.navigation_pages())
    ui.sidebar()
    page.run()
finally:  # how long this run of the script took (benchmarks/bench_app.py reads it)
    st.session_state["_render_s"] = time.perf_counter() - _t0
