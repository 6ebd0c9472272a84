"""The tracker tags: one stable name per scalar a run writes (docs/api.md lists them).

``train/*`` come from each logged step, ``val/*`` from each evaluation, ``sparsity/*`` from each mask
snapshot (``history.scalars``). A Recorder's own scalars under other names are written as ``custom/<name>``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

TRAIN_LOSS = "train/loss"
TRAIN_LR = "train/lr"
TRAIN_IMAGES_PER_S = "train/images_per_s"
TRAIN_EPOCH_LOSS = "train/epoch_loss"
VAL_TOP1 = "val/top1"
VAL_TOP5 = "val/top5"
VAL_LOSS = "val/loss"
DENSITY = "sparsity/density"
LAYER_DENSITY = "sparsity/density/"  # + the layer's parameter name
FIRED = "sparsity/fired"
JACCARD_PREV = "sparsity/jaccard_prev"
MOVED = "sparsity/moved"
MOVED_SHARE = "sparsity/moved_share"
HEADS_ALIVE = "sparsity/heads_alive"
NEURONS_ALIVE = "sparsity/neurons_alive"
CUSTOM = "custom/"  # + the name a Recorder.log call used

#: metrics-record field -> tag, per record kind (``metrics.jsonl``'s ``kind``)
RECORD_TAGS = {
    "step": {"loss": TRAIN_LOSS, "lr": TRAIN_LR, "images_per_s": TRAIN_IMAGES_PER_S},
    "epoch": {"train_loss": TRAIN_EPOCH_LOSS, "val_top1": VAL_TOP1, "val_top5": VAL_TOP5, "val_loss": VAL_LOSS,
              "lr": TRAIN_LR},
}
#: fields of a record that are bookkeeping, not scalars to track
NOT_SCALARS = frozenset({"kind", "step", "epoch", "time_s", "density", "pid", "time", "total_steps",
                         "steps_per_epoch", "epochs"})


def record_scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The tagged scalars of one metrics record: the known fields under their tags, a Recorder's other
    numbers under ``custom/<name>``; start and end records have none."""
    kind = record.get("kind")
    if kind not in RECORD_TAGS:
        return {}
    out = {}
    for key, value in record.items():
        if key in NOT_SCALARS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value):
            continue
        out[RECORD_TAGS[kind].get(key, CUSTOM + key)] = float(value)
    return out
