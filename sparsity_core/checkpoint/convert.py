"""``svite convert OLD NEW``: rewrite one of our checkpoints in the current format, losing nothing.

Format 1 stored every history snapshot bit-packed in full (3.5 MB for the SViTE demo); format 2
stores keyframes and deltas (``history.fileformat``). Loading a format-1 file already reads its history as
keyframes, but saving that view as it is would keep every snapshot whole, so the snapshots are
re-encoded one by one through the same :class:`MaskHistory` the trainer appends to. Weights, final,
unit and fired masks and the metadata (training config, metrics, the versions that trained it) are
written back unchanged; only ``format_version`` and the history's layout change. The output is
loaded again and compared with the input before the command reports success, so a conversion that
lost a bit fails instead of leaving a quietly different file.

Untrusted input rules hold: the file is read by the validating loader, ``NEW`` must not exist (the
command never overwrites anything, its input least of all) and the write is atomic.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..errors import SviteError
from ..history.lazy import MaskHistory
from ..masks.maskset import Snapshot
from .load import load_checkpoint
from .loaded import FORMAT, FORMAT_VERSION, LoadedCheckpoint
from .save import save_checkpoint


def reencoded_history(loaded: LoadedCheckpoint) -> MaskHistory:
    """The checkpoint's history encoded afresh as keyframes and deltas (every group it holds)."""
    return MaskHistory.from_snapshots(
        [Snapshot(s.step, s.epoch, s.masks, s.units, s.state, s.info, getattr(s, "probe", {}))
         for s in loaded.history], source=str(loaded.path))


def _check_out(path: Path, out: Path) -> None:
    if out.exists() or out.is_symlink():
        same = out.exists() and path.exists() and os.path.samefile(path, out)
        raise SviteError(f"{'is the input' if same else 'already exists'}; choose another NEW "
                         "(convert never overwrites a file)", path=out)
    if not out.parent.is_dir():
        raise SviteError(f"its folder {out.parent} does not exist", path=out)


def _same_history(a: MaskHistory, b: MaskHistory) -> bool:
    if len(a) != len(b) or a.steps != b.steps or a.epochs != b.epochs or a.infos != b.infos:
        return False
    for group in ("masks", "units", "state", "probe"):
        for i in range(len(a)):
            if a.has(i, group) != b.has(i, group):
                return False
            left, right = a.group_at(i, group), b.group_at(i, group)
            if left.keys() != right.keys() or not all(torch.equal(left[k], right[k]) for k in left):
                return False
    return True


def _same_sets(a: Any, b: Any) -> bool:
    return (a is None) == (b is None) and (a is None or a.equal(b))


def convert_file(path: str | Path, out: str | Path) -> dict[str, Any]:
    """Rewrite our checkpoint ``path`` as a current-format file ``out``; returns what the CLI prints."""
    path, out = Path(path), Path(out)
    _check_out(path, out)
    loaded = load_checkpoint(path)
    if loaded.format != FORMAT:
        raise SviteError(f"a {loaded.format} file, not an SViTE Explorer checkpoint; convert rewrites our "
                         "own older files (every command reads this one as it is)", path=path)
    before = int(loaded.meta.get("format_version", 0))
    history = reencoded_history(loaded)
    meta = {k: v for k, v in loaded.meta.items() if k not in ("format", "format_version")}
    save_checkpoint(out, loaded.model, loaded.model_config, masks=loaded.masks, units=loaded.units,
                    fired=loaded.fired, history=history, meta=meta)
    again = load_checkpoint(out)
    weights_a, weights_b = loaded.model.state_dict(), again.model.state_dict()
    same = (weights_a.keys() == weights_b.keys() and all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a)
            and all(_same_sets(getattr(loaded, g), getattr(again, g)) for g in ("masks", "units", "fired"))
            and {k: v for k, v in again.meta.items() if k != "format_version"} == {**meta, "format": FORMAT}
            and _same_history(loaded.history, again.history))
    if not same:
        out.unlink(missing_ok=True)
        raise SviteError("the rewritten file did not read back identically; nothing was written", path=path)
    return {"path": str(path), "out": str(out), "format_before": before, "format_after": FORMAT_VERSION,
            "snapshots": len(history), "bytes_before": path.stat().st_size, "bytes_after": out.stat().st_size}
