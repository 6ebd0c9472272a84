"""Reading PyTorch pickle files (``.pth``/``.pt``/``.bin``) without running what they hold.

Loading never unpickles arbitrary objects: ``torch.load(weights_only=True)`` with only
``argparse.Namespace`` allow-listed (the official SViTE checkpoint stores its args that way), and every
tensor's declared bytes checked against the file's size before anything is built (:mod:`.validate`).
"""

from __future__ import annotations

import argparse
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from . import validate


def _one_line(err: BaseException) -> str:
    return validate.one_line(err)


def load_resume_state(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    validate.check_file(path)
    obj = torch_load_safe(path)
    validate.check_tensor_budget(path, obj, path.stat().st_size)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: not a resume state (expected a dict, found {type(obj).__name__})")
    return obj


def torch_load_safe(path: Path, mmap: bool = False) -> Any:
    """``torch.load`` that only accepts tensors and plain containers (plus argparse.Namespace). ``mmap``:
    tensors stay in the file until read (the runs index reads a DeiT checkpoint's args and masks, not its
    optimizer state); only for torch's zip format, a legacy file is read whole."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": we report our own line
            with open(path, "rb") as fh:
                zipped = fh.read(2) == b"PK"
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipped)
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
    obj = torch_load_safe(path)
    validate.check_tensor_budget(path, obj, path.stat().st_size)
    return unwrap_state_dict(path, obj)


def unwrap_state_dict(path: Path, obj: Any) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: no state dict found (expected a dict of tensors, bare or under "
                              "'model'/'state_dict')")
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}
