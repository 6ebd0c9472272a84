"""Weights & Biases, offline: the run is written under ``out_dir/wandb`` and never sent anywhere
(``wandb sync out_dir/wandb/offline-run-*`` uploads it when the user wants to). Needs the ``wandb``
package."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import wandb


class WandbLogger:
    """One offline W&B run per run folder, its config the run's config."""

    def __init__(self, out_dir: Path, name: str, config: dict[str, Any]) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(mode="offline", dir=str(out_dir), name=name, config=config, reinit="create_new",
                              settings=wandb.Settings(silent=True, console="off"))
        self._step = -1

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        # W&B wants steps that never go back; a second call at the same step adds to that step's row
        step = max(int(step), self._step)
        self._step = step
        self.run.log(dict(scalars), step=step)

    def close(self) -> None:
        self.run.finish()
