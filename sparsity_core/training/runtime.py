"""What a training process needs around the loop: DDP, the device, RNG state and the run lock.

* **DDP** -- join the process group ``torchrun`` sets up (gloo on CPU, nccl on CUDA), average metrics
  over ranks, agree on a non-finite loss, and check that every rank holds the same masks.
* **RNG** -- seed every generator, and capture / restore their states for exact resume.
* **Run lock** -- an exclusive ``flock`` on the run directory, so two runs never write into one.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from ..checkpoint.runfolder import RunLock, run_is_active  # noqa: F401  (the run folder's lock, shared)
from ..dst import SparsityEngine
from ..errors import SviteError


# ----------------------------------------------------------------------------------------------
# DDP and the device
@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> Dist:
    """Join the process group when started by torchrun (gloo on CPU, nccl on CUDA)."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return Dist(rank=dist.get_rank(), world_size=dist.get_world_size(),
                local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def device_kind(requested: str) -> str:
    """``cuda`` or ``cpu``: what ``--device`` asks for (``auto``: CUDA when there is one)."""
    return "cuda" if (requested == "cuda" or (requested == "auto" and torch.cuda.is_available())) else "cpu"


def resolve_device(requested: str, ddp: Dist) -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            raise SviteError("--device cuda: no CUDA device is available on this machine")
        torch.cuda.set_device(ddp.local_rank)
        return torch.device("cuda", ddp.local_rank)
    if requested != "cpu":
        raise SviteError(f"--device: unknown device '{requested}' (use auto, cpu or cuda)")
    return torch.device("cpu")


def reduce_mean(values: dict[str, float], ddp: Dist, device: torch.device) -> dict[str, float]:
    if ddp.world_size == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: float(v) / ddp.world_size for k, v in zip(keys, t.tolist(), strict=True)}


def loss_is_finite(loss: torch.Tensor, ddp: Dist) -> bool:
    """False when the loss is NaN or infinite on any rank (so every rank stops at the same step)."""
    flag = torch.isfinite(loss.detach()).float()
    if ddp.world_size > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() > 0)


def mask_hash(engine: SparsityEngine) -> str:
    """A short digest of the engine's masks (weight and unit level) for cross-rank comparison."""
    digest = hashlib.sha256()
    for group in (engine.masks, engine.units):
        for name, mask in (group or {}).items():
            digest.update(name.encode())
            digest.update(mask.detach().to("cpu", torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def check_ranks_agree(engine: SparsityEngine, step: int) -> list[str]:
    """All-gather every rank's mask digest; a disagreement is a bug we refuse to train through."""
    mine = mask_hash(engine)
    hashes: list[str] = [""] * dist.get_world_size()
    dist.all_gather_object(hashes, mine)
    if len(set(hashes)) != 1:
        raise RuntimeError(f"masks differ across ranks after step {step}: {hashes}")
    return hashes


# ----------------------------------------------------------------------------------------------
# RNG
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
                             "python_pos": random.getstate()[2],
                             "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64)),
                             "numpy_pos": int(np.random.get_state()[2])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ----------------------------------------------------------------------------------------------
# the run lock
