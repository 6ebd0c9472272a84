"""TensorBoard log folders: the scalars of the folder's event files (``events.out.tfevents.*``), read with
tensorboard's own ``EventAccumulator`` (the ``tensorboard`` extra; without it the run is listed with a note).

Every scalar tag becomes a column of the step curve. Accuracy, loss and learning rate are found by tag:
ours (``val/top1``, ``train/loss``, ``train/lr``, ``sparsity/density``: docs/api.md) first, then the names
other loops commonly use (``test_acc1``, ``eval/top1``, ``Accuracy/val``, ...). Top-1 is the accuracy tag's
last value; an accuracy tag whose values all lie in [0, 1] is a fraction and is shown in percent.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Any

import pandas as pd

from ...trackers import tags
from ..curves import EPOCH_COLUMNS, SNAPSHOT_COLUMNS, STEP_COLUMNS, Curves
from ..files import read_text
from . import common
from .detect import EVENTS_PREFIX

#: Event files of one folder read at most (larger ones hold images or histograms, not a curve's scalars)
MAX_EVENT_BYTES = 256 << 20
#: Points kept per tag (tensorboard's reservoir: evenly thinned, the last point always kept)
MAX_POINTS = 10_000
TOP1 = (tags.VAL_TOP1, "test_acc1", "eval/top1", "val/acc1", "val_acc1", "eval_top1", "val/acc", "val_acc",
        "accuracy/val", "val/accuracy")
TOP5 = (tags.VAL_TOP5, "test_acc5", "eval/top5", "val/acc5", "val_acc5", "eval_top5")
LOSS = (tags.TRAIN_LOSS, "train_loss", "loss", "loss/train", "train/loss_epoch")
LR = (tags.TRAIN_LR, "lr", "train_lr", "learning_rate", "lr-adamw")
_ACCURACY = re.compile(r"(val|test|eval).*(top.?1|acc)|(top.?1|acc).*(val|test|eval)", re.I)


def watched(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.name.startswith(EVENTS_PREFIX))
    except OSError:
        return []


def read_scalars(folder: Path) -> tuple[dict[str, pd.DataFrame], str | None]:
    """tag -> (step, value) frame, and a note when the events could not be read."""
    if importlib.util.find_spec("tensorboard") is None:
        return {}, "TensorBoard events not read: the tensorboard package is not installed (pip install " \
                   "'svite-explorer[tensorboard]')"
    files = watched(folder)
    size = sum(p.stat().st_size for p in files if p.is_file())
    if size > MAX_EVENT_BYTES:
        return {}, f"event files of {size >> 20} MB, over the {MAX_EVENT_BYTES >> 20} MB read for scalars"
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    try:
        acc = EventAccumulator(str(folder), size_guidance={SCALARS: MAX_POINTS, "images": 1, "audio": 1,
                                                            "histograms": 1, "tensors": 1})
        acc.Reload()
        out = {}
        for tag in acc.Tags().get(SCALARS, []):
            events = acc.Scalars(tag)
            out[str(tag)] = pd.DataFrame({"step": [e.step for e in events], "value": [e.value for e in events]})
    except Exception as err:  # noqa: BLE001 (a damaged event file is its run's note, whatever tensorboard raised)
        return {}, f"event files unreadable ({type(err).__name__}: {str(err).splitlines()[0][:80] if str(err) else ''})"
    return out, None if out else "event files hold no scalars"


def _find(scalars: dict[str, pd.DataFrame], names: tuple[str, ...], pattern: re.Pattern | None = None) -> str | None:
    lower = {t.lower(): t for t in scalars}
    for name in names:
        if name.lower() in lower:
            return lower[name.lower()]
    if pattern is not None:
        return next((t for t in sorted(scalars) if pattern.search(t)), None)
    return None


def _percent(frame: pd.DataFrame) -> pd.Series:
    values = frame["value"].astype("float64")
    return values * 100.0 if len(values) and values.between(0.0, 1.0).all() else values


def _config(folder: Path) -> dict[str, Any]:
    """Lightning's ``hparams.yaml`` beside the events, when there is one (seed, model, epochs)."""
    import yaml

    text = read_text(folder / "hparams.yaml")
    try:
        hparams = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        hparams = None
    config = common.shared_config(hparams if isinstance(hparams, dict) else {}, "tensorboard")
    config["method"] = "unknown"
    return config


def read(found: Any) -> tuple[dict[str, Any] | None, str | None]:
    folder = found.path
    scalars, note = read_scalars(folder)
    config = _config(folder)
    top1, top5 = _find(scalars, TOP1, _ACCURACY), _find(scalars, TOP5)
    density = scalars.get(tags.DENSITY)
    if density is not None:
        config["method"] = "sparse"
    steps = [int(f["step"].max()) for f in scalars.values() if len(f)]
    last_step = max(steps) if steps else None
    row = common.row(found, "tensorboard", config, epoch=None, step=last_step, total_steps=None,
                     top1=float(_percent(scalars[top1]).iloc[-1]) if top1 else None,
                     top5=float(_percent(scalars[top5]).iloc[-1]) if top5 else None,
                     density=float(density["value"].iloc[-1]) if density is not None and len(density) else None,
                     wall_s=None, **common.status(None, None, watched(folder)))
    row["method_label"] = "TensorBoard log"
    if top1 is None and scalars:
        note = note or f"no accuracy tag among {len(scalars)} scalar tags (top-1 unknown)"
    return row, f"{found.name}: {note}" if note else None


def curves(folder: Path) -> Curves:
    """Every scalar tag against step; accuracy as the per-evaluation curve; our sparsity tags as snapshots."""
    scalars, note = read_scalars(folder)
    if not scalars:
        return Curves(note=f"no curve: {note}", source="tensorboard")
    steps = None
    for tag, frame in sorted(scalars.items()):
        column = frame.drop_duplicates("step", keep="last").rename(columns={"value": tag}).set_index("step")
        steps = column if steps is None else steps.join(column, how="outer")
    steps = steps.reset_index()
    for ours, names in (("loss", LOSS), ("lr", LR)):
        tag = _find(scalars, names)
        steps[ours] = steps[tag] if tag else float("nan")
    steps["epoch"] = float("nan")
    epochs = pd.DataFrame(columns=EPOCH_COLUMNS)
    top1 = _find(scalars, TOP1, _ACCURACY)
    if top1:
        frame = scalars[top1]
        epochs = pd.DataFrame({"step": frame["step"].astype("float64"), "val_top1": _percent(frame)})
        for c in EPOCH_COLUMNS:
            if c not in epochs:
                epochs[c] = float("nan")
        epochs = epochs[EPOCH_COLUMNS]
    snaps = pd.DataFrame(columns=SNAPSHOT_COLUMNS)
    if tags.DENSITY in scalars:
        d = scalars[tags.DENSITY]
        fired = scalars.get(tags.FIRED)
        snaps = pd.DataFrame({"step": d["step"].astype("float64"), "epoch": float("nan"), "event": "snapshot",
                              "density": d["value"]})
        if fired is not None:
            snaps = snaps.merge(fired.rename(columns={"value": "fired"}).astype({"step": "float64"}), on="step",
                                how="left")
        else:
            snaps["fired"] = float("nan")
    order = STEP_COLUMNS + [c for c in steps.columns if c not in STEP_COLUMNS]
    return Curves(epochs=epochs, steps=steps[order].astype({"step": "float64"}), snapshots=snaps[SNAPSHOT_COLUMNS],
                  source="tensorboard", note=note or "")
