"""What ``svite inspect``, ``svite eval`` and ``svite compact`` report: plain dicts (the ``--json``
contract of docs/cli.md)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..checkpoint import LoadedCheckpoint, load_checkpoint, save_checkpoint
from ..checkpoint.limits import check_eval_flags, model_dims
from ..data import (
    ClassMatch,
    DataBundle,
    MatchedDataset,
    build_data,
    checkpoint_classes,
    checkpoint_preprocess,
    make_loader,
    match_classes,
)
from ..errors import SviteError
from ..history.fileformat import history_summary
from ..masks.maskset import MaskSet, count_true, default_sparsifiable, head_unit_name, neuron_unit_name
from ..models.builder import describe_model, num_patches
from ..models.compact import compact, max_logit_diff
from ..models.evaluate import count_flops, count_parameters, evaluate_accuracy, measure_throughput
from ..models.units import unit_weight_masks


def layer_rows(loaded: LoadedCheckpoint) -> list[dict[str, Any]]:
    """One row per sparsified weight: the masks when there are any, else the reference's rule
    (for a dense model: the weights SViTE would sparsify, at their actual nonzero density)."""
    params = dict(loaded.model.named_parameters())
    if loaded.masks is not None and len(loaded.masks):
        masks = loaded.masks
    else:
        masks = MaskSet.from_weights(loaded.model, default_sparsifiable(loaded.model))
    rows = []
    for name, mask in masks.items():
        if mask.shape != params[name].shape:  # unit-level masks are reported separately
            continue
        nnz = count_true(mask)
        rows.append({"name": name, "shape": list(mask.shape), "nonzeros": nnz, "density": nnz / mask.numel()})
    return rows


def overall_density(rows: list[dict[str, Any]]) -> float:
    total = sum(int(torch.tensor(r["shape"]).prod()) for r in rows)
    return sum(r["nonzeros"] for r in rows) / total if total else 1.0


def head_rows(loaded: LoadedCheckpoint) -> list[dict[str, Any]] | None:
    if loaded.units is None:
        return None
    rows = [{"block": i, "alive": [bool(v) for v in loaded.units[head_unit_name(i)].tolist()]}
            for i in range(len(loaded.model.blocks)) if head_unit_name(i) in loaded.units]
    return rows or None


def neuron_rows(loaded: LoadedCheckpoint) -> list[dict[str, Any]] | None:
    if loaded.units is None:
        return None
    rows = []
    for i in range(len(loaded.model.blocks)):
        mask = loaded.units.get(neuron_unit_name(i))
        if mask is not None:
            rows.append({"block": i, "alive": int(mask.sum()), "total": int(mask.numel())})
    return rows or None


def selector_summary(loaded: LoadedCheckpoint) -> dict[str, int] | None:
    sel = loaded.model_config.selector
    if sel is None:
        return None
    n = num_patches(loaded.model)
    return {"keep": sel.resolve_keep(n), "of": n, "block_index": sel.block_index, "mode": sel.mode}


def require_vit(loaded: LoadedCheckpoint, what: str) -> None:
    """Refuse, in one line, to run a model only its own code can build (a Recorder run of another module)."""
    if not loaded.is_vit:
        raise SviteError(f"{what} needs a timm ViT/DeiT; this run recorded a {loaded.model_config.name}, "
                         "whose masks and history svite inspect and the app's mask pages show", path=loaded.path)


def inspect_checkpoint(loaded: LoadedCheckpoint) -> dict[str, Any]:
    """The ``svite inspect --json`` document (fields of docs/cli.md, plus settings and metrics)."""
    rows = layer_rows(loaded)
    counts = count_parameters(loaded.model, loaded.masks)
    meta = loaded.meta
    return {
        "path": str(loaded.path),
        "format": loaded.format,
        "model": loaded.model_config.name,
        "model_config": loaded.model_config.to_dict(),
        "model_kind": loaded.meta.get("model_kind", "vit"),
        # a Recorder run of a module we cannot build (models.stand_in) has weights and masks, no ViT shape
        "architecture": describe_model(loaded.model) if loaded.is_vit else None,
        "method": loaded.method,
        "settings": meta.get("settings", {}),
        "epoch": meta.get("epoch"),
        "step": meta.get("step"),
        "complete": meta.get("complete"),
        "metrics": meta.get("metrics", {}),
        "params": counts["params"],
        "nonzeros": counts["nonzeros"],
        "overall_density": overall_density(rows),
        "layers": rows,
        "heads": head_rows(loaded),
        "neurons": neuron_rows(loaded),
        "token_selector": selector_summary(loaded),
        "history": [{"step": s.step, "epoch": s.epoch, "event": s.info.get("event"),
                     "overall_density": s.info.get("overall_density")} for s in loaded.history],
        "history_summary": history_summary(loaded.history),
        "versions": meta.get("versions", {}),
    }


def evaluation_data(loaded: LoadedCheckpoint, data: str | None = None, val_size: int | None = None
                    ) -> tuple[DataBundle, Dataset, ClassMatch]:
    """The data ``svite eval`` scores a checkpoint on: (bundle, the validation set with targets given as
    the model's outputs, how its classes were matched).

    The classes are matched by name (``data.matching``): a folder's class index is its sorted position,
    which is not the model's. Images get the checkpoint's own preprocessing, and a folder that is not
    the checkpoint's own training data is evaluated whole (its own data: the split training held out).
    """
    source = data or (loaded.meta.get("data") or {}).get("source") or "demo"
    train_cfg = loaded.meta.get("train_config") or {}
    arch = describe_model(loaded.model)
    own = str(source) == "demo" or _same_path(source, (loaded.meta.get("data") or {}).get("source"))
    bundle = build_data(source, img_size=arch["img_size"], patch_size=arch["patch_size"],
                        seed=int(train_cfg.get("seed", 0)), train_size=1 if source == "demo" else None,
                        val_size=val_size, preprocess=checkpoint_preprocess(loaded.meta), whole=not own)
    match = match_classes(bundle.class_names, checkpoint_classes(loaded.meta, arch["num_classes"]),
                          f"--data {source}", str(loaded.path))
    return bundle, (bundle.val if match.identity else MatchedDataset(bundle.val, match)), match


def _same_path(a: Any, b: Any) -> bool:
    if not isinstance(a, str) or not isinstance(b, str) or "demo" in (a, b):
        return False
    try:  # b comes from the checkpoint's metadata: any string at all
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except (OSError, ValueError, RuntimeError):
        return False


def evaluate_checkpoint(loaded: LoadedCheckpoint, data: str | None = None, batch_size: int = 64,
                        val_size: int | None = None, throughput_batch: int = 32) -> dict[str, Any]:
    """The ``svite eval --json`` document: accuracy on the validation split (classes matched by name,
    top-1 and top-5 over all of the model's outputs), size, FLOPs, speed."""
    require_vit(loaded, "svite eval")
    model = loaded.model
    source = data or (loaded.meta.get("data") or {}).get("source") or "demo"
    val_size = val_size or (loaded.meta.get("train_config") or {}).get("val_size")
    check_eval_flags(model_dims(model), source == "demo", batch_size, val_size, throughput_batch)
    if loaded.masks is not None:
        loaded.masks.apply(model)  # the sparse model is weights * masks, whatever the file held
    bundle, val, match = evaluation_data(loaded, source, val_size)
    acc = evaluate_accuracy(model, make_loader(val, batch_size, shuffle=False, seed=0))
    counts = count_parameters(model, loaded.masks)
    flops = count_flops(model, loaded.masks, loaded.units)
    speed = measure_throughput(model, [throughput_batch])[0]
    result: dict[str, Any] = {
        "path": str(loaded.path), "data": bundle.source, "images": acc["count"], **match.summary(),
        "top1": acc["top1"], "top5": acc["top5"], "loss": acc["loss"],
        "params": counts["params"], "nonzeros": counts["nonzeros"],
        "density": overall_density(layer_rows(loaded)),
        "flops": flops["sparse"], "flops_dense": flops["dense"],
        "images_per_s": speed["images_per_s"], "throughput_batch": throughput_batch,
    }
    result.update(selector_metrics(loaded, bundle.val if bundle.source == "demo" else None, batch_size))
    return result


def selector_metrics(loaded: LoadedCheckpoint, demo_val: Any = None, batch_size: int = 64) -> dict[str, Any]:
    """``keep_ratio`` (kept / patches) and, on the demo data, ``object_patch_recall`` (the mean fraction
    of object patches the selector keeps; chance is the keep ratio). Both null without a selector."""
    selector = getattr(loaded.model, "token_selector", None)
    if selector is None:
        return {"keep_ratio": None, "object_patch_recall": None}
    recall = None
    if demo_val is not None:
        from .patches import object_patch_recall

        recall = object_patch_recall(loaded.model, demo_val, batch_size=batch_size)
    return {"keep_ratio": selector.keep / selector.num_patches, "object_patch_recall": recall}


_META_DROP = ("format", "format_version", "model_config", "versions", "resume_file", "mask_shapes", "unit_shapes",
              "fired_shapes", "history")


def compact_file(path: str | Path, out: str | Path) -> dict[str, Any]:
    """``svite compact PATH OUT``: load, compact, save (method ``s2vite-compact``), verify the saved file.

    Returns what the CLI prints: parameters, heads/hidden per block, FLOPs before/after and the max
    logit difference between the masked source and the reloaded compacted model on random inputs.
    """
    path, out = Path(path), Path(out)
    if out.exists() and (out.is_dir() or out.resolve() == path.resolve()):
        raise SviteError("output is the input or a directory; choose another OUT", path=out)
    if out.exists():
        raise SviteError("already exists; choose another OUT (compact never overwrites a file)", path=out)
    loaded = load_checkpoint(path)
    small, config = compact(loaded)
    masked = copy.deepcopy(loaded.model).float().cpu().eval()
    reference_masks = loaded.masks if loaded.masks is not None else unit_weight_masks(masked, loaded.units)
    reference_masks.apply(masked)
    heads_before = [int(b.attn.num_heads) for b in masked.blocks]
    hidden_before = [int(b.mlp.fc1.out_features) for b in masked.blocks]
    meta = {k: v for k, v in loaded.meta.items() if k not in _META_DROP}
    meta.update({"method": "s2vite-compact", "source_method": loaded.method, "source": str(path),
                 "source_format": loaded.format,
                 "compacted_from": {"num_heads": heads_before, "mlp_hidden": hidden_before,
                                    "heads_alive": [[int(v) for v in loaded.units[head_unit_name(i)].nonzero()
                                                     .reshape(-1)] if head_unit_name(i) in loaded.units else None
                                                    for i in range(len(heads_before))]}})
    save_checkpoint(out, small, config, meta=meta)
    reloaded = load_checkpoint(out).model
    before = count_parameters(masked, reference_masks)
    after = count_parameters(reloaded)
    flops_before = count_flops(masked, reference_masks, loaded.units)
    flops_after = count_flops(reloaded)
    return {
        "path": str(path), "out": str(out), "source_method": loaded.method,
        "params_before": before["params"], "nonzeros_before": before["nonzeros"], "params_after": after["params"],
        "flops_dense": flops_before["dense"], "flops_masked": flops_before["sparse"], "flops_after": flops_after["dense"],
        "max_abs_logit_diff": max_logit_diff(masked, reloaded),
        "blocks": [{"block": i, "heads_before": heads_before[i], "heads_after": int(b.attn.num_heads),
                    "hidden_before": hidden_before[i], "hidden_after": int(b.mlp.fc1.out_features)}
                   for i, b in enumerate(reloaded.blocks)],
    }

def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float as None: JSON has no NaN (``json.dumps`` would write a bare
    ``NaN`` that strict parsers reject), and an empty validation set gives a NaN loss."""
    if getattr(obj, "ndim", None) == 0 and hasattr(obj, "item"):  # numpy / torch scalars
        obj = obj.item()
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def to_json(document: dict[str, Any]) -> str:
    """The ``--json`` output of inspect/eval/compact: strict JSON, null for NaN/inf."""
    return json.dumps(json_safe(document), indent=2, default=str, allow_nan=False)
