"""S2ViTE: structured sparsity over attention heads and MLP neurons (not built yet)."""

from __future__ import annotations

from torch import nn

from .engine import EngineContext, SparsityEngine
from .errors import MethodUnavailable


def build_structured_engine(ctx: EngineContext) -> SparsityEngine:
    raise MethodUnavailable("--method s2vite: not available yet in this build")


def reshape_blocks(model: nn.Module, block_heads: list[int] | None, block_hidden: list[int] | None) -> None:
    raise MethodUnavailable("compacted S2ViTE models are not available yet in this build")
