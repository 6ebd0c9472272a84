"""The checkpoints the picker offers: shipped demos, training runs, uploads; and saving an upload."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from sparsity_core.checkpoint import validate
from sparsity_core.errors import CheckpointError, SviteError

from ..settings import CHECKPOINT_SUFFIXES, checkpoints_dir, uploads_dir
from . import runs_data

#: Shipped demo checkpoints, in the order the picker lists them (file stems of checkpoints/).
DEMO_ORDER = ("svite-plus", "svite", "s2vite", "dense")
#: Hidden folder of the uploads folder where uploads wait for their check (never listed).
QUARANTINE = ".quarantine"
CHECK_TIMEOUT_S = 180


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


def _mtime(path: str) -> float:
    try:
        return Path(path).stat().st_mtime
    except OSError:
        return 0.0


def find_checkpoints() -> list[CheckpointEntry]:
    """Shipped checkpoints (``checkpoints/``), then every run with a checkpoint below the runs folders
    (any depth: ``runs/exp_unstructured/svite_s0``; bare checkpoint files too), newest first, then uploads."""
    entries: list[CheckpointEntry] = []
    demo = checkpoints_dir()
    if demo.is_dir():
        for p in sorted((p for p in demo.iterdir() if _is_checkpoint(p)), key=_demo_rank):
            entries.append(CheckpointEntry(f"demo · {p.stem}", str(p), "demo"))
    table, _ = runs_data.all_runs()  # every run below the runs folders, at any depth (headers only, cached)
    found = table[table["checkpoint"] != ""]
    stamps = {p: _mtime(p) for p in found["checkpoint"]}
    for row in sorted(found.itertuples(), key=lambda r: stamps[r.checkpoint], reverse=True):
        entries.append(CheckpointEntry(f"run · {row.name}", str(row.checkpoint), "run"))
    up = uploads_dir()
    if up.is_dir():
        for p in sorted((p for p in up.iterdir() if _is_checkpoint(p)), key=lambda q: q.stat().st_mtime, reverse=True):
            entries.append(CheckpointEntry(f"upload · {p.name.split('-', 1)[-1]}", str(p), "upload"))
    return entries


def _safe_name(name: str) -> str:
    base = Path(name).name
    return re.sub(r"[^A-Za-z0-9._+-]", "_", base)[:80] or "checkpoint"


def save_upload(name: str, data: bytes, limit_mb: int) -> Path:
    """Keep an uploaded checkpoint only if it passes the loader's checks; raise a one-line SviteError if not.

    The bytes go to a hidden quarantine folder first and are checked there by ``svite check`` in a
    separate process under a memory limit, so a hostile file can at worst kill that process, never
    the app. Only a file that passed is moved where the picker looks (named by its content hash, so
    the same bytes are stored once); a file that failed or whose check was killed is deleted, and a
    quarantine left over by a crash is never listed.
    """
    suffix = Path(name).suffix.lower()
    if suffix not in CHECKPOINT_SUFFIXES:
        raise SviteError(f"{name}: not a checkpoint file; the loader accepts {', '.join(CHECKPOINT_SUFFIXES)}")
    if len(data) == 0:
        raise SviteError(f"{name}: file is empty")
    if len(data) > limit_mb * 1024 * 1024:
        raise SviteError(f"{name}: {len(data) / 2**20:.0f} MB is over the {limit_mb} MB upload limit")
    digest = hashlib.sha256(data).hexdigest()[:12]
    final = uploads_dir() / f"{digest}-{_safe_name(name)}"
    quarantine = uploads_dir() / QUARANTINE
    quarantine.mkdir(parents=True, exist_ok=True)
    _sweep(quarantine)
    fd, tmp = tempfile.mkstemp(prefix=f"{digest}-", suffix=suffix, dir=quarantine)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    try:
        try:
            validate.sniff(Path(tmp))  # garbage and torn files are refused here at once
        except SviteError as err:
            raise CheckpointError(str(err).replace(tmp, name)) from None
        check_checkpoint(Path(tmp), name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        final.unlink(missing_ok=True)  # an earlier copy of the same bytes is no better
        raise
    os.replace(tmp, final)
    return final


def check_checkpoint(path: Path, name: str) -> None:
    """Run ``svite check`` on ``path`` in a child process with at most ``check_memory_mb`` of memory;
    raise CheckpointError with one sentence about ``name`` unless it passed."""
    limit = check_memory_mb(path.stat().st_size)
    code = ("import resource, sys; from sparsity_core.cli import main; "
            f"resource.setrlimit(resource.RLIMIT_AS, ({limit} << 20, {limit} << 20)); "
            f"sys.exit(main(['check', sys.argv[1]]))")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    try:
        proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env,
                              timeout=CHECK_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise CheckpointError(f"{name}: the check did not finish within {CHECK_TIMEOUT_S} s; not kept") from None
    if proc.returncode == 0:
        return
    lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    if proc.returncode == 2 and last.startswith("svite check: error: "):
        raise CheckpointError(last[len("svite check: error: "):].replace(str(path), name))
    if proc.returncode < 0:
        why = signal.Signals(-proc.returncode).name
        raise CheckpointError(f"{name}: the check was killed ({why}, probably out of memory); not kept")
    if "MemoryError" in last or "allocate memory" in last or "out of memory" in last:
        raise CheckpointError(f"{name}: the check ran out of its {check_memory_mb(path.stat().st_size)} MB of "
                              "memory; not kept")
    raise CheckpointError(f"{name}: cannot be read as a checkpoint (the check failed: "
                          f"{last.replace(str(path), name)[:160] or f'exit code {proc.returncode}'})")


def check_memory_mb(file_size: int) -> int:
    """Address-space limit of the check process: the interpreter with torch and timm (~1 GB of
    mappings) plus room for a load, which validation bounds by a few times the file's size."""
    return 1536 + 8 * file_size // 2**20


def _sweep(quarantine: Path) -> None:
    """Remove quarantined files older than the longest check (left by an app killed mid-check)."""
    cutoff = time.time() - 2 * CHECK_TIMEOUT_S
    for p in quarantine.iterdir():
        try:
            if p.stat().st_mtime < cutoff:
                p.unlink()
        except OSError:
            pass
