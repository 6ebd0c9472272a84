"""A checkpoint's header without its tensors: what the run index needs from hundreds of files.

A safetensors file starts with an 8-byte length and a JSON header that lists every tensor's dtype,
shape and byte range and carries our metadata. Reading only that costs milliseconds per file whatever
the weights weigh, and it tells a run's method, settings, metrics, per-epoch curve and every topology
update (the history's index holds each snapshot's counts). So the index never reads a weight.

What is read passes the checks a full load makes (:func:`validate.parse_header` on the metadata,
:mod:`history.fileformat` on the history's index, with stand-in tensors on the ``meta`` device that have the
declared sizes). On top of that the declared byte ranges must tile the rest of the file exactly:
a truncated copy is caught without reading its data.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, SviteError, one_line
from ..history.fileformat import history_from_file
from ..history.lazy import MaskHistory
from ..models.stand_in import VIT
from . import validate
from .limits import check_model_config

META_KEY = "svite_explorer"
#: The JSON header of a file: our metadata (capped by validate) plus one short line per tensor.
MAX_HEADER_BYTES = validate.MAX_METADATA_CHARS + 64 * 2**20
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


@dataclass
class Header:
    """What :func:`read_header` found: our metadata (None for a plain state dict), every tensor's
    (dtype, shape), and the mask history as an index (format 2; counts only, nothing decodable)."""

    path: Path
    meta: dict[str, Any] | None
    tensors: dict[str, tuple[str, tuple[int, ...]]]
    history: MaskHistory | None = None
    legacy_history: list[dict[str, Any]] = field(default_factory=list)  # format 1: step, epoch, info

    @property
    def params(self) -> int:
        """Parameters of the model (``model/*`` tensors; every tensor of a plain state dict)."""
        ours = self.meta is not None
        return sum(math.prod(shape) for name, (_, shape) in self.tensors.items()
                   if not ours or name.startswith("model/"))


def _bad(path: Path, what: str) -> CheckpointError:
    return CheckpointError("not a readable safetensors file; the file may be truncated or corrupt", path=path,
                           detail=what)


def _raw_header(path: Path) -> tuple[dict[str, Any], int]:
    """The header's JSON and the size of the data buffer after it, reading only the header."""
    validate.check_file(path)
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        head = fh.read(8)
        if len(head) < 8:
            raise _bad(path, "shorter than a header")
        (n,) = struct.unpack("<Q", head)
        if n == 0 or n > size - 8:
            raise _bad(path, f"a header of {n} bytes in a file of {size}")
        if n > MAX_HEADER_BYTES:
            raise CheckpointError(f"header of {n} bytes, over the {MAX_HEADER_BYTES} limit", path=path)
        raw = fh.read(n)
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as err:
        raise _bad(path, f"header is not JSON: {one_line(err, 60)}") from None
    if not isinstance(header, dict):
        raise _bad(path, "header is not an object")
    return header, size - 8 - n


def _tensor_specs(path: Path, header: dict[str, Any], data_bytes: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Every tensor's dtype and shape, after checking that their byte ranges tile the data exactly."""
    specs, spans = {}, []
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        ok = isinstance(spec, dict) and spec.get("dtype") in _DTYPE_BYTES and isinstance(spec.get("shape"), list) \
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in spec["shape"]) \
            and isinstance(spec.get("data_offsets"), list) and len(spec["data_offsets"]) == 2 \
            and all(isinstance(o, int) and not isinstance(o, bool) for o in spec["data_offsets"])
        if not ok:
            raise _bad(path, f"tensor {str(name)[:60]!r} is described wrongly")
        begin, end = spec["data_offsets"]
        if not 0 <= begin <= end or end - begin != math.prod(spec["shape"]) * _DTYPE_BYTES[spec["dtype"]]:
            raise _bad(path, f"tensor {str(name)[:60]!r} has byte range {begin}..{end} for shape {spec['shape']}")
        specs[str(name)] = (spec["dtype"], tuple(spec["shape"]))
        spans.append((begin, end))
    spans.sort()
    covered = 0
    for begin, end in spans:
        if begin != covered:
            raise _bad(path, f"tensor data overlaps or leaves a gap at byte {covered}")
        covered = end
    if covered != data_bytes:
        what = "truncated" if covered > data_bytes else "has bytes after its last tensor"
        raise _bad(path, f"{what}: its tensors need {covered} bytes of data, it holds {data_bytes}")
    return specs


def read_header(path: str | Path) -> Header:
    """The header of a safetensors checkpoint, checked, without reading a tensor. Raises
    :class:`CheckpointError` (one line naming the file) for anything damaged or hostile."""
    path = Path(path)
    if not validate.looks_like_safetensors(path):
        validate.sniff(path)  # a torch archive or pickle: its own one-line refusal, or None below
        raise CheckpointError("not a safetensors file; only its name can be listed without loading it", path=path)
    header, data_bytes = _raw_header(path)
    tensors = _tensor_specs(path, header, data_bytes)
    extra = header.get("__metadata__") or {}
    if not isinstance(extra, dict) or not all(isinstance(v, str) for v in extra.values()):
        raise _bad(path, "its metadata is not a map of strings")
    if META_KEY not in extra:
        return Header(path, None, tensors)
    meta = validate.parse_header(path, extra[META_KEY])
    try:  # the caps a load applies before building anything (depth 10000 is refused here too)
        config = validate.model_config(path, meta["model_config"])
        if meta.get("model_kind", VIT) == VIT:  # a Recorder run of another module: nothing is built from it
            check_model_config(config, lambda f: f"model_config.{f}")
    except SviteError as err:
        raise CheckpointError(f"{err}", path=path) from None
    history = meta.pop("history", None)
    for key in ("mask_shapes", "unit_shapes", "fired_shapes"):
        meta.pop(key, None)
    if isinstance(history, dict):
        stand_ins = {name: torch.empty(shape, dtype=torch.uint8, device="meta")
                     for name, (dtype, shape) in tensors.items() if name.startswith("history/") and dtype == "U8"}
        return Header(path, meta, tensors, history=history_from_file(history, stand_ins, str(path)))
    legacy = [{"step": e.get("step", 0), "epoch": e.get("epoch", 0.0), "info": e.get("info") or {}}
              for e in history or []]
    return Header(path, meta, tensors, legacy_history=legacy)


def curve_records(meta: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The per-epoch metrics a checkpoint carries (``curve``; older files have none): the records
    that are objects with a numeric ``step`` and ``epoch``, their scalar fields only."""
    out = []
    for rec in (meta or {}).get("curve") or []:
        if not isinstance(rec, dict):
            continue
        row = {k: v for k, v in rec.items() if isinstance(k, str) and _number(v)}
        if "step" in row and "epoch" in row:
            out.append(row)
    return out


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
