"""Which foreign layout a folder has, from its file names and at most one capped line of one file: cheap
enough for the walk to ask of every folder it meets, and strict enough that a folder that merely holds a
``log.txt`` or a ``summary.csv`` of some other kind is still searched below (not taken for a run)."""

from __future__ import annotations

import json
from pathlib import Path

from ..files import first_line

DEIT_LOG, DEIT_CHECKPOINT = "log.txt", "checkpoint.pth"
TIMM_SUMMARY, TIMM_ARGS = "summary.csv", "args.yaml"
EVENTS_PREFIX = "events.out.tfevents."


def is_deit(folder: Path, names: set[str]) -> bool:
    """A DeiT/SViTE output folder: its ``checkpoint.pth``, or a ``log.txt`` whose first line is one epoch's
    JSON (``epoch`` and ``train_*``/``test_*`` fields)."""
    if DEIT_CHECKPOINT in names:
        return True
    if DEIT_LOG not in names:
        return False
    try:
        first = json.loads(first_line(folder / DEIT_LOG))
    except (ValueError, RecursionError):
        return False
    return isinstance(first, dict) and "epoch" in first and any(
        isinstance(k, str) and k.startswith(("train_", "test_")) for k in first)


def is_timm(folder: Path, names: set[str]) -> bool:
    """A timm ``train.py`` output folder: a ``summary.csv`` whose header has an ``epoch`` column."""
    if TIMM_SUMMARY not in names:
        return False
    header = first_line(folder / TIMM_SUMMARY).decode("utf-8", errors="replace")
    return "epoch" in [c.strip().lower() for c in header.split(",")]


def is_events(folder: Path, names: set[str]) -> bool:
    """A TensorBoard log folder: it holds event files itself (``events.out.tfevents.*``)."""
    return any(n.startswith(EVENTS_PREFIX) for n in names)


DETECTORS = (("deit", is_deit), ("timm", is_timm), ("tensorboard", is_events))


def foreign_kind(folder: Path, names: set[str]) -> str | None:
    """``deit``, ``timm``, ``tensorboard`` or None (the first that fits, in that order)."""
    for kind, fits in DETECTORS:
        if fits(folder, names):
            return kind
    return None
