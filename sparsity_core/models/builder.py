"""timm ViT/DeiT construction by name, with overrides, and the tiny CPU preset (``vit_tiny_demo``, registered
with timm like any model, so ``timm.create_model("vit_tiny_demo")`` builds it too).

Everything a checkpoint needs to rebuild a model lives in :class:`ModelConfig` (a plain dataclass that
round-trips through JSON), so a model is never described by hidden state. Weights are never
downloaded: they come from local files only (``checkpoint.py``).

This module sits at the bottom of the models floor and imports nothing else of ours but the errors. What a config asks for
beyond timm's own model (a token selector, the per-block sizes of a compacted S2ViTE model) is added
by the modules that own it, which register a build step here (:func:`register_extension`); the
package's ``__init__`` imports them, so every ``build_model`` call sees them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import timm
import torch
from timm.models import register_model
from torch import nn

from ..errors import SviteError

# The CPU demo preset: small enough to train in a minute on two cores, shaped like DeiT (6 heads, so
# S2ViTE's 0.7 head density keeps 4 of 6 heads as it does for DeiT-S). It is DeiT-Tiny's architecture code
# with these sizes; its pretrained config is DeiT-Tiny's (preprocessing, no weights to download) at 32 px.
TINY_DEMO = "vit_tiny_demo"
_TINY_DEMO_DEFAULTS = dict(img_size=32, patch_size=4, embed_dim=96, depth=4, num_heads=6, num_classes=10)
default_cfgs = {TINY_DEMO: {**timm.models.get_pretrained_cfg("deit_tiny_patch16_224").to_dict(),
                            "url": "", "hf_hub_id": None, "input_size": (3, 32, 32), "num_classes": 10}}


@register_model
def vit_tiny_demo(pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """The tiny CPU preset as a timm model entrypoint (no pretrained weights exist)."""
    if pretrained:
        raise SviteError(f"'{TINY_DEMO}' has no pretrained weights")
    from timm.models.deit import deit_tiny_patch16_224

    return deit_tiny_patch16_224(pretrained=False, **{**_TINY_DEMO_DEFAULTS, **kwargs})


@dataclass
class SelectorConfig:
    """Where and how many tokens the SViTE+ token selector keeps (``keep`` patches, cls always kept)."""

    keep: int | None = None  # absolute number of patch tokens kept
    keep_ratio: float | None = None  # or a fraction of the patch tokens
    block_index: int = 0  # the selector runs right before this block
    scorer: str = "linear"  # "linear" (reference) or "mlp"
    # "soft" (train on all tokens, dropped ones masked out of attention; infer gathered), "gather" (drop
    # tokens in training too) or "zero" (the reference: zeroed tokens stay in the sequence)
    mode: str = "soft"

    def resolve_keep(self, num_patches: int) -> int:
        if self.keep is not None:
            k = int(self.keep)
        elif self.keep_ratio is not None:
            k = max(1, round(float(self.keep_ratio) * num_patches))
        else:
            raise SviteError("token selector needs --token-number K or --keep-ratio R")
        if not 1 <= k <= num_patches:
            raise SviteError(f"token selector keeps {k} tokens, but the model has {num_patches} patches")
        return k


@dataclass
class ModelConfig:
    """A timm ViT/DeiT name plus the overrides that shape it. ``None`` means the timm default."""

    name: str = TINY_DEMO
    img_size: int | None = None
    patch_size: int | None = None
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    num_classes: int | None = None
    mlp_ratio: float | None = None
    in_chans: int | None = None
    selector: SelectorConfig | None = None
    # Per-block head counts / hidden sizes of a compacted S2ViTE model (None: uniform).
    block_heads: list[int] | None = None
    block_hidden: list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise SviteError(f"model config has unknown fields: {sorted(unknown)}")
        sel = data.get("selector")
        if isinstance(sel, dict):
            data["selector"] = SelectorConfig(**sel)
        return cls(**data)

    def timm_name_and_kwargs(self) -> tuple[str, dict[str, Any]]:
        """The timm model name and keyword overrides this config stands for."""
        name = self.name
        kwargs: dict[str, Any] = {}
        for key in ("img_size", "patch_size", "embed_dim", "depth", "num_heads", "num_classes", "mlp_ratio",
                    "in_chans"):
            value = getattr(self, key)
            if value is not None:
                kwargs[key] = value
        kwargs.update(self.extra)
        return name, kwargs


def is_vit_name(name: str) -> bool:
    return name in timm.list_models() and _is_vision_transformer_name(name)


def _is_vision_transformer_name(name: str) -> bool:
    return name.startswith(("vit_", "deit_", "deit3_")) and "distilled" not in name


def available_models() -> list[str]:
    """Names accepted by :func:`build_model`: the tiny preset and timm's plain ViT/DeiT models."""
    return [n for n in timm.list_models() if _is_vision_transformer_name(n)]


# build steps of the modules that extend a timm model (models/token_selector.py, models/compact.py), in import order
_EXTENSIONS: list[Callable[[nn.Module, ModelConfig], None]] = []


def register_extension(step: Callable[[nn.Module, ModelConfig], None]) -> Callable[[nn.Module, ModelConfig], None]:
    """Decorator: ``step(model, config)`` runs on every model :func:`build_model` builds."""
    _EXTENSIONS.append(step)
    return step


def _check_known(name: str) -> None:
    if not is_vit_name(name):
        raise SviteError(f"unknown model '{name}': use a timm ViT/DeiT name (e.g. deit_small_patch16_224) "
                         f"or '{TINY_DEMO}'")


def build_model(config: ModelConfig) -> nn.Module:
    """Build a timm VisionTransformer (never downloading) with what ``config`` adds to it (a token
    selector, per-block sizes of a compacted model)."""
    name, kwargs = config.timm_name_and_kwargs()
    _check_known(config.name)
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as err:
        raise SviteError(f"cannot build model '{config.name}' with {kwargs}: {err}") from None
    for extend in _EXTENSIONS:
        extend(model, config)
    return model


def num_patches(model: nn.Module) -> int:
    return int(model.patch_embed.num_patches)


def grid_size(model: nn.Module) -> tuple[int, int]:
    return tuple(int(g) for g in model.patch_embed.grid_size)  # type: ignore[return-value]


def model_input_size(model: nn.Module) -> int:
    return int(model.patch_embed.img_size[0])


def input_shape(model: nn.Module) -> tuple[int, int, int]:
    """(channels, height, width) of one input image."""
    pe = model.patch_embed
    return (int(pe.proj.in_channels), int(pe.img_size[0]), int(pe.img_size[1]))


def describe_model(model: nn.Module) -> dict[str, Any]:
    """Shape facts of a built ViT (for inspect/app): depth, heads per block, hidden sizes, patches."""
    blocks = list(model.blocks)
    return {
        "depth": len(blocks),
        "embed_dim": int(model.embed_dim),
        "num_heads": [int(b.attn.num_heads) for b in blocks],
        "mlp_hidden": [int(b.mlp.fc1.out_features) for b in blocks],
        "img_size": model_input_size(model),
        "patch_size": int(model.patch_embed.patch_size[0]),
        "num_patches": num_patches(model),
        "num_classes": int(model.num_classes),
        "params": int(sum(p.numel() for p in model.parameters())),
    }


def infer_config_from_state_dict(state: dict[str, torch.Tensor], name_hint: str | None = None,
                                 num_heads: int | None = None) -> ModelConfig:
    """Recover a ModelConfig from a plain timm/DeiT ViT state dict (shapes say everything but heads).

    The head count is not visible in the weights; it comes from the name hint, or the DeiT/ViT
    convention of 64-dim heads.
    """
    try:
        pe = state["patch_embed.proj.weight"]
        cls = state["cls_token"]
        pos = state["pos_embed"]
    except KeyError as err:
        raise SviteError(f"not a ViT/DeiT state dict: no {err.args[0]!r} key") from None
    if "dist_token" in state:
        raise SviteError("distilled DeiT checkpoints (with dist_token) are not supported")
    embed_dim, in_chans, patch, _ = pe.shape
    block_ids = {int(k.split(".")[1]) for k in state if k.startswith("blocks.")}
    depth = max(block_ids) + 1 if block_ids else 0
    grid = int(round((pos.shape[1] - cls.shape[1]) ** 0.5))
    head = state.get("head.weight")
    num_classes = int(head.shape[0]) if head is not None else 0
    hidden = state.get("blocks.0.mlp.fc1.weight")
    mlp_ratio = float(hidden.shape[0]) / embed_dim if hidden is not None else None
    if num_heads is None:
        num_heads = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}.get(int(embed_dim), max(1, int(embed_dim) // 64))
    name = name_hint if name_hint and is_vit_name(name_hint) else "deit_small_patch16_224"
    return ModelConfig(name=name, img_size=grid * int(patch), patch_size=int(patch), embed_dim=int(embed_dim),
                       depth=depth, num_heads=int(num_heads), num_classes=num_classes, mlp_ratio=mlp_ratio,
                       in_chans=int(in_chans))


def input_geometry(config: ModelConfig) -> tuple[int, int]:
    """(image size, patch size) the model will expect, without building its weights (data is built first):
    the config's own values, else the model's defaults read off a build on the meta device."""
    name, kwargs = config.timm_name_and_kwargs()
    img, patch = kwargs.get("img_size"), kwargs.get("patch_size")
    if img is None or patch is None:
        _check_known(config.name)
        try:
            with torch.device("meta"):
                skeleton = timm.create_model(name, pretrained=False, **kwargs)
        except (TypeError, ValueError, AssertionError, RuntimeError) as err:
            raise SviteError(f"cannot build model '{config.name}' with {kwargs}: {err}") from None
        img = img if img is not None else skeleton.patch_embed.img_size[0]
        patch = patch if patch is not None else skeleton.patch_embed.patch_size[0]
    return int(img), int(patch)
