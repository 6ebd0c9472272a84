"""Shadow q/k/v rows for attention heads, so that S2ViTE can grow a head that is not active.

A pruned head has its q, k and v rows (and biases) masked, so it outputs exactly 0 and its ``proj``
columns get no gradient. The former growth score, ``mean_b ||dL/da_h||_1 = ||W_proj[:, h]^T dL/dy||``,
then ranks a dead head by ``proj`` columns that stopped learning when it died, against alive heads whose
columns are trained and aligned with the loss: in the shipped S2ViTE demo an alive head scored 2.1-5.1x
any dead head, every pruned head was grown straight back, and no head ever moved
(``scripts/head_growth_scores.py``).

This module does for heads what ``neuron_shadow.py`` does for neurons. Beside the model it keeps, for
every *inactive* head only, a shadow of its q/k/v rows and biases: its initial weights while it has never
been active, its last weights once it has been pruned. From the attention input ``x`` of one minibatch,
the shadow says what the head *would* output, ``A_h = softmax(q_h k_h^T / sqrt(d)) v_h``, and so which
gradient its ``proj`` columns would get if it were opened, ``G_h = dL/dy^T A_h`` (for an alive head this
is exactly its real ``proj`` column gradient).

The growth score is that gradient per unit of output, ``||G_h||_F / ||A_h||_F``: how much of the loss
gradient lies along what the head computes, whatever its scale. The scale has to go because it is not
information about the head: an alive head's v rows have grown in training while a never-active head
still has timm's init (its outputs measured 0.35-0.6 against 0.8-1.4 for alive heads at the first update
of the demo run), so the unnormalised gradient ranked every dead head last (0 of 24 block-updates would
have grown one), where the normalised one grew a dead head in 17 of 24
(``scripts/head_growth_scores.py --along-training``, run on the former 20-epoch demo recipe). On the
40-epoch recipe all 6 heads of every block were active at some point in every S2ViTE run of the sweep
(4 alive at the end; ``docs/structured_results.md``).

A grown head gets its shadow rows back and its ``proj`` columns set to 0: the model's output is unchanged
at the moment of growth, the columns learn from the next step (their gradient ``G_h`` is not zero), and
q/k/v learn once the columns have moved, as a grown neuron's fc1 row does behind its zero fc2 column.
Only inactive heads are stored, so the shadow costs ``(1 - atten_density)`` of the qkv weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from timm.models.vision_transformer import Attention

from .neuron_shadow import INIT_STD


def _rows(attn: Attention, head: int) -> torch.Tensor:
    """Indices of head ``head``'s q, k and v rows in ``qkv`` (timm's layout: q heads, then k, then v)."""
    d, width = attn.head_dim, attn.num_heads * attn.head_dim
    one = torch.arange(head * d, (head + 1) * d)
    return torch.cat([one, one + width, one + 2 * width])


class ShadowHeads:
    """Per block, ``{head: (qkv rows (3*d_h, D), qkv bias rows (3*d_h,) or None)}`` of the inactive heads."""

    def __init__(self, attns: Sequence[Attention], alive: Sequence[torch.Tensor], generator: torch.Generator) -> None:
        self.attns = list(attns)
        self.rows: list[dict[int, tuple[torch.Tensor, torch.Tensor | None]]] = [{} for _ in self.attns]
        for i, heads in enumerate(alive):
            self.store(i, ~heads.to("cpu", torch.bool))
            for h, (w, _b) in self.rows[i].items():  # rows stored as zeros carry no direction: timm's init
                if not bool(w.any()):
                    fresh = torch.empty(w.shape)
                    torch.nn.init.trunc_normal_(fresh, std=INIT_STD, a=-2 * INIT_STD, b=2 * INIT_STD,
                                                generator=generator)
                    self.rows[i][h] = (fresh.to(w.device, w.dtype), self.rows[i][h][1])

    @torch.no_grad()
    def store(self, i: int, heads: torch.Tensor) -> None:
        """Remember the q/k/v rows of the heads of block ``i`` about to be masked (or never active)."""
        attn = self.attns[i]
        for h in heads.nonzero().reshape(-1).tolist():
            idx = _rows(attn, h).to(attn.qkv.weight.device)
            bias = attn.qkv.bias[idx].detach().clone() if attn.qkv.bias is not None else None
            self.rows[i][h] = (attn.qkv.weight[idx].detach().clone(), bias)

    @torch.no_grad()
    def restore(self, i: int, heads: torch.Tensor) -> None:
        """Give the heads of block ``i`` just grown their shadow q/k/v rows and zero ``proj`` columns (so
        the output is unchanged), and forget their shadows (they are the model's weights now)."""
        attn = self.attns[i]
        d = attn.head_dim
        for h in heads.nonzero().reshape(-1).tolist():
            w, b = self.rows[i].pop(h)
            idx = _rows(attn, h).to(attn.qkv.weight.device)
            attn.qkv.weight[idx] = w.to(attn.qkv.weight.dtype)
            if attn.qkv.bias is not None and b is not None:
                attn.qkv.bias[idx] = b.to(attn.qkv.bias.dtype)
            attn.proj.weight[:, h * d:(h + 1) * d] = 0

    @torch.no_grad()
    def outputs(self, i: int, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """What each inactive head of block ``i`` would output, ``(B, N, d_h)`` float32, for the attention
        input ``x`` (B, N, D). timm's own q/k norms are applied, so qk-normed models score as they run."""
        attn = self.attns[i]
        if not self.rows[i]:
            return {}
        heads = sorted(self.rows[i])
        w = torch.cat([self.rows[i][h][0] for h in heads]).float()
        b = None
        if attn.qkv.bias is not None:
            b = torch.cat([self.rows[i][h][1] for h in heads]).float()
        n_dead, d = len(heads), attn.head_dim
        qkv = torch.nn.functional.linear(x.float(), w.to(x.device), None if b is None else b.to(x.device))
        qkv = qkv.reshape(x.shape[0], x.shape[1], n_dead, 3, d).permute(3, 0, 2, 1, 4)  # 3, B, H', N, d
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
        out = torch.nn.functional.scaled_dot_product_attention(q, k, qkv[2])  # B, H', N, d
        return {h: out[:, j] for j, h in enumerate(heads)}

    def state_dict(self) -> dict[str, Any]:
        return {"heads": [sorted(r) for r in self.rows],
                "weight": [[r[h][0].detach().cpu().clone() for h in sorted(r)] for r in self.rows],
                "bias": [[None if r[h][1] is None else r[h][1].detach().cpu().clone() for h in sorted(r)]
                         for r in self.rows]}

    def load_state_dict(self, state: dict[str, Any], alive: Sequence[torch.Tensor]) -> None:
        """Restore the shadows; they must be exactly the inactive heads of ``alive``, with the model's shapes."""
        heads, weights, biases = list(state["heads"]), list(state["weight"]), list(state["bias"])
        if not len(heads) == len(weights) == len(biases) == len(self.attns):
            raise ValueError("shadow heads do not fit this model")
        rows: list[dict[int, tuple[torch.Tensor, torch.Tensor | None]]] = []
        for i, attn in enumerate(self.attns):
            dead = (~alive[i].to("cpu", torch.bool)).nonzero().reshape(-1).tolist()
            if [int(h) for h in heads[i]] != dead or len(weights[i]) != len(dead) or len(biases[i]) != len(dead):
                raise ValueError(f"shadow heads of block {i} are not its inactive heads")
            shape = (3 * attn.head_dim, attn.qkv.in_features)
            block = {}
            for h, w, b in zip(dead, weights[i], biases[i], strict=True):
                w = torch.as_tensor(w)
                if tuple(w.shape) != shape or (b is not None and tuple(torch.as_tensor(b).shape) != shape[:1]):
                    raise ValueError(f"shadow head {h} of block {i} has the wrong shape")
                dev, dt = attn.qkv.weight.device, attn.qkv.weight.dtype
                block[h] = (w.to(dev, dt).clone(), None if b is None else torch.as_tensor(b).to(dev, dt).clone())
            rows.append(block)
        self.rows = rows


def alignment(grad_out: torch.Tensor, outputs: dict[int, torch.Tensor], num_heads: int) -> torch.Tensor:
    """Per head ``||dL/dy^T A_h||_F / ||A_h||_F`` from the gradient at ``proj``'s output (B, N, D) and
    each head's output ``A_h`` (B, N, d_h); heads missing from ``outputs`` (or with zero output) score 0."""
    g = grad_out.detach().float().reshape(-1, grad_out.shape[-1])
    scores = torch.zeros(num_heads)
    for h, a in outputs.items():
        a = a.detach().float().reshape(-1, a.shape[-1])
        norm = a.norm()
        if float(norm) > 0:
            scores[h] = float((g.T @ a).norm() / norm)
    return scores
