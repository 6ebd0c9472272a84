"""SViTE Explorer core: sparse Vision Transformer training, evaluation, checkpoints, and a recorder for
runs made in anyone's own loop.

What a researcher's own code needs is here (docs/api.md)::

    from sparsity_core import Recorder, load_checkpoint, build_model, ModelConfig, MaskSet, MaskHistory
    from sparsity_core import train, TrainConfig, SviteError

Importing the package makes ``import timm`` safe on CPU-only torch (``_compat``) and changes nothing else of
the process: it leaves the caller's environment alone (``HF_HUB_OFFLINE`` included, so a caller's own
``timm.create_model(pretrained=True)`` still downloads). The ``svite`` command and the app keep the hub
offline themselves: nothing of ours ever downloads weights. The names above are imported on first use, so
``import sparsity_core`` stays light (``svite --help`` never imports timm).
"""

from __future__ import annotations

from typing import Any

from ._compat import ensure_torchvision_importable

ensure_torchvision_importable()

from .errors import SviteError  # noqa: E402

__version__ = "0.1.0"

#: public name -> the module that defines it (imported on first access, PEP 562)
_EXPORTS = {
    "Recorder": "sparsity_core.record",
    "load_checkpoint": "sparsity_core.checkpoint",
    "LoadedCheckpoint": "sparsity_core.checkpoint",
    "build_model": "sparsity_core.models",
    "ModelConfig": "sparsity_core.models",
    "MaskSet": "sparsity_core.masks",
    "MaskHistory": "sparsity_core.history",
    "train": "sparsity_core.training",
    "TrainConfig": "sparsity_core.training",
}
__all__ = ["SviteError", "__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # the next access is a plain attribute
        return value
    raise AttributeError(f"module 'sparsity_core' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_EXPORTS))
