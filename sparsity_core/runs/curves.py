"""A run's learning curves with its topology on them: validation accuracy, training loss, learning
rate and fired rate against step, and one row per topology update.

Where they come from, best first: the run's ``metrics.jsonl`` (every logged step), the per-epoch
metrics the checkpoint itself carries (``curve``: a copied or uploaded checkpoint still has its curve),
a run record (``svite-run.json``). Density, fired rate and the updates come from the checkpoint's
history index (:mod:`facts`). A checkpoint with none of these says why (``Curves.note``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..checkpoint.header import Header, read_header
from ..errors import SviteError, one_line
from ..training.rundir import CHECKPOINT_NAME, METRICS_NAME
from . import facts
from .facts import EVENT_COLUMNS
from .files import read_metrics
from .records import CURVE_TABLES, read_record
from .walk import RECORD_NAME

EPOCH_COLUMNS = ["step", "epoch", "val_top1", "val_top5", "val_loss", "train_loss", "lr", "density", "time_s"]
STEP_COLUMNS = ["step", "epoch", "loss", "lr"]
SNAPSHOT_COLUMNS = ["step", "epoch", "event", "density", "fired"]


def _empty(columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(columns=columns)


@dataclass
class Curves:
    """One run's curves (empty frames where nothing was recorded) and where they came from."""

    epochs: pd.DataFrame = field(default_factory=lambda: _empty(EPOCH_COLUMNS))
    steps: pd.DataFrame = field(default_factory=lambda: _empty(STEP_COLUMNS))
    snapshots: pd.DataFrame = field(default_factory=lambda: _empty(SNAPSHOT_COLUMNS))
    events: pd.DataFrame = field(default_factory=lambda: _empty(EVENT_COLUMNS))
    source: str = ""
    note: str = ""

    @property
    def empty(self) -> bool:
        return self.epochs.empty and self.steps.empty

    def as_record(self) -> dict[str, list[dict]]:
        return {t: getattr(self, t).to_dict("records") for t in CURVE_TABLES}


def _frame(rows: list[dict], columns: list[str]) -> pd.DataFrame:
    df = pd.DataFrame(rows)
    for c in columns:  # numbers as floats (a record's nulls as NaN), whatever the source held
        df[c] = df[c] if c == "event" and c in df else pd.to_numeric(df[c], errors="coerce") if c in df else \
            pd.Series(np.nan, index=df.index, dtype="float64")
    return df[columns + [c for c in df.columns if c not in columns]]


def _from_metrics(records: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Epoch and step rows of a metrics log; a resumed run's repeated steps keep their last value."""
    epochs = [r for r in records if r.get("kind") == "epoch" and isinstance(r.get("step"), (int, float))]
    steps = [r for r in records if r.get("kind") == "step" and isinstance(r.get("step"), (int, float))]
    ep = _frame(epochs, EPOCH_COLUMNS).drop(columns=["kind"], errors="ignore")
    st = _frame(steps, STEP_COLUMNS).drop(columns=["kind", "images_per_s"], errors="ignore")
    return (ep.drop_duplicates("step", keep="last").sort_values("step").reset_index(drop=True),
            st.drop_duplicates("step", keep="last").sort_values("step").reset_index(drop=True))


def _with_header(curves: Curves, header: Header | None) -> Curves:
    if header is None or header.meta is None:
        return curves
    curves.snapshots = facts.snapshots(header)
    curves.events = facts.events(header)
    if curves.epochs.empty:
        carried = facts.header_curve(header)
        if len(carried):
            curves.epochs = _frame(carried.to_dict("records"), EPOCH_COLUMNS)
            curves.source = curves.source or "checkpoint"
    return curves


def checkpoint_curves(path: str | Path) -> Curves:
    """The curves of any checkpoint file: its own per-epoch metrics and history, and the
    ``metrics.jsonl`` beside it when there is one (older checkpoints carry no curve)."""
    path = Path(path)
    try:
        header = read_header(path)
    except SviteError as err:
        if path.suffix.lower() == ".safetensors":
            return Curves(note=f"no curve: {one_line(err)}")
        header = None  # a .pth / .pt / .bin file: no header to read; a metrics log beside it still counts
    curves = Curves()
    beside = path.parent / METRICS_NAME
    if beside.is_file() and (header is None or header.meta is not None):
        curves.epochs, curves.steps = _from_metrics(read_metrics(beside))
        curves.source = "metrics.jsonl" if not curves.empty else ""
    curves = _with_header(curves, header)
    if curves.empty:
        if header is None or header.meta is None:
            curves.note = ("no curve recorded: this file holds weights only (a timm/DeiT state dict or an official "
                           "SViTE checkpoint), not its training log")
        else:
            curves.note = ("no curve recorded: this checkpoint was written before checkpoints carried their "
                           "per-epoch metrics, and no metrics.jsonl lies beside it")
    return curves


def run_curves(path: str | Path, source: str) -> Curves:
    """The curves of an indexed run (``path`` and ``source`` as in the index's table)."""
    path = Path(path)
    if source == "record":
        try:
            rec = read_record(path / RECORD_NAME)
        except SviteError as err:
            return Curves(note=one_line(err))
        tables = rec["curves"]
        return Curves(epochs=_frame(tables["epochs"], EPOCH_COLUMNS), steps=_frame(tables["steps"], STEP_COLUMNS),
                      snapshots=_frame(tables["snapshots"], SNAPSHOT_COLUMNS),
                      events=_frame(tables["events"], EVENT_COLUMNS),
                      source="record")
    if path.is_file():
        return checkpoint_curves(path)
    ckpt = path / CHECKPOINT_NAME
    if ckpt.is_file():
        return checkpoint_curves(ckpt)
    curves = Curves()
    curves.epochs, curves.steps = _from_metrics(read_metrics(path / METRICS_NAME))
    curves.source = "metrics.jsonl"
    if curves.empty:
        curves.note = "no curve yet: the run has not logged a step"
    return curves
