"""Checks that an untrusted checkpoint file is what it says, before anything it declares is built.

A checkpoint declares sizes in several places: its JSON metadata (model config, mask and history
shapes), its key names (``blocks.11.…`` implies 12 blocks) and its tensors. Loading trusted them:
a 2 MB file could declare a 10000-block model or a 1e5 x 1e5 mask and drive memory past 6 GB, and a
truncated mask was silently zero-padded. The rules here, in the order the loader applies them:

1. the file is read into memory once and nothing stays memory-mapped (a checkpoint rewritten in
   place under a running app must not SIGBUS it), and the tensors it declares add up to at most
   about its size (no broadcast or shared-storage tricks in pickles);
2. the metadata has the types the format defines (one sentence naming the field otherwise);
3. the model config passes the hard caps of :mod:`limits` and is built on the meta device first;
   its parameter names and shapes must equal the tensors in the file, so the real model costs no
   more memory than the file holds;
4. every packed mask (final, unit, fired, every history entry) has exactly the bytes, dtype and
   shape of the parameter or unit it masks.

Every refusal is a :class:`CheckpointError` whose message starts with the file's path.
"""

from __future__ import annotations

import json
import struct
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn

from ..errors import CheckpointError, SviteError, one_line
from ..masks.maskset import PackedMasks, Snapshot, check_packed, head_unit_name, neuron_unit_name
from ..models.builder import ModelConfig, build_model
from ..models.stand_in import TensorTree
from .limits import human_bytes, skeleton, without_init

MAX_CHECKPOINT_BYTES = 4 * 1024**3
MAX_HISTORY = 10_000  # snapshots in one checkpoint (a long ImageNet run with frequent updates has ~4000)
MAX_METADATA_CHARS = 64 * 2**20
_NUMBER = (int, float)
# metadata fields of our format and the JSON types they may have (None: may be null or absent)
_HEADER_TYPES: dict[str, tuple[type, ...]] = {
    "format": (str,), "format_version": (int,), "model_config": (dict,), "method": (str,),
    "metrics": (dict,), "settings": (dict,), "data": (dict,), "train_config": (dict,), "versions": (dict,),
    "epoch": _NUMBER, "step": (int,), "complete": (bool,), "resume_file": (str,), "steps_per_epoch": (int,),
    "total_steps": (int,), "mask_shapes": (dict,), "unit_shapes": (dict,), "fired_shapes": (dict,),
    "history": (list, dict),  # format 1: a list of snapshots; format 2: the index history/fileformat.py checks
    "curve": (list,),  # one record of metrics per epoch (training/loop.py); older files have none
}
_ENTRY_TYPES: dict[str, tuple[type, ...]] = {
    "step": (int,), "epoch": _NUMBER, "info": (dict,), "mask_shapes": (dict,), "unit_shapes": (dict,),
    "state": (list,),
}


# ----------------------------------------------------------------------------------------------
# 1. bytes
def check_file(path: Path) -> None:
    if not path.exists():
        raise CheckpointError("no such file", path=path)
    if path.is_dir():
        raise CheckpointError("is a directory, expected a checkpoint file", path=path)
    if not path.is_file():  # a FIFO would block the first read forever
        raise CheckpointError("not a regular file", path=path)
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError("file is empty", path=path)
    if size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"file is {size / 1e9:.1f} GB, larger than the {MAX_CHECKPOINT_BYTES / 1e9:.0f} GB "
                              "limit", path=path)


def looks_like_safetensors(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 0 < n < path.stat().st_size and head[8:9] == b"{"


def sniff(path: Path) -> None:
    """The file-level checks alone, without reading any tensor: cheap enough to run in the app's own
    process before an upload goes to the (slower, memory-limited) full check in a child process."""
    check_file(path)
    if looks_like_safetensors(path):
        try:
            with safetensors.safe_open(str(path), framework="pt") as fh:  # parses and checks the header only
                fh.metadata()
        except Exception as err:
            raise CheckpointError("not a readable safetensors file; the file may be truncated or corrupt",
                                  path=path, detail=err) from None
        return
    with open(path, "rb") as fh:
        head = fh.read(2)
    if head != b"PK" and head[:1] != b"\x80":  # a torch zip archive, or a raw pickle
        raise CheckpointError("not a readable PyTorch checkpoint (neither safetensors, nor a torch "
                              "archive, nor a pickle)", path=path)


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file, copied out of it (no memory map survives)."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise CheckpointError(f"cannot read the file ({err.strerror or err})", path=path) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns that bytes are not writable; nothing writes to them
            tensors = safetensors.torch.load(raw)
        (n,) = struct.unpack("<Q", raw[:8])
        meta = json.loads(raw[8:8 + n]).get("__metadata__") or {}
    except Exception as err:  # safetensors raises its own error types for torn or garbage files
        raise CheckpointError("not a readable safetensors file; the file may be truncated or corrupt",
                              path=path, detail=err) from None
    return tensors, meta


def check_tensor_budget(path: Path, obj: Any, file_size: int) -> None:
    """Refuse a file whose tensors claim more data than it holds (a pickle can give a 4-byte storage
    a 1e5 x 1e5 shape with zero strides; anything computed from such a tensor would be that large)."""
    total, stack = 0, [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, torch.Tensor):
            total += item.numel() * item.element_size()
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    if total > 2 * file_size + 2**20:
        raise CheckpointError(f"its tensors declare {human_bytes(total)} of data but the file holds "
                              f"{human_bytes(file_size)}; refused (broadcast or shared storage)", path=path)


# ----------------------------------------------------------------------------------------------
# 2. metadata
_JSON_NAMES = {int: "integer", float: "number", str: "string", bool: "true/false", dict: "object", list: "list"}


def _check_fields(path: Path, obj: Mapping[str, Any], types: Mapping[str, tuple[type, ...]], where: str) -> None:
    for key, allowed in types.items():
        value = obj.get(key)
        if value is None:
            continue
        if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, allowed):
            expected = "number" if allowed == _NUMBER else " or ".join(_JSON_NAMES[t] for t in allowed)
            raise CheckpointError(f"metadata field {where}{key} is {_short(value)}, expected {expected}", path=path)


def _short(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return f"{'an object' if isinstance(value, dict) else 'a list'} of {len(value)} items"
    return f"{_JSON_NAMES.get(type(value), type(value).__name__)} {json.dumps(value)[:40]}"


def parse_header(path: Path, text: str) -> dict[str, Any]:
    """Our JSON metadata, with every field the loader uses of the type the format defines."""
    if len(text) > MAX_METADATA_CHARS:
        raise CheckpointError(f"metadata of {len(text)} characters, over the {MAX_METADATA_CHARS} limit", path=path)
    try:
        header = json.loads(text)
    except (ValueError, RecursionError) as err:  # RecursionError: JSON nested thousands deep
        raise CheckpointError("checkpoint metadata is not valid JSON", path=path, detail=one_line(err, 80)) from None
    if not isinstance(header, dict):
        raise CheckpointError(f"checkpoint metadata is a JSON {type(header).__name__}, expected an object", path=path)
    _check_fields(path, header, _HEADER_TYPES, "")
    if "model_config" not in header:
        raise CheckpointError("checkpoint metadata has no model_config", path=path)
    history = header.get("history") or []
    if isinstance(history, dict):  # format 2: sizes here, the rest in history/fileformat.py (before any allocation)
        snapshots = history.get("snapshots")
        if isinstance(snapshots, list) and len(snapshots) > MAX_HISTORY:
            raise CheckpointError(f"mask history of {len(snapshots)} snapshots, over the {MAX_HISTORY} limit", path=path)
        return header
    if len(history) > MAX_HISTORY:
        raise CheckpointError(f"mask history of {len(history)} snapshots, over the {MAX_HISTORY} limit", path=path)
    for i, entry in enumerate(history):
        if not isinstance(entry, dict):
            raise CheckpointError(f"mask history entry {i} is {type(entry).__name__}, expected an object", path=path)
        _check_fields(path, entry, _ENTRY_TYPES, f"history[{i}].")
        if not all(isinstance(n, str) for n in entry.get("state") or []):
            raise CheckpointError(f"mask history entry {i}: state names must be strings", path=path)
    return header


def model_config(path: Path, data: Mapping[str, Any]) -> ModelConfig:
    try:
        return ModelConfig.from_dict(dict(data))
    except (TypeError, SviteError) as err:
        detail = err.message if isinstance(err, SviteError) else err
        raise CheckpointError("checkpoint metadata is damaged", path=path, detail=detail) from None


# ----------------------------------------------------------------------------------------------
# 3. the model
def build_checked(path: Path, config: ModelConfig, state: Mapping[str, torch.Tensor],
                  name: Callable[[str], str] = lambda f: f"model_config.{f}") -> nn.Module:
    """Build ``config`` and load ``state`` into it, after proving on the meta device that the state
    has exactly the model's parameter names and shapes (so building costs what the file holds)."""
    try:
        skel = skeleton(config, name)
    except SviteError as err:
        raise CheckpointError(f"{err}", path=path) from None
    own = skel.state_dict()
    unknown = sorted(set(state) - set(own))
    missing = sorted(set(own) - set(state))
    if unknown or missing:
        raise CheckpointError(f"weights do not match the architecture "
                              f"(unknown keys {unknown[:3]}, missing keys {missing[:3]})", path=path)
    for key, want in own.items():
        got = state[key]
        if got.shape != want.shape:
            raise CheckpointError(f"shape mismatch for {key}: file has {list(got.shape)}, "
                                  f"model needs {list(want.shape)}", path=path)
        if got.dtype.is_floating_point != want.dtype.is_floating_point or got.is_complex():
            raise CheckpointError(f"{key} is stored as {got.dtype}, the model needs {want.dtype}", path=path)
    try:
        # Every weight is overwritten just below, so timm's init pass is skipped, and the default
        # init that remains draws from a forked RNG: loading never moves the caller's random stream.
        with torch.random.fork_rng(devices=[]):
            model = build_model(without_init(config))
    except SviteError as err:
        raise CheckpointError(f"{err}", path=path) from None
    model.load_state_dict(dict(state), strict=True)
    return model


def parameter_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def unit_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Shapes of the head / neuron masks a structured run may store for ``model``."""
    out: dict[str, tuple[int, ...]] = {}
    if isinstance(model, TensorTree):  # a model we cannot build has no heads or neurons we know of
        return out
    for i, block in enumerate(getattr(model, "blocks", [])):
        out[head_unit_name(i)] = (int(block.attn.num_heads),)
        out[neuron_unit_name(i)] = (int(block.mlp.fc1.out_features),)
    return out


def check_block_keys(path: Path, state: Mapping[str, torch.Tensor]) -> None:
    """Block indices in key names must be 0..n-1 (``blocks.99999.x`` would imply 100000 blocks)."""
    indices: set[int] = set()
    for key in state:
        if key.startswith("blocks."):
            part = key.split(".")[1]
            if not part.isdigit() or len(part) > 9:
                raise CheckpointError(f"key '{key[:80]}' has block index '{part[:20]}', not a small integer", path=path)
            indices.add(int(part))
    if indices and indices != set(range(len(indices))):
        stray = max(indices)
        raise CheckpointError(f"key blocks.{stray}.… implies {stray + 1} blocks, but the file has weights "
                              f"for {len(indices)}; block indices must run 0..n-1", path=path)
    for key, ndim in (("patch_embed.proj.weight", 4), ("cls_token", 3), ("pos_embed", 3)):
        value = state.get(key)
        if value is not None and value.ndim != ndim:
            raise CheckpointError(f"{key} has shape {list(value.shape)}, expected {ndim} dimensions", path=path)


# ----------------------------------------------------------------------------------------------
# 4. masks
def packed_group(path: Path, tensors: Mapping[str, torch.Tensor], prefix: str, shapes: Mapping[str, Any] | None,
                 expected: Mapping[str, tuple[int, ...]]) -> PackedMasks | None:
    """The packed masks ``prefix/<name>`` declared in ``shapes``, each checked exactly against the file
    (bytes, dtype) and against ``expected`` (the shape of the parameter or unit it masks)."""
    if shapes is None:
        return None
    data, out = {}, {}
    for name, shape in shapes.items():
        label = f"{prefix} '{name}'"
        if name not in expected:
            kind = "unit" if prefix.endswith("unit") else "parameter"
            raise CheckpointError(f"{label} names no {kind} of the model", path=path)
        key = f"{prefix}/{name}"
        if key not in tensors:
            raise CheckpointError(f"{label} is declared but its bits are not in the file", path=path)
        try:
            check_packed(tensors[key], shape)
        except ValueError as err:
            raise CheckpointError(f"{label}: {err}", path=path) from None
        if tuple(shape) != tuple(expected[name]):
            raise CheckpointError(f"{label} has shape {list(shape)}, but what it masks has shape "
                                  f"{list(expected[name])}", path=path)
        data[name], out[name] = tensors[key], tuple(shape)
    return PackedMasks(data, out)


def history_entries(path: Path, tensors: Mapping[str, torch.Tensor], entries: list[dict[str, Any]],
                    model: nn.Module) -> list[Snapshot]:
    """The mask history, every entry checked like the final masks (nothing is unpacked here)."""
    params, units = parameter_shapes(model), unit_shapes(model)
    history = []
    for i, entry in enumerate(entries):
        masks = packed_group(path, tensors, f"history/{i}/mask", entry.get("mask_shapes") or {}, params)
        unit = packed_group(path, tensors, f"history/{i}/unit", entry.get("unit_shapes") or {}, units)
        state = {}
        for name in entry.get("state") or []:
            value = tensors.get(f"history/{i}/state/{name}")
            if value is None:
                raise CheckpointError(f"mask history entry {i} is damaged (missing state {name!r})", path=path)
            state[name] = value
        history.append(Snapshot(step=int(entry.get("step", 0)), epoch=float(entry.get("epoch", 0.0)),
                                masks=masks or PackedMasks(), units=unit or PackedMasks(), state=state,
                                info=dict(entry.get("info") or {})))
    return history


def official_masks(path: Path, raw: Mapping[str, Any], params: Mapping[str, torch.Tensor],
                   name_of: Callable[[str], str], what: str) -> dict[str, torch.Tensor]:
    """Masks of the official SViTE format (float tensors under ``<param>_<idx>``), as booleans, each
    of the shape of the parameter it names."""
    out = {}
    for key, value in raw.items():
        name = name_of(str(key))
        if name not in params:
            raise CheckpointError(f"{what} '{key}' names no parameter of the model", path=path)
        if not isinstance(value, torch.Tensor) or value.shape != params[name].shape:
            shape = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise CheckpointError(f"{what} '{key}' has shape {shape}, but {name} has shape "
                                  f"{list(params[name].shape)}", path=path)
        out[name] = value.to("cpu") != 0
    return out


def official_group(path: Path, ckpt: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    """One mask group of the official format: a dict (empty when the run had none), never another type."""
    value = ckpt.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise CheckpointError(f"'{key}' is a {type(value).__name__}, expected a dict of tensors", path=path)
    return value


def official_int(path: Path, args: Mapping[str, Any], key: str) -> int | None:
    """An integer setting of the official format's ``args`` (None when absent or empty)."""
    value = args.get(key)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise CheckpointError(f"args.{key} is {value!r}, not an integer", path=path) from None
