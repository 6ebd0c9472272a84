"""Make ``import timm`` work with the CPU build of torch.

timm imports torchvision, and the torchvision wheel on PyPI is built against CUDA torch. Next to the
CPU torch wheel its C extension does not load, so the ``torchvision::nms``/``qnms`` operators are
never defined, and torchvision's own import then fails in ``register_fake("torchvision::nms")`` with
"operator torchvision::nms does not exist". We only use torchvision's transforms (through timm),
never its detection ops, so defining the two operator *schemas* (no kernels) is enough for the
import to succeed. The shim is active only when that exact failure happens; with a matching
torch/torchvision pair it does nothing. Calling ``torchvision.ops.nms`` afterwards still raises a
clear "no kernel" error rather than computing anything wrong.
"""

from __future__ import annotations

import sys

import torch

_SHIM_LIBRARY: torch.library.Library | None = None  # kept alive: dropping it would undefine the ops
_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)


def torchvision_shim_active() -> bool:
    """True when the operator-schema shim had to be installed."""
    return _SHIM_LIBRARY is not None


def ensure_torchvision_importable() -> None:
    """Import torchvision, installing the schema shim if (and only if) the import needs it."""
    global _SHIM_LIBRARY
    if "torchvision" in sys.modules and _SHIM_LIBRARY is not None:
        return
    try:
        import torchvision  # noqa: F401
        return
    except RuntimeError as err:
        if "torchvision::" not in str(err):
            raise
    # Drop the half-imported package before trying again.
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _SCHEMAS:
        lib.define(schema)
    _SHIM_LIBRARY = lib
    import torchvision  # noqa: F401,F811
