"""Tables as people read them: human column names and numbers at a sensible precision.

Analysis frames carry machine names (``updates_started_at``) and raw floats (``0.6147314860270574``,
``400.0`` for a step that pandas stored as float because other rows are empty). Pages show them through
:func:`readable`: whole numbers as integers (thousands separated from 10,000 on), other numbers to four
significant digits, empty cells empty, and columns renamed by :data:`HUMAN` (or, for names it does not
know, with spaces for underscores). The values themselves are untouched, so tables still sort by number
and the CSV keeps full precision.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

#: Column names as the pages show them (everything not listed: underscores become spaces).
HUMAN = {
    "overall_density": "density", "updates": "updates so far", "updates_started_at": "update started at step",
    "fired_density": "ever active (share)", "fired_heads": "heads ever alive", "fired_neurons": "neurons ever alive",
    "rate": "prune rate", "last_update_step": "last update at step", "heads_exchanged": "heads exchanged",
    "neurons_exchanged": "neurons exchanged", "val_top1": "val top-1 (%)", "val_top5": "val top-5 (%)",
    "val_loss": "val loss", "train_loss": "train loss", "numel": "weights", "nonzeros": "kept weights",
    "block_type": "block type", "images_per_s": "images per second", "batch_size": "batch size",
    "density_a": "density A", "density_b": "density B", "density_diff": "density B − A", "params": "parameters",
    "fraction_alive": "share alive", "survived": "initial ones still alive", "iou": "object IoU (this image)",
    "iou_sd": "sd over the demo images", "iou_mean": "object IoU (mean over the demo images)",
    "chance_mean": "chance (mean over the demo images)", "taylor": "Taylor importance", "rank": "importance rank",
    "images": "demo images",
    "object_patches": "object patches", "young_share_of_pruned": "pruned that were grown the update before",
    "young_share_of_active": "young share of active", "MFLOPs": "MFLOPs", "FLOPs vs dense": "FLOPs vs dense",
}


def human(name: Any) -> str:
    """The column name a page shows for ``name``."""
    name = str(name)
    return HUMAN.get(name, name.replace("_", " "))


def number(value: Any) -> str:
    """One cell: integers as integers, other numbers to 4 significant digits, empty for missing."""
    if value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)):
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}" if abs(int(value)) >= 10_000 else str(int(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(number(v) for v in value) + "]"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {number(v)}" for k, v in value.items())
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isinf(v):
            return str(v)
        if v.is_integer() and abs(v) < 1e15:
            return number(int(v))
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.4g}"
    return str(value)


def renamed(df: pd.DataFrame) -> pd.DataFrame:
    """The frame with human column names (values unchanged): what the CSV download holds."""
    names: dict[Any, str] = {}
    for c in df.columns:
        name = human(c)
        names[c] = name if name not in names.values() and name not in df.columns.drop(c) else str(c)
    return df.rename(columns=names)


def readable(df: pd.DataFrame) -> Any:
    """A pandas Styler over :func:`renamed` that formats every numeric column with :func:`number`."""
    out = renamed(df)
    numeric = [c for c in out.columns if pd.api.types.is_numeric_dtype(out[c]) and not pd.api.types.is_bool_dtype(out[c])]
    return out.style.format(number, subset=numeric) if numeric else out.style
