"""Which runs are the same experiment: a run's training config, less its seed and the fields that do
not change what it computes, is its *configuration*; runs that share one differ only by seed and are
grouped (mean ± std over seeds, differences paired by seed).

Fields that cannot change the outcome are left out of the key: where a run was written and how it was
driven (``out``, ``resume``, ``device``, logging, checkpointing, workers, ``max_steps`` is kept: a
shorter run is another experiment), and every flag the run's method and setup do not use, as the CLI's
unused-flag table says (``training/flags.py``: the update schedule of a method that never updates, the
selector's settings of a run without a selector, the S²ViTE densities of other methods, ...). A field
that an older run's config lacks takes the value it ran with (``config.LEGACY_DEFAULTS``), so a flag added
later does not split a sweep.
"""

from __future__ import annotations

import json
import re
from types import SimpleNamespace
from typing import Any

from ..training.config import with_legacy_defaults
from ..training.flags import takes_effect
from .facts import method_label

NOT_OUTCOME = frozenset({"out", "resume", "device", "log_every", "checkpoint_every", "num_workers", "seed", "log_to"})
_SEED_SUFFIX = re.compile(r"[_-]s(?:eed)?\d+$")


def outcome_fields(config: dict[str, Any]) -> dict[str, Any]:
    """The fields of a TrainConfig dict that decide what the run computes, seed excluded."""
    full = with_legacy_defaults(config)
    view = SimpleNamespace(**{**full, "resume": None})  # a resumed run computes what it would have uninterrupted
    # a field this version does not know has no row in the flag table: it is kept, to be safe
    return {k: full[k] for k in sorted(full) if k not in NOT_OUTCOME and takes_effect(k, view)}


def group_key(config: dict[str, Any]) -> str:
    return json.dumps(outcome_fields(config), sort_keys=True, default=str)


def config_columns(config: dict[str, Any]) -> dict[str, Any]:
    """The table's columns that come from the training config (what was asked for)."""
    method = str(config.get("method") or "dense")
    keep = config.get("keep_ratio")
    out: dict[str, Any] = {
        "method": method, "method_label": method_label(method, config), "seed": config.get("seed"),
        "target_density": 1.0 if method == "dense" else (None if method == "s2vite" else config.get("density")),
        "target_heads": config.get("atten_density") if method == "s2vite" else None,
        "target_neurons": config.get("other_density") if method == "s2vite" else None,
        "keep": keep, "token_number": config.get("token_number"),
        "model": str(config.get("model") or ""), "data": str(config.get("data") or ""),
        "epochs_total": config.get("epochs"), "group": group_key(config),
    }
    return out


def stem(name: str) -> str:
    """A run's folder name without its seed suffix (``exp/svite_s3`` -> ``svite``)."""
    base = name.rstrip("/").rsplit("/", 1)[-1]
    for suffix in (".safetensors", ".pth", ".pt", ".bin"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    return _SEED_SUFFIX.sub("", base)
