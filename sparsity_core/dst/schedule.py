"""When topology updates happen and how much they change (shared by SViTE and S2ViTE).

Matches the reference (docs/reference.md §1): the iteration counter ``s`` counts optimizer steps
done (1-based after the step); an update runs when ``s % update_frequency == 0 and s < t_end * T``;
the prune ("death") rate follows CosineAnnealingLR from ``death_rate`` down to ``final_rate`` over
the whole run, ``dr(s) = final + (initial - final) * (1 + cos(pi * s / T)) / 2``, or stays constant.

Ours, as RigL has it: no update before ``start`` steps (``--update-start``: the end of the LR warm-up,
a number of steps or epochs). The reference updates from step ``update_frequency`` on, while the model
may still sit at chance; the scores that choose the topology are then noise, and pruning half of every
layer's *initial* weights at chance weakens the signal the model needs to leave its plateau
(docs/reference.md §7). ``--update-start plateau`` waits, beyond the warm-up, until
the training loss has left its first plateau (:class:`UpdateClock`): how long a model sits at chance
varies by seed and data, so no fixed step fits every run. Updates stay on multiples of
``update_frequency``: the first is the first multiple at or after the start.

The reference steps a ``CosineAnnealingLR`` once per iteration and reads the rate after ``s``
steps; the closed form above is that scheduler's value (tests compare the two), without carrying
an SGD optimizer around just to hold a number.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import FlagError, SviteError

DECAYS = ("cosine", "constant")


@dataclass(frozen=True)
class PruneSchedule:
    total_steps: int  # T
    update_frequency: int
    t_end: float = 0.8
    death_rate: float = 0.5
    final_rate: float = 0.005
    decay: str = "cosine"  # "cosine" | "constant"
    start: int = 0  # no update before this many steps are done

    def __post_init__(self) -> None:
        if self.total_steps < 1:
            raise SviteError("the schedule needs at least one training step")
        if self.update_frequency < 1:
            raise FlagError("--update-frequency",
                            f"--update-frequency must be >= 1, got {self.update_frequency}")
        if self.decay not in DECAYS:
            raise FlagError("--decay-schedule",
                            f"--decay-schedule: unknown schedule '{self.decay}' (cosine or constant)")
        if not 0 <= self.death_rate < 1:
            raise FlagError("--death-rate", f"--death-rate must be in [0, 1), got {self.death_rate}")
        if not 0 < self.t_end <= 1:
            raise FlagError("--t-end", f"--t-end must be in (0, 1], got {self.t_end}")
        if self.start < 0:
            raise FlagError("--update-start", f"--update-start must be >= 0 steps, got {self.start}")

    @classmethod
    def from_config(cls, cfg: Any, total_steps: int, steps_per_epoch: int) -> PruneSchedule:
        """The schedule a TrainConfig asks for (``update_frequency``, ``t_end``, ``death_rate``,
        ``decay_schedule``, ``update_start``) over ``total_steps`` steps."""
        start = resolve_update_start(cfg.update_start, steps_per_epoch, float(cfg.warmup_epochs))
        return cls(total_steps=int(total_steps), update_frequency=int(cfg.update_frequency), t_end=float(cfg.t_end),
                   death_rate=float(cfg.death_rate), decay=str(cfg.decay_schedule), start=start)

    def rate(self, steps_done: int) -> float:
        """Fraction of each layer's active units to prune at an update after ``steps_done`` steps."""
        if self.decay == "constant":
            return self.death_rate
        t = min(max(steps_done, 0), self.total_steps)
        return self.final_rate + (self.death_rate - self.final_rate) * (1 + math.cos(math.pi * t / self.total_steps)) / 2

    def is_update_step(self, steps_done: int) -> bool:
        """True when a topology update follows optimizer step number ``steps_done`` (1-based)."""
        return (steps_done > 0 and steps_done >= self.start and steps_done % self.update_frequency == 0
                and steps_done < self.t_end * self.total_steps)

    def update_steps(self) -> list[int]:
        """Every ``steps_done`` value after which an update runs, in order."""
        return [s for s in range(self.update_frequency, self.total_steps + 1, self.update_frequency)
                if self.is_update_step(s)]

    def num_updates(self) -> int:
        return len(self.update_steps())

    @staticmethod
    def n_prune(rate: float, active: int) -> int:
        """ceil(rate * active), as the reference prunes, never more than what is active."""
        return min(active, math.ceil(rate * active))

    def describe(self) -> dict[str, Any]:
        """Plain-JSON summary for checkpoint metadata."""
        steps = self.update_steps()
        return {"total_steps": self.total_steps, "update_frequency": self.update_frequency, "t_end": self.t_end,
                "death_rate": self.death_rate, "final_rate": self.final_rate, "decay_schedule": self.decay,
                "update_start_step": self.start, "first_update_step": steps[0] if steps else None,
                "num_updates": len(steps), "last_update_step": steps[-1] if steps else None}


def resolve_update_start(spec: str | int, steps_per_epoch: int, warmup_epochs: float) -> int:
    """``--update-start`` in steps: ``warmup`` (the end of the LR warm-up), a number of steps (``400``),
    or of epochs with an ``ep`` suffix (``2.5ep``). For ``plateau``, the end of the warm-up: the earliest
    step, the loss decides the rest (:class:`UpdateClock`)."""
    text = str(spec).strip().lower()
    try:
        if text in ("warmup", "plateau"):
            value = float(warmup_epochs) * steps_per_epoch
        elif text.endswith("ep"):
            value = float(text[:-2]) * steps_per_epoch
        else:
            value = float(int(text))
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise FlagError("--update-start", "--update-start: expected 'warmup', 'plateau', a number of steps (400) or "
                        f"of epochs (2.5ep), got {spec!r}")
    return int(round(value))


class UpdateClock:
    """When the next topology update is due: the schedule, plus (``--update-start plateau``) a watch on
    the training loss that holds updates back until the model has left its first plateau.

    The plateau is left once the running mean of the training loss (an EMA with a ~50-step horizon) has
    fallen to ``PLATEAU_RATIO`` (0.9) of its mean over the first ``PLATEAU_WINDOW`` (20) steps: at chance
    a 10-class model's loss sits at ln 10 for epochs, then falls fast. A run whose first losses are
    already below 0.9 of the chance loss ln C (an ``--init`` model that has learned: a fine-tune, or the
    explorer's retrain) has no plateau to leave, so its updates start at the first scheduled step after
    that window. Once started, updates follow the schedule to the end. Under DDP the decision uses the loss averaged over ranks (``reduce``), so every
    rank decides alike. Its state is part of the engine's, so a resumed run decides exactly as an
    uninterrupted one.
    """

    PLATEAU_RATIO = 0.9
    PLATEAU_WINDOW = 20
    EMA_BETA = 0.98
    updates = True  # a clock that may call updates (NoUpdates never does)

    def __init__(self, schedule: PruneSchedule, wait_for_plateau: bool, num_classes: int | None = None) -> None:
        self.schedule = schedule
        self.wait_for_plateau = wait_for_plateau
        self.chance_loss = math.log(num_classes) if num_classes and num_classes > 1 else None
        self.started_at: int | None = None if wait_for_plateau else schedule.start
        self._first: list[float] = []
        self._ema: float | None = None

    @classmethod
    def from_config(cls, cfg: Any, total_steps: int, steps_per_epoch: int,
                    num_classes: int | None = None) -> UpdateClock:
        schedule = PruneSchedule.from_config(cfg, total_steps, steps_per_epoch)
        return cls(schedule, str(cfg.update_start).strip().lower() == "plateau", num_classes)

    def observe(self, loss: float | None) -> None:
        """Feed the training loss of the step just taken (the loop does; non-finite: ignored).

        While waiting for the plateau, a step without a loss is an error: an engine driven from a caller's
        own loop as ``after_optimizer_step(step)`` would otherwise wait for losses it is never given and
        silently never update. Said on the first such step, naming both ways out."""
        if not self.wait_for_plateau or self.started_at is not None:
            return
        if loss is None:
            raise FlagError("--update-start", "--update-start plateau watches the training loss, but this step was "
                            "given none: call after_optimizer_step(step, loss=loss.item()), or choose a start that "
                            "needs no loss (update_start='warmup', a number of steps such as '0', or '2ep')")
        if not math.isfinite(loss):
            return
        if len(self._first) < self.PLATEAU_WINDOW:
            self._first.append(float(loss))
        self._ema = float(loss) if self._ema is None else self.EMA_BETA * self._ema + (1 - self.EMA_BETA) * float(loss)

    def candidate(self, steps_done: int) -> bool:
        """An update may follow this step (the schedule allows it; the plateau watch may still say no)."""
        return self.schedule.is_update_step(steps_done)

    def due(self, steps_done: int, reduce: Any = None) -> bool:
        """An update follows this step. ``reduce(values) -> values`` averages floats over DDP ranks."""
        if not self.schedule.is_update_step(steps_done):
            return False
        if self.started_at is None:
            if len(self._first) < self.PLATEAU_WINDOW or self._ema is None:
                return False
            initial, ema = sum(self._first) / len(self._first), self._ema
            if reduce is not None:
                initial, ema = reduce([initial, ema])
            learned_already = self.chance_loss is not None and initial <= self.PLATEAU_RATIO * self.chance_loss
            if ema > self.PLATEAU_RATIO * initial and not learned_already:
                return False
            self.started_at = steps_done
        return True

    def describe(self) -> dict[str, Any]:
        return {"update_start": "plateau" if self.wait_for_plateau else self.schedule.start,
                "updates_started_at": self.started_at}

    def state_dict(self) -> dict[str, Any]:
        return {"started_at": self.started_at, "first": list(self._first), "ema": self._ema}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.started_at = state.get("started_at", self.started_at)
        self._first = [float(v) for v in state.get("first", [])]
        self._ema = state.get("ema")


class NoUpdates:
    """The schedule of static masks: no topology update, ever (``--method static`` is SViTE on this clock).
    It has no schedule and no state; its settings are not part of the run's description."""

    updates = False
    schedule = None
    started_at = None

    def observe(self, loss: float | None) -> None:
        return None

    def due(self, steps_done: int, reduce: Any = None) -> bool:
        return False

    def describe(self) -> dict[str, Any]:
        return {}

    def state_dict(self) -> None:
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None
