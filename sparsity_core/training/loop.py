"""One readable training loop for dense, SViTE, S2ViTE and SViTE+ runs.

Read it top to bottom: :func:`train` checks the flags and takes the run directory; :func:`_train` builds
the run (:func:`_build`: data, model, optimizer, LR schedule, sparsity engine), restores it on
``--resume``, then loops over epochs (:func:`_train_epoch`) and steps (:func:`_train_step`), evaluating
and checkpointing at every epoch end (:func:`_end_epoch`).

The sparsity method is an engine object (``dst/``): the loop calls ``engine.after_optimizer_step(step)``
after every optimizer step, where the engine re-applies its masks and, on its schedule, prunes and
grows; when that changed the masks the loop records a snapshot. Everything else a run needs at a step, a
snapshot or a checkpoint (SViTE+'s selector schedule, the head probe) is a hook (``hooks.py``). The loop
itself only knows about data, model, optimizer, schedule, checkpoints and metrics. It runs on CPU, on one GPU (bf16 autocast) and
under ``torchrun`` (DDP: rank 0 writes, metrics are averaged over ranks; ``runtime.py``).

Run directory (``--out DIR``, ``rundir.py``): ``checkpoint.safetensors`` (the one-file checkpoint),
``metrics.jsonl`` (one JSON line per log interval and per epoch), ``config.json`` and the resume
sidecar ``resume-<step>.pt`` that the checkpoint names.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from timm.data import Mixup
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch import nn
from tqdm import tqdm

from ..checkpoint import save_checkpoint, save_resume_state
from ..checkpoint.atomic import atomic_write_bytes
from ..checkpoint.header import curve_records, read_header
from ..data import DataBundle, build_data, make_loader
from ..dst import EngineContext, SparsityEngine, build_engine
from ..dst.active_optim import ActiveAdamW
from ..errors import SviteError
from ..history.lazy import MaskHistory
from ..history.scalars import latest_scalars
from ..masks.maskset import Snapshot
from ..models.builder import ModelConfig, build_model, input_geometry
from ..models.evaluate import evaluate_accuracy
from ..trackers import Trackers, open_trackers, parse_log_to
from .config import TrainConfig, validate_config
from .hooks import LoopHook, hooks_for
from .resume import init_from, resume
from .rundir import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    METRICS_NAME,
    MetricsLog,
    check_out_dir,
    remove_unstarted,
    truncate_metrics,
)
from .runtime import (
    Dist,
    RunLock,
    check_ranks_agree,
    device_kind,
    init_distributed,
    loss_is_finite,
    reduce_mean,
    resolve_device,
    rng_state,
    seed_everything,
)

__all__ = ["CHECKPOINT_NAME", "train"]


def train(cfg: TrainConfig, *, show_progress: bool = True, echo_metrics: bool = True) -> Path:
    """Train as ``cfg`` says; returns the checkpoint path. Raises SviteError for bad input."""
    validate_config(cfg)
    out = Path(cfg.out)
    ddp = init_distributed(device_kind(cfg.device))
    device = resolve_device(cfg.device, ddp)
    resume_path = Path(cfg.resume) if cfg.resume else None
    if resume_path is not None and resume_path.is_dir():
        resume_path = resume_path / CHECKPOINT_NAME
    if resume_path is None and ddp.is_main and (out / CHECKPOINT_NAME).exists():
        raise SviteError(f"already holds a run (checkpoint.safetensors); pass --resume {out} to continue it "
                         "or choose another --out", path=out)
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
    run = _build(cfg, out, ddp, device, use_init=bool(cfg.init) and resume_path is None)
    if resume_path is not None:  # before anything in the run directory is written
        run.step, run.start_epoch, run.history = resume(resume_path, run.model, run.optimizer, run.scheduler,
                                                        run.engine, device, run.steps_per_epoch)
        run.curve = [r for r in curve_records(read_header(resume_path).meta) if r["step"] <= run.step]
    run.log = MetricsLog(out / METRICS_NAME if ddp.is_main else None, echo=echo_metrics and ddp.is_main)
    if ddp.is_main:
        _open_run_dir(run)
        # --log-to: TensorBoard / W&B get every metrics record and each snapshot's sparsity scalars
        run.trackers = open_trackers(parse_log_to(cfg.log_to), out, out.name, cfg.to_dict())
        run.log.sink = run.trackers.write_record
    if run.step == 0 and not run.history:
        run.snapshot("init", 0.0)
    stop_at = min(run.total_steps, cfg.max_steps) if cfg.max_steps else run.total_steps
    for epoch in range(run.start_epoch, cfg.epochs):
        if run.step >= stop_at:
            break
        running, seen, t0 = _train_epoch(run, epoch, stop_at, show_progress)
        if run.step % run.steps_per_epoch:  # stopped by --max-steps inside an epoch: save exactly this state
            if ddp.is_main:
                run.save(run.step / run.steps_per_epoch, complete=False)
            break
        _end_epoch(run, running / max(seen, 1), t0)
    if ddp.is_main:
        run.log.write({"kind": "end", "step": run.step, "checkpoint": str(run.checkpoint), "metrics": run.last_metrics})
        run.trackers.close()
    if ddp.world_size > 1:
        dist.barrier()
    return run.checkpoint


@dataclass
class Run:
    """What the loop works on: built once by :func:`_build`, then advanced step by step."""

    cfg: TrainConfig
    out: Path
    ddp: Dist
    device: torch.device
    model_config: ModelConfig
    data: DataBundle
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader
    model: nn.Module  # the model itself (checkpoints, evaluation, the engine's masks)
    train_model: nn.Module  # what the forward pass calls: the model, compiled and/or wrapped in DDP
    optimizer: torch.optim.Optimizer
    scheduler: Any
    engine: SparsityEngine
    autocast: Callable[[], Any]
    mixup: Mixup | None
    loss_fn: nn.Module
    steps_per_epoch: int  # len(train_loader) of a whole epoch (a resumed epoch's loader skips its start)
    log: MetricsLog = field(default_factory=lambda: MetricsLog(None, echo=False))
    history: MaskHistory = field(default_factory=MaskHistory)  # encodes each snapshot as it is taken
    step: int = 0  # optimizer steps done
    start_epoch: int = 0
    last_metrics: dict[str, Any] = field(default_factory=dict)
    hooks: list[LoopHook] = field(default_factory=list)  # the selector schedule, the head probe (hooks.py)
    curve: list[dict[str, Any]] = field(default_factory=list)  # per-epoch metrics, carried in the checkpoint
    trackers: Trackers = field(default_factory=Trackers)  # --log-to writers (none: every call does nothing)

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.cfg.epochs

    @property
    def checkpoint(self) -> Path:
        return self.out / CHECKPOINT_NAME

    def snapshot(self, event: str, epoch_value: float) -> None:
        """Record the engine's masks in the history, with what the hooks add (the token selector's weights,
        the head probe)."""
        info = self.engine.snapshot_info()
        if self.ddp.world_size > 1 and self.engine.masks is not None:
            info["rank_mask_hashes"] = check_ranks_agree(self.engine, self.step)
        fields = {k: v for hook in self.hooks for k, v in hook.snapshot_fields().items()}
        self.history.append(Snapshot.take(self.step, epoch_value, masks=self.engine.masks, units=self.engine.units,
                                          event=event, **fields, **info))
        self.trackers.log(self.step, latest_scalars(self.history))

    def save(self, epoch_done: float, complete: bool) -> Path:
        """Write the resume sidecar, then the checkpoint naming it, then drop older sidecars."""
        cfg, engine, step = self.cfg, self.engine, self.step
        meta = {"data": {"source": self.data.source, "img_size": self.data.img_size, "mean": list(self.data.mean),
                         "std": list(self.data.std), "class_names": self.data.class_names},
                "train_config": cfg.to_dict(), "total_steps": self.total_steps,
                "steps_per_epoch": self.steps_per_epoch, "world_size": self.ddp.world_size,
                **{k: v for hook in self.hooks for k, v in hook.checkpoint_meta().items()},
                **engine.describe(), "epoch": epoch_done, "step": step, "metrics": self.last_metrics,
                "curve": self.curve, "complete": complete, "resume_file": f"resume-{step:09d}.pt"}
        sidecar = self.out / meta["resume_file"]
        new_sidecar = not sidecar.exists()
        save_resume_state(sidecar, {"step": step, "epoch": epoch_done, "optimizer": self.optimizer.state_dict(),
                                    "scheduler": self.scheduler.state_dict(), "engine": engine.state_dict(),
                                    "rng": rng_state()})
        try:
            path = save_checkpoint(self.checkpoint, self.model, self.model_config, masks=engine.masks,
                                   units=engine.units, fired=engine.fired, history=self.history, meta=meta)
        except SviteError:  # e.g. no space left: the checkpoint on disk still names its own sidecar
            if new_sidecar:
                sidecar.unlink(missing_ok=True)
            raise
        for old in self.out.glob("resume-*.pt"):  # only after the new checkpoint names its own sidecar
            if old != sidecar:
                old.unlink(missing_ok=True)
        return path


def _build(cfg: TrainConfig, out: Path, ddp: Dist, device: torch.device, use_init: bool) -> Run:
    """Data, model, optimizer, LR schedule, sparsity engine and loss, in this order (the global RNG is
    drawn from in this order, so a fixed seed gives the same run)."""
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
    model = build_model(model_config)
    init_masks = None
    if use_init:
        init_masks, note = init_from(cfg.init, model, data.class_names, f"--data {cfg.data}")
        if note and ddp.is_main:
            print(f"svite train: note: {note}", file=sys.stderr)
    model.to(device)
    optimizer = create_optimizer_v2(model, opt="adamw", lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer_state == "active":  # moments for active weights only (dst/active_optim.py)
        optimizer = ActiveAdamW.like(optimizer)
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=cfg.epochs, warmup_epochs=cfg.warmup_epochs,
                                       min_lr=cfg.min_lr, warmup_lr=cfg.warmup_lr, step_on_epochs=False,
                                       updates_per_epoch=steps_per_epoch)
    engine = build_engine(EngineContext(
        model=model, optimizer=optimizer, total_steps=steps_per_epoch * cfg.epochs, steps_per_epoch=steps_per_epoch,
        config=cfg, init_masks=init_masks, world_size=ddp.world_size, rank=ddp.rank))
    train_model: nn.Module = torch.compile(model) if cfg.compile else model
    if ddp.world_size > 1:
        train_model = nn.parallel.DistributedDataParallel(
            train_model, device_ids=[device.index] if device.type == "cuda" else None)
    use_bf16 = cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else nullcontext
    mixup, loss_fn = _loss(cfg, data.num_classes)
    return Run(cfg=cfg, out=out, ddp=ddp, device=device, model_config=model_config, data=data,
               train_loader=train_loader, val_loader=val_loader, model=model, train_model=train_model,
               optimizer=optimizer, scheduler=scheduler, engine=engine, autocast=autocast, mixup=mixup,
               loss_fn=loss_fn, steps_per_epoch=steps_per_epoch,
               hooks=hooks_for(model, data.mean, data.std, cfg.selector_keep_warmup))


def _loss(cfg: TrainConfig, num_classes: int) -> tuple[Mixup | None, nn.Module]:
    """DeiT's recipe with --mixup/--cutmix (the soft targets carry the label smoothing), else plain
    (label-smoothed) cross-entropy."""
    if cfg.mixup > 0 or cfg.cutmix > 0:
        mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, label_smoothing=cfg.label_smoothing,
                      num_classes=num_classes)
        return mixup, SoftTargetCrossEntropy()
    if cfg.label_smoothing > 0:
        return None, LabelSmoothingCrossEntropy(cfg.label_smoothing)
    return None, nn.CrossEntropyLoss()


def _open_run_dir(run: Run) -> None:
    """Rank 0, after a resume succeeded: tidy the run directory, write config.json and the start line."""
    cfg, out = run.cfg, run.out
    out.mkdir(parents=True, exist_ok=True)
    # drop what a killed attempt logged after the checkpoint we start from; on a fresh start (step 0)
    # that is every step line of an attempt killed before its first checkpoint, and any torn line
    truncate_metrics(out / METRICS_NAME, run.step)
    for stale in out.glob(".*.tmp"):  # half-written files of a killed run (we hold the lock)
        stale.unlink(missing_ok=True)
    atomic_write_bytes(out / CONFIG_NAME, json.dumps(cfg.to_dict(), indent=2).encode())
    run.log.write({"kind": "start", "step": run.step, "epoch": run.start_epoch, "total_steps": run.total_steps,
                   "steps_per_epoch": run.steps_per_epoch, "epochs": cfg.epochs, "method": cfg.method,
                   "pid": os.getpid(), "time": time.time()})


def _train_epoch(run: Run, epoch: int, stop_at: int, show_progress: bool) -> tuple[float, int, float]:
    """Train through ``epoch`` (from where a resumed run stopped) or up to ``stop_at`` steps; returns the
    summed training loss, the images seen and the start time."""
    cfg, ddp, steps_per_epoch = run.cfg, run.ddp, run.steps_per_epoch
    run.model.train()
    run.train_loader.sampler.set_epoch(epoch)
    run.train_loader.sampler.skip((run.step - epoch * steps_per_epoch) * cfg.batch_size)
    bar = tqdm(total=steps_per_epoch, initial=run.step - epoch * steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}",
               disable=not (show_progress and ddp.is_main), leave=False, file=sys.stderr, mininterval=1.0)
    running, seen, t0 = 0.0, 0, time.perf_counter()
    for images, targets in run.train_loader:
        loss_value = _train_step(run, images, targets, epoch)
        running += loss_value * images.shape[0]
        seen += images.shape[0]
        bar.update(1)
        if run.step % cfg.log_every == 0:
            rec = reduce_mean({"loss": loss_value}, ddp, run.device)
            run.log.write({"kind": "step", "step": run.step, "epoch": run.step / steps_per_epoch,
                           "lr": run.optimizer.param_groups[0]["lr"], **rec,
                           "images_per_s": seen * ddp.world_size / max(time.perf_counter() - t0, 1e-9)})
        if cfg.checkpoint_every and run.step % cfg.checkpoint_every == 0 and ddp.is_main:
            run.save(run.step / steps_per_epoch, complete=False)
        if run.step >= stop_at:
            break
    bar.close()
    return running, seen, t0


def _train_step(run: Run, images: torch.Tensor, targets: torch.Tensor, epoch: int) -> float:
    """One optimizer step, then the engine's hook (masks re-applied; prune and grow on schedule)."""
    cfg = run.cfg
    images = images.to(run.device, non_blocking=True)
    targets = targets.to(run.device, non_blocking=True)
    if run.mixup is not None:
        images, targets = run.mixup(images, targets)
    for hook in run.hooks:
        hook.before_step(run.step, run.total_steps)
    with run.autocast():
        loss = run.loss_fn(run.train_model(images), targets)
    if not loss_is_finite(loss, run.ddp):
        kept = (f"the last good checkpoint {run.checkpoint} was left untouched" if run.checkpoint.exists() else
                "no checkpoint had been written yet" + (f" (check --init {cfg.init})" if cfg.init else ""))
        raise SviteError(f"training diverged: loss is {loss.item()} at step {run.step} (epoch {epoch + 1}); {kept}")
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.clip_grad is not None:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.clip_grad)
    run.optimizer.step()
    loss_value = loss.item()
    changed = run.engine.after_optimizer_step(run.step, loss=loss_value)
    run.step += 1
    run.scheduler.step_update(num_updates=run.step)
    if changed:
        run.snapshot("update", run.step / run.steps_per_epoch)
    return loss_value


def _end_epoch(run: Run, train_loss: float, t0: float) -> None:
    """Evaluate, record the epoch's snapshot and metrics line, and checkpoint."""
    ddp, device = run.ddp, run.device
    epoch_done = run.step / run.steps_per_epoch
    val = evaluate_accuracy(run.model, run.val_loader, device, autocast=run.autocast)
    mean_loss = reduce_mean({"train_loss": train_loss}, ddp, device)
    val = reduce_mean(val, ddp, device) if ddp.world_size > 1 else val
    masks = run.engine.masks
    run.last_metrics = {**mean_loss, "val_top1": val["top1"], "val_top5": val["top5"], "val_loss": val["loss"],
                        "density": masks.overall_density() if masks is not None else 1.0}
    run.snapshot("epoch", epoch_done)
    record = {"epoch": epoch_done, "step": run.step, **run.last_metrics, "time_s": time.perf_counter() - t0}
    # the checkpoint carries its own learning curve, so a copied or uploaded file still has it
    run.curve.append({**record, "lr": run.optimizer.param_groups[0]["lr"]})
    run.log.write({"kind": "epoch", **record})
    if ddp.is_main:
        run.save(epoch_done, complete=run.step >= run.total_steps)
