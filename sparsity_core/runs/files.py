"""The small files of a run folder, read defensively: ``config.json``, ``metrics.jsonl``,
``wall_s.txt``, the app's ``app_run.json`` and a ``stderr.log``.

Every reader caps how much it reads and returns nothing (rather than raising) for a file that is
missing, unreadable, torn or of the wrong shape: a run folder is shared with a process that may be
writing it right now, and one bad file must cost its run a field, never the index.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

#: Largest config.json / app_run.json / wall_s.txt read.
MAX_SMALL_BYTES = 1 << 20
#: Largest metrics.jsonl read whole (learning curves); beyond it the curve is read from the first and
#: last MAX_METRICS_BYTES / 2 bytes (an ImageNet run logging every 50 steps for 300 epochs writes ~3 MB).
MAX_METRICS_BYTES = 64 << 20
#: What the index reads of metrics.jsonl: the first line and this tail.
SUMMARY_TAIL_BYTES = 256 << 10


def read_small_json(path: Path) -> dict[str, Any] | None:
    """A small JSON object file, or None."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_SMALL_BYTES + 1)
    except OSError:
        return None
    if len(raw) > MAX_SMALL_BYTES:
        return None
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def read_number(path: Path) -> float | None:
    """A file holding one number (``wall_s.txt``), or None."""
    try:
        with open(path, "rb") as fh:
            text = fh.read(64).decode("ascii", errors="replace").strip()
        value = float(text)
    except (OSError, ValueError):
        return None
    return value if math.isfinite(value) and value >= 0 else None


def _records(blob: bytes, skip_first_partial: bool) -> list[dict[str, Any]]:
    lines = blob.split(b"\n")
    if skip_first_partial:
        lines = lines[1:]
    out = []
    for line in lines:
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):
            continue  # a line being written right now, or torn by a kill
        if isinstance(rec, dict):
            out.append({k: v for k, v in rec.items() if isinstance(k, str) and not isinstance(v, (dict, list))})
    return out


def read_metrics(path: Path, tail: int | None = None) -> list[dict[str, Any]]:
    """The scalar fields of ``metrics.jsonl``'s records. ``tail``: only its first line and about its
    last ``tail`` bytes (what a summary needs). Torn lines are skipped; a file larger than
    ``MAX_METRICS_BYTES`` is read at its two ends."""
    limit = tail if tail is not None else MAX_METRICS_BYTES
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, 2)
            fh.seek(0)
            if size <= limit:
                return _records(fh.read(size), False)
            first = fh.readline(MAX_SMALL_BYTES) if tail is not None else fh.read(limit // 2)
            fh.seek(size - (limit if tail is not None else limit // 2))
            rest = fh.read()
    except OSError:
        return []
    return _records(first, False) + _records(rest, True)


def last_error_line(folder: Path) -> str:
    """Why a run stopped, if it said so: the app's record (``app_run.json``'s error), else the last
    ``svite …: error: …`` line of ``stderr.log``, else the last line of a traceback there."""
    rec = read_small_json(folder / "app_run.json")
    if rec and isinstance(rec.get("error"), str) and rec["error"].strip():
        return rec["error"].strip().splitlines()[0][:300]
    try:
        with open(folder / "stderr.log", "rb") as fh:
            size = fh.seek(0, 2)
            fh.seek(max(0, size - 64 * 1024))
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    own = [ln.split(": error: ", 1)[1] for ln in lines if ": error: " in ln]
    if own:
        return own[-1][:300]
    if any(ln.startswith("Traceback") for ln in lines):
        return lines[-1][:300]
    return ""


def stamp(paths: list[Path]) -> tuple:
    """(mtime_ns, size) of each file, None for one that is missing: what changed since the last look."""
    out = []
    for p in paths:
        try:
            st = p.stat()
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


def read_text(path: Path, limit: int = MAX_SMALL_BYTES) -> str | None:
    """A small text file (``args.yaml``, ``summary.csv`` of runs made elsewhere) as text, or None when it is
    missing, unreadable, or over ``limit`` bytes (undecodable bytes replaced)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(limit + 1)
    except OSError:
        return None
    return None if len(raw) > limit else raw.decode("utf-8", errors="replace")


def first_line(path: Path, limit: int = 64 << 10) -> bytes:
    """The first line of a file (at most ``limit`` bytes; b"" when unreadable): enough to tell a log's kind."""
    try:
        with open(path, "rb") as fh:
            return fh.readline(limit)
    except OSError:
        return b""
