"""Which runs are the same experiment: a run's training config, less its seed and the fields that do
not change what it computes, is its *configuration*; runs that share one differ only by seed and are
grouped (mean ± std over seeds, differences paired by seed).

Fields that cannot change the outcome are left out of the key: where a run was written and how it was
driven (``out``, ``resume``, ``device``, logging, checkpointing, workers, ``max_steps`` is kept: a
shorter run is another experiment), the update schedule of a method that never updates (dense,
static), the selector's settings of a run without a selector, the S²ViTE densities of other methods.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .facts import method_label

NOT_OUTCOME = frozenset({"out", "resume", "device", "log_every", "checkpoint_every", "num_workers", "seed"})
UPDATE_ONLY = frozenset({"update_frequency", "update_start", "death_rate", "decay_schedule", "t_end", "growth",
                         "death", "grown_moments"})
UNSTRUCTURED_ONLY = frozenset({"density", "sparse_init", "mask_path", "include", "exclude"})
S2VITE_ONLY = frozenset({"atten_density", "other_density"})
_SEED_SUFFIX = re.compile(r"[_-]s(?:eed)?\d+$")


def outcome_fields(config: dict[str, Any]) -> dict[str, Any]:
    """The fields of a TrainConfig dict that decide what the run computes, seed excluded."""
    method = config.get("method", "dense")
    drop = set(NOT_OUTCOME)
    if method in ("dense", "static", "oneshot"):
        drop |= UPDATE_ONLY
    if method == "dense":
        drop |= UNSTRUCTURED_ONLY
    if method != "s2vite":
        drop |= S2VITE_ONLY
    else:
        drop |= UNSTRUCTURED_ONLY
    if method != "oneshot":
        drop.add("oneshot_at")
    if config.get("keep_ratio") is None and config.get("token_number") is None:
        drop |= {k for k in config if k.startswith("selector_")}
    return {k: v for k, v in sorted(config.items()) if k not in drop}


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
