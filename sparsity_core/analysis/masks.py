"""Mask analysis of one or two topologies: layer density, mask images, diffs, integrity, cost.

Pure functions from checkpoints / masks to pandas tables and numpy arrays; the app draws them, tests
assert on them. How topologies evolve across a run's mask history is :mod:`.evolution`.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..checkpoint import LoadedCheckpoint
from ..errors import SviteError
from ..masks.maskset import (
    MaskSet,
    PackedMasks,
    count_true,
    default_sparsifiable,
    head_unit_name,
    neuron_unit_name,
)
from ..models.builder import build_model
from ..models.compact import compact
from ..models.evaluate import count_flops, measure_throughput

__all__ = [
    "BLOCK_TYPES",
    "IntegrityReport",
    "block_type",
    "layer_depth",
    "checkpoint_masks",
    "layer_density_table",
    "density_table_from_counts",
    "density_by_group",
    "mask_matrix",
    "unit_alive",
    "mask_diff",
    "mask_diff_matrix",
    "integrity_check",
    "flops_summary",
    "speed_comparison",
]

#: Block types of the sparsified weights, in forward order.
BLOCK_TYPES: tuple[str, ...] = ("patch", "qkv", "proj", "fc1", "fc2", "head", "other")
_BLOCK_RE = re.compile(r"(?:^|\.)blocks\.(\d+)\.")


# ----------------------------------------------------------------------------------------------
# naming
def block_type(name: str) -> str:
    """Which kind of weight a parameter (or unit) name is: patch/qkv/proj/fc1/fc2/head/other."""
    if name.startswith("patch_embed."):
        return "patch"
    if ".attn.qkv." in name:
        return "qkv"
    if ".attn.proj." in name:
        return "proj"
    if ".mlp.fc1." in name:
        return "fc1"
    if ".mlp.fc2." in name:
        return "fc2"
    if name.startswith("head."):
        return "head"
    return "other"


def layer_depth(name: str, depth: int | None = None) -> int:
    """Position along the network: -1 for the patch embedding, ``i`` for ``blocks.i.*``, ``depth``
    (one past the last block) for the classifier head and anything after the blocks."""
    match = _BLOCK_RE.search(name)
    if match:
        return int(match.group(1))
    if name.startswith(("patch_embed.", "cls_token", "pos_embed")):
        return -1
    return int(depth) if depth is not None else 10_000


def _stage(d: int, depth: int) -> str:
    if d < 0:
        return "embed"
    if d >= depth:
        return "head"
    return f"block {d}"


# ----------------------------------------------------------------------------------------------
# one topology
def _is_weight(shape: Sequence[int]) -> bool:
    """Matrices and convs; structured runs also mask 1-D biases (qkv, fc1), which the integrity check
    covers but the density views leave out (a bias is not a layer)."""
    return len(tuple(shape)) >= 2


def checkpoint_masks(loaded: LoadedCheckpoint) -> MaskSet:
    """The weight masks of a checkpoint (matrices and convs); for one without masks (dense, foreign)
    the weights SViTE would sparsify, recovered as ``weight != 0`` (a dense model reads as density 1.0)."""
    params = dict(loaded.model.named_parameters())
    if loaded.masks is not None and len(loaded.masks):
        return MaskSet({n: m for n, m in loaded.masks.items()
                        if n in params and m.shape == params[n].shape and _is_weight(m.shape)})
    return MaskSet.from_weights(loaded.model, default_sparsifiable(loaded.model))


def layer_density_table(masks: Mapping[str, torch.Tensor] | PackedMasks) -> pd.DataFrame:
    """One row per masked weight: layer, block_type, depth, stage, shape, numel, nonzeros, density.

    Rows are in forward order (patch embed, blocks by depth, head), so bars read left to right.
    """
    return density_table_from_counts(_counts(masks))


def density_table_from_counts(counts: Mapping[str, tuple[int, int, tuple[int, ...]]]) -> pd.DataFrame:
    """:func:`layer_density_table` from ``{layer: (nonzeros, numel, shape)}`` (e.g. a history's
    recorded counts, so a snapshot's table needs no decoding)."""
    depth = _num_blocks(counts)
    rows = []
    for name, (nnz, numel, shape) in counts.items():
        d = layer_depth(name, depth)
        rows.append({"layer": name, "block_type": block_type(name), "depth": d, "stage": _stage(d, depth),
                     "shape": "×".join(str(s) for s in shape), "numel": numel, "nonzeros": nnz,
                     "density": nnz / numel if numel else 1.0})
    df = pd.DataFrame(rows, columns=["layer", "block_type", "depth", "stage", "shape", "numel", "nonzeros",
                                     "density"])
    if len(df):
        order = {t: i for i, t in enumerate(BLOCK_TYPES)}
        df = (df.assign(_o=df["block_type"].map(order)).sort_values(["depth", "_o"], kind="stable")
              .drop(columns="_o").reset_index(drop=True))
    return df


def density_by_group(table: pd.DataFrame, by: str) -> pd.DataFrame:
    """Weighted density (sum of nonzeros / sum of numel) per ``block_type`` or per ``stage``."""
    if by not in ("block_type", "stage"):
        raise SviteError(f"density_by_group: by must be 'block_type' or 'stage', got {by!r}")
    g = table.groupby(by, sort=False)[["nonzeros", "numel"]].sum().reset_index()
    g["density"] = g["nonzeros"] / g["numel"].clip(lower=1)
    return g


def _as_matrix(mask: torch.Tensor | np.ndarray) -> np.ndarray:
    arr = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    if arr.ndim == 0:
        return arr.reshape(1, 1)
    if arr.ndim == 1:
        return arr.reshape(1, -1)
    return arr.reshape(arr.shape[0], -1)  # conv (out, in, kh, kw) -> (out, in*kh*kw)


def _block_mean(arr: np.ndarray, max_size: int) -> np.ndarray:
    """Mean over ceil(H/max_size) × ceil(W/max_size) tiles (partial edge tiles averaged correctly)."""
    h, w = arr.shape
    fy, fx = max(1, -(-h // max_size)), max(1, -(-w // max_size))
    if fy == 1 and fx == 1:
        return arr.astype(np.float32)
    ny, nx = -(-h // fy), -(-w // fx)
    padded = np.zeros((ny * fy, nx * fx), dtype=np.float32)
    padded[:h, :w] = arr
    ones = np.zeros_like(padded)
    ones[:h, :w] = 1.0
    sums = padded.reshape(ny, fy, nx, fx).sum(axis=(1, 3))
    cnts = ones.reshape(ny, fy, nx, fx).sum(axis=(1, 3))
    return sums / cnts


def mask_matrix(mask: torch.Tensor | np.ndarray, max_size: int = 256) -> np.ndarray:
    """A 2-D float image of a mask for a heatmap: 1 = kept, 0 = pruned; matrices larger than
    ``max_size`` on a side are averaged over tiles (each cell is then the density of its tile)."""
    if max_size < 1:
        raise SviteError(f"mask_matrix: max_size must be >= 1, got {max_size}")
    return _block_mean(_as_matrix(mask).astype(np.float32), max_size)


# ----------------------------------------------------------------------------------------------
# counts of packed or unpacked masks
def _counts(masks: Mapping[str, torch.Tensor] | PackedMasks) -> dict[str, tuple[int, int, tuple[int, ...]]]:
    if isinstance(masks, PackedMasks):
        out = {}
        for name, data in masks.data.items():
            shape = tuple(int(s) for s in masks.shapes[name])
            if _is_weight(shape):
                out[name] = (int(np.bitwise_count(data.numpy()).sum(dtype=np.int64)), int(np.prod(shape)), shape)
        return out
    return {n: (count_true(m), int(m.numel()), tuple(m.shape)) for n, m in masks.items() if _is_weight(m.shape)}


def _num_blocks(names: Mapping[str, Any] | Sequence[str]) -> int:
    ids = [int(m.group(1)) for n in names if (m := _BLOCK_RE.search(n))]
    return max(ids) + 1 if ids else 0


def unit_alive(units: Mapping[str, torch.Tensor] | None) -> tuple[np.ndarray | None, pd.DataFrame | None]:
    """The final head/neuron masks of a structured checkpoint: a blocks × heads alive grid (1/0; NaN
    pads blocks with fewer heads) and a per-block neuron table (block, alive, total); None for each
    kind the checkpoint does not have."""
    if not units:
        return None, None
    blocks = sorted({int(m.group(1)) for n in units if (m := _BLOCK_RE.search(n))})
    heads = [units[head_unit_name(b)] for b in blocks if head_unit_name(b) in units]
    grid = None
    if heads:
        grid = np.full((len(heads), max(h.numel() for h in heads)), np.nan)
        for r, h in enumerate(heads):
            grid[r, :h.numel()] = h.to(torch.float64).numpy()
    rows = [{"block": b, "alive": int(units[neuron_unit_name(b)].sum()), "total": int(units[neuron_unit_name(b)].numel())}
            for b in blocks if neuron_unit_name(b) in units]
    return grid, (pd.DataFrame(rows) if rows else None)


# ----------------------------------------------------------------------------------------------
# two topologies
def mask_diff(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> pd.DataFrame:
    """Per layer common to ``a`` and ``b`` (same shape): kept (on in both), grown (off in a, on in
    b), pruned (on in a, off in b), both densities and their difference (b - a)."""
    common = [n for n in a if n in b and tuple(a[n].shape) == tuple(b[n].shape) and _is_weight(a[n].shape)]
    depth = _num_blocks(common)
    rows = []
    for n in common:
        ma, mb = a[n].to(torch.bool).cpu(), b[n].to(torch.bool).cpu()
        numel = ma.numel()
        na, nb, kept = count_true(ma), count_true(mb), count_true(ma & mb)
        da, db = na / numel, nb / numel
        rows.append({"layer": n, "block_type": block_type(n), "depth": layer_depth(n, depth), "numel": numel,
                     "kept": kept, "grown": nb - kept, "pruned": na - kept,
                     "density_a": da, "density_b": db, "density_diff": db - da})
    return pd.DataFrame(rows, columns=["layer", "block_type", "depth", "numel", "kept", "grown", "pruned",
                                       "density_a", "density_b", "density_diff"])


def mask_diff_matrix(a: torch.Tensor, b: torch.Tensor, max_size: int = 256) -> np.ndarray:
    """+1 where a weight was grown (a off, b on), -1 where pruned, 0 where unchanged; tiles of big
    matrices hold the mean (net growth of the tile)."""
    if tuple(a.shape) != tuple(b.shape):
        raise SviteError(f"mask_diff_matrix: shapes differ ({list(a.shape)} vs {list(b.shape)})")
    ma, mb = _as_matrix(a.to(torch.bool)), _as_matrix(b.to(torch.bool))
    return _block_mean(mb.astype(np.float32) - ma.astype(np.float32), max_size)


# ----------------------------------------------------------------------------------------------
# integrity: were the stored masks really applied?
@dataclass
class IntegrityReport:
    """What :func:`integrity_check` found. ``ok`` is False when any check failed."""

    ok: bool
    checks: list[dict[str, Any]] = field(default_factory=list)  # name, passed, detail, value
    layers: pd.DataFrame = field(default_factory=pd.DataFrame)  # per layer: stray nonzeros etc.

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": self.checks, "layers": self.layers.to_dict(orient="records")}


def _probe_input(model: nn.Module, batch: int, seed: int) -> torch.Tensor:
    pe = model.patch_embed
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((batch, int(pe.proj.in_channels), int(pe.img_size[0]), int(pe.img_size[1])), generator=gen)


@torch.no_grad()
def _logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model(x).float()


@torch.no_grad()
def _ablate_units(model: nn.Module, units: Mapping[str, torch.Tensor]) -> int:
    """Cut dead heads / neurons out of the forward pass completely (zero the proj input columns of
    a dead head, the fc2 input columns of a dead neuron); returns how many units were cut."""
    cut = 0
    for i, block in enumerate(model.blocks):
        heads = units.get(head_unit_name(i))
        if heads is not None:
            dead = (~heads.to(torch.bool)).nonzero().flatten().tolist()
            hd = block.attn.proj.weight.shape[1] // heads.numel()
            for h in dead:
                block.attn.proj.weight[:, h * hd:(h + 1) * hd] = 0
            cut += len(dead)
        neurons = units.get(neuron_unit_name(i))
        if neurons is not None:
            dead_n = ~neurons.to(torch.bool)
            block.mlp.fc2.weight[:, dead_n] = 0
            cut += int(dead_n.sum())
    return cut


@torch.no_grad()
def integrity_check(loaded: LoadedCheckpoint, inputs: torch.Tensor | None = None, atol: float = 1e-4,
                    seed: int = 0) -> IntegrityReport:
    """Do the stored weights agree with the stored masks? A known failure of other tools is masks
    that are saved but never applied (the reference's own SViTE+ runs trained dense for that reason).

    Checks, on a copy of the model as stored (the checkpoint is never modified):
      1. *zeros match masks*: no weight outside its mask is nonzero;
      2. *masks applied*: multiplying the masks in does not change the logits on a fixed input;
      3. *dead units inert* (structured runs): cutting masked heads/neurons out of the forward pass
         entirely does not change the logits either.
    """
    model = copy.deepcopy(loaded.model).eval()
    x = _probe_input(model, 4, seed) if inputs is None else inputs
    base = _logits(model, x)
    scale = float(base.abs().max().clamp_min(1.0))
    checks: list[dict[str, Any]] = []
    layer_rows = []
    masks = loaded.masks
    params = dict(model.named_parameters())
    if masks is not None and len(masks):
        stray_total = 0
        for name, m in masks.items():
            p = params.get(name)
            if p is None or p.shape != m.shape:
                continue
            nz = p.detach() != 0
            stray = int((nz & ~m).sum())
            stray_total += stray
            layer_rows.append({"layer": name, "mask_density": float(m.float().mean()),
                               "weight_density": float(nz.float().mean()), "stray_nonzeros": stray,
                               "zero_inside_mask": int((~nz & m).sum())})
        checks.append({"check": "weights' zeros match the masks", "passed": stray_total == 0, "value": stray_total,
                       "detail": "no weight outside its mask is nonzero" if stray_total == 0 else
                       f"{stray_total} weights outside their masks are nonzero: the masks were not applied"})
        masked = copy.deepcopy(model)
        MaskSet({n: m for n, m in masks.items() if n in params and params[n].shape == m.shape}).apply(masked)
        delta = float((_logits(masked, x) - base).abs().max())
        checks.append({"check": "applying the masks leaves the output unchanged", "passed": delta <= atol * scale,
                       "value": delta, "detail": f"max |Δlogit| = {delta:.3g} on {x.shape[0]} fixed random inputs"})
    else:
        checks.append({"check": "weights' zeros match the masks", "passed": True, "value": 0,
                       "detail": "this checkpoint stores no masks (dense): nothing to check"})
    units = loaded.units
    if units is not None and len(units):
        ablated = copy.deepcopy(model)
        cut = _ablate_units(ablated, units)
        delta = float((_logits(ablated, x) - base).abs().max())
        checks.append({"check": "masked heads/neurons have no effect", "passed": delta <= atol * scale, "value": delta,
                       "detail": f"{cut} dead units cut out of the forward pass: max |Δlogit| = {delta:.3g}"})
    ok = all(c["passed"] for c in checks)
    return IntegrityReport(ok=ok, checks=checks, layers=pd.DataFrame(layer_rows))


# ----------------------------------------------------------------------------------------------
# cost: FLOPs and measured speed, dense vs sparse
def _dense_twin(loaded: LoadedCheckpoint) -> nn.Module:
    """The same architecture without sparsity: no token selector, full heads/neurons."""
    cfg = dataclasses.replace(loaded.model_config, selector=None, block_heads=None, block_hidden=None)
    torch.manual_seed(0)
    return build_model(cfg).eval()


def flops_summary(loaded: LoadedCheckpoint) -> dict[str, float]:
    """FLOPs per image of the dense architecture and of this checkpoint (masks scale each Linear by
    its density, dead heads scale attention, a token selector's dropped tokens are not counted)."""
    dense = count_flops(_dense_twin(loaded))["dense"]
    sparse = count_flops(loaded.model, loaded.masks, loaded.units)["sparse"]
    return {"dense": float(dense), "sparse": float(sparse), "ratio": float(sparse) / dense if dense else 1.0}


def _compacted(loaded: LoadedCheckpoint) -> nn.Module | None:
    """The physically smaller model of a structured (S2ViTE) checkpoint, or None."""
    units = loaded.units
    if units is None or not any(n.endswith((".attn.heads", ".mlp.neurons")) for n in units):
        return None
    return compact(loaded)[0].eval()


def speed_comparison(loaded: LoadedCheckpoint, batch_size: int = 32, iters: int = 5) -> pd.DataFrame:
    """Measured forward throughput (images/s) of the dense architecture, of this checkpoint's model
    and, for structured checkpoints, of its compacted model (dead heads/neurons removed). Unstructured
    masks run as dense matmuls, so only dropped tokens (token selector) or compaction make a model
    faster here; the table says so honestly."""
    models = [("dense", _dense_twin(loaded)), ("this checkpoint", loaded.model)]
    compacted = _compacted(loaded)
    if compacted is not None:
        models.append(("compacted", compacted))
    rows = []
    for label, model in models:
        r = measure_throughput(model, [batch_size], warmup=2, iters=iters)[0]
        rows.append({"model": label, "batch_size": batch_size, "images_per_s": r["images_per_s"],
                     "ms_per_batch": r["ms_per_batch"]})
    df = pd.DataFrame(rows)
    df["speedup"] = df["images_per_s"] / df.loc[0, "images_per_s"]
    return df
