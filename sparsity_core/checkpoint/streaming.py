"""A safetensors file written as a stream: byte for byte what ``safetensors.torch.save`` returns, without
holding the file (or a copy of every tensor) in memory.

``safetensors.torch.save`` builds the whole file as one ``bytes`` object, and our checkpoint copied
every weight before handing it over, so saving a checkpoint briefly held the model three times (the
weights, their copies, the file). Measured on a DeiT-S run that made saving the peak of the whole run
for sparse methods (it also holds the masks, the ever-active masks and the mask history twice).
:func:`write_safetensors` writes the header, then each tensor straight from its own memory (a CPU copy
of one tensor at a time for other devices); a history entry's segments are written back to back instead
of being concatenated first (:class:`Segments`).

The layout is the library's: the JSON header (``__metadata__`` first, compact separators, UTF-8), padded
with spaces to a multiple of 8 bytes, tensors ordered by dtype (the library's order) then by name, each
``data_offsets`` following the previous one. ``tests/test_checkpoint.py`` checks the bytes against
``safetensors.torch.save``.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ..history.entry import Segments

# safetensors' dtype names, in the order the library writes them (larger alignments first)
_DTYPES = [(torch.uint64, "U64"), (torch.int64, "I64"), (torch.float64, "F64"), (torch.complex64, "C64"),
           (torch.float32, "F32"), (torch.uint32, "U32"), (torch.int32, "I32"), (torch.bfloat16, "BF16"),
           (torch.float16, "F16"), (torch.uint16, "U16"), (torch.int16, "I16"),
           (torch.float8_e4m3fn, "F8_E4M3"), (torch.float8_e5m2, "F8_E5M2"), (torch.int8, "I8"),
           (torch.uint8, "U8"), (torch.bool, "BOOL")]
_NAME = {dtype: name for dtype, name in _DTYPES}
_RANK = {dtype: i for i, (dtype, _) in enumerate(_DTYPES)}


@dataclass(frozen=True)
class Computed:
    """A tensor made only when it is written (``make()``, of the declared dtype and shape): a weight under
    torch's pruning reparametrization is ``original * mask``, computed one layer at a time this way instead
    of holding a masked copy of the whole model while saving."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    make: Callable[[], torch.Tensor]

    def detach(self) -> Computed:  # a state dict's values are detached before saving
        return self


def _spec(value: torch.Tensor | Segments | Computed) -> tuple[torch.dtype, list[int], int]:
    if isinstance(value, Computed):
        return value.dtype, list(value.shape), math.prod(value.shape) * torch.empty((), dtype=value.dtype).element_size()
    if isinstance(value, Segments):
        return torch.uint8, [value.nbytes], value.nbytes
    if value.dtype not in _NAME:
        raise TypeError(f"safetensors cannot store {value.dtype}")
    return value.dtype, list(value.shape), value.numel() * value.element_size()


def _write_tensor(fh: io.BufferedIOBase, value: torch.Tensor | Segments | Computed) -> None:
    if isinstance(value, Computed):
        with torch.no_grad():
            made = value.make()
        if made.dtype != value.dtype or tuple(made.shape) != tuple(value.shape):  # the header is already written
            raise ValueError(f"a computed tensor came out {made.dtype} {list(made.shape)}, declared {value.dtype} "
                             f"{list(value.shape)}")
        value = made
    if isinstance(value, Segments):
        for part in value.parts:
            fh.write(memoryview(np.ascontiguousarray(part)).cast("B"))
        return
    t = value.detach()
    if t.numel() == 0:
        return
    if t.device.type != "cpu":
        t = t.to("cpu")
    fh.write(memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy()))


def write_safetensors(fh: io.BufferedIOBase, tensors: Mapping[str, torch.Tensor | Segments | Computed],
                      metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` (and string ``metadata``) to ``fh`` in the safetensors format."""
    specs = {name: _spec(value) for name, value in tensors.items()}
    order = sorted(tensors, key=lambda name: (_RANK[specs[name][0]], name))
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata is not None else {}
    offset = 0
    for name in order:
        dtype, shape, nbytes = specs[name]
        header[name] = {"dtype": _NAME[dtype], "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    fh.write(len(text).to_bytes(8, "little"))
    fh.write(text)
    for name in order:
        _write_tensor(fh, tensors[name])
