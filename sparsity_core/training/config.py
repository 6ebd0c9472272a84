"""``TrainConfig``: every flag of ``svite train``, and the one place that checks them.

:func:`validate_config` runs before anything is built or written. It raises :class:`FlagError` (a
``SviteError`` naming the flag), which the CLI prints as one line. Checks that need the model (an
``--include`` glob matching nothing, an ``--init`` checkpoint's masks) stay with the code that builds
it; the schedule checks its own settings (:class:`dst.schedule.PruneSchedule`), and is asked to here.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoint.limits import check_train_flags
from ..dst.active_optim import OPTIMIZER_STATES
from ..dst.budgets import SPARSE_INITS
from ..dst.optim_state import check_policy
from ..dst.schedule import PruneSchedule
from ..dst.scorers import WEIGHT_GROWTH
from ..dst.weights import DEATHS
from ..errors import FlagError
from ..models.builder import ModelConfig, SelectorConfig, is_vit_name
from ..trackers import parse_log_to
from .rundir import check_out_path

UNSTRUCTURED = ("static", "oneshot", "svite")  # weight-level methods (dst/unstructured.py)
DYNAMIC = ("svite", "s2vite")  # methods that update their topology on the schedule
STRUCTURED_GROWTH = ("gradient", "random")
# S2ViTE: how inactive heads are scored and grown (dst/head_shadow.py says why alignment is the default)
HEAD_GROWTH = ("alignment", "gradient-norm")


@dataclass
class TrainConfig:
    """Every flag of ``svite train`` (names mirror the reference implementation)."""

    out: str = "runs/demo"
    # model
    model: str = "vit_tiny_demo"
    img_size: int | None = None
    patch_size: int | None = None
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    # data and optimisation
    data: str = "demo"
    train_size: int | None = None  # demo data only: number of generated train / val images
    val_size: int | None = None
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    min_lr: float = 1e-5
    warmup_lr: float = 1e-6
    weight_decay: float = 0.05
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.1
    aa: str | None = None  # timm auto-augment policy for folder data (DeiT: rand-m9-mstd0.5-inc1)
    mixup: float = 0.0  # mixup alpha (DeiT: 0.8); with cutmix, timm's Mixup + soft-target loss
    cutmix: float = 0.0  # cutmix alpha (DeiT: 1.0)
    clip_grad: float | None = None
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "auto"  # auto (bf16 on CUDA) | bf16 | off
    compile: bool = False
    num_workers: int = 0
    max_steps: int | None = None
    log_every: int = 50
    checkpoint_every: int = 0  # steps between periodic checkpoints (0: at epoch ends only)
    log_to: str | None = None  # trackers to write into as well: "tensorboard", "wandb" or both, comma-separated
    resume: str | None = None
    init: str | None = None
    # sparsity
    method: str = "dense"
    density: float = 0.5
    sparse_init: str = "fixed_ERK"
    mask_path: str | None = None
    update_frequency: int = 100
    death_rate: float = 0.5
    decay_schedule: str = "cosine"
    t_end: float = 0.8
    growth: str = "gradient"
    death: str = "magnitude"
    # the AdamW moments of grown entries (optim_state.py says why "keep", the reference's behaviour, is right)
    grown_moments: str = "keep"
    # AdamW moments of masked parameters: "full", or "active" (active entries only; dst/active_optim.py)
    optimizer_state: str = "full"
    # no topology update before this: "plateau" (after the LR warm-up, once the training loss has left its
    # first plateau: measured on the demo data, see dst/schedule.py), "warmup", N steps, or "Xep" epochs
    update_start: str = "plateau"
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    oneshot_at: float = 0.5  # oneshot baseline: fraction of training done dense before pruning
    atten_density: float = 0.7
    other_density: float = 0.6
    head_growth: str = "alignment"  # S2ViTE: alignment (shadow q/k/v) | gradient-norm (the former rule)
    # token selector (SViTE+)
    token_number: int | None = None
    keep_ratio: float | None = None
    selector_block: int = 0
    selector_scorer: str = "linear"
    # soft: train on the whole sequence with dropped tokens masked out of attention (a per-patch signal),
    # infer gathered; gather: drop tokens in training too (faster, no per-patch signal); zero: the reference
    selector_mode: str = "soft"
    # fraction of training over which the kept tokens fall from all patches to k (0: k from step 0, as the
    # reference; from scratch on a short schedule that never learned, see models/token_selector.py)
    selector_keep_warmup: float = 0.3

    def model_config(self, num_classes: int) -> ModelConfig:
        selector = None
        if self.token_number is not None or self.keep_ratio is not None:
            selector = SelectorConfig(keep=self.token_number, keep_ratio=self.keep_ratio,
                                      block_index=self.selector_block, scorer=self.selector_scorer,
                                      mode=self.selector_mode)
        return ModelConfig(name=self.model, img_size=self.img_size, patch_size=self.patch_size,
                           embed_dim=self.embed_dim, depth=self.depth, num_heads=self.num_heads,
                           num_classes=num_classes, selector=selector)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Fields added to TrainConfig after runs were made, with the value that reproduces how a run whose config.json
# lacks them behaved (it is not always today's default: S2ViTE runs before --head-growth grew heads by the
# gradient norm, SViTE+ runs before --selector-keep-warmup kept k tokens from the start). Whoever compares
# configs of saved runs (runs/identity.py, scripts/_experiment.py) fills the missing fields from here.
LEGACY_DEFAULTS: dict[str, Any] = {"selector_keep_warmup": 0.0, "head_growth": "gradient-norm",
                                   "optimizer_state": "full"}


def with_legacy_defaults(config: dict[str, Any]) -> dict[str, Any]:
    """A saved run's config with every field it lacks filled: a later field from :data:`LEGACY_DEFAULTS`,
    any other from today's defaults."""
    return {**TrainConfig().to_dict(), **LEGACY_DEFAULTS, **config}


def validate_config(cfg: TrainConfig) -> None:
    """Reject absurd flags up front, each with one line naming the flag: ranges, the model name, size
    caps and a memory estimate (``checkpoint/limits.py``), then the flags of the chosen method."""
    check_out_path(cfg.out)
    for flag, ok, message in _range_checks(cfg):
        if not ok:
            raise FlagError(flag, message)
    if not is_vit_name(cfg.model):
        raise FlagError("--model", f"--model: unknown model '{cfg.model}' (a timm ViT/DeiT name, or vit_tiny_demo)")
    check_train_flags(cfg)  # size caps, the model checked on the meta device, a memory estimate
    check_method_flags(cfg)
    parse_log_to(cfg.log_to)  # a tracker we do not know, or whose package is missing: said before the run


def _range_checks(cfg: TrainConfig) -> list[tuple[str, bool, str]]:
    """(flag, holds, message) for every flag with a range, in the order they are reported."""
    return [
        ("--epochs", cfg.epochs >= 1, "--epochs must be >= 1"),
        ("--batch-size", cfg.batch_size >= 1, "--batch-size must be >= 1"),
        ("--lr", cfg.lr > 0 and math.isfinite(cfg.lr), "--lr must be a positive number"),
        ("--weight-decay", cfg.weight_decay >= 0, "--weight-decay must be >= 0"),
        ("--warmup-epochs", cfg.warmup_epochs >= 0, "--warmup-epochs must be >= 0"),
        ("--label-smoothing", 0 <= cfg.label_smoothing < 1, "--label-smoothing must be in [0, 1)"),
        ("--mixup", cfg.mixup >= 0 and cfg.cutmix >= 0, "--mixup and --cutmix must be >= 0"),
        ("--mixup", not (cfg.mixup or cfg.cutmix) or cfg.batch_size % 2 == 0,
         "--mixup/--cutmix need an even --batch-size"),
        ("--clip-grad", cfg.clip_grad is None or cfg.clip_grad > 0, "--clip-grad must be > 0"),
        ("--max-steps", cfg.max_steps is None or cfg.max_steps >= 1, "--max-steps must be >= 1"),
        ("--log-every", cfg.log_every >= 1, "--log-every must be >= 1"),
        ("--checkpoint-every", cfg.checkpoint_every >= 0, "--checkpoint-every must be >= 0"),
        ("--density", 0 < cfg.density <= 1, f"--density must be in (0, 1], got {cfg.density}"),
        ("--update-frequency", cfg.update_frequency >= 1,
         f"--update-frequency must be >= 1, got {cfg.update_frequency}"),
        ("--death-rate", 0 <= cfg.death_rate < 1, f"--death-rate must be in [0, 1), got {cfg.death_rate}"),
        ("--t-end", 0 < cfg.t_end <= 1, f"--t-end must be in (0, 1], got {cfg.t_end}"),
        ("--atten-density", 0 < cfg.atten_density <= 1, f"--atten-density must be in (0, 1], got {cfg.atten_density}"),
        ("--other-density", 0 < cfg.other_density <= 1, f"--other-density must be in (0, 1], got {cfg.other_density}"),
        ("--token-number", cfg.token_number is None or cfg.token_number >= 1,
         f"--token-number must be >= 1, got {cfg.token_number}"),
        ("--keep-ratio", cfg.keep_ratio is None or 0 < cfg.keep_ratio <= 1,
         f"--keep-ratio must be in (0, 1], got {cfg.keep_ratio}"),
        ("--token-number", cfg.token_number is None or cfg.keep_ratio is None,
         "give --token-number or --keep-ratio, not both"),
        ("--selector-keep-warmup", 0.0 <= cfg.selector_keep_warmup <= 1.0,
         f"--selector-keep-warmup must be in [0, 1] (a fraction of training), got {cfg.selector_keep_warmup}"),
        ("--amp", cfg.amp in ("auto", "bf16", "off"), f"--amp: unknown mode '{cfg.amp}' (auto, bf16, off)"),
        ("--num-workers", cfg.num_workers >= 0, "--num-workers must be >= 0"),
    ]


def check_method_flags(cfg: Any) -> None:
    """The flags of ``cfg.method`` that need no model: the weight-level methods' distribution, scorers and
    one-shot point; S2ViTE's unit flags; every dynamic method's schedule and grown-entry policy."""
    if cfg.method in UNSTRUCTURED:
        _check_unstructured(cfg)
    # --include/--exclude with s2vite (which masks whole heads and neurons) are not refused here: they have
    # no effect, which the command line says (training/flags.py); a sweep passes them to every method
    if cfg.method == "s2vite":
        if cfg.growth not in STRUCTURED_GROWTH:
            raise FlagError("--growth", f"--growth {cfg.growth}: S2ViTE grows heads and neurons by gradient or "
                            "at random")
        if getattr(cfg, "head_growth", HEAD_GROWTH[0]) not in HEAD_GROWTH:
            raise FlagError("--head-growth", f"--head-growth: unknown rule '{cfg.head_growth}' "
                            f"(choose {', '.join(HEAD_GROWTH)})")
    if cfg.method in DYNAMIC:
        PruneSchedule.from_config(cfg, total_steps=1, steps_per_epoch=1)  # it checks its own settings
    if cfg.method in ("static", "svite", "s2vite"):
        check_policy(str(cfg.grown_moments))
    _check_optimizer_state(cfg)


def _check_optimizer_state(cfg: Any) -> None:
    state = getattr(cfg, "optimizer_state", "full")
    if state not in OPTIMIZER_STATES:
        raise FlagError("--optimizer-state", f"--optimizer-state: unknown mode '{state}' "
                        f"(choose {', '.join(OPTIMIZER_STATES)})")
    if state != "active":
        return
    if cfg.method == "svite" and cfg.growth == "momentum":
        raise FlagError("--optimizer-state", "--optimizer-state active keeps no moments for inactive weights, "
                        "which --growth momentum ranks by; use --growth gradient or random")
    if cfg.method in DYNAMIC and cfg.grown_moments == "zero":
        raise FlagError("--optimizer-state", "--optimizer-state active starts grown weights zero-avg; "
                        "grown_moments='zero' does not apply")


def _check_unstructured(cfg: Any) -> None:
    if cfg.sparse_init not in SPARSE_INITS:
        raise FlagError("--sparse-init", f"--sparse-init: unknown mode '{cfg.sparse_init}' "
                        f"(choose {', '.join(SPARSE_INITS)})")
    if cfg.sparse_init == "custom" and not cfg.mask_path:
        raise FlagError("--mask-path", "--sparse-init custom needs --mask-path FILE (a JSON object "
                        "{param_name: density})")
    if cfg.sparse_init == "custom" and not Path(cfg.mask_path).is_file():
        raise FlagError("--mask-path", f"--mask-path {cfg.mask_path}: no such file")
    if cfg.growth not in WEIGHT_GROWTH:
        raise FlagError("--growth", f"--growth: unknown mode '{cfg.growth}' (choose {', '.join(WEIGHT_GROWTH)})")
    if cfg.death not in DEATHS:
        raise FlagError("--death", f"--death: unknown mode '{cfg.death}' (choose {', '.join(DEATHS)})")
    if cfg.method == "oneshot" and not 0 < float(cfg.oneshot_at) < 1:
        raise FlagError("--oneshot-at", f"--oneshot-at must be in (0, 1), got {cfg.oneshot_at}")
