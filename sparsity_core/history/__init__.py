"""The mask history: one snapshot of the masks per topology update and epoch, stored as keyframes and
deltas and decoded lazily, layer by layer.

* ``lazy`` -- :class:`MaskHistory`, the history as a sequence of snapshots decoded on demand;
* ``entry`` -- one group of one snapshot as stored (a keyframe or a delta) and the encoder that makes it;
* ``codec`` -- the exact coding of one layer's entry (Rice-coded flipped positions, zlib-XOR for bytes);
* ``fileformat`` -- the history's tensors and index inside a checkpoint file, checked when read;
* ``probe`` -- the head probe: each head's class-token attention on fixed demo images at every snapshot.
"""

from __future__ import annotations

from .fileformat import history_from_file, history_summary, history_to_file
from .lazy import MaskHistory, SnapshotView, as_history
from .probe import HeadProbe

__all__ = ["HeadProbe", "MaskHistory", "SnapshotView", "as_history", "history_from_file", "history_summary",
           "history_to_file"]
