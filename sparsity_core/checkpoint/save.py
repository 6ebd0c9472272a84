"""Writing our one-file checkpoint (layout in :mod:`.loaded`) and the resume state beside it.

Writes are atomic (:mod:`.atomic`): a crash or a full disk never leaves a half-written checkpoint where a
good one was; both files are streamed (:mod:`.streaming`), so saving holds nothing the size of the model.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..history.entry import Segments
from ..history.fileformat import history_to_file
from ..history.lazy import MaskHistory, as_history
from ..masks.maskset import MaskSet, PackedMasks, Snapshot
from ..models.builder import ModelConfig
from .atomic import atomic_write_bytes
from .loaded import FORMAT, FORMAT_VERSION
from .streaming import write_safetensors


def package_versions() -> dict[str, str]:
    import numpy
    import safetensors
    import timm

    from .. import __version__

    return {"sparsity_core": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "numpy": numpy.__version__, "safetensors": safetensors.__version__,
            "python": platform.python_version()}


def _put_packed(tensors: dict[str, torch.Tensor], prefix: str, packed: PackedMasks) -> dict[str, list[int]]:
    for name, data in packed.data.items():
        tensors[f"{prefix}/{name}"] = data.contiguous()
    return {n: list(s) for n, s in packed.shapes.items()}


def checkpoint_parts(model: nn.Module | Mapping[str, torch.Tensor], model_config: ModelConfig, *,
                     masks: MaskSet | PackedMasks | None = None,
                     units: MaskSet | None = None, fired: MaskSet | None = None,
                     history: MaskHistory | list[Snapshot] | None = None,
                     meta: Mapping[str, Any] | None = None) -> tuple[dict[str, torch.Tensor | Segments], dict[str, str]]:
    """The tensors and metadata of a checkpoint (see module docstring for the layout). The weights are
    the model's own tensors and the history's segments its own arrays, not copies: the file is streamed
    (:func:`.streaming.write_safetensors`), so saving holds nothing the size of the model. ``model`` may
    also be its state dict (the Recorder's, with torch's pruning reparametrizations folded back)."""
    state = model.state_dict() if isinstance(model, nn.Module) else model
    tensors: dict[str, torch.Tensor | Segments] = {f"model/{name}": value.detach() for name, value in state.items()}
    header: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": model_config.to_dict(),
        "versions": package_versions(),
        **dict(meta or {}),
    }
    header["format_version"] = FORMAT_VERSION  # meta re-saved from an older file must not carry its version
    if isinstance(masks, MaskSet):
        masks = masks.pack()  # the Recorder hands its last snapshot's packed masks (no second copy)
    header["mask_shapes"] = _put_packed(tensors, "mask", masks) if masks is not None else None
    header["unit_shapes"] = _put_packed(tensors, "unit", units.pack()) if units is not None else None
    header["fired_shapes"] = _put_packed(tensors, "fired", fired.pack()) if fired is not None else None
    history_tensors, header["history"] = history_to_file(as_history(history), segments=True)
    tensors.update(history_tensors)
    return tensors, {"svite_explorer": json.dumps(header, default=_json_default)}


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def save_checkpoint(path: str | Path, model: nn.Module | Mapping[str, torch.Tensor], model_config: ModelConfig,
                    **kwargs: Any) -> Path:
    """Atomically write a one-file checkpoint, streamed. kwargs: masks, units, fired, history, meta."""
    tensors, metadata = checkpoint_parts(model, model_config, **kwargs)
    return atomic_write_bytes(path, lambda fh: write_safetensors(fh, tensors, metadata))


def save_resume_state(path: str | Path, state: Mapping[str, Any]) -> Path:
    """Optimizer / scheduler / scaler / RNG / engine state, beside the checkpoint (atomic), streamed to
    the file: a buffer in memory would hold the whole optimizer state a second time."""
    return atomic_write_bytes(path, lambda fh: torch.save(dict(state), fh))
