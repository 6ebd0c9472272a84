"""One readable training loop for dense, SViTE, S2ViTE and SViTE+ runs.

The sparsity method is an engine object (``engine.py``) called at fixed hook points; the loop itself
only knows about data, model, optimizer, schedule, checkpoints and metrics. It runs on CPU, on one
GPU (bf16 autocast) and under ``torchrun`` (DDP: rank 0 writes, metrics are averaged over ranks).

Run directory (``--out DIR``): ``checkpoint.safetensors`` (the one-file checkpoint),
``metrics.jsonl`` (one JSON line per log interval and per epoch), ``config.json`` and the resume
sidecar ``resume-<step>.pt`` that the checkpoint names.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import math
import os
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn
from tqdm import tqdm

from .checkpoint import (
    atomic_write_bytes,
    load_checkpoint,
    load_resume_state,
    save_checkpoint,
    save_resume_state,
)
from .data import build_data, make_loader
from .dst import EngineContext, SparsityEngine, build_engine
from .errors import SviteError
from .evaluate import evaluate_accuracy
from .history import MaskHistory
from .limits import check_train_flags
from .masks import Snapshot
from .models import ModelConfig, SelectorConfig, build_model, input_geometry, is_vit_name
from .rundir import check_out_dir, remove_unstarted

CHECKPOINT_NAME = "checkpoint.safetensors"
METRICS_NAME = "metrics.jsonl"
CONFIG_NAME = "config.json"


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
    # no topology update before this: "plateau" (after the LR warm-up, once the training loss has left its
    # first plateau: measured on the demo data, see dst/schedule.py), "warmup", N steps, or "Xep" epochs
    update_start: str = "plateau"
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    oneshot_at: float = 0.5  # oneshot baseline: fraction of training done dense before pruning
    atten_density: float = 0.7
    other_density: float = 0.6
    # token selector (SViTE+)
    token_number: int | None = None
    keep_ratio: float | None = None
    selector_block: int = 0
    selector_scorer: str = "linear"
    # soft: train on the whole sequence with dropped tokens masked out of attention (a per-patch signal),
    # infer gathered; gather: drop tokens in training too (faster, no per-patch signal); zero: the reference
    selector_mode: str = "soft"
    # fraction of training over which the kept tokens fall from all patches to k (0: k from step 0, as the
    # reference; from scratch on a short schedule that never learned, see token_selector.py)
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


# ----------------------------------------------------------------------------------------------
# small helpers
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


def reduce_mean(values: dict[str, float], ddp: Dist, device: torch.device) -> dict[str, float]:
    if ddp.world_size == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return {k: float(v) / ddp.world_size for k, v in zip(keys, t.tolist(), strict=True)}


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
                raise SviteError(f"{self.path.parent}: another run (pid {pid}) is using this run directory") from None
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


class MetricsLog:
    """Appends one JSON object per line; the app tails this file for live progress."""

    def __init__(self, path: Path | None, echo: bool) -> None:
        self.path, self.echo = path, echo

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, default=float)
        if self.path is not None:
            with open(self.path, "a") as fh:
                fh.write(line + "\n")
        if self.echo:
            tqdm.write(line, file=sys.stdout)


def validate_config(cfg: TrainConfig) -> None:
    """Reject absurd flags up front with a message naming the flag."""
    checks = [
        (cfg.epochs >= 1, "--epochs must be >= 1"),
        (cfg.batch_size >= 1, "--batch-size must be >= 1"),
        (cfg.lr > 0 and math.isfinite(cfg.lr), "--lr must be a positive number"),
        (cfg.weight_decay >= 0, "--weight-decay must be >= 0"),
        (cfg.warmup_epochs >= 0, "--warmup-epochs must be >= 0"),
        (0 <= cfg.label_smoothing < 1, "--label-smoothing must be in [0, 1)"),
        (cfg.mixup >= 0 and cfg.cutmix >= 0, "--mixup and --cutmix must be >= 0"),
        (not (cfg.mixup or cfg.cutmix) or cfg.batch_size % 2 == 0, "--mixup/--cutmix need an even --batch-size"),
        (cfg.clip_grad is None or cfg.clip_grad > 0, "--clip-grad must be > 0"),
        (cfg.max_steps is None or cfg.max_steps >= 1, "--max-steps must be >= 1"),
        (cfg.log_every >= 1, "--log-every must be >= 1"),
        (cfg.checkpoint_every >= 0, "--checkpoint-every must be >= 0"),
        (0 < cfg.density <= 1, f"--density must be in (0, 1], got {cfg.density}"),
        (cfg.update_frequency >= 1, f"--update-frequency must be >= 1, got {cfg.update_frequency}"),
        (0 <= cfg.death_rate < 1, f"--death-rate must be in [0, 1), got {cfg.death_rate}"),
        (0 < cfg.t_end <= 1, f"--t-end must be in (0, 1], got {cfg.t_end}"),
        (0 < cfg.atten_density <= 1, f"--atten-density must be in (0, 1], got {cfg.atten_density}"),
        (0 < cfg.other_density <= 1, f"--other-density must be in (0, 1], got {cfg.other_density}"),
        (cfg.token_number is None or cfg.token_number >= 1, f"--token-number must be >= 1, got {cfg.token_number}"),
        (cfg.keep_ratio is None or 0 < cfg.keep_ratio <= 1, f"--keep-ratio must be in (0, 1], got {cfg.keep_ratio}"),
        (cfg.token_number is None or cfg.keep_ratio is None, "give --token-number or --keep-ratio, not both"),
        (0.0 <= cfg.selector_keep_warmup <= 1.0,
         f"--selector-keep-warmup must be in [0, 1] (a fraction of training), got {cfg.selector_keep_warmup}"),
        (cfg.amp in ("auto", "bf16", "off"), f"--amp: unknown mode '{cfg.amp}' (auto, bf16, off)"),
        (cfg.num_workers >= 0, "--num-workers must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise SviteError(message)
    if not is_vit_name(cfg.model):
        raise SviteError(f"--model: unknown model '{cfg.model}' (a timm ViT/DeiT name, or vit_tiny_demo)")
    check_train_flags(cfg)  # size caps, the model checked on the meta device, a memory estimate


SELECTOR_PREFIX = "token_selector."


def _shape(t: torch.Tensor) -> str:
    return "×".join(str(d) for d in t.shape) or "scalar"


def load_init_weights(model: nn.Module, source: nn.Module, what: str) -> None:
    """Copy ``source``'s weights (an --init checkpoint's model) into the freshly built ``model``.

    The token selector may differ between the two, on purpose: a checkpoint's selector is left out when
    the run trains without one (fine-tuning an SViTE+ backbone with keep ratio 0), and a selector the
    checkpoint lacks starts fresh (adding SViTE+ to a dense or SViTE model). Everything else must fit
    exactly; if not, the SviteError is one whole sentence naming the first misfits and their shapes
    (never torch's cut-off "Error(s) in loading state_dict" text).
    """
    own, state = model.state_dict(), source.state_dict()
    own_sel = any(k.startswith(SELECTOR_PREFIX) for k in own)
    src_sel = any(k.startswith(SELECTOR_PREFIX) for k in state)
    if not own_sel or not src_sel:  # only one side has a selector: it is not part of the fit
        own = {k: v for k, v in own.items() if not k.startswith(SELECTOR_PREFIX)}
        state = {k: v for k, v in state.items() if not k.startswith(SELECTOR_PREFIX)}
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and own[k].shape != state[k].shape]
    if missing or extra or shapes:
        parts = []
        if shapes:
            parts.append(f"{len(shapes)} tensor(s) differ in shape (first: {shapes[0]} is "
                         f"{_shape(state[shapes[0]])} in the checkpoint, {_shape(own[shapes[0]])} here)")
        if missing:
            parts.append(f"{len(missing)} tensor(s) of this model are not in the checkpoint (first: {missing[0]})")
        if extra:
            parts.append(f"{len(extra)} tensor(s) of the checkpoint have no place in this model (first: {extra[0]})")
        hint = "Pass the model flags the checkpoint was trained with (svite inspect shows them)."
        if all(k.startswith(SELECTOR_PREFIX) for k in missing + extra + shapes):
            kind = source.token_selector.scorer_kind
            hint = (f"The checkpoint's token selector has {'an MLP' if kind == 'mlp' else 'a linear'} scorer: "
                    f"pass --selector-scorer {kind}.")
        raise SviteError(f"{what}: its weights do not fit the model these flags build: {'; '.join(parts)}. {hint}")
    model.load_state_dict(state, strict=False)


def _loss_is_finite(loss: torch.Tensor, ddp: Dist) -> bool:
    flag = torch.isfinite(loss.detach()).float()
    if ddp.world_size > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() > 0)


# ----------------------------------------------------------------------------------------------
# the loop
def train(cfg: TrainConfig, *, show_progress: bool = True, echo_metrics: bool = True) -> Path:
    """Train as ``cfg`` says; returns the checkpoint path. Raises SviteError for bad input."""
    validate_config(cfg)
    out = Path(cfg.out)
    device_kind = "cuda" if (cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())) else "cpu"
    ddp = init_distributed(device_kind)
    device = resolve_device(cfg.device, ddp)
    resume_path = Path(cfg.resume) if cfg.resume else None
    if resume_path is not None and resume_path.is_dir():
        resume_path = resume_path / CHECKPOINT_NAME
    if resume_path is None and ddp.is_main and (out / CHECKPOINT_NAME).exists():
        raise SviteError(f"{out}: already holds a run (checkpoint.safetensors); pass --resume {out} to continue it "
                         "or choose another --out")
    created = check_out_dir(out) if ddp.is_main else None
    try:
        with RunLock(out) if ddp.is_main else nullcontext():
            return _train(cfg, out, ddp, device, resume_path, show_progress, echo_metrics)
    except (SviteError, OSError):
        if created is not None:
            remove_unstarted(created, out)
        raise


def _train(cfg: TrainConfig, out: Path, ddp: Dist, device: torch.device, resume_path: Path | None,
           show_progress: bool, echo_metrics: bool) -> Path:
    seed_everything(cfg.seed)
    # data ------------------------------------------------------------------------------------
    model_config = cfg.model_config(num_classes=0)
    img_size, patch_size = input_geometry(model_config)
    data = build_data(cfg.data, img_size=img_size, patch_size=patch_size, seed=cfg.seed, train_size=cfg.train_size,
                      val_size=cfg.val_size, auto_augment=cfg.aa)
    model_config.num_classes = data.num_classes
    train_loader = make_loader(data.train, cfg.batch_size, shuffle=True, seed=cfg.seed, rank=ddp.rank,
                               world_size=ddp.world_size, num_workers=cfg.num_workers, drop_last=True,
                               pin_memory=device.type == "cuda")
    val_loader = make_loader(data.val, cfg.batch_size, shuffle=False, seed=cfg.seed, rank=ddp.rank,
                             world_size=ddp.world_size, num_workers=cfg.num_workers)
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise SviteError(f"--batch-size {cfg.batch_size} is larger than the training set ({len(data.train)} images)")
    total_steps = steps_per_epoch * cfg.epochs
    # model, optimiser, schedule ---------------------------------------------------------------
    model = build_model(model_config)
    init_masks = None
    if cfg.init and resume_path is None:
        init = load_checkpoint(cfg.init)
        bad = next((k for k, v in init.model.state_dict().items() if v.is_floating_point() and not v.isfinite().all()),
                   None)
        if bad is not None:
            raise SviteError(f"--init {cfg.init}: weight {bad} holds NaN or infinite values; refusing to start from it")
        load_init_weights(model, init.model, f"--init {cfg.init}")
        init_masks = init.masks
    model.to(device)
    optimizer = create_optimizer_v2(model, opt="adamw", lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs,
                                       min_lr=cfg.min_lr, warmup_lr=cfg.warmup_lr, step_on_epochs=False,
                                       updates_per_epoch=steps_per_epoch)
    engine: SparsityEngine = build_engine(EngineContext(
        model=model, optimizer=optimizer, total_steps=total_steps, steps_per_epoch=steps_per_epoch, config=cfg,
        init_masks=init_masks, world_size=ddp.world_size, rank=ddp.rank))
    selector = getattr(model, "token_selector", None)
    train_model: nn.Module = model
    if cfg.compile:
        train_model = torch.compile(model)
    if ddp.world_size > 1:
        train_model = nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None)
    use_bf16 = cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext
    mixup = None
    if cfg.mixup > 0 or cfg.cutmix > 0:  # DeiT's recipe; the soft targets carry the label smoothing
        mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
                      num_classes=data.num_classes)
        loss_fn: nn.Module = SoftTargetCrossEntropy()
    elif cfg.label_smoothing > 0:
        loss_fn = LabelSmoothingCrossEntropy(cfg.label_smoothing)
    else:
        loss_fn = nn.CrossEntropyLoss()
    # state: fresh or resumed ------------------------------------------------------------------
    step, start_epoch, history = 0, 0, MaskHistory()  # encodes each snapshot as it is taken
    if resume_path is not None:
        step, start_epoch, history = _resume(resume_path, model, optimizer, scheduler, engine, device, steps_per_epoch)
    meta_base = {"data": {"source": data.source, "img_size": data.img_size, "mean": list(data.mean),
                          "std": list(data.std), "class_names": data.class_names},
                 "train_config": cfg.to_dict(), "total_steps": total_steps, "steps_per_epoch": steps_per_epoch,
                 "world_size": ddp.world_size}
    log = MetricsLog(out / METRICS_NAME if ddp.is_main else None, echo=echo_metrics and ddp.is_main)
    if ddp.is_main:
        out.mkdir(parents=True, exist_ok=True)
        # drop what a killed attempt logged after the checkpoint we start from; on a fresh start (step 0)
        # that is every step line of an attempt killed before its first checkpoint, and any torn line
        _truncate_metrics(out / METRICS_NAME, step)
        for stale in out.glob(".*.tmp"):  # half-written files of a killed run (we hold the lock)
            stale.unlink(missing_ok=True)
        atomic_write_bytes(out / CONFIG_NAME, json.dumps(cfg.to_dict(), indent=2).encode())
        log.write({"kind": "start", "step": step, "epoch": start_epoch, "total_steps": total_steps,
                   "steps_per_epoch": steps_per_epoch, "epochs": cfg.epochs, "method": cfg.method,
                   "pid": os.getpid(), "time": time.time()})
    last_metrics: dict[str, Any] = {}

    def save(epoch_done: float, complete: bool) -> Path:
        meta = {**meta_base, **engine.describe(), "epoch": epoch_done, "step": step, "metrics": last_metrics,
                "complete": complete, "resume_file": f"resume-{step:09d}.pt"}
        sidecar = out / meta["resume_file"]
        new_sidecar = not sidecar.exists()
        save_resume_state(sidecar, {"step": step, "epoch": epoch_done, "optimizer": optimizer.state_dict(),
                                    "scheduler": scheduler.state_dict(), "engine": engine.state_dict(),
                                    "rng": rng_state()})
        try:
            path = save_checkpoint(out / CHECKPOINT_NAME, model, model_config, masks=engine.masks, units=engine.units,
                                   fired=engine.fired, history=history, meta=meta)
        except SviteError:  # e.g. no space left: the checkpoint on disk still names its own sidecar
            if new_sidecar:
                sidecar.unlink(missing_ok=True)
            raise
        for old in out.glob("resume-*.pt"):  # only after the new checkpoint names its own sidecar
            if old != sidecar:
                old.unlink(missing_ok=True)
        return path

    def snapshot(event: str, epoch_value: float) -> None:
        state = {f"token_selector.{k}": v for k, v in selector.state_dict().items()} if selector is not None else {}
        info = engine.snapshot_info()
        if ddp.world_size > 1 and engine.masks is not None:
            info["rank_mask_hashes"] = _check_ranks_agree(engine, step, device)
        history.append(Snapshot.take(step, epoch_value, masks=engine.masks, units=engine.units, state=state,
                                     event=event, **info))

    if step == 0 and not history:
        snapshot("init", 0.0)
    stop_at = min(total_steps, cfg.max_steps) if cfg.max_steps else total_steps
    checkpoint = out / CHECKPOINT_NAME
    for epoch in range(start_epoch, cfg.epochs):
        if step >= stop_at:
            break
        model.train()
        train_loader.sampler.set_epoch(epoch)
        train_loader.sampler.skip((step - epoch * steps_per_epoch) * cfg.batch_size)
        bar = tqdm(total=steps_per_epoch, initial=step - epoch * steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                   disable=not (show_progress and ddp.is_main), leave=False, file=sys.stderr, mininterval=1.0)
        running, seen, t0 = 0.0, 0, time.perf_counter()
        for images, targets in train_loader:
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            if mixup is not None:
                images, targets = mixup(images, targets)
            if selector is not None:
                selector.set_progress(step / total_steps, cfg.selector_keep_warmup)
            with autocast():
                loss = loss_fn(train_model(images), targets)
            if not _loss_is_finite(loss, ddp):
                kept = (f"the last good checkpoint {checkpoint} was left untouched" if checkpoint.exists() else
                        "no checkpoint had been written yet" + (f" (check --init {cfg.init})" if cfg.init else ""))
                raise SviteError(f"training diverged: loss is {loss.item()} at step {step} (epoch {epoch + 1}); {kept}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad)
            optimizer.step()
            loss_value = loss.item()
            changed = engine.after_optimizer_step(step, loss=loss_value)
            step += 1
            scheduler.step_update(num_updates=step)
            if changed:
                snapshot("update", step / steps_per_epoch)
            running += loss_value * images.shape[0]
            seen += images.shape[0]
            bar.update(1)
            if step % cfg.log_every == 0:
                rec = reduce_mean({"loss": loss_value}, ddp, device)
                log.write({"kind": "step", "step": step, "epoch": step / steps_per_epoch,
                           "lr": optimizer.param_groups[0]["lr"], **rec,
                           "images_per_s": seen * ddp.world_size / max(time.perf_counter() - t0, 1e-9)})
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and ddp.is_main:
                save(step / steps_per_epoch, complete=False)
            if step >= stop_at:
                break
        bar.close()
        epoch_done = step / steps_per_epoch
        if step % steps_per_epoch:  # stopped by --max-steps inside an epoch: save exactly this state
            if ddp.is_main:
                save(epoch_done, complete=False)
            break
        val = evaluate_accuracy(model, val_loader, device, autocast=autocast)
        train_loss = reduce_mean({"train_loss": running / max(seen, 1)}, ddp, device)
        val = reduce_mean(val, ddp, device) if ddp.world_size > 1 else val
        masks = engine.masks
        last_metrics = {**train_loss, "val_top1": val["top1"], "val_top5": val["top5"], "val_loss": val["loss"],
                        "density": masks.overall_density() if masks is not None else 1.0}
        snapshot("epoch", epoch_done)
        log.write({"kind": "epoch", "epoch": epoch_done, "step": step, **last_metrics,
                   "time_s": time.perf_counter() - t0})
        if ddp.is_main:
            save(epoch_done, complete=step >= total_steps)
    if ddp.is_main:
        log.write({"kind": "end", "step": step, "checkpoint": str(checkpoint), "metrics": last_metrics})
    if ddp.world_size > 1:
        dist.barrier()
    return checkpoint


def mask_hash(engine: SparsityEngine) -> str:
    """A short digest of the engine's masks (weight and unit level) for cross-rank comparison."""
    digest = hashlib.sha256()
    for group in (engine.masks, engine.units):
        for name, mask in (group or {}).items():
            digest.update(name.encode())
            digest.update(mask.detach().to("cpu", torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def _check_ranks_agree(engine: SparsityEngine, step: int, device: torch.device) -> list[str]:
    """All-gather every rank's mask digest; a disagreement is a bug we refuse to train through."""
    mine = mask_hash(engine)
    hashes: list[str] = [""] * dist.get_world_size()
    dist.all_gather_object(hashes, mine)
    if len(set(hashes)) != 1:
        raise RuntimeError(f"masks differ across ranks after step {step}: {hashes}")
    return hashes


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics lines a killed attempt wrote after the step we (re)start from, and torn lines.

    A line that is JSON but no metrics record, or a file that is not text, is somebody's edit, not a
    kill: refused (naming the line) before anything is written, rather than silently dropped."""
    if not path.exists():
        return
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise SviteError(f"{path}: not UTF-8 text (bad byte at offset {err.start}); fix or remove the file "
                         "to continue this run") from None
    kept = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by the kill
        except RecursionError:
            record = None
        at = record.get("step", 0) if isinstance(record, dict) else None
        if isinstance(at, bool) or not isinstance(at, (int, float)):
            raise SviteError(f"{path}: line {number} is not a metrics record ({line[:40]!r}); fix or remove it "
                             "to continue this run")
        if record.get("kind") in ("start", "end") or at <= step:
            kept.append(line)
    atomic_write_bytes(path, ("\n".join(kept) + "\n").encode() if kept else b"")


def _resume(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
            engine: SparsityEngine, device: torch.device, steps_per_epoch: int) -> tuple[int, int, MaskHistory]:
    """Restore weights, masks, history, optimizer, schedule, engine and RNG from a run directory.

    Runs before anything in the run directory is written. A failure while restoring comes from the
    files (a damaged or hand-edited resume state) or from flags that no longer fit them, so it is
    reported as ``--resume`` naming the file, not as an internal error."""
    loaded = load_checkpoint(path)
    sidecar = path.parent / str(loaded.meta.get("resume_file", ""))
    if not loaded.meta.get("resume_file") or not sidecar.is_file():
        raise SviteError(f"--resume {path}: its resume state ({sidecar.name or 'resume-*.pt'}) is missing")
    if loaded.meta.get("steps_per_epoch") != steps_per_epoch:
        raise SviteError(f"--resume {path}: the run had {loaded.meta.get('steps_per_epoch')} steps per epoch, these "
                         f"flags give {steps_per_epoch}; resume with the run's --batch-size, --train-size and data")
    state = load_resume_state(sidecar)
    try:
        return _restore(path, loaded, state, model, optimizer, scheduler, engine, device, steps_per_epoch)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as err:
        first = str(err).strip().splitlines()[0][:120] if str(err).strip() else ""
        raise SviteError(f"--resume {path}: the resume state {sidecar} is damaged or does not fit this run "
                         f"({type(err).__name__}: {first})") from None


def _restore(path: Path, loaded: Any, state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: Any, engine: SparsityEngine, device: torch.device,
             steps_per_epoch: int) -> tuple[int, int, list[Snapshot]]:
    if int(state["step"]) != int(loaded.meta.get("step", -1)):
        raise SviteError(f"--resume {path}: resume state is for step {state['step']}, checkpoint for "
                         f"step {loaded.meta.get('step')}")
    try:
        model.load_state_dict(loaded.model.state_dict(), strict=True)
    except RuntimeError as err:
        raise SviteError(f"--resume {path}: weights do not fit this model ({str(err).splitlines()[0][:160]})") from None
    model.to(device)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    engine.load_state_dict(state["engine"])
    set_rng_state(state["rng"])
    step = int(state["step"])
    scheduler.step_update(num_updates=step)
    return step, step // steps_per_epoch, loaded.history
