"""SViTE Explorer core: sparse Vision Transformer training, evaluation and checkpoints.

Pure Python (no Streamlit). Importing the package makes ``import timm`` safe on CPU-only torch
(see ``_compat``) and keeps Hugging Face Hub offline unless the caller decided otherwise: weights are
only ever loaded from local files.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ._compat import ensure_torchvision_importable  # noqa: E402

ensure_torchvision_importable()

from .errors import SviteError  # noqa: E402
from .models import compact, token_selector  # noqa: E402,F401  (they register their build_model steps)

__version__ = "0.1.0"
__all__ = ["SviteError", "__version__"]
