"""The app's view of the runs folders: one cached :class:`sparsity_core.runs.RunIndex` per folder,
refreshed at most every ``SVITE_RUNS_REFRESH_S`` seconds (default 2), so a run that appears or
finishes while the app is open shows up without a restart, and a page render does not walk the disk
every time. Curves are cached per run and file stamp. Nothing here draws; ``run_figures`` does.
"""

from __future__ import annotations

import os
import threading
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from sparsity_core import runs as core_runs
from sparsity_core.checkpoint.header import read_header
from sparsity_core.errors import SviteError
from sparsity_core.runs.files import stamp

from ..settings import shipped_runs_dir, sweep_roots

_INDEXES: dict[str, core_runs.RunIndex] = {}
_TABLES: dict[str, tuple[float, pd.DataFrame]] = {}
_LOCK = threading.Lock()


def refresh_s() -> float:
    try:
        return max(0.0, float(os.environ.get("SVITE_RUNS_REFRESH_S", "2")))
    except ValueError:
        return 2.0


def _table(root: Path) -> pd.DataFrame:
    key = str(root)
    with _LOCK:
        idx = _INDEXES.setdefault(key, core_runs.RunIndex(root))
        cached = _TABLES.get(key)
    if cached is not None and time.time() - cached[0] < refresh_s():
        return cached[1]
    table = idx.refresh()
    with _LOCK:
        _TABLES[key] = (time.time(), table)
    return table


def all_runs() -> tuple[pd.DataFrame, list[str]]:
    """Every run below the runs folders (``settings.sweep_roots``), labelled by configuration, and
    the notes about what was skipped. The shipped sweep's names start with ``shipped/`` (and ``runs/``'s with ``runs/`` beside it)."""
    roots = sweep_roots()
    tables, notes = [], []
    for root in roots:
        t = _table(root)
        prefix = "shipped/" if root == shipped_runs_dir() else root.name + "/" if len(roots) > 1 else ""
        if len(t) and prefix:
            t = t.assign(name=prefix + t["name"])
        tables.append(t)
        notes += [prefix + n for n in _INDEXES[str(root)].notes]
    nonempty = [t for t in tables if len(t)]
    table = pd.concat(nonempty, ignore_index=True) if nonempty else core_runs.index.table([])
    return core_runs.with_labels(table), notes


def run_count() -> int:
    return len(all_runs()[0])


def _stamp(path: str) -> tuple:
    p = Path(path)
    return stamp([p] if p.is_file() else [p / n for n in ("checkpoint.safetensors", "metrics.jsonl", core_runs.RECORD_NAME)])


@lru_cache(maxsize=256)
def _curves(path: str, source: str, stamp: tuple) -> core_runs.Curves:
    return core_runs.run_curves(path, source)


def curves(path: str, source: str) -> core_runs.Curves:
    """One indexed run's curves (re-read when its files change)."""
    return _curves(path, source, _stamp(path))


@lru_cache(maxsize=64)
def _checkpoint_curves(path: str, stamp: tuple, beside: tuple) -> core_runs.Curves:
    return core_runs.checkpoint_curves(path)


def checkpoint_curves(path: str) -> core_runs.Curves:
    """The curves of any checkpoint file (its own, or the metrics.jsonl beside it)."""
    return _checkpoint_curves(path, _stamp(path), _stamp(str(Path(path).parent / "metrics.jsonl")))


def curves_for(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """Curves of several runs with what the figures colour and group them by."""
    out = []
    for r in rows.itertuples():
        out.append({"name": r.name, "label": r.label, "method": r.method_label, "seed": r.seed,
                    "status": r.status, "curves": curves(r.path, r.source)})
    return out


def status_of(path: str) -> str | None:
    """The index's status of the run a checkpoint belongs to (None when it is not an indexed run)."""
    table, _ = all_runs()
    hit = table[table["checkpoint"] == str(path)]
    return str(hit["status"].iloc[0]) if len(hit) else None


@lru_cache(maxsize=64)
def _meta(path: str, stamp: tuple) -> dict[str, Any]:
    try:
        return read_header(path).meta or {}
    except SviteError:
        return {}


def header_meta(path: str) -> dict[str, Any]:
    """A checkpoint's metadata (empty when it has none or cannot be read)."""
    return _meta(path, _stamp(path))
