"""A training run: the loop and everything around it.

* ``loop`` -- :func:`train`, one loop readable top to bottom (data, model, optimizer, schedule,
  checkpoints, metrics); the sparsity engines and the selector hook into it;
* ``config`` -- :class:`TrainConfig`, every flag of ``svite train``, validated;
* ``flags`` -- which flags take effect for which method (no silent no-ops);
* ``runtime`` -- devices, DDP, RNG state, the run lock;
* ``resume`` -- where a run starts from: a resume state, or ``--init`` weights;
* ``rundir`` -- the run folder: its files, ``--out`` checked, the metrics log.
"""

from __future__ import annotations

from .config import TrainConfig, validate_config
from .loop import train
from .rundir import CHECKPOINT_NAME, CONFIG_NAME, METRICS_NAME

__all__ = ["CHECKPOINT_NAME", "CONFIG_NAME", "METRICS_NAME", "TrainConfig", "train", "validate_config"]
