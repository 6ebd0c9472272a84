"""What one checkpoint header says about its run: method, densities, cost, exploration, updates and
curves, all without reading a weight.

Densities and the ever-active ("fired") rate come from the counts the mask history's index keeps for
every snapshot (the last snapshot is the final topology). FLOPs are those of
:func:`analysis.flops_summary` (torch's FlopCounterMode, a masked Linear scaled by its weight's
density, attention by its block's alive heads, dropped tokens not counted), computed on the model's
``meta``-device skeleton (shapes only, once per architecture) instead of the loaded model.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from typing import Any

import pandas as pd

from .. import analysis
from ..checkpoint.header import Header, curve_records
from ..checkpoint.limits import skeleton
from ..models.builder import ModelConfig
from ..models.evaluate import module_flops, scale_flops

METHOD_NAMES = {"svite": "SViTE", "s2vite": "S²ViTE", "static": "static", "dense": "dense", "oneshot": "one-shot"}
EVENT_COLUMNS = ["step", "epoch", "rate", "moved", "moved_share", "heads_moved", "neurons_moved"]
_FLOPS: dict[str, dict[str, int]] = {}  # architecture (model config JSON) -> each module's own FLOPs
_FLOPS_LOCK = threading.Lock()


def method_label(method: str, config: dict[str, Any]) -> str:
    """How tables and legends name a method: the paper's names, SViTE with a token selector being SViTE+."""
    base = METHOD_NAMES.get(method, method or "unknown")
    if config.get("keep_ratio") is None and config.get("token_number") is None:
        return base
    return f"{base}+" if method == "svite" else f"{base} + selector"


def _own_flops(config: ModelConfig) -> dict[str, int]:
    key = json.dumps(config.to_dict(), sort_keys=True, default=str)
    with _FLOPS_LOCK:
        cached = _FLOPS.get(key)
    if cached is None:
        cached = module_flops(skeleton(config))
        with _FLOPS_LOCK:
            if len(_FLOPS) > 256:
                _FLOPS.clear()
            _FLOPS[key] = cached
    return cached


def _fractions(header: Header) -> dict[str, float] | None:
    """Kept fraction of every masked tensor and alive fraction of every block's heads at the final
    snapshot; None when the header cannot tell (a format-1 history without per-layer densities)."""
    meta = header.meta or {}
    if meta.get("method", "dense") == "dense":
        return {}
    h = header.history
    if h is None:
        dens = (meta.get("settings") or {}).get("layer_densities")
        if isinstance(dens, dict) and all(isinstance(v, (int, float)) for v in dens.values()):
            return {str(k): float(v) for k, v in dens.items()}
        return None
    out: dict[str, float] = {}
    for group in ("masks", "units"):
        if group not in h.layers:
            continue
        stats = h.stats(group)
        if not len(stats.index):
            continue
        for j, layer in enumerate(stats.layers):
            out[layer.name] = float(stats.ones[-1, j]) / max(layer.numel, 1)
    return out


def cost(header: Header) -> dict[str, Any]:
    """FLOPs per image (this checkpoint and its dense twin), parameters, and parameters kept by the
    masks (every parameter not masked out; ``svite eval`` counts exact nonzeros instead)."""
    out: dict[str, Any] = {"params": header.params}
    meta = header.meta
    if meta is None:
        return out
    fractions = _fractions(header)
    h = header.history
    if h is not None and "masks" in h.layers and len(h.stats("masks").index):
        stats = h.stats("masks")
        out["kept_params"] = header.params - int((stats.numel - stats.ones[-1]).sum())
    elif meta.get("method") == "dense":
        out["kept_params"] = header.params
    if fractions is None or meta.get("model_kind", "vit") != "vit":  # FLOPs: of a model we can build only
        return out
    config = ModelConfig.from_dict(dict(meta["model_config"]))
    dense_twin = dataclasses.replace(config, selector=None, block_heads=None, block_hidden=None)
    sparse = scale_flops(_own_flops(config), fractions)["sparse"]
    dense = scale_flops(_own_flops(dense_twin), {})["dense"]
    out.update(flops=sparse, flops_dense=dense, flops_pct=100.0 * sparse / dense if dense else None)
    return out


def exploration(header: Header) -> dict[str, Any]:
    """Final weight density, fired (ever-active) rate, alive fraction of heads and neurons, number of
    topology updates."""
    meta = header.meta or {}
    infos = header.history.infos if header.history is not None else [e["info"] for e in header.legacy_history]
    out: dict[str, Any] = {"updates": sum(1 for i in infos if isinstance(i, dict) and i.get("event") == "update")}
    h = header.history
    if h is not None:
        fired = analysis.fired_rate(h)
        if len(fired):
            out.update(density=float(fired["density"].iloc[-1]), fired=float(fired["fired"].iloc[-1]))
        if "units" in h.layers and len(h.stats("units").index):
            stats = h.stats("units")
            for kind, suffix in (("heads", ".attn.heads"), ("neurons", ".mlp.neurons")):
                cols = [j for j, la in enumerate(stats.layers) if la.name.endswith(suffix)]
                if cols:
                    out[kind] = float(stats.ones[-1, cols].sum() / max(stats.numel[cols].sum(), 1))
    elif isinstance(infos, list) and infos and isinstance(infos[-1], dict):
        last = infos[-1]
        for key, src in (("density", "overall_density"), ("fired", "fired_density")):
            if isinstance(last.get(src), (int, float)):
                out[key] = float(last[src])
    if "density" not in out and meta.get("method") == "dense":
        out["density"] = 1.0
    return out


def snapshots(header: Header) -> pd.DataFrame:
    """One row per snapshot that holds weight masks: step, epoch, event, density, fired."""
    if header.history is not None:
        return analysis.fired_rate(header.history)[["step", "epoch", "event", "density", "fired"]]
    rows = [{"step": e["step"], "epoch": e["epoch"], "event": e["info"].get("event", ""),
             "density": e["info"].get("overall_density"), "fired": e["info"].get("fired_density")}
            for e in header.legacy_history if isinstance(e.get("info"), dict)]
    return pd.DataFrame(rows, columns=["step", "epoch", "event", "density", "fired"])


def events(header: Header) -> pd.DataFrame:
    """One row per topology update: step, epoch, prune rate, weights moved (grown, which equals pruned
    at a fixed budget) and their share of the weights kept, heads and neurons moved (S²ViTE)."""
    columns = EVENT_COLUMNS
    rows = []
    h = header.history
    churn = analysis.mask_churn(h) if h is not None else pd.DataFrame()
    by_step = {int(r.step): r for r in churn.itertuples() if r.event == "update"} if len(churn) else {}
    infos = [(h.steps[i], h.epochs[i], h.infos[i]) for i in range(len(h))] if h is not None else \
        [(e["step"], e["epoch"], e["info"]) for e in header.legacy_history]
    for step, epoch, info in infos:
        if not isinstance(info, dict) or info.get("event") != "update":
            continue
        row: dict[str, Any] = {"step": step, "epoch": epoch, "rate": _num(info.get("rate"))}
        c = by_step.get(int(step))
        if c is not None:
            row.update(moved=int(c.grown), moved_share=c.grown / max(int(c.kept) + int(c.pruned), 1))
        elif isinstance(info.get("pruned"), dict):
            row["moved"] = int(sum(v for v in info["pruned"].values() if isinstance(v, (int, float))))
        for kind in ("heads", "neurons"):
            if isinstance(info.get(f"{kind}_grown"), (int, float)):
                row[f"{kind}_moved"] = int(info[f"{kind}_grown"])
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def header_curve(header: Header) -> pd.DataFrame:
    """The per-epoch metrics the checkpoint carries (checkpoints written before this field: empty)."""
    return pd.DataFrame(curve_records(header.meta))


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

