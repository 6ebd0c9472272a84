"""Checkpoints: one file a user can pass around, and every file we are handed, checked before it is read.

* ``loaded`` -- :class:`LoadedCheckpoint` and our file format's layout and version;
* ``save`` -- writing it (streamed, atomic), and the resume state beside it;
* ``load`` -- reading any checkpoint: ours, or another tool's through ``foreign`` (timm/DeiT state dicts,
  the official SViTE release); ``pickled`` reads PyTorch pickles without running what they hold;
* ``header`` -- a checkpoint's metadata and tensor index, read without its tensors (the runs index);
* ``validate`` -- the checks of an untrusted file: declared sizes against the file, before allocating;
* ``limits`` -- upper bounds on everything a file or a flag declares (model sizes, memory);
* ``streaming`` / ``atomic`` -- a safetensors file written as a stream, and atomic file writes;
* ``convert`` -- a format-1 checkpoint rewritten in format 2.
"""

from __future__ import annotations

from .atomic import atomic_write_bytes
from .header import Header, curve_records, read_header
from .load import MAX_CHECKPOINT_BYTES, load_checkpoint
from .loaded import FORMAT, FORMAT_VERSION, LoadedCheckpoint
from .pickled import load_resume_state, load_state_dict_file
from .save import checkpoint_parts, package_versions, save_checkpoint, save_resume_state

__all__ = ["FORMAT", "FORMAT_VERSION", "MAX_CHECKPOINT_BYTES", "Header", "LoadedCheckpoint", "atomic_write_bytes",
           "checkpoint_parts", "curve_records", "load_checkpoint", "load_resume_state", "load_state_dict_file",
           "package_versions", "read_header", "save_checkpoint", "save_resume_state"]
