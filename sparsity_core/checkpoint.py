"""One-file checkpoints (safetensors) with masks and their history, and a safe loader for every
format a user is likely to hand us.

Our format: a single ``.safetensors`` file with
  ``model/<param>``                       weights,
  ``mask/<param>`` / ``unit/<name>``       final weight masks / head+neuron masks (bit-packed uint8),
  ``fired/<param>``                        ever-active masks (bit-packed),
  ``history/<i>/<group>``                  the mask history: keyframes and deltas (``history_io``),
and JSON metadata (model config, method and settings, epoch, metrics, versions, training config,
the history's index). Format 1 files (every snapshot bit-packed in full) still load.

Loading never unpickles arbitrary objects: safetensors, or ``torch.load(weights_only=True)`` with
only ``argparse.Namespace`` allow-listed (the official SViTE checkpoint stores its args that way).
Writes are atomic (``atomic.py``): a crash or a full disk never leaves a half-written checkpoint where a
good one was.
"""

from __future__ import annotations

import argparse
import io
import json
import pickle
import platform
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_save
from torch import nn

from . import validate
from .atomic import atomic_write_bytes
from .errors import CheckpointError, SviteError
from .history import MaskHistory, as_history
from .history_io import history_from_file, history_from_legacy, history_to_file
from .masks import MaskSet, PackedMasks, Snapshot, default_sparsifiable, head_unit_name, neuron_unit_name
from .models import ModelConfig, SelectorConfig, infer_config_from_state_dict

FORMAT = "svite-explorer"
FORMAT_VERSION = 2  # 2: keyframe + delta mask history (1: every snapshot packed in full)
MAX_CHECKPOINT_BYTES = validate.MAX_CHECKPOINT_BYTES


@dataclass
class LoadedCheckpoint:
    """Everything a checkpoint holds, whatever file format it came from."""

    path: Path
    format: str  # "svite-explorer" | "timm" | "svite-official"
    model: nn.Module
    model_config: ModelConfig
    masks: MaskSet | None = None  # weight-level masks (None: dense / unknown)
    units: MaskSet | None = None  # head/neuron masks of structured runs
    fired: MaskSet | None = None
    history: MaskHistory = field(default_factory=MaskHistory)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def method(self) -> str:
        return str(self.meta.get("method", "dense"))

    @property
    def has_selector(self) -> bool:
        return hasattr(self.model, "token_selector")


# ----------------------------------------------------------------------------------------------
# saving
def package_versions() -> dict[str, str]:
    import numpy
    import safetensors
    import timm

    from . import __version__

    return {"sparsity_core": __version__, "torch": torch.__version__, "timm": timm.__version__,
            "numpy": numpy.__version__, "safetensors": safetensors.__version__,
            "python": platform.python_version()}


def _put_packed(tensors: dict[str, torch.Tensor], prefix: str, packed: PackedMasks) -> dict[str, list[int]]:
    for name, data in packed.data.items():
        tensors[f"{prefix}/{name}"] = data.contiguous()
    return {n: list(s) for n, s in packed.shapes.items()}


def checkpoint_bytes(model: nn.Module, model_config: ModelConfig, *, masks: MaskSet | None = None,
                     units: MaskSet | None = None, fired: MaskSet | None = None,
                     history: MaskHistory | list[Snapshot] | None = None,
                     meta: Mapping[str, Any] | None = None) -> bytes:
    """Serialise a checkpoint to safetensors bytes (see module docstring for the layout)."""
    tensors: dict[str, torch.Tensor] = {}
    for name, value in model.state_dict().items():
        tensors[f"model/{name}"] = value.detach().to("cpu").contiguous().clone()
    header: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": model_config.to_dict(),
        "versions": package_versions(),
        **dict(meta or {}),
    }
    header["format_version"] = FORMAT_VERSION  # meta re-saved from an older file must not carry its version
    header["mask_shapes"] = _put_packed(tensors, "mask", masks.pack()) if masks is not None else None
    header["unit_shapes"] = _put_packed(tensors, "unit", units.pack()) if units is not None else None
    header["fired_shapes"] = _put_packed(tensors, "fired", fired.pack()) if fired is not None else None
    history_tensors, header["history"] = history_to_file(as_history(history))
    tensors.update(history_tensors)
    return safetensors_save(tensors, metadata={"svite_explorer": json.dumps(header, default=_json_default)})


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


def save_checkpoint(path: str | Path, model: nn.Module, model_config: ModelConfig, **kwargs: Any) -> Path:
    """Atomically write a one-file checkpoint. kwargs: masks, units, fired, history, meta."""
    return atomic_write_bytes(path, checkpoint_bytes(model, model_config, **kwargs))


def save_resume_state(path: str | Path, state: Mapping[str, Any]) -> Path:
    """Optimizer / scheduler / scaler / RNG / engine state, beside the checkpoint (atomic)."""
    buf = io.BytesIO()
    torch.save(dict(state), buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_resume_state(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    validate.check_file(path)
    obj = _torch_load_safe(path)
    validate.check_tensor_budget(path, obj, path.stat().st_size)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a resume state (expected a dict, found {type(obj).__name__})")
    return obj


# ----------------------------------------------------------------------------------------------
# loading: file level
def _one_line(err: BaseException) -> str:
    return validate.one_line(err)


def _torch_load_safe(path: Path) -> Any:
    """``torch.load`` that only accepts tensors and plain containers (plus argparse.Namespace)."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": we report our own line
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        msg = str(err)
        with open(path, "rb") as fh:
            head = fh.read(2)
        # a torch zip archive, or a raw pickle (starts with the PROTO opcode); random bytes are neither
        is_pickle = head == b"PK" or head[:1] == b"\x80"
        if "GLOBAL" in msg or (is_pickle and "Weights only load failed" in msg):
            # The safe unpickler met something other than tensors and containers: a Python object
            # (possibly one that runs code when unpickled), or pickle opcodes it does not accept.
            lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
            reason = next((ln for ln in lines if "GLOBAL" in ln or ln.startswith("Unsupported")), "a Python object")
            raise CheckpointError(f"{path}: refused: the file holds Python objects or pickle code, not just tensors "
                                  f"({reason[:120]}); only weights are loaded from untrusted files") from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({_one_line(err)})") from None
    except Exception as err:  # torn zip, garbage bytes, foreign formats: all "cannot read this file"
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint; the file may be truncated or corrupt "
                              f"({_one_line(err)})") from None


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A plain weight dict from ``.safetensors``/``.pth``/``.bin`` (bare or under model/state_dict)."""
    path = Path(path)
    validate.check_file(path)
    if validate.looks_like_safetensors(path):
        tensors, meta = validate.read_safetensors(path)
        if "svite_explorer" in meta:
            return {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
        return tensors
    obj = _torch_load_safe(path)
    validate.check_tensor_budget(path, obj, path.stat().st_size)
    return _unwrap_state_dict(path, obj)


def _unwrap_state_dict(path: Path, obj: Any) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: no state dict found (expected a dict of tensors, bare or under "
                              "'model'/'state_dict')")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}


# ----------------------------------------------------------------------------------------------
# loading: formats
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
        raise CheckpointError(f"{path}: {err}") from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RecursionError, OverflowError) as err:
        # A safety net under the checks in validate.py: data from an untrusted file that still trips
        # the code building from it is the file's problem, reported as such (the type aids a bug report).
        raise CheckpointError(f"{path}: the checkpoint is damaged ({type(err).__name__}: {_one_line(err)})") from None
    loaded.model.eval()
    return loaded


def _load_any(path: Path, num_heads: int | None) -> LoadedCheckpoint:
    validate.check_file(path)
    if validate.looks_like_safetensors(path):
        tensors, meta = validate.read_safetensors(path)
        if "svite_explorer" in meta:
            return _load_ours(path, tensors, meta["svite_explorer"])
        return _load_plain(path, tensors, num_heads=num_heads)
    obj = _torch_load_safe(path)
    validate.check_tensor_budget(path, obj, path.stat().st_size)
    if isinstance(obj, dict) and "model" in obj and any(k in obj for k in ("mask", "atten_mask", "other_mask")):
        return _load_official(path, obj, num_heads=num_heads)
    return _load_plain(path, _unwrap_state_dict(path, obj), num_heads=num_heads)


def _load_ours(path: Path, tensors: dict[str, torch.Tensor], header_json: str) -> LoadedCheckpoint:
    header = validate.parse_header(path, header_json)
    if header.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer SViTE Explorer (format {header['format_version']})")
    config = validate.model_config(path, header["model_config"])
    model = validate.build_checked(path, config, {k[len("model/"):]: v for k, v in tensors.items()
                                                  if k.startswith("model/")})
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
                raise CheckpointError(f"{path}: mask history has {group} '{layer.name}' {list(layer.shape)}, "
                                      "which the model does not have")
    return history


def _load_plain(path: Path, state: dict[str, torch.Tensor], *, num_heads: int | None) -> LoadedCheckpoint:
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    validate.check_block_keys(path, state)
    config = infer_config_from_state_dict(state, num_heads=num_heads)
    model = validate.build_checked(path, config, state, _inferred_name)
    masks = MaskSet.from_weights(model, default_sparsifiable(model))
    if masks.overall_density() == 1.0:
        masks = None  # a dense model: no masks to speak of
    meta = {"method": "dense" if masks is None else "unknown", "source_format": "timm"}
    return LoadedCheckpoint(path=path, format="timm", model=model, model_config=config, masks=masks, meta=meta)


def _inferred_name(field: str) -> str:
    return "--num-heads" if field == "num_heads" else f"the {field} its weights imply"


def _official_mask_name(key: str) -> str:
    """``module.blocks.0.attn.qkv.weight_6`` -> ``blocks.0.attn.qkv.weight`` (docs/reference.md §4)."""
    name = key[len("module."):] if key.startswith("module.") else key
    base, _, idx = name.rpartition("_")
    return base if idx.isdigit() else name


def _structured_mask_name(key: str) -> str:
    """``module.blocks.0.attn.qkv.weight_mask`` -> ``blocks.0.attn.qkv.weight`` (docs/reference.md §4)."""
    name = key[len("module."):] if key.startswith("module.") else key
    return name[:-len("_mask")] if name.endswith("_mask") else name


def _load_official(path: Path, ckpt: dict[str, Any], *, num_heads: int | None) -> LoadedCheckpoint:
    state = _unwrap_state_dict(path, ckpt["model"])
    args = ckpt.get("args")
    args_dict = vars(args) if isinstance(args, argparse.Namespace) else (args if isinstance(args, dict) else {})
    selector_state = {k: state.pop(k) for k in list(state) if k.startswith("gumbel.")}
    model_name = str(args_dict.get("model", "")).replace("_gumbel", "") or None
    validate.check_block_keys(path, state)
    config = infer_config_from_state_dict(state, name_hint=model_name,
                                          num_heads=num_heads or validate.official_int(path, args_dict, "atten_head"))
    if selector_state:
        patches = (config.img_size // config.patch_size) ** 2
        config.selector = SelectorConfig(keep=min(validate.official_int(path, args_dict, "token_number") or
                                                  patches // 2, patches))
        state.update({"token_selector.scorer." + k[len("gumbel."):]: v for k, v in selector_state.items()})
    model = validate.build_checked(path, config, state, _inferred_name)
    params = dict(model.named_parameters())
    pruning_type = str(args_dict.get("pruning_type", ""))
    units = None
    raw = {key: validate.official_group(path, ckpt, key) for key in ("mask", "atten_mask", "other_mask", "fired_mask")}
    if raw["mask"]:
        masks = MaskSet(validate.official_masks(path, raw["mask"], params, _official_mask_name, "mask"))
    elif raw["atten_mask"] or raw["other_mask"]:
        atten, other = (validate.official_masks(path, raw[key], params, _structured_mask_name, key)
                        for key in ("atten_mask", "other_mask"))
        masks, units = _official_structured(model, atten, other)
    else:
        masks = MaskSet.from_weights(model, default_sparsifiable(model))  # saved right after a masked step
    method = {"unstructure": "svite", "structure_new": "s2vite"}.get(pruning_type)
    if method is None:
        method = "s2vite" if units is not None else "svite"
    if selector_state:
        method += "+"
    fired = None
    if raw["fired_mask"]:
        fired = MaskSet(validate.official_masks(path, raw["fired_mask"], params, _official_mask_name, "fired_mask"))
    meta = {"method": method, "source_format": "svite-official", "epoch": ckpt.get("epoch"),
            "settings": {k: v for k, v in args_dict.items() if isinstance(v, (int, float, str, bool, type(None)))}}
    return LoadedCheckpoint(path=path, format="svite-official", model=model, model_config=config, masks=masks,
                            units=units, fired=fired, meta=meta)


def _official_structured(model: nn.Module, atten: Mapping[str, torch.Tensor],
                         other: Mapping[str, torch.Tensor]) -> tuple[MaskSet, MaskSet]:
    """Weight and unit masks from the official structured masks (already checked against the
    parameters' shapes and keyed by parameter name); a missing mask is recovered from exact zeros."""
    masks, units = MaskSet(), MaskSet()
    params = dict(model.named_parameters())
    for i, block in enumerate(model.blocks):
        heads, dim = block.attn.num_heads, block.attn.head_dim
        qkv_name = f"blocks.{i}.attn.qkv.weight"
        m = atten.get(qkv_name)
        m = m if m is not None else (params[qkv_name].detach() != 0)
        rows = m.any(dim=1).reshape(3, heads, dim)
        units[head_unit_name(i)] = rows.any(dim=2).any(dim=0)
        masks[qkv_name] = m
        for fc in ("fc1", "fc2"):
            name = f"blocks.{i}.mlp.{fc}.weight"
            mm = other.get(name)
            masks[name] = mm if mm is not None else (params[name].detach() != 0)
        units[neuron_unit_name(i)] = masks[f"blocks.{i}.mlp.fc1.weight"].any(dim=1)
    return masks, units
