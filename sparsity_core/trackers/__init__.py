"""Writing a run's scalars into the trackers people already use: TensorBoard and W&B (offline).

Both are optional extras (``pip install 'svite-explorer[tensorboard]'`` / ``[wandb]``); the core never
needs them and imports a writer only when a run asks for it (``svite train --log-to tensorboard,wandb``,
``Recorder(log_to=...)``). Every writer sits behind one small interface (:class:`Logger`: ``log(step,
scalars)``, ``close()``) and every scalar has one stable tag (:mod:`.tags`, listed in docs/api.md), so a
TensorBoard dashboard or a W&B report built on one run works on the next.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from ..errors import FlagError
from .tags import record_scalars

#: The trackers ``--log-to`` knows, and the package each one needs.
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


class Logger(Protocol):
    """What a tracker writer does: scalars at a step, then close (flushing what it holds)."""

    def log(self, step: int, scalars: Mapping[str, float]) -> None: ...

    def close(self) -> None: ...


def parse_log_to(spec: str | Sequence[str] | None, flag: str = "--log-to") -> list[str]:
    """``"tensorboard,wandb"`` (or a list) -> the trackers, each known and installed; '' or None: none.
    Raises FlagError naming ``flag`` for an unknown tracker or one whose package is missing."""
    if spec is None:
        return []
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    kinds = []
    for item in (str(i).strip().lower() for i in items):
        if not item:
            continue
        if item not in PACKAGES:
            raise FlagError(flag, f"{flag} {item}: unknown tracker (choose tensorboard, wandb, or both comma-separated)")
        if importlib.util.find_spec(PACKAGES[item]) is None:
            raise FlagError(flag, f"{flag} {item}: the {PACKAGES[item]} package is not installed; "
                            f"pip install 'svite-explorer[{item}]'")
        if item not in kinds:
            kinds.append(item)
    return kinds


class Trackers:
    """The writers a run asked for, fed from its metrics records (:meth:`write_record`, the metrics log's
    sink) and from its snapshots' sparsity scalars (:meth:`log`). No writer: every call does nothing."""

    def __init__(self, loggers: Sequence[Logger] = ()) -> None:
        self.loggers = list(loggers)

    def __bool__(self) -> bool:
        return bool(self.loggers)

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        values = {k: float(v) for k, v in scalars.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if values:
            for logger in self.loggers:
                logger.log(int(step), values)

    def write_record(self, record: Mapping[str, Any]) -> None:
        """A metrics-log record (``kind`` step or epoch) as tagged scalars at its step."""
        if self.loggers and isinstance(record.get("step"), (int, float)):
            self.log(int(record["step"]), record_scalars(record))

    def close(self) -> None:
        for logger in self.loggers:
            logger.close()
        self.loggers = []


def open_trackers(kinds: Sequence[str], out_dir: str | Path, name: str = "", config: Mapping[str, Any] | None = None
                  ) -> Trackers:
    """Writers for ``kinds`` (from :func:`parse_log_to`) into the run folder ``out_dir``: TensorBoard event
    files in ``out_dir`` itself (``tensorboard --logdir`` on a folder of runs shows each by its name), W&B's
    offline run under ``out_dir/wandb`` (``wandb sync`` uploads it later)."""
    loggers: list[Logger] = []
    for kind in kinds:
        if kind == "tensorboard":
            from .tensorboard import TensorBoardLogger

            loggers.append(TensorBoardLogger(Path(out_dir)))
        elif kind == "wandb":
            from .wandb import WandbLogger

            loggers.append(WandbLogger(Path(out_dir), name or Path(out_dir).name, dict(config or {})))
    return Trackers(loggers)


__all__ = ["PACKAGES", "Logger", "Trackers", "open_trackers", "parse_log_to", "record_scalars"]
