"""The run index: one row per run below a folder, kept current cheaply.

:class:`RunIndex` walks the folder (:mod:`walk`) on every :meth:`~RunIndex.refresh` and reads a run
again only when one of its files changed (modification time and size) or while it runs; everything
else comes from the previous refresh. Reading a run means its small files (:mod:`files`) and its
checkpoint's header (:mod:`..header`), never a weight. A damaged or hostile checkpoint costs its run
the checkpoint's facts, with a one-line note, never an exception.

A run's status: **running** while a training process holds its run lock (``runtime.run_is_active``),
**finished** when its checkpoint says complete or its log ends with an end record (also a run stopped
on purpose by ``--max-steps``), **failed** otherwise (with the last error line it left, or where it
stopped), and **partial** for a bare checkpoint file saved before the end of its run.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd

from ..checkpoint import validate
from ..checkpoint.header import Header, curve_records, read_header
from ..errors import SviteError, one_line
from ..training.rundir import CHECKPOINT_NAME, CONFIG_NAME, METRICS_NAME
from ..training.runtime import run_is_active
from . import facts
from .files import SUMMARY_TAIL_BYTES, last_error_line, read_metrics, read_number, read_small_json, stamp
from .identity import config_columns
from .readers import foreign
from .records import read_record
from .walk import RECORD_NAME, Found, find_runs

#: Files whose (mtime, size) decide whether a run folder is read again.
_WATCHED = (CHECKPOINT_NAME, CONFIG_NAME, METRICS_NAME, "wall_s.txt", "app_run.json", "stderr.log", ".lock",
            RECORD_NAME)
COLUMNS = ["name", "method_label", "method", "target_density", "density", "heads", "neurons", "keep", "seed",
           "epoch", "epochs_total", "step", "total_steps", "top1", "top5", "flops_pct", "flops", "params",
           "kept_params", "fired", "updates", "status", "progress", "error", "wall_s", "model", "data",
           "classes", "source", "path", "checkpoint", "group", "target_heads", "target_neurons", "token_number"]


def _stamp(found: Found) -> tuple:
    if found.kind in foreign.KINDS:  # a run made elsewhere watches its own files (readers/)
        return stamp(foreign.watched(found))
    return stamp([found.path] if found.kind == "file" else [found.path / name for name in _WATCHED])


def _progress(meta: dict[str, Any], metrics: list[dict[str, Any]], config: dict[str, Any]) -> dict[str, Any]:
    """Step, total steps, epoch and the latest validation metrics, from the checkpoint and the log
    (whichever is further along: a running run's log is ahead of its last checkpoint)."""
    starts = [r for r in metrics if r.get("kind") == "start"]
    step = max([int(r["step"]) for r in metrics if isinstance(r.get("step"), (int, float))] + [int(meta.get("step") or 0)])
    total = meta.get("total_steps") or (starts[-1].get("total_steps") if starts else None)
    per_epoch = meta.get("steps_per_epoch") or (starts[-1].get("steps_per_epoch") if starts else None)
    out: dict[str, Any] = {"step": step, "total_steps": total,
                           "epoch": step / per_epoch if per_epoch else meta.get("epoch"),
                           "epochs_total": config.get("epochs") or (starts[-1].get("epochs") if starts else None)}
    epochs = [r for r in metrics if r.get("kind") == "epoch"]
    last = epochs[-1] if epochs else None
    final = meta.get("metrics") if isinstance(meta.get("metrics"), dict) else {}
    if last is None or (final and int(meta.get("step") or 0) >= int(last.get("step") or 0)):
        last = final
    for col, key in (("top1", "val_top1"), ("top5", "val_top5")):
        value = (last or {}).get(key)
        out[col] = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None
    return out


def _status(found: Found, meta: dict[str, Any], metrics: list[dict[str, Any]], row: dict[str, Any]) -> dict[str, Any]:
    marks = [r.get("kind") for r in metrics if r.get("kind") in ("start", "end")]
    total, step = row.get("total_steps"), row.get("step") or 0
    progress = min(1.0, step / total) if total else None
    if found.kind == "folder" and run_is_active(found.path):
        return {"status": "running", "progress": progress, "error": ""}
    if meta.get("complete") is True or (marks and marks[-1] == "end"):
        return {"status": "finished", "progress": progress, "error": ""}
    if found.kind == "file":
        return {"status": "partial", "progress": progress, "error": "a checkpoint saved before its run ended"}
    why = last_error_line(found.path) or (f"stopped at step {step}" + (f" of {total}" if total else "")
                                          + " without an end record (killed, or its machine went down)")
    return {"status": "failed", "progress": progress, "error": why}


def _wall(folder: Path | None, meta: dict[str, Any], metrics: list[dict[str, Any]]) -> float | None:
    """Seconds the run took: ``wall_s.txt`` (the experiment scripts), the app's record, else the sum of
    its epochs' times (training and evaluation; Python start-up and data generation not included)."""
    if folder is not None:
        wall = read_number(folder / "wall_s.txt")
        if wall is not None:
            return wall
        rec = read_small_json(folder / "app_run.json") or {}
        if isinstance(rec.get("started"), (int, float)) and isinstance(rec.get("ended"), (int, float)):
            return max(0.0, float(rec["ended"]) - float(rec["started"]))
    per_epoch = {r["epoch"]: r.get("time_s") for r in curve_records(meta)}
    if not per_epoch:
        per_epoch = {r.get("epoch"): r.get("time_s") for r in metrics if r.get("kind") == "epoch"}
    times = [t for t in per_epoch.values() if isinstance(t, (int, float))]
    return float(sum(times)) if times else None


def read_run(found: Found) -> tuple[dict[str, Any] | None, str | None]:
    """(row, note): the run's table row (None when there is nothing to list) and a one-line note
    about anything that was skipped."""
    if found.kind in foreign.KINDS:  # a DeiT/SViTE, timm or TensorBoard folder (readers/)
        return foreign.read(found)
    if found.kind == "record":
        try:
            record = read_record(found.path / RECORD_NAME)
        except SviteError as err:
            return None, f"{found.name}: skipped, {one_line(err)}"
        return {**record["summary"], "name": found.name, "path": str(found.path), "source": "record",
                "checkpoint": ""}, None
    folder = found.path if found.kind == "folder" else None
    ckpt = folder / CHECKPOINT_NAME if folder is not None else found.path
    header: Header | None = None
    note = None
    if ckpt.exists():
        try:
            validate.check_file(ckpt)
            if found.kind == "file" and not validate.looks_like_safetensors(ckpt):
                validate.sniff(ckpt)  # garbage is refused here; a torch archive or pickle is listed by name
                return _bare_pickle(found), None
            header = read_header(ckpt)
        except SviteError as err:
            note = f"{found.name}: checkpoint skipped, {one_line(err).replace(str(ckpt), ckpt.name)}"
    config = (read_small_json(folder / CONFIG_NAME) if folder is not None else None) or {}
    if header is None and not config:
        return None, note
    meta = (header.meta or {}) if header is not None else {}
    if not config and isinstance(meta.get("train_config"), dict):
        config = meta["train_config"]
    if header is not None and header.meta is None:
        config = {"method": "unknown"}
    metrics = read_metrics(folder / METRICS_NAME, tail=SUMMARY_TAIL_BYTES) if folder is not None else []
    row: dict[str, Any] = {"name": found.name, "path": str(found.path), "source": "checkpoint" if header else "log",
                           "checkpoint": str(ckpt) if header is not None else ""}
    row.update(config_columns(config))
    if meta.get("method") and meta.get("method") != row["method"]:
        row.update(method=meta["method"], method_label=facts.method_label(str(meta["method"]), config))
    row.update(_progress(meta, metrics, config))
    if header is not None:
        classes = (meta.get("model_config") or {}).get("num_classes")
        row["classes"] = classes if isinstance(classes, int) and not isinstance(classes, bool) else None
        try:
            row.update(facts.exploration(header))
            row.update(facts.cost(header))
        except SviteError as err:  # a model config past the caps: listed without its cost
            note = f"{found.name}: cost not computed, {one_line(err)}"
    row.update(_status(found, meta, metrics, row))
    row["wall_s"] = _wall(folder, meta, metrics)
    if header is not None and header.meta is None:
        row.update(method_label="plain state dict", error="no training metadata (a timm/DeiT state dict)")
    return row, note


def _bare_pickle(found: Found) -> dict[str, Any]:
    """A ``.pth``/``.pt``/``.bin`` file: a torch archive has no header to read without unpickling, so
    it is listed by name (the pages load it, safely, when it is opened)."""
    row = {"name": found.name, "path": str(found.path), "source": "file", "checkpoint": str(found.path)}
    row.update(config_columns({"method": "unknown"}))
    row.update(method_label="torch file (open it to read)", status="unknown", error="")
    return row


class RunIndex:
    """The runs below ``root``, re-read only where something changed (see the module's docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.notes: list[str] = []
        self.refreshed = 0.0
        self._cache: dict[str, tuple[tuple, dict[str, Any] | None, str | None]] = {}
        self._lock = threading.Lock()

    def refresh(self) -> pd.DataFrame:
        """Walk the folder again; read what is new or changed; the table of every run."""
        with self._lock:
            found, notes = find_runs(self.root) if self.root.is_dir() else ([], [])
            cache, rows = {}, []
            for f in found:
                stamp = _stamp(f)
                hit = self._cache.get(str(f.path))
                if hit is None or hit[0] != stamp or (hit[1] or {}).get("status") == "running":
                    hit = (stamp, *read_run(f))
                cache[str(f.path)] = hit
                if hit[1] is not None:
                    rows.append(hit[1])
                if hit[2]:
                    notes.append(hit[2])
            self._cache, self.notes, self.refreshed = cache, notes, time.time()
            return table(rows)


def table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows as the index's table, with every column present (missing facts are empty)."""
    df = pd.DataFrame(rows, columns=COLUMNS) if rows else pd.DataFrame(columns=COLUMNS)
    return df.astype({c: "float64" for c in ("target_density", "density", "heads", "neurons", "keep", "top1", "top5",
                                             "flops_pct", "fired", "progress", "wall_s", "epoch")})


def index_runs(root: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """The table of every run below ``root`` and the notes about what was skipped (one pass, no cache)."""
    idx = RunIndex(root)
    return idx.refresh(), idx.notes

