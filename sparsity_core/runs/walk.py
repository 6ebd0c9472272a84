"""Finding runs below a folder, at any depth, without tripping over what a shared disk holds.

A run is one of:

* a folder with ``checkpoint.safetensors`` (a run with at least one checkpoint: finished, or still
  going, or stopped);
* a folder with ``config.json`` and ``metrics.jsonl`` but no checkpoint yet (a run in its first epoch,
  or one that failed before its first checkpoint);
* a folder with ``svite-run.json`` (a run record without weights, written by :func:`records.export`);
* a bare checkpoint file (``.safetensors``, ``.pth``, ``.pt``, ``.bin``) outside a run folder;
* a run made elsewhere: a DeiT/SViTE, timm ``train.py`` or TensorBoard folder (``readers.detect``).

The walk never descends into a run folder (its resume sidecars and logs are not runs), skips hidden
folders, follows symbolic links to folders only once each (a link back up the tree is a loop, noted
and skipped), and turns a folder it may not read into a one-line note instead of an exception.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..training.rundir import CHECKPOINT_NAME, CONFIG_NAME, METRICS_NAME
from .readers.detect import foreign_kind

RECORD_NAME = "svite-run.json"
CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
#: Folders deeper than this below the root are not searched (noted once).
MAX_DEPTH = 12
#: Entries looked at in one walk before it stops (noted): a runs folder pointed at ``/`` ends here.
MAX_ENTRIES = 200_000


@dataclass(frozen=True)
class Found:
    """One run: ``path`` is its folder (``kind`` "folder" or "record") or its file ("file");
    ``name`` is the path relative to the root the walk started from."""

    path: Path
    kind: str
    name: str


def _is_checkpoint_file(name: str) -> bool:
    low = name.lower()
    return low.endswith(CHECKPOINT_SUFFIXES) and not low.startswith((".", "resume-"))


def _run_kind(names: set[str]) -> str | None:
    if CHECKPOINT_NAME in names or (CONFIG_NAME in names and METRICS_NAME in names):
        return "folder"
    if RECORD_NAME in names:
        return "record"
    return None


def find_runs(root: str | Path) -> tuple[list[Found], list[str]]:
    """Every run below ``root`` (sorted by name) and one note per thing that was skipped."""
    root = Path(root)
    found: list[Found] = []
    notes: list[str] = []
    seen: set[tuple[int, int]] = set()
    budget = [MAX_ENTRIES]
    _walk(root, root, 0, found, notes, seen, budget)
    found.sort(key=lambda f: f.name)
    return found, notes


def _walk(folder: Path, root: Path, depth: int, found: list[Found], notes: list[str], seen: set[tuple[int, int]],
          budget: list[int]) -> None:
    rel = folder.relative_to(root).as_posix() if folder != root else "."
    try:
        st = folder.stat()
        key = (st.st_dev, st.st_ino)
        if key in seen:
            notes.append(f"{rel}: skipped, a symbolic link back to a folder already searched (a loop)")
            return
        seen.add(key)
        with os.scandir(folder) as it:
            entries = list(it)
    except OSError as err:
        notes.append(f"{rel}: skipped, cannot be read ({err.strerror or type(err).__name__})")
        return
    budget[0] -= len(entries)
    if budget[0] < 0:
        if budget[0] + len(entries) >= 0:
            notes.append(f"{rel}: the search stopped after {MAX_ENTRIES} entries; point it at a smaller folder")
        return
    names = {e.name for e in entries}
    kind = _run_kind(names)
    if kind is None:  # a run made elsewhere (readers/): a DeiT/SViTE, timm or TensorBoard folder
        kind = foreign_kind(folder, names)
    if kind is not None:  # the root itself may be one run folder (``svite runs runs/svite``)
        found.append(Found(folder, kind, rel if folder != root else folder.name))
        return
    for entry in sorted(entries, key=lambda e: e.name):
        if entry.name.startswith((".", "__")):
            continue
        path = Path(entry.path)
        try:
            is_dir = entry.is_dir()  # follows links: a link to a folder is searched (once)
            is_file = not is_dir and entry.is_file()
        except OSError:
            notes.append(f"{path.relative_to(root).as_posix()}: skipped, cannot be read")
            continue
        if is_dir:
            if depth + 1 > MAX_DEPTH:
                notes.append(f"{path.relative_to(root).as_posix()}: not searched, deeper than {MAX_DEPTH} levels")
                continue
            _walk(path, root, depth + 1, found, notes, seen, budget)
        elif is_file and _is_checkpoint_file(entry.name):
            found.append(Found(path, "file", path.relative_to(root).as_posix()))

