"""The sparsity scalars of a history's latest snapshot, for the tracker writers: overall and per-layer
density, the ever-active (fired) share, the Jaccard index with the previous topology and the weights
moved since it, read from the counts every entry keeps (nothing decoded).

With ``A`` the previous masks and ``B`` the current ones, ``grown = |B \\ A|`` and ``pruned = flips - grown``,
so ``|A ∩ B| = |A| - pruned`` and ``|A ∪ B| = |A| + grown``: the Jaccard index is exact from the counts.
"""

from __future__ import annotations

from ..trackers import tags
from .lazy import MaskHistory


def latest_scalars(history: MaskHistory) -> dict[str, float]:
    """Tagged scalars (``trackers.tags``) of the last snapshot; {} when it holds no masks."""
    if not len(history):
        return {}
    out: dict[str, float] = {}
    i = len(history) - 1
    if history.has(i, "masks"):
        stats = history.stats("masks")
        numel = stats.numel
        total = max(int(numel.sum()), 1)
        ones = stats.ones[-1]
        out[tags.DENSITY] = float(ones.sum()) / total
        out[tags.FIRED] = float(stats.fired[-1].sum()) / total
        for j, layer in enumerate(stats.layers):
            out[tags.LAYER_DENSITY + layer.name] = float(ones[j]) / max(layer.numel, 1)
        if len(stats.index) >= 2:
            before = int(stats.ones[-2].sum())
            grown = int(stats.grown[-1].sum())
            pruned = int(stats.flips[-1].sum()) - grown
            union = before + grown
            out[tags.JACCARD_PREV] = (before - pruned) / union if union else 1.0
            out[tags.MOVED] = float(grown)
            out[tags.MOVED_SHARE] = grown / max(before, 1)
    if history.has(i, "units"):
        stats = history.stats("units")
        for tag, suffix in ((tags.HEADS_ALIVE, ".attn.heads"), (tags.NEURONS_ALIVE, ".mlp.neurons")):
            cols = [j for j, layer in enumerate(stats.layers) if layer.name.endswith(suffix)]
            if cols:
                out[tag] = float(stats.ones[-1, cols].sum()) / max(int(stats.numel[cols].sum()), 1)
    return out
