"""timm ``train.py`` output folders (``output/train/<experiment>/``): ``summary.csv`` (one row per epoch:
``epoch, train_loss, eval_loss, eval_top1, eval_top5, lr``, in any order, with any other columns) is the
curve; ``args.yaml`` gives the model, seed and epochs. Top-1 is the last epoch's ``eval_top1``. timm counts
``epochs + cooldown_epochs`` epochs from 0; a value that is not a number is a gap in the curve and a note.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from ..curves import EPOCH_COLUMNS, Curves
from ..files import MAX_METRICS_BYTES, read_text
from . import common
from .detect import TIMM_ARGS, TIMM_SUMMARY

#: summary.csv column (lower case) -> our curve column
CSV_COLUMNS = {"eval_top1": "val_top1", "eval_top5": "val_top5", "eval_loss": "val_loss", "train_loss": "train_loss",
               "lr": "lr"}
CHECKPOINTS = ("last.pth.tar", "model_best.pth.tar")


def watched(folder: Path) -> list[Path]:
    return [folder / TIMM_SUMMARY, folder / TIMM_ARGS]


def _summary(folder: Path) -> tuple[pd.DataFrame, str | None]:
    """summary.csv as numbers (columns lower-cased), and a note about what was not readable."""
    text = read_text(folder / TIMM_SUMMARY, MAX_METRICS_BYTES)
    if text is None:
        return pd.DataFrame(), f"summary.csv unreadable or over {MAX_METRICS_BYTES >> 20} MB"
    try:
        frame = pd.read_csv(io.StringIO(text), on_bad_lines="skip")
    except (ValueError, pd.errors.ParserError) as err:
        return pd.DataFrame(), f"summary.csv is not a CSV table ({str(err).splitlines()[0][:80]})"
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    numbers = frame.apply(pd.to_numeric, errors="coerce")
    bad = int((numbers.isna() & frame.notna()).to_numpy().sum())
    numbers = numbers.dropna(subset=["epoch"]) if "epoch" in numbers else numbers.iloc[0:0]
    note = f"summary.csv: {bad} values are not numbers (left out)" if bad else None
    return numbers.sort_values("epoch").drop_duplicates("epoch", keep="last").reset_index(drop=True), note


def _args(folder: Path) -> tuple[dict[str, Any], str | None]:
    if not (folder / TIMM_ARGS).is_file():
        return {}, "no args.yaml (model, seed and epochs unknown)"
    text = read_text(folder / TIMM_ARGS)
    try:
        args = yaml.safe_load(text) if text is not None else None
    except yaml.YAMLError:
        args = None
    if not isinstance(args, dict):
        return {}, "args.yaml is not a YAML mapping"
    return {str(k): v for k, v in args.items()}, None


def read(found: Any) -> tuple[dict[str, Any] | None, str | None]:
    folder = found.path
    summary, note_csv = _summary(folder)
    args, note_args = _args(folder)
    notes = [n for n in (note_csv, note_args) if n]
    config = common.shared_config(args, "timm")
    config["method"] = "dense"
    if isinstance(args.get("dataset"), str) and args["dataset"]:
        config["data"] = args["dataset"]
    last = summary.iloc[-1] if len(summary) else pd.Series(dtype="float64")
    done = float(last["epoch"]) + 1 if len(summary) else None
    epochs = common.number(args.get("epochs"))
    total = epochs + (common.number(args.get("cooldown_epochs")) or 0.0) if epochs else None
    ckpt = next((folder / n for n in CHECKPOINTS if (folder / n).is_file()), None)

    def col(name: str) -> float | None:
        return common.number(last.get(name)) if len(summary) else None

    row = common.row(found, "timm", config, epoch=done, step=None, total_steps=None, top1=col("eval_top1"),
                     top5=col("eval_top5"), density=1.0, checkpoint=str(ckpt) if ckpt else "", wall_s=None,
                     **common.status(done, total, watched(folder)))
    return row, (f"{found.name}: " + "; ".join(notes)) if notes else None


def curves(folder: Path) -> Curves:
    """summary.csv as the per-epoch curve (``step`` is the number of epochs done: timm's summary has no steps)."""
    summary, note = _summary(folder)
    if summary.empty:
        return Curves(note=f"no curve: {note or 'summary.csv holds no epoch rows'}", source="timm")
    frame = summary.rename(columns=CSV_COLUMNS)
    frame["epoch"] = frame["epoch"] + 1
    frame["step"] = frame["epoch"]
    for c in EPOCH_COLUMNS:
        if c not in frame:
            frame[c] = float("nan")
    return Curves(epochs=frame[EPOCH_COLUMNS + [c for c in frame if c not in EPOCH_COLUMNS]].astype(
        {c: "float64" for c in EPOCH_COLUMNS}), source="summary.csv", note=note or "")
