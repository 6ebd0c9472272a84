"""Loading any checkpoint a user is likely to hand us into one :class:`.loaded.LoadedCheckpoint`:
ours (:mod:`.loaded` has the layout), a plain timm/DeiT state dict or the official SViTE release
(:mod:`.foreign`), every declared size checked before anything is allocated (:mod:`.validate`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, SviteError, one_line
from ..history.fileformat import history_from_file, history_from_legacy
from ..history.lazy import MaskHistory
from ..models.stand_in import MODULE, TensorTree
from . import validate
from .foreign import load_official, load_plain
from .loaded import FORMAT, FORMAT_VERSION, LoadedCheckpoint
from .pickled import torch_load_safe, unwrap_state_dict

MAX_CHECKPOINT_BYTES = validate.MAX_CHECKPOINT_BYTES


def load_checkpoint(path: str | Path, *, num_heads: int | None = None) -> LoadedCheckpoint:
    """Load any supported checkpoint into one :class:`LoadedCheckpoint` (model on CPU, eval mode).

    ``num_heads`` overrides the head count for plain state dicts, whose weights do not reveal it.
    Everything the file declares is checked before it is built (see :mod:`validate`), and nothing
    stays memory-mapped to the file. Raises :class:`CheckpointError` with a one-line message naming
    the file for anything unreadable.
    """
    path = Path(path)
    try:
        loaded = _load_any(path, num_heads)
    except CheckpointError:
        raise
    except SviteError as err:  # e.g. from inferring a plain state dict's architecture
        raise CheckpointError(err.message, path=path, detail=err.detail) from None
    except (KeyError, ValueError, IndexError, RecursionError, OverflowError) as err:
        # A safety net under the checks in checkpoint/validate.py for what an untrusted file's *values* can still
        # trip (a missing key, a number out of range, nesting thousands deep): the file's problem. A
        # TypeError or AttributeError is a bug of ours and goes up as one (the CLI's "internal error").
        raise CheckpointError("the checkpoint is damaged", path=path, detail=f"{type(err).__name__}: {one_line(err)}") from None
    loaded.model.eval()
    return loaded


def _load_any(path: Path, num_heads: int | None) -> LoadedCheckpoint:
    validate.check_file(path)
    if validate.looks_like_safetensors(path):
        tensors, meta = validate.read_safetensors(path)
        if "svite_explorer" in meta:
            return _load_ours(path, tensors, meta["svite_explorer"])
        return load_plain(path, tensors, num_heads=num_heads)
    obj = torch_load_safe(path)
    validate.check_tensor_budget(path, obj, path.stat().st_size)
    if isinstance(obj, dict) and "model" in obj and any(k in obj for k in ("mask", "atten_mask", "other_mask")):
        return load_official(path, obj, num_heads=num_heads)
    return load_plain(path, unwrap_state_dict(path, obj), num_heads=num_heads)


def _load_ours(path: Path, tensors: dict[str, torch.Tensor], header_json: str) -> LoadedCheckpoint:
    header = validate.parse_header(path, header_json)
    if header.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"written by a newer SViTE Explorer (format {header['format_version']})", path=path)
    config = validate.model_config(path, header["model_config"])
    state = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    if header.get("model_kind") == MODULE:  # a Recorder run of a model only its own code can build
        model: nn.Module = TensorTree(state, config.name)
    else:
        model = validate.build_checked(path, config, state)
    params, units = validate.parameter_shapes(model), validate.unit_shapes(model)
    expected = {"mask": params, "unit": units, "fired": {**params, **units}}  # S2ViTE's fired holds units too
    groups = {group: validate.packed_group(path, tensors, group, header.get(f"{group}_shapes"), want)
              for group, want in expected.items()}
    history = _load_history(path, header, tensors, model)
    meta = {k: v for k, v in header.items() if k not in ("mask_shapes", "unit_shapes", "fired_shapes", "history")}
    masks, units_, fired = (g.unpack() if g is not None else None for g in groups.values())
    return LoadedCheckpoint(path=path, format=FORMAT, model=model, model_config=config, masks=masks, units=units_,
                            fired=fired, history=history, meta=meta)


def _load_history(path: Path, header: Mapping[str, Any], tensors: Mapping[str, torch.Tensor],
                  model: nn.Module) -> MaskHistory:
    """The lazy mask history: format 2 as it is stored (its index checked, nothing decoded), format 1
    (every snapshot packed whole, checked by :func:`validate.history_entries`) as keyframes; either
    way its masks must fit the model."""
    if header.get("format_version", 0) < 2:
        return history_from_legacy(validate.history_entries(path, tensors, header.get("history") or [], model),
                                   str(path))
    history = history_from_file(header.get("history"), tensors, str(path))
    for group, shapes in (("masks", validate.parameter_shapes(model)), ("units", validate.unit_shapes(model))):
        for layer in history.layers.get(group, []):
            if tuple(shapes.get(layer.name, ())) != layer.shape:
                raise CheckpointError(f"mask history has {group} '{layer.name}' {list(layer.shape)}, "
                                      "which the model does not have", path=path)
    return history
