"""SViTE+: a learnable token selector that really drops patch tokens.

The reference (docs/reference.md §3) scores every token with ``nn.Linear(D, 1)``, picks the top-k by
Gumbel noise with a straight-through estimator, and then only *zeroes* the dropped tokens: they stay
in the sequence, so no compute is saved, and test-time selection is random. Here:

* training: scores s (one per patch token), l = log_softmax(s), y_soft = softmax((l + G) / τ),
  y_hard = one-hot top-k of y_soft, y = y_hard − sg(y_soft) + y_soft. Three ways to use y:

  - ``soft`` (default): the sequence keeps every token, and every later block's attention gets the
    additive key bias ``log(y + ε)``: a dropped token (y = 0) is invisible to every query (weight
    ε, 1e-6, relative), so the class token computes what it computes from the gathered sequence, and
    ``dL/dy_j`` is the change of the loss if patch j were let back in (the ε cancels in the chain
    rule): **each dropped patch gets its own signal** (DynamicViT trains its attention masking the
    same way). Needs class-token pooling (the dropped tokens' own outputs must not be pooled).
  - ``gather``: the k kept patch tokens (plus the prefix tokens, always kept) are gathered, so the
    sequence really becomes k + 1 long in training too, multiplied by their y (= 1 in value) so the
    straight-through gradient reaches the scorer. Faster to train, but a dropped token is simply not
    there: ``dL/dy_j = 0`` for all of them, and the softmax gives every dropped patch the same
    gradient divided by its soft weight, so the scorer cannot tell a useful dropped patch from the
    others.
  - ``zero`` reproduces the reference (sequence unchanged, x ⊙ y; dropped tokens still attended to
    as zero vectors, also at inference).
* τ falls linearly 10 → 0.1 over training (``set_progress``); it only scales the gradient, since the
  top-k of y_soft is the top-k of l + G whatever τ is.
* inference: hard top-k of the scores, no noise, so the same image always gives the same keep map;
  ``soft`` and ``gather`` both gather the kept tokens (the sequence shrinks, compute goes down).
* keep warm-up (``set_progress(t, keep_warmup=w)``, ours, not the reference's): during the first w of
  training the number of tokens kept in training falls linearly from all patches to k (as EViT does
  with its keep rate). Trained from scratch for a short schedule, a selector that drops half the
  patches from step 0 drops them at random while its scores mean nothing -- the object among them --
  and the tiny ViT on the demo data never left chance (13.6% after 20 epochs, seed 0); with every token
  kept at first, the backbone learns, and the scorer learns from the straight-through gradient.

The selector sits in timm's forward without copying timm code: a forward pre-hook on
``model.blocks[block_index]`` replaces the token tensor the block receives. For block 0 this is
exactly "after the position embedding (and pos_drop / patch_drop / norm_pre), before block 0".
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from timm.layers import Mlp
from torch import nn

from ..errors import SviteError
from .builder import ModelConfig, SelectorConfig, num_patches, register_extension

__all__ = ["TAU_END", "TAU_START", "TokenSelector", "attach_token_selector", "every_patch", "gumbel_noise",
           "keep_at", "temperature_at"]

TAU_START = 10.0
TAU_END = 0.1
SCORERS = ("linear", "mlp")
MODES = ("soft", "gather", "zero")
# weight of a dropped token's key in soft mode, relative to a kept one (log: the additive attention bias)
SOFT_EPS = 1e-6


def temperature_at(t: float) -> float:
    """τ at training progress t ∈ [0, 1]: 10 → 0.1 linearly (the reference after its "fix-tau" commit)."""
    t = min(max(float(t), 0.0), 1.0)
    return TAU_START + (TAU_END - TAU_START) * t


def keep_at(t: float, keep: int, num_patches: int, keep_warmup: float) -> int:
    """Patch tokens kept in training at progress t: ``num_patches`` at t = 0, falling linearly to ``keep``
    at t = ``keep_warmup`` (0: ``keep`` from the start)."""
    if keep_warmup <= 0.0 or t >= keep_warmup:
        return int(keep)
    return int(round(num_patches - (num_patches - keep) * max(float(t), 0.0) / keep_warmup))


def gumbel_noise(like: torch.Tensor) -> torch.Tensor:
    """Standard Gumbel(0, 1) noise shaped like ``like``, drawn from the global torch RNG (so the training
    loop's saved/restored RNG state makes resumed runs bit-identical)."""
    return -torch.empty_like(like, dtype=torch.float32).exponential_().log()


class TokenSelector(nn.Module):
    """Scores patch tokens and keeps the top ``keep`` of them (prefix tokens such as cls always kept).

    ``last_keep_indices`` (B×k, ascending patch indices) and ``last_scores`` (B×N) hold the latest
    selection for analysis; they are not recorded while ``torch.compile`` traces the model.
    """

    def __init__(self, embed_dim: int, num_patches: int, keep: int, *, num_prefix_tokens: int = 1,
                 scorer: str = "linear", mode: str = "soft", block_index: int = 0) -> None:
        super().__init__()
        if scorer not in SCORERS:
            raise SviteError(f"--selector-scorer: unknown scorer '{scorer}' (use {' or '.join(SCORERS)})")
        if mode not in MODES:
            raise SviteError(f"--selector-mode: unknown mode '{mode}' (use {' or '.join(MODES)})")
        if not 1 <= keep <= num_patches:
            raise SviteError(f"token selector keeps {keep} tokens, but the model has {num_patches} patches")
        self.embed_dim = int(embed_dim)
        self.num_patches = int(num_patches)
        self.keep = int(keep)
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.scorer_kind = scorer
        self.mode = mode
        self.block_index = int(block_index)
        if scorer == "linear":  # the reference's `gumbel = nn.Linear(D, 1)`; checkpoint.py maps its weights here
            self.scorer: nn.Module = nn.Linear(embed_dim, 1)
        else:  # a small timm MLP on normalised tokens: can score conjunctions a linear probe cannot
            self.scorer = nn.Sequential(nn.LayerNorm(embed_dim),
                                        Mlp(embed_dim, hidden_features=max(1, embed_dim // 2), out_features=1))
        # A buffer (not a Python float) so torch.compile does not recompile at every step; not persistent,
        # so the state dict holds only the scorer (the loop sets τ from the step before every forward).
        self.register_buffer("tau", torch.tensor(TAU_START), persistent=False)
        self.train_keep = self.keep  # tokens kept in training now (the keep warm-up moves it; eval: self.keep)
        self.last_keep_indices: torch.Tensor | None = None
        self.last_scores: torch.Tensor | None = None
        # soft mode, training: the key bias (B, 1, 1, P+N) every block from block_index on adds to attention
        self.attn_bias: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return (f"keep={self.keep}, of={self.num_patches}, scorer={self.scorer_kind}, mode={self.mode}, "
                f"block_index={self.block_index}")

    @property
    def gathers_at_inference(self) -> bool:
        """True when inference drops tokens from the sequence (soft and gather modes; zero keeps them)."""
        return self.mode != "zero"

    @property
    def temperature(self) -> float:
        return float(self.tau)

    def set_progress(self, t: float, keep_warmup: float = 0.0) -> None:
        """Called by the training loop before every step with t = step / total_steps: sets τ, and the
        number of tokens kept in training (all patches at t = 0 down to ``keep`` at t = keep_warmup)."""
        self.tau.fill_(temperature_at(t))
        self.train_keep = keep_at(t, self.keep, self.num_patches, keep_warmup)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """One score per patch token (B×N, float32) for a token tensor B×(P+N)×D."""
        return self.scorer(x[:, self.num_prefix_tokens:]).squeeze(-1).float()

    def select(self, scores: torch.Tensor, gumbel: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Kept patch indices (B×k, ascending) and, in training, the straight-through weights y (B×N).

        Training perturbs the scores with Gumbel noise (``gumbel`` overrides the random draw, for tests);
        inference is the hard top-k of the scores, with no randomness and no weights.
        """
        if not self.training:
            return scores.topk(self.keep, dim=1, sorted=False).indices.sort(dim=1).values, None
        logp = torch.log_softmax(scores, dim=1)
        noise = gumbel_noise(scores) if gumbel is None else gumbel.to(scores)
        perturbed = logp + noise
        # The top-k of y_soft is the top-k of l + G; taking it from l + G avoids ties among entries of
        # y_soft that underflow to 0 at small τ (the reference takes it from y_soft).
        top = perturbed.topk(self.train_keep, dim=1, sorted=False).indices
        y_soft = torch.softmax(perturbed / self.tau, dim=1)
        y_hard = torch.zeros_like(y_soft).scatter_(1, top, 1.0)
        y = y_hard + (y_soft - y_soft.detach())  # = y_hard - sg(y_soft) + y_soft, exactly 0/1 in value
        return top.sort(dim=1).values, y

    def forward(self, x: torch.Tensor, gumbel: torch.Tensor | None = None) -> torch.Tensor:
        """B×(P+N)×D tokens -> B×(P+k)×D (gather) or B×(P+N)×D with dropped tokens zeroed (zero)."""
        p = self.num_prefix_tokens
        if x.shape[1] != p + self.num_patches:
            raise SviteError(f"token selector expects {p + self.num_patches} tokens, got {x.shape[1]} "
                             "(is another selector or patch dropout active before it?)")
        scores = self.score(x)
        idx, y = self.select(scores, gumbel)
        if not torch.compiler.is_compiling():
            self.last_keep_indices, self.last_scores = idx.detach(), scores.detach()
        self.attn_bias = None
        if self.mode == "soft" and y is not None:  # training: mask dropped tokens out of attention
            self.attn_bias = soft_key_bias(y, p)
            return x
        prefix, patches = x[:, :p], x[:, p:]
        if self.mode == "zero":  # the reference: x * y, dropped tokens stay (zeroed) in the sequence
            if y is None:
                y = torch.zeros_like(scores).scatter_(1, idx, 1.0)
            return torch.cat([prefix, patches * y.unsqueeze(-1).to(patches.dtype)], dim=1)
        kept = patches.gather(1, idx.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
        if y is not None:  # y is exactly 1 on kept tokens in value; y_soft's gradient rides on it
            kept = kept * y.gather(1, idx).unsqueeze(-1).to(kept.dtype)
        return torch.cat([prefix, kept], dim=1)

    def _pre_hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
                  ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return self._mask_hook(module, (self(args[0]), *args[1:]), kwargs)

    def _mask_hook(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
                   ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Blocks from ``block_index`` on: add the soft-mode key bias to the block's attention mask."""
        if self.attn_bias is None:
            return args, kwargs
        bias = self.attn_bias.to(args[0].dtype)
        given = kwargs.get("attn_mask")
        return args, {**kwargs, "attn_mask": bias if given is None else given + bias}


@contextmanager
def every_patch(model: nn.Module) -> Iterator[nn.Module]:
    """The model with its token selector (if any) keeping every patch, for the duration of the block.

    In eval mode the selector keeps the top ``keep`` of its scores; with ``keep`` = all patches that is
    every patch in its own order, so the sequence is the full one and the model is exactly its backbone
    without a selector. Analyses that ask what the backbone does with every patch present use this.
    """
    selector = getattr(model, "token_selector", None)
    if selector is None:
        yield model
        return
    keep = selector.keep
    selector.keep = int(selector.num_patches)
    try:
        yield model
    finally:
        selector.keep = keep


def soft_key_bias(y: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """The additive attention bias of soft mode, (B, 1, 1, P+N): 0 for prefix tokens, ``log(y + ε)``
    for patch tokens (≈0 kept, log ε dropped), broadcast over heads and queries."""
    prefix = torch.zeros(y.shape[0], num_prefix_tokens, dtype=y.dtype, device=y.device)
    return torch.cat([prefix, torch.log(y + SOFT_EPS)], dim=1)[:, None, None, :]


@register_extension
def _selector_step(model: nn.Module, config: ModelConfig) -> None:
    """``build_model`` step: a token selector when the config asks for one."""
    if config.selector is not None:
        attach_token_selector(model, config.selector)


def attach_token_selector(model: nn.Module, config: SelectorConfig) -> None:
    """Give a timm VisionTransformer a ``token_selector`` that runs right before
    ``blocks[config.block_index]`` (``models.build_model`` does, when ``ModelConfig.selector`` is set)."""
    if hasattr(model, "token_selector"):
        raise SviteError("the model already has a token selector")
    blocks = getattr(model, "blocks", None)
    if blocks is None or not hasattr(model, "patch_embed"):
        raise SviteError("the token selector needs a timm VisionTransformer (patch_embed + blocks)")
    depth = len(blocks)
    if not 0 <= int(config.block_index) < depth:
        raise SviteError(f"--selector-block {config.block_index}: must be in [0, {depth - 1}] for a model "
                         f"with {depth} blocks")
    if getattr(model, "dynamic_img_size", False):
        raise SviteError("the token selector needs a fixed image size (dynamic_img_size models are not supported)")
    if config.mode == "soft" and getattr(model, "global_pool", "token") != "token":
        raise SviteError(f"--selector-mode soft needs a class-token model (global_pool 'token', this one pools "
                         f"'{model.global_pool}'): dropped tokens would be averaged in; use --selector-mode gather")
    n = num_patches(model)
    selector = TokenSelector(int(model.embed_dim), n, config.resolve_keep(n),
                             num_prefix_tokens=int(getattr(model, "num_prefix_tokens", 1)), scorer=config.scorer,
                             mode=config.mode, block_index=int(config.block_index))
    p = next(model.parameters(), None)
    if p is not None:
        selector.to(device=p.device)
    model.token_selector = selector
    first = int(config.block_index)
    blocks[first].register_forward_pre_hook(selector._pre_hook, with_kwargs=True)
    for block in list(blocks)[first + 1:]:  # soft mode: every later block masks the dropped tokens too
        block.register_forward_pre_hook(selector._mask_hook, with_kwargs=True)
