"""TensorBoard event files, written with torch's own ``SummaryWriter`` (needs the ``tensorboard`` package)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter


class TensorBoardLogger:
    """Scalars into ``out_dir/events.out.tfevents.*``, flushed at every call: a run killed at any moment has
    its scalars so far on disk (a few scalars a call, so the flush costs next to nothing)."""

    def __init__(self, out_dir: Path) -> None:
        self.writer = SummaryWriter(log_dir=str(out_dir))

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
