"""One selection primitive for every prune and grow decision, weights, heads and neurons alike.

A choice is always "the k eligible entries with the largest (or smallest) score", with one rule for
ties: **the lower index wins**. It is a ``torch.topk``, never a ``score > threshold`` comparison (the
reference's, whose counts drift with ties), so exactly k entries are chosen whatever the scores are,
all-zero gradients and tied magnitudes included. ``topk`` alone leaves the order of ties to the kernel;
the boundary check below makes the result the same on every device type, so DDP ranks with identical
inputs take identical decisions without a broadcast. It costs one comparison pass over the scores
when nothing is tied at the boundary (the usual case for float scores).

Scores of ineligible entries must be a value that can never be chosen (``+inf`` when choosing the
smallest, a value below every eligible score when choosing the largest); :func:`select_units` builds
such a score from an eligibility mask, maps NaN to ``-inf`` (pruned first, grown last) and never asks
for more entries than are eligible.

:func:`choose_keys` is the same rule in linear time for the weight update on the CPU, where a
``topk`` of a fifth of a layer was two thirds of an update: scores are unsigned 32-bit keys (the bits of
a non-negative float order like the float), numpy's SIMD ``partition`` finds the boundary key, and one
comparison pass lists the chosen entries (a second one only when the boundary is tied).
"""

from __future__ import annotations

import math

import numpy as np
import torch


def choose(score: torch.Tensor, k: int, *, largest: bool, eligible: torch.Tensor | None = None) -> torch.Tensor:
    """Flat indices of the ``k`` entries of the 1-D ``score`` with the largest (or smallest) values; among
    entries tied at the boundary, the lower indices. With ``eligible``, only those entries count, even when
    an ineligible entry's sentinel score equals an eligible one's (``-inf`` for a NaN, say); ``k`` must not
    exceed what is eligible. The order of the indices is unspecified.

    The top ``k + 1`` tell whether a tie crosses the boundary (the k-th and the (k+1)-th values equal):
    when none does, the top k are the answer whatever the tie rule, at the cost of one ``topk``."""
    n = score.numel()
    if k <= 0:
        return torch.empty(0, dtype=torch.long, device=score.device)
    if eligible is None and k < n:
        top = torch.topk(score, k + 1, largest=largest, sorted=False)
        last = top.values.argmin() if largest else top.values.argmax()  # the (k+1)-th entry
        outside = top.values[last]
        if int(torch.count_nonzero(top.values == outside)) == 1:  # nothing tied with it: unique top k
            indices = top.indices
            indices[last] = indices[k]  # drop the (k+1)-th: move the final entry into its place
            return indices[:k]
    top = torch.topk(score, k, largest=largest, sorted=False)
    boundary = top.values.min() if largest else top.values.max()
    better = (score > boundary) if largest else (score < boundary)
    at_boundary = score == boundary
    if eligible is not None:
        better &= eligible
        at_boundary &= eligible
    chosen = better.nonzero().reshape(-1)
    return torch.cat([chosen, at_boundary.nonzero().reshape(-1)[: k - chosen.numel()]])


def select_units(score: torch.Tensor, eligible: torch.Tensor, k: int, *, largest: bool) -> torch.Tensor:
    """bool mask of the ``min(k, #eligible)`` eligible entries with the largest (or smallest) ``score``
    (lower index first among ties, NaN counted as ``-inf``: pruned first, grown last)."""
    score = torch.nan_to_num(score.detach().to("cpu", torch.float64).reshape(-1), nan=-math.inf)
    eligible = eligible.to("cpu", torch.bool).reshape(-1)
    k = max(0, min(int(k), int(eligible.sum())))
    chosen = torch.zeros_like(eligible)
    masked = score.masked_fill(~eligible, -math.inf if largest else math.inf)
    chosen[choose(masked, k, largest=largest, eligible=eligible)] = True
    return chosen


def choose_keys(keys: np.ndarray, k: int, *, largest: bool, work: np.ndarray, flags: np.ndarray) -> np.ndarray:
    """:func:`choose` over unsigned integer ``keys`` (1-D): flat indices (int64, order unspecified) of the
    ``k`` largest (or smallest), the lower indices first among keys tied at the boundary. ``work`` (same dtype)
    and ``flags`` (bool), each at least as long as ``keys``, are scratch: nothing the size of ``keys`` is
    allocated beyond the answer."""
    n = keys.size
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    if k >= n:
        return np.arange(n, dtype=np.int64)
    work, flags = work[:n], flags[:n]
    np.copyto(work, keys)
    at = n - k if largest else k - 1
    work.partition(at)
    boundary = work[at]
    (np.greater_equal if largest else np.less_equal)(keys, boundary, out=flags)
    if np.count_nonzero(flags) == k:  # nothing tied across the boundary (the usual case)
        return np.flatnonzero(flags)
    (np.greater if largest else np.less)(keys, boundary, out=flags)
    strict = np.flatnonzero(flags)
    np.equal(keys, boundary, out=flags)
    return np.concatenate([strict, np.flatnonzero(flags)[: k - strict.size]])
