"""How much each layer (or block) keeps: the *distribution* part of a sparse-training method.

Unstructured (SViTE): ``fixed_ERK`` (the reference: density proportional to sum(shape)/prod(shape),
layers that would exceed 1 made dense and the scale solved again), ``ER`` (the SET formulation for the
linear map), ``uniform`` or ``custom`` (a JSON file) densities, turned into **exact** integer counts by
:func:`layer_budgets` (the reference draws Bernoulli masks, so its counts are not exact).

Structured (S2ViTE): ``int(H * atten_density)`` heads and ``int(hidden * other_density)`` neurons per
block, as the reference.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from torch import nn

from ..errors import SviteError
from ..models.units import attention_of, mlp_of

SPARSE_INITS = ("fixed_ERK", "ER", "uniform", "custom")


def _raw_scale(shape: Sequence[int], mode: str) -> float:
    """Erdős–Rényi scale of a layer: density ∝ this.

    ``fixed_ERK``: sum(shape)/prod(shape), kernel dims included (the reference, power 1).
    ``ER``: (rows + cols)/(rows * cols) of the layer as a matrix (C_out x C_in*kh*kw), the SET
    formulation for the linear map; it differs from ERK only for convolutions (the patch embed).
    """
    n = math.prod(shape)
    if mode == "fixed_ERK":
        return sum(shape) / n
    rows = shape[0]
    cols = n // rows
    return (rows + cols) / n


def _solve_erdos_renyi(shapes: Mapping[str, Sequence[int]], density: float, mode: str) -> dict[str, float]:
    """The reference's fixed_ERK solve: eps = (d*N_sparse - (1-d)*N_dense) / sum(raw*N); any layer with
    eps*raw > 1 (all layers tied at the current max raw) is made dense and eps is solved again."""
    raw = {n: _raw_scale(s, mode) for n, s in shapes.items()}
    dense: set[str] = set()
    eps = 0.0
    while True:
        rhs, divisor = 0.0, 0.0
        for name, shape in shapes.items():
            n_param = math.prod(shape)
            if name in dense:
                rhs -= n_param * (1 - density)
            else:
                rhs += n_param * density
                divisor += raw[name] * n_param
        live = {n: r for n, r in raw.items() if n not in dense}
        if not live:
            break
        eps = rhs / divisor
        max_raw = max(live.values())
        if max_raw * eps > 1:
            dense.update(n for n, r in live.items() if r == max_raw)
        else:
            break
    return {n: 1.0 if n in dense else min(1.0, eps * raw[n]) for n in shapes}


def load_custom_densities(path: str | Path | None, names: Iterable[str]) -> dict[str, float]:
    """``--mask-path``: a JSON object {param_name: density}; ``<param>_mask`` keys (the reference's
    naming) are accepted too. Every sparsified parameter must be listed, nothing else may be."""
    if not path:
        raise SviteError("--sparse-init custom needs --mask-path FILE (a JSON object {param_name: density})")
    p = Path(path)
    if not p.is_file():
        raise SviteError(f"--mask-path {path}: no such file")
    try:
        raw = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SviteError(f"--mask-path {path}: not a JSON file ({str(err).splitlines()[0][:120]})") from None
    if not isinstance(raw, dict):
        raise SviteError(f"--mask-path {path}: expected a JSON object {{param_name: density}}")
    table: dict[str, float] = {}
    for key, value in raw.items():
        name = key[: -len("_mask")] if key.endswith("_mask") else key
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < float(value) <= 1:
            raise SviteError(f"--mask-path {path}: density of '{key}' must be a number in (0, 1], got {value!r}")
        table[name] = float(value)
    names = list(names)
    missing = [n for n in names if n not in table]
    unknown = [n for n in table if n not in names]
    if missing:
        raise SviteError(f"--mask-path {path}: no density for {len(missing)} sparsified parameter(s), e.g. "
                         f"'{missing[0]}'")
    if unknown:
        raise SviteError(f"--mask-path {path}: '{unknown[0]}' is not a sparsified parameter of this model")
    return {n: table[n] for n in names}


def layer_densities(shapes: Mapping[str, Sequence[int]], density: float, mode: str = "fixed_ERK",
                    custom: Mapping[str, float] | None = None) -> dict[str, float]:
    """Per-layer densities whose parameter-weighted mean is ``density`` (custom: as given)."""
    if not 0 < density <= 1:
        raise SviteError(f"--density must be in (0, 1], got {density}")
    if mode in ("fixed_ERK", "ER"):
        return _solve_erdos_renyi(shapes, density, mode)
    if mode == "uniform":
        return {n: float(density) for n in shapes}
    if mode == "custom":
        if custom is None:
            raise SviteError("--sparse-init custom needs --mask-path FILE")
        return {n: float(custom[n]) for n in shapes}
    raise SviteError(f"--sparse-init: unknown mode '{mode}' (choose {', '.join(SPARSE_INITS)})")


def layer_budgets(shapes: Mapping[str, Sequence[int]], densities: Mapping[str, float]) -> dict[str, int]:
    """Exact nonzero counts: round(density * numel), at least one weight, at most all of them."""
    return {n: max(1, min(math.prod(s), round(densities[n] * math.prod(s)))) for n, s in shapes.items()}



def unit_budgets(model: nn.Module, atten_density: float, other_density: float) -> tuple[list[int], list[int]]:
    """Exact per-block budgets, as the reference: ``int(H * atten_density)`` heads and
    ``int(hidden * other_density)`` neurons; a block left with no head or no neuron is an error."""
    heads, hidden = [], []
    for i, block in enumerate(model.blocks):
        h = attention_of(block, i).num_heads
        n = mlp_of(block, i).fc1.out_features
        kh, kn = int(h * atten_density), int(n * other_density)
        if kh < 1:
            raise SviteError(f"--atten-density {atten_density} keeps {kh} of {h} heads in block {i}; "
                             f"every block needs at least one head (use >= {1 / h:.3g})")
        if kn < 1:
            raise SviteError(f"--other-density {other_density} keeps {kn} of {n} MLP neurons in block {i}; "
                             f"every block needs at least one neuron (use >= {1 / n:.3g})")
        heads.append(kh)
        hidden.append(kn)
    return heads, hidden

