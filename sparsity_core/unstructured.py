"""SViTE: unstructured dynamic sparse training at a fixed parameter budget (not built yet)."""

from __future__ import annotations

from .engine import EngineContext, SparsityEngine
from .errors import MethodUnavailable


def build_unstructured_engine(ctx: EngineContext) -> SparsityEngine:
    raise MethodUnavailable(f"--method {ctx.config.method}: not available yet in this build")
