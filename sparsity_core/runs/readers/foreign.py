"""The index's and the curves' one door to the readers: a foreign run's row, the files to watch, its
curves (and, for every other run, the curves of :func:`..curves.run_curves`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import curves as ours
from . import deit, events, timm_folder

#: reader by the ``source`` its rows carry (the walk's ``kind``)
READERS = {"deit": deit, "timm": timm_folder, "tensorboard": events}
KINDS = frozenset(READERS)


def read(found: Any) -> tuple[dict[str, Any] | None, str | None]:
    """(row, note) of a foreign run folder, as ``index.read_run`` gives for ours."""
    return READERS[found.kind].read(found)


def watched(found: Any) -> list[Path]:
    """The files whose (mtime, size) decide whether the run is read again."""
    return READERS[found.kind].watched(found.path)


def run_curves(path: str | Path, source: str) -> ours.Curves:
    """The curves of an indexed run, whoever made it (``path`` and ``source`` as in the index's table)."""
    if source in READERS:
        return READERS[source].curves(Path(path))
    return ours.run_curves(path, source)
