"""What a training process needs around the loop: DDP, the device, RNG state and the run lock.

* **DDP** -- join the process group ``torchrun`` sets up (gloo on CPU, nccl on CUDA), average metrics
  over ranks, agree on a non-finite loss, and check that every rank holds the same masks.
* **RNG** -- seed every generator, and capture / restore their states for exact resume.
* **Run lock** -- an exclusive ``flock`` on the run directory, so two runs never write into one.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

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
class RunLock:
    """An exclusive lock on a run directory, so two runs never write into the same one.

    An ``flock`` on ``DIR/.lock`` (which holds the owner's pid, for messages): the kernel drops it
    when the owner dies, so a SIGKILLed run never leaves a lock that blocks its own resume.
    """

    def __init__(self, out: Path) -> None:
        self.path = out / ".lock"
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = os.read(fd, 32).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise SviteError(f"another run (pid {pid}) is using this run directory", path=self.path.parent) from None
            try:  # the file we locked may have been unlinked by its previous owner meanwhile: retry
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)  # closing releases the flock
            self._fd = None


def run_is_active(out: str | Path) -> bool:
    """True while a training process holds ``out``'s run lock (used by the app's run registry)."""
    path = Path(out) / ".lock"
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
