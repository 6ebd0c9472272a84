"""What the foreign readers share: a row with every column the index has, their status rule, and the
config fields a foreign run's arguments map to (so its seeds group as ours do)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from ..identity import config_columns

#: A run whose files changed this recently, and that has not reached its last epoch, is taken as running.
RECENT_S = 600
#: Our config fields a foreign run's arguments may carry under the same meaning (names as ours).
SHARED_FIELDS = ("model", "seed", "epochs", "batch_size", "lr", "min_lr", "weight_decay", "warmup_epochs",
                 "density", "atten_density", "other_density", "update_frequency", "death_rate", "decay_schedule",
                 "t_end", "growth", "death", "sparse_init", "token_number", "keep_ratio", "mixup", "cutmix")


def number(value: Any) -> float | None:
    """A finite number, or None (a string, a bool, NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def shared_config(args: dict[str, Any], made_by: str) -> dict[str, Any]:
    """The fields of ``args`` that mean what ours mean (plain values only), plus ``made_by``: runs that
    differ only by seed share the rest, so they group; runs of another tool never group with ours."""
    out: dict[str, Any] = {"made_by": made_by}
    for key in SHARED_FIELDS:
        value = args.get(key)
        if value is None or isinstance(value, (str, int, float, bool)):
            if value is not None:
                out[key] = value
    return out


def newest_change(paths: list[Path]) -> float | None:
    stamps = []
    for p in paths:
        try:
            stamps.append(p.stat().st_mtime)
        except OSError:
            pass
    return max(stamps) if stamps else None


def status(done: float | None, total: float | None, files: list[Path]) -> dict[str, Any]:
    """finished (the last epoch logged, or no total to compare with and no recent change), running (files
    changed in the last ``RECENT_S`` seconds) or failed (stopped before its last epoch)."""
    progress = min(1.0, done / total) if done is not None and total else None
    if done is not None and total and done >= total:
        return {"status": "finished", "progress": progress, "error": ""}
    changed = newest_change(files)
    if changed is not None and time.time() - changed < RECENT_S:
        return {"status": "running", "progress": progress, "error": ""}
    if not total:
        return {"status": "finished", "progress": progress, "error": ""}
    return {"status": "failed", "progress": progress,
            "error": f"stopped after epoch {0 if done is None else int(done)} of {int(total)} (its files have not "
                     "changed since)"}


def row(found: Any, source: str, config: dict[str, Any], **facts: Any) -> dict[str, Any]:
    """A row of the index for a foreign run: the config's columns, then ``facts`` (top1, density, ...)."""
    out: dict[str, Any] = {"name": found.name, "path": str(found.path), "source": source, "checkpoint": ""}
    out.update(config_columns(config))
    out.update(facts)
    return out
