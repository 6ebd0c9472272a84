"""DeiT and SViTE output folders (``main.py --output_dir DIR``): ``log.txt`` holds one JSON line per epoch
(``epoch``, ``train_lr``, ``train_loss``, ``test_loss``, ``test_acc1``, ``test_acc5``, ``n_parameters``, in
any order, with any other fields), ``checkpoint.pth`` the official layout (``model``, ``args``, ``epoch`` and,
for SViTE, ``mask`` / ``atten_mask`` / ``other_mask``; docs/reference.md §4).

Top-1 is the last epoch's ``test_acc1``; the method, densities, seed and epochs come from the checkpoint's
``args``, the density from its masks (read through a memory map: the optimizer state is never read). Either
file may be missing or damaged: the run keeps what the other says, with a one-line note.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ...checkpoint import validate
from ...checkpoint.pickled import torch_load_safe
from ...errors import SviteError, one_line
from ..curves import EPOCH_COLUMNS, Curves
from ..files import read_metrics
from . import common
from .detect import DEIT_CHECKPOINT, DEIT_LOG

#: log.txt field -> our curve column
LOG_COLUMNS = {"test_acc1": "val_top1", "test_acc5": "val_top5", "test_loss": "val_loss", "train_loss": "train_loss",
               "train_lr": "lr"}
#: SViTE's --pruning_type -> our method
PRUNING_TYPES = {"unstructure": "svite", "structure_new": "s2vite"}
MASK_KEYS = ("mask", "atten_mask", "other_mask")


def watched(folder: Path) -> list[Path]:
    return [folder / DEIT_LOG, folder / DEIT_CHECKPOINT]


def _epochs(folder: Path) -> list[dict[str, Any]]:
    """log.txt's epoch lines (torn or foreign lines skipped), in epoch order, the last copy of a repeated one."""
    rows = {}
    for rec in read_metrics(folder / DEIT_LOG):
        epoch = common.number(rec.get("epoch"))
        if epoch is not None:
            rows[epoch] = rec
    return [rows[e] for e in sorted(rows)]


def _checkpoint_facts(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(args, facts) of ``checkpoint.pth``: its args as a dict; the epoch it was saved at, its parameters and
    the density of its masks. Raises SviteError (one line) for a file that cannot be read safely."""
    validate.check_file(path)
    obj = torch_load_safe(path, mmap=True)
    validate.check_tensor_budget(path, obj, path.stat().st_size)
    if not isinstance(obj, Mapping) or not isinstance(obj.get("model"), Mapping):
        raise SviteError("not a DeiT/SViTE checkpoint (no 'model' state dict)", path=path)
    args = obj.get("args")
    args = vars(args) if isinstance(args, argparse.Namespace) else dict(args) if isinstance(args, Mapping) else {}
    model = {k: v for k, v in obj["model"].items() if isinstance(v, torch.Tensor)}
    facts: dict[str, Any] = {"params": sum(v.numel() for v in model.values()),
                             "saved_epoch": common.number(obj.get("epoch"))}
    kept = total = 0
    for key in MASK_KEYS:
        group = obj.get(key)
        for mask in (group.values() if isinstance(group, Mapping) else ()):
            if isinstance(mask, torch.Tensor):
                kept, total = kept + int(torch.count_nonzero(mask)), total + mask.numel()
    facts["density"] = kept / total if total else None
    return args, facts


def _config(args: dict[str, Any], has_masks: bool) -> dict[str, Any]:
    config = common.shared_config(args, "deit")
    if isinstance(config.get("model"), str):
        config["model"] = config["model"].replace("_gumbel", "")
    sparse = args.get("sparse", has_masks or args.get("pruning_type") in PRUNING_TYPES)
    config["method"] = PRUNING_TYPES.get(str(args.get("pruning_type")), "svite") if sparse else "dense"
    if not args.get("token_selection"):
        config.pop("token_number", None)
    data = args.get("data_set") or (Path(str(args["data_path"])).name if args.get("data_path") else None)
    if isinstance(data, str):
        config["data"] = data
    return config


def read(found: Any) -> tuple[dict[str, Any] | None, str | None]:
    folder = found.path
    notes: list[str] = []
    epochs = _epochs(folder)
    if not (folder / DEIT_LOG).is_file():
        notes.append("no log.txt (no curve, no top-1)")
    elif not epochs:
        notes.append("log.txt holds no epoch lines")
    args: dict[str, Any] = {}
    facts: dict[str, Any] = {}
    ckpt = folder / DEIT_CHECKPOINT
    if ckpt.is_file():
        try:
            args, facts = _checkpoint_facts(ckpt)
        except SviteError as err:
            notes.append(f"checkpoint skipped, {one_line(err).replace(str(ckpt), ckpt.name)}")
    if not epochs and not facts:
        return None, f"{found.name}: skipped, " + "; ".join(notes)
    config = _config(args, facts.get("density") is not None)
    if not args:
        config["method"] = "unknown"
    last = epochs[-1] if epochs else {}
    done = (common.number(last.get("epoch")) + 1) if epochs else None
    if done is None and facts.get("saved_epoch") is not None:
        done = facts["saved_epoch"] + 1
    total = common.number(args.get("epochs"))
    density = facts.get("density")
    row = common.row(found, "deit", config, epoch=done, step=None, total_steps=None,
                     top1=common.number(last.get("test_acc1")), top5=common.number(last.get("test_acc5")),
                     density=density if density is not None else (1.0 if config["method"] == "dense" else None),
                     params=facts.get("params") or common.number(last.get("n_parameters")),
                     checkpoint=str(ckpt) if facts else "", wall_s=None,
                     **common.status(done, total, watched(folder)))
    if config["method"] == "unknown":
        row["method_label"] = "DeiT log (no checkpoint args)"
    return row, (f"{found.name}: " + "; ".join(notes)) if notes else None


def curves(folder: Path) -> Curves:
    """log.txt as the per-epoch curve (``step`` is the number of epochs done: DeiT logs no steps)."""
    rows = []
    for rec in _epochs(folder):
        done = common.number(rec.get("epoch")) + 1
        row = {"step": done, "epoch": done}
        row.update({ours: common.number(rec.get(theirs)) for theirs, ours in LOG_COLUMNS.items()})
        row.update({k: common.number(v) for k, v in rec.items() if k not in LOG_COLUMNS and k != "epoch"})
        rows.append(row)
    if not rows:
        return Curves(note="no curve: log.txt is missing or holds no epoch lines", source="deit")
    frame = pd.DataFrame(rows)
    for col in EPOCH_COLUMNS:
        if col not in frame:
            frame[col] = float("nan")
    return Curves(epochs=frame[EPOCH_COLUMNS + [c for c in frame if c not in EPOCH_COLUMNS]].astype(
        {c: "float64" for c in EPOCH_COLUMNS}), source="log.txt")
