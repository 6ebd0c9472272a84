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

from ..errors import CheckpointError, one_line
from . import validate


def load_resume_state(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    validate.check_file(path)
    obj = torch_load_safe(path)
    validate.check_tensor_budget(path, obj, path.stat().st_size)
    if not isinstance(obj, dict):
        raise CheckpointError(f"not a resume state (expected a dict, found {type(obj).__name__})", path=path)
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
        # The safe unpickler refused what it met. In a torch archive or a pickle (the PROTO opcode first),
        # that is something other than tensors and containers: a Python object (possibly one that runs
        # code when unpickled) or opcodes it does not accept. Random bytes are neither kind of file.
        if _is_pickle(path):
            raise CheckpointError("refused: the file holds Python objects or pickle code, not just tensors; only "
                                  "weights are loaded from untrusted files", path=path, detail=_reason(err)) from None
        raise CheckpointError("not a readable PyTorch checkpoint", path=path, detail=err) from None
    except Exception as err:  # torn zip, garbage bytes, foreign formats: all "cannot read this file"
        raise CheckpointError("not a readable PyTorch checkpoint; the file may be truncated or corrupt", path=path,
                              detail=err) from None


def _is_pickle(path: Path) -> bool:
    """A torch zip archive (``PK``) or a raw pickle (starting with the PROTO opcode)."""
    with open(path, "rb") as fh:
        head = fh.read(2)
    return head == b"PK" or head[:1] == b"\x80"


def _reason(err: pickle.UnpicklingError) -> str:
    """The unpickler's own words on what it refused, for the CLI's parentheses: the line naming the global
    or opcode (the rest of torch's message is advice on ``weights_only``). Formatting only: the decision
    to refuse was taken on the error's type and the file's first bytes."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()] or ["a Python object"]
    named = [ln.partition(":")[2].strip() for ln in lines if ln.startswith("WeightsUnpickler error:")]
    return one_line(named[0] if named else lines[0], 120)


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
        raise CheckpointError("no state dict found (expected a dict of tensors, bare or under "
                              "'model'/'state_dict')", path=path)
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}
