"""Upper bounds on every size a user or a file can ask for, checked before anything is allocated.

A checkpoint's metadata, a plain state dict's key names and the size flags of ``svite train`` /
``svite eval`` all end up as sizes that something allocates: a model, a demo data set, a batch. A
2 MB file or a typo'd flag must never be able to ask for gigabytes, so sizes pass two gates first:

* hard caps, far above any ViT/DeiT in timm (depth 64, width 8192, 16384 patch tokens, ...), which
  also keep the *checks* cheap (a meta-device model of at most 64 blocks builds in milliseconds);
* a memory estimate of what a run or an evaluation will hold (demo images, model state,
  activations), refused with the flags named when it exceeds this machine's memory.

Models are checked by building them on PyTorch's ``meta`` device (shapes without storage), which is
exact for any timm name and override and allocates nothing.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import SviteError
from ..models.builder import ModelConfig, build_model, input_geometry, is_vit_name

# hard caps on model shape (vit_gigantic: depth 48, width 1664, 16 heads)
_INT_LIMITS: dict[str, tuple[int, int]] = {
    "img_size": (1, 4096), "patch_size": (1, 1024), "embed_dim": (1, 8192), "depth": (1, 64),
    "num_heads": (1, 256), "num_classes": (0, 100_000), "in_chans": (1, 16),
}
MAX_MLP_RATIO = 16.0
MAX_TOKENS = 16_384  # patch tokens per image (a 128 x 128 grid; DeiT-S at 224 px has 196)
MAX_HIDDEN = 65_536  # MLP neurons of one block
# caps on run sizes
MAX_BATCH = 65_536
MAX_DEMO_IMAGES = 10_000_000
MAX_WORKERS = 256
MAX_SEED = 2**63 - 1
_DEMO_CHUNK = 1024  # samples the demo generator renders at once (data/demo.py)
_FLAG_NAMES = {"name": "--model", "keep": "--token-number", "keep_ratio": "--keep-ratio", "block_index": "--selector-block",
               "scorer": "--selector-scorer", "mode": "--selector-mode"}

Namer = Callable[[str], str]


def flag_name(field: str) -> str:
    """How ``svite train`` spells a config field (``embed_dim`` -> ``--embed-dim``)."""
    return _FLAG_NAMES.get(field, "--" + field.replace("_", "-"))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_int(name: str, value: Any, lo: int, hi: int) -> int:
    """``value`` as an int in [lo, hi], or a SviteError naming ``name``."""
    if not _is_int(value):
        raise SviteError(f"{name} {value!r}: must be an integer")
    if not lo <= value <= hi:
        raise SviteError(f"{name} {value}: must be in [{lo}, {hi}]")
    return value


def _check_float(name: str, value: Any, lo: float, hi: float) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise SviteError(f"{name} {value!r}: must be a finite number")
    if not lo < value <= hi:
        raise SviteError(f"{name} {value}: must be in ({lo}, {hi}]")


def check_model_config(config: ModelConfig, name: Namer = flag_name) -> None:
    """Types and hard caps of every field that shapes the model (``name`` spells a field for messages).

    The timm keyword arguments are checked after ``extra`` is merged in, so ``extra`` cannot smuggle
    a size past the caps.
    """
    if not isinstance(config.name, str) or not is_vit_name(config.name):
        raise SviteError(f"{name('name')} {config.name!r}: not a timm ViT/DeiT name (or vit_tiny_demo)")
    if not isinstance(config.extra, dict) or not all(
            isinstance(k, str) and (v is None or isinstance(v, (str, int, float, bool))) for k, v in config.extra.items()):
        raise SviteError(f"{name('extra')}: must map names to plain values")
    _, kwargs = config.timm_name_and_kwargs()
    for key, (lo, hi) in _INT_LIMITS.items():
        if key in kwargs:
            check_int(name(key), kwargs[key], lo, hi)
    if "mlp_ratio" in kwargs:
        _check_float(name("mlp_ratio"), kwargs["mlp_ratio"], 0.0, MAX_MLP_RATIO)
    img, patch = input_geometry(config)
    if img < patch:
        raise SviteError(f"{name('img_size')} {img} is smaller than {name('patch_size')} {patch}")
    tokens = (img // patch) ** 2
    if tokens > MAX_TOKENS:
        raise SviteError(f"{name('img_size')} {img} with {name('patch_size')} {patch} makes {tokens} patch tokens per "
                         f"image; at most {MAX_TOKENS} are supported (use a larger patch size)")
    for label, hi in (("block_heads", _INT_LIMITS["num_heads"][1]), ("block_hidden", MAX_HIDDEN)):
        sizes = getattr(config, label)
        if sizes is not None:
            if not isinstance(sizes, list) or len(sizes) > _INT_LIMITS["depth"][1]:
                raise SviteError(f"{name(label)}: must be a list of at most {_INT_LIMITS['depth'][1]} sizes")
            for s in sizes:
                check_int(name(label), s, 1, hi)
    _check_selector(config, name)


def _check_selector(config: ModelConfig, name: Namer) -> None:
    sel = config.selector
    if sel is None:
        return
    if sel.keep is not None:
        check_int(name("keep"), sel.keep, 1, MAX_TOKENS)
    if sel.keep_ratio is not None:
        _check_float(name("keep_ratio"), sel.keep_ratio, 0.0, 1.0)
    check_int(name("block_index"), sel.block_index, 0, _INT_LIMITS["depth"][1] - 1)
    for field in ("scorer", "mode"):  # their values are checked by the selector itself (on the meta build)
        if not isinstance(getattr(sel, field), str):
            raise SviteError(f"{name(field)} {getattr(sel, field)!r}: must be a string")


def skeleton(config: ModelConfig, name: Namer = flag_name) -> nn.Module:
    """The model ``config`` describes, on the meta device (shapes only, no memory), after the caps."""
    check_model_config(config, name)
    try:
        with torch.device("meta"):
            return build_model(without_init(config))
    except (ArithmeticError, IndexError, KeyError) as err:  # timm's arithmetic on a bad combination of sizes
        raise SviteError(f"cannot build model '{config.name}': {type(err).__name__}: {err}") from None


def without_init(config: ModelConfig) -> ModelConfig:
    """``config`` for a model whose weights are about to be overwritten: timm skips its init pass
    (trunc_normal_ over every weight, most of the build time), which loading would undo anyway."""
    return dataclasses.replace(config, extra={**config.extra, "weight_init": "skip"})


# ----------------------------------------------------------------------------------------------
# memory estimates
def memory_budget() -> int:
    """Bytes this process may reasonably use: physical memory, or the cgroup limit if lower."""
    budget = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            budget = min(budget, int(text))
    return budget


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def demo_data_bytes(images: int, img_size: int, largest_split: int) -> int:
    """Memory of generated demo images (uint8 HWC + CHW copy + pixel masks) plus the float32
    temporaries of one rendering chunk (data/demo.py renders up to 1024 samples at once)."""
    pixels = img_size * img_size
    return images * pixels * 7 + min(largest_split, _DEMO_CHUNK) * pixels * 64


def model_dims(model: nn.Module) -> dict[str, int]:
    """Sizes of a (meta or real) timm ViT that set its activation memory."""
    blocks = list(model.blocks)
    return {"params": sum(p.numel() for p in model.parameters()), "depth": len(blocks),
            "tokens": int(model.patch_embed.num_patches) + int(getattr(model, "num_prefix_tokens", 1)),
            "dim": int(model.embed_dim), "img": int(model.patch_embed.img_size[0]),
            "chans": int(model.patch_embed.proj.in_channels),
            "heads": max((int(b.attn.num_heads) for b in blocks), default=1),
            "hidden": max((int(b.mlp.fc1.out_features) for b in blocks), default=1)}


def forward_bytes(dims: dict[str, int], batch: int, training: bool) -> int:
    """Activation memory of one forward (+ backward when ``training``) pass: the input, each block's
    token activations and attention scores; a training pass keeps every block's for backward."""
    t, heads = dims["tokens"], dims["heads"]
    per_block = t * (dims["dim"] * 12 + dims["hidden"] * 4) + 2 * heads * t * t
    blocks = dims["depth"] if training else 1
    return 4 * batch * (dims["chans"] * dims["img"] ** 2 + per_block * blocks)


def check_memory(need: int, what: str) -> None:
    """Refuse (SviteError) when ``need`` bytes exceed this machine's memory; ``what`` names the flags."""
    budget = memory_budget()
    if need > budget:
        raise SviteError(f"{what} needs about {human_bytes(need)} of memory, more than this machine's "
                         f"{human_bytes(budget)}")


def check_train_flags(cfg: Any) -> None:
    """Caps and the memory estimate of ``svite train`` flags (``cfg``: a TrainConfig)."""
    check_int("--seed", cfg.seed, 0, MAX_SEED)
    if not isinstance(cfg.min_lr, (int, float)) or not math.isfinite(cfg.min_lr) or cfg.min_lr < 0:
        raise SviteError(f"--min-lr {cfg.min_lr}: must be a finite number >= 0")
    check_int("--batch-size", cfg.batch_size, 1, MAX_BATCH)
    check_int("--num-workers", cfg.num_workers, 0, MAX_WORKERS)
    demo = str(cfg.data) == "demo"
    for flag, value in (("--train-size", cfg.train_size), ("--val-size", cfg.val_size)):
        if value is not None:
            check_int(flag, value, 1, MAX_DEMO_IMAGES if demo else 2**62)
    dims = model_dims(skeleton(cfg.model_config(num_classes=1)))
    need, parts = 0, []
    if demo:
        train_n, val_n = cfg.train_size or 5000, cfg.val_size or 1000
        need += demo_data_bytes(train_n + val_n, dims["img"], max(train_n, val_n))
        parts.append(f"--train-size {train_n} --val-size {val_n} at --img-size {dims['img']}")
    if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
        # weights, gradients, two Adam moments, masks and scores; activations kept for backward
        need += 24 * dims["params"] + forward_bytes(dims, cfg.batch_size, training=True)
        parts.append(f"--batch-size {cfg.batch_size} with --model {cfg.model}")
    check_memory(need, "training with " + ", ".join(parts) if parts else "training")


def check_eval_flags(dims: dict[str, int], demo: bool, batch_size: int, val_size: int | None,
                     throughput_batch: int) -> None:
    """Caps and the memory estimate of ``svite eval`` flags for a model of ``dims``."""
    check_int("--batch-size", batch_size, 1, MAX_BATCH)
    check_int("--throughput-batch", throughput_batch, 1, MAX_BATCH)
    if val_size is not None:
        check_int("--val-size", val_size, 1, MAX_DEMO_IMAGES if demo else 2**62)
    need = forward_bytes(dims, max(batch_size, throughput_batch), training=False)
    what = f"evaluating with --batch-size {batch_size} and --throughput-batch {throughput_batch}"
    if demo:
        n = val_size or 1000
        need += demo_data_bytes(n, dims["img"], n)
        what += f" on --val-size {n} demo images"
    check_memory(need, what)
