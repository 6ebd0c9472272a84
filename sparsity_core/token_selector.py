"""SViTE+: learnable token selector (not built yet)."""

from __future__ import annotations

from torch import nn

from .errors import MethodUnavailable
from .models import SelectorConfig


def attach_token_selector(model: nn.Module, config: SelectorConfig) -> None:
    raise MethodUnavailable("--token-number / --keep-ratio: the token selector is not available yet in this build")
