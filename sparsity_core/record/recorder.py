"""``Recorder``: a mask history and a learning curve from any PyTorch loop, in a run folder every reader of
ours reads (``svite inspect``, ``svite runs``, every page of the explorer).

Three lines in a loop::

    rec = Recorder("runs/mine", model)                 # masks found on the model, or masks={name: tensor}
    rec.log(step, loss=loss.item(), lr=lr)             # any scalars; val_top1= etc. are an evaluation
    rec.snapshot(step, epoch=epoch)                    # the masks now, appended to the history, on disk
    rec.close()                                        # or: with Recorder(...) as rec:

It writes what ``svite train`` writes, through the same code: ``checkpoint.safetensors`` (weights, the final
masks, the keyframe/delta mask history of :class:`~sparsity_core.history.MaskHistory`, the curve, the config
it was given), ``metrics.jsonl`` (every :meth:`Recorder.log`), ``config.json`` and the run lock while it is
open (``checkpoint.runfolder``). Every snapshot rewrites the checkpoint atomically, so a loop killed at any
moment leaves a readable run of the snapshots so far; the metrics log is appended line by line.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint.atomic import atomic_write_bytes
from ..checkpoint.runfolder import CHECKPOINT_NAME, CONFIG_NAME, METRICS_NAME, MetricsLog, RunLock
from ..checkpoint.save import save_checkpoint
from ..errors import SviteError
from ..history.lazy import MaskHistory
from ..history.scalars import latest_scalars
from ..masks.maskset import PackedMasks, Snapshot, count_true, pack_bool
from ..models.builder import ModelConfig
from ..trackers import open_trackers, parse_log_to
from .sources import SOURCE_METHODS, find_masks, given_masks, iter_masks
from .weights import model_kind, plain_state, shapes_of

#: names ``log`` accepts for the stable metrics fields (the runs index reads ``val_top1``/``val_top5``)
ALIASES = {"top1": "val_top1", "top5": "val_top5", "acc1": "val_top1", "acc5": "val_top5"}

Masks = Mapping[str, torch.Tensor] | Callable[[], Mapping[str, torch.Tensor]]


class Recorder:
    """Record a run from your own loop (module docstring). ``masks``: a mapping name -> bool/float tensor
    (or a function returning one) read at every snapshot; without it the masks are found on the model
    (torch.ao.pruning parametrizations, torch.nn.utils.prune buffers), and a snapshot without any is a
    dense one. ``config``: what the run was given (JSON values; ``seed`` groups runs as seeds of one
    configuration). ``method``: the Runs page's name for it (default: the mask source).
    ``model_config``: for a ViT built with :func:`~sparsity_core.build_model` (timm models are recognised).
    ``log_to``: ``"tensorboard"``, ``"wandb"`` or both, comma-separated (docs/api.md has the tags)."""

    def __init__(self, out_dir: str | Path, model: nn.Module, masks: Masks | None = None, *,
                 config: Mapping[str, Any] | None = None, method: str | None = None,
                 model_config: ModelConfig | None = None, log_to: str | None = None) -> None:
        self.out = Path(out_dir)
        if (self.out / CHECKPOINT_NAME).exists():
            raise SviteError("already holds a run (checkpoint.safetensors); give the Recorder a folder of its own",
                             path=self.out)
        self.model = model
        kinds = parse_log_to(log_to, "log_to")
        state = plain_state(model)
        self.kind, self.model_config = model_kind(model, state, model_config)
        self._given = given_masks(masks, shapes_of(state)) if masks is not None else None
        self.source: str | None = "given" if masks is not None else find_masks(model)[0]
        self.method = method or (dict(config or {}).get("method"))
        self.config = _json_config(config, self.model_config.name, self._method_name())
        self._lock = RunLock(self.out).__enter__()
        try:
            atomic_write_bytes(self.out / CONFIG_NAME, json.dumps(self.config, indent=2).encode())
            self.trackers = open_trackers(kinds, self.out, self.out.name, self.config)
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        self._log = MetricsLog(self.out / METRICS_NAME, echo=False, sink=self.trackers.write_record)
        self._log.write({"kind": "start", "step": 0, "epoch": 0.0, "method": self.config["method"],
                         "epochs": self.config.get("epochs"), "pid": os.getpid(), "time": time.time()})
        self.history = MaskHistory(source=str(self.out / CHECKPOINT_NAME))
        self._masks: PackedMasks | None = None  # the last snapshot's (the history's encoder holds the same bytes)
        self.curve: list[dict[str, Any]] = []
        self.metrics: dict[str, float] = {}
        self.step, self.epoch, self.closed = 0, 0.0, False

    # --- the three calls --------------------------------------------------------------------------
    def log(self, step: int, epoch: float | None = None, **scalars: float) -> None:
        """Scalars at ``step`` (a line of ``metrics.jsonl``; the trackers get them too). With any of
        ``val_top1``, ``val_top5``, ``val_loss`` (``top1``/``acc1``, ``top5``/``acc5`` mean the same) it is
        an evaluation: a point of the run's curve, and its accuracy is the run's top-1 until the next."""
        self._open()
        values = {}
        for key, value in scalars.items():
            if isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise SviteError(f"Recorder.log: {key}={value!r} is not a number")
            values[ALIASES.get(key, key)] = float(value)
        self._advance(step, epoch)
        evaluation = any(k.startswith("val_") for k in values)
        record = {"kind": "epoch" if evaluation else "step", "step": self.step, "epoch": self.epoch, **values}
        if evaluation:
            self.metrics.update({k: v for k, v in values.items() if math.isfinite(v)})
            self.curve.append({k: v for k, v in record.items() if k != "kind"})
        self._log.write(record)

    def snapshot(self, step: int, epoch: float | None = None) -> None:
        """The masks now, appended to the mask history (``init`` first, then ``update`` when the topology
        changed since the last snapshot, ``snapshot`` when it did not), and the checkpoint rewritten."""
        self._open()
        self._advance(step, epoch)
        packed, density = self._read_masks()
        info: dict[str, Any] = {"event": "snapshot"} if packed is None else {"event": "snapshot",
                                                                              "overall_density": density}
        self.history.append(Snapshot(step=self.step, epoch=self.epoch, masks=packed or PackedMasks(), info=info))
        entry = self.history.entries["masks"][-1]
        if len(self.history) == 1:
            self.history.infos[-1]["event"] = "init"
        elif entry is not None and entry.kind != "same":
            self.history.infos[-1]["event"] = "update"
        self._masks = packed
        self.save(complete=False)
        self.trackers.log(self.step, latest_scalars(self.history))

    def close(self, complete: bool = True) -> Path | None:
        """The last checkpoint (marked complete unless ``complete=False``), the end line, the lock let go.
        Returns the checkpoint (None when no snapshot was taken)."""
        if self.closed:
            return None
        try:
            path = self.save(complete=complete) if len(self.history) else None
            if complete:
                self._log.write({"kind": "end", "step": self.step, "checkpoint": str(path or ""),
                                 "metrics": self.metrics})
        finally:
            self.closed = True
            self.trackers.close()
            self._lock.__exit__(None, None, None)
        return path

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        self.close(complete=exc_type is None)  # a loop that raised leaves a run marked unfinished

    # --- what the calls share ---------------------------------------------------------------------
    def save(self, complete: bool = False) -> Path:
        """Rewrite the checkpoint (atomically): weights, the last snapshot's masks, history, curve, config."""
        meta = {"method": self.config["method"], "model_kind": self.kind, "train_config": self.config,
                "recorder": {"mask_source": SOURCE_METHODS.get(self.source or "", None)},
                "epoch": self.epoch, "step": self.step, "metrics": self.metrics, "curve": self.curve,
                "complete": bool(complete), "total_steps": self.config.get("total_steps")}
        return save_checkpoint(self.out / CHECKPOINT_NAME, plain_state(self.model), self.model_config,
                               masks=self._masks, history=self.history, meta=meta)

    def _open(self) -> None:
        if self.closed:
            raise SviteError("this Recorder is closed", path=self.out)

    def _advance(self, step: int, epoch: float | None) -> None:
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise SviteError(f"Recorder: step must be an int >= 0, got {step!r}")
        if epoch is not None and not (isinstance(epoch, (int, float)) and math.isfinite(epoch)):
            raise SviteError(f"Recorder: epoch must be a number, got {epoch!r}")
        self.step = step
        self.epoch = float(epoch) if epoch is not None else self.epoch

    def _read_masks(self) -> tuple[PackedMasks | None, float]:
        """The masks as bits, packed a layer at a time (never a bool copy of the whole model), and their
        overall density; (None, 1.0) when there are none."""
        if self._given is not None:
            masks = self._given(self.model)
        else:
            source, masks = find_masks(self.model)
            self.source = source or self.source
        if not masks:
            return None, 1.0
        packed, kept, total = PackedMasks(), 0, 0
        for name, mask in iter_masks(masks):
            packed.data[name], packed.shapes[name] = pack_bool(mask), tuple(mask.shape)
            kept, total = kept + count_true(mask), total + mask.numel()
        if self.config["method"] != self._method_name():  # the first masks of a run that began dense
            self.config["method"] = self._method_name()
            atomic_write_bytes(self.out / CONFIG_NAME, json.dumps(self.config, indent=2).encode())
        return packed, kept / max(total, 1)

    def _method_name(self) -> str:
        return self.method or SOURCE_METHODS.get(self.source or "", "dense")


def _json_config(config: Mapping[str, Any] | None, model: str, method: str) -> dict[str, Any]:
    """The run's config as plain JSON (what ``config.json`` and the checkpoint carry), with its model and
    method; a value JSON cannot hold is refused, naming its key."""
    out = {"model": model, **dict(config or {}), "method": method}
    for key, value in out.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise SviteError(f"Recorder config: {key}={value!r} is not a JSON value") from None
    return out
