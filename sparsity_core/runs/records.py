"""Run records: a run without its weights, in one small JSON file (``svite-run.json``).

A record holds the run's table row (:mod:`index`), its training config and its curves (per-epoch
metrics, the training loss and learning rate at every logged step, thinned to at most
``MAX_STEP_POINTS``, density and fired rate at every snapshot, one row per topology update): a few
KB, so a whole sweep ships with the app (``checkpoints/runs/``) and a fresh clone's Runs page shows it.
Records are untrusted input like any file: size-capped, and every field of the wrong type refused
with one line naming the file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..checkpoint.atomic import atomic_write_bytes
from ..errors import SviteError

FORMAT = "svite-run-record"
VERSION = 1
MAX_RECORD_BYTES = 4 << 20
MAX_STEP_POINTS = 400
CURVE_TABLES = ("epochs", "steps", "snapshots", "events")


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, bool)) or (isinstance(v, (int, float)) and math.isfinite(v))


def _clean(obj: Any) -> Any:
    """JSON-ready: NaN and infinities as null (strict JSON), numpy scalars as Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_record(path: Path, record: dict[str, Any]) -> Path:
    """Write a record atomically (a reader never sees half a file)."""
    data = json.dumps(_clean({"format": FORMAT, "version": VERSION, **record}), separators=(",", ":"),
                      allow_nan=False).encode()
    if len(data) > MAX_RECORD_BYTES:
        raise SviteError(f"the record would be {len(data)} bytes, over the {MAX_RECORD_BYTES} limit", path=path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)
    return path


def _rows(path: Path, value: Any, what: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
        raise SviteError(f"{what} must be a list of objects", path=path)
    for r in value:
        if not all(_scalar(v) for v in r.values()):
            raise SviteError(f"{what} holds a value that is not a number, string or null", path=path)
    return value


def read_record(path: str | Path) -> dict[str, Any]:
    """A record, checked: ``{"summary": {...}, "config": {...}, "curves": {table: [rows]}}``."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_RECORD_BYTES + 1)
    except OSError as err:
        raise SviteError(f"cannot read the run record ({err.strerror or err})", path=path) from None
    if len(raw) > MAX_RECORD_BYTES:
        raise SviteError(f"run record over the {MAX_RECORD_BYTES // 2**20} MB limit", path=path)
    try:
        rec = json.loads(raw)
    except (ValueError, RecursionError):
        raise SviteError("run record is not valid JSON", path=path) from None
    if not isinstance(rec, dict) or rec.get("format") != FORMAT:
        raise SviteError(f"not a run record (format is not {FORMAT!r})", path=path)
    if not isinstance(rec.get("version"), int) or rec["version"] > VERSION:
        raise SviteError(f"run record version {rec.get('version')!r}; this app reads up to {VERSION}", path=path)
    summary, config, curves = rec.get("summary"), rec.get("config"), rec.get("curves")
    if not isinstance(summary, dict) or not all(_scalar(v) for v in summary.values()):
        raise SviteError("the run record's summary must be an object of numbers and strings", path=path)
    if not isinstance(config, dict) or not isinstance(curves, dict):
        raise SviteError("the run record needs a config object and a curves object", path=path)
    checked = {t: _rows(path, curves.get(t, []), f"curves.{t}") for t in CURVE_TABLES}
    return {"summary": summary, "config": config, "curves": checked}


def thin(rows: list[dict[str, Any]], limit: int = MAX_STEP_POINTS) -> list[dict[str, Any]]:
    """At most ``limit`` rows, evenly spaced, the last one always kept."""
    if len(rows) <= limit:
        return rows
    step = len(rows) / limit
    picked = [rows[int(i * step)] for i in range(limit - 1)]
    return picked + [rows[-1]]
