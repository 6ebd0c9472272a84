"""The checkpoints the picker offers: shipped demos, training runs, uploads; and saving an upload."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from sparsity_core.checkpoint import atomic_write_bytes, load_checkpoint
from sparsity_core.errors import CheckpointError, SviteError

from .settings import CHECKPOINT_SUFFIXES, checkpoints_dir, runs_dir, uploads_dir

#: Shipped demo checkpoints, in the order the picker lists them (file stems of checkpoints/).
DEMO_ORDER = ("svite-plus", "svite", "s2vite", "dense")


@dataclass(frozen=True)
class CheckpointEntry:
    """One choice of the checkpoint picker."""

    label: str
    path: str
    source: str  # "demo" | "run" | "upload"


def _is_checkpoint(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in CHECKPOINT_SUFFIXES and not p.name.startswith(".")


def _demo_rank(p: Path) -> tuple[int, str]:
    stem = p.stem.lower()
    for i, key in enumerate(DEMO_ORDER):
        if stem == key or stem.startswith(key + "-") or stem.startswith(key + "_"):
            return i, stem
    return len(DEMO_ORDER), stem


def find_checkpoints() -> list[CheckpointEntry]:
    """Shipped checkpoints (``checkpoints/``), then runs (``runs/*/checkpoint.safetensors`` and any
    checkpoint file directly in a run folder), newest first, then uploads."""
    entries: list[CheckpointEntry] = []
    demo = checkpoints_dir()
    if demo.is_dir():
        for p in sorted((p for p in demo.iterdir() if _is_checkpoint(p)), key=_demo_rank):
            entries.append(CheckpointEntry(f"demo · {p.stem}", str(p), "demo"))
    runs = runs_dir()
    if runs.is_dir():
        found: list[Path] = []
        for run in runs.iterdir():
            if run.is_dir():
                found += [p for p in run.iterdir() if _is_checkpoint(p) and not p.name.startswith("resume-")]
        for p in sorted(found, key=lambda q: q.stat().st_mtime, reverse=True):
            name = p.parent.name if p.name == "checkpoint.safetensors" else f"{p.parent.name}/{p.name}"
            entries.append(CheckpointEntry(f"run · {name}", str(p), "run"))
    up = uploads_dir()
    if up.is_dir():
        for p in sorted((p for p in up.iterdir() if _is_checkpoint(p)), key=lambda q: q.stat().st_mtime, reverse=True):
            entries.append(CheckpointEntry(f"upload · {p.name.split('-', 1)[-1]}", str(p), "upload"))
    return entries


def _safe_name(name: str) -> str:
    base = Path(name).name
    return re.sub(r"[^A-Za-z0-9._+-]", "_", base)[:80] or "checkpoint"


def save_upload(name: str, data: bytes, limit_mb: int) -> Path:
    """Keep an uploaded checkpoint if the loader can read it; raise a one-line SviteError if not.

    The file is named by its content hash (an upload of the same bytes is stored once) and removed
    again when it cannot be read, so the picker never lists a broken upload.
    """
    suffix = Path(name).suffix.lower()
    if suffix not in CHECKPOINT_SUFFIXES:
        raise SviteError(f"{name}: not a checkpoint file; the loader accepts {', '.join(CHECKPOINT_SUFFIXES)}")
    if len(data) == 0:
        raise SviteError(f"{name}: file is empty")
    if len(data) > limit_mb * 1024 * 1024:
        raise SviteError(f"{name}: {len(data) / 2**20:.0f} MB is over the {limit_mb} MB upload limit")
    digest = hashlib.sha256(data).hexdigest()[:12]
    path = uploads_dir() / f"{digest}-{_safe_name(name)}"
    if not path.exists():
        atomic_write_bytes(path, data)
    try:
        load_checkpoint(path)
    except SviteError as err:
        path.unlink(missing_ok=True)
        msg = str(err).replace(str(path), name)
        raise CheckpointError(msg) from None
    except Exception as err:  # anything else the loader trips over is still "cannot read this file"
        path.unlink(missing_ok=True)
        raise CheckpointError(f"{name}: cannot be read as a checkpoint ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:160] if str(err) else ''})") from None
    return path
