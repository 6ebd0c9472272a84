"""No silent no-ops: which ``svite train`` flags each method and setup uses, and what happens to a
typed flag that has no effect.

Every flag the user typed is looked up in :data:`FLAG_USE`: the conditions under which it takes
effect. A typed flag whose conditions fail is named on stderr, one line per flag
("--density has no effect with --method dense"). Whether that line is a warning or a refusal follows
from what a sweep script needs:

* **warning** (the run goes on) when every failing condition was *typed* too: a sweep passes one set of
  flags to every method (``--method dense --density 0.3``), so a flag the chosen method does not use
  must not stop it;
* **refusal** (exit 2) when a failing condition is a *default the user never typed*
  (``--density 0.3`` with no ``--method``: the run would silently be dense; ``--mask-path F`` without
  ``--sparse-init custom``; ``--selector-block 2`` with neither ``--keep-ratio`` nor ``--token-number``):
  the user clearly expected the flag to work, and nothing in a sweep's flags asked for it not to.

Only typed flags count, never defaults. The table is keyed by :class:`~.config.TrainConfig` field, and
``tests/test_flag_use.py`` fails when a field or a ``svite train`` flag is missing from it, so a new flag
has to say here when it is used. docs/cli.md lists the table in words.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..errors import FlagError
from .config import DYNAMIC, UNSTRUCTURED


@dataclass(frozen=True)
class Needs:
    """One condition a flag needs to take effect."""

    decided_by: tuple[str, ...]  # the TrainConfig fields whose values decide it
    holds: Callable[[Any], bool]
    without: Callable[[Any], str]  # the failing setting, after "has no effect": "with --method dense"
    fix: str  # what would make the flag take effect
    default: str = "the default"  # why an untyped failing setting holds: "the default", "neither ... given"


def method_in(*methods: str) -> Needs:
    """The flag belongs to these ``--method`` values."""
    names = ", ".join(methods[:-1]) + (f" or {methods[-1]}" if len(methods) > 1 else methods[0])
    return Needs(("method",), lambda c: c.method in methods, lambda c: f"with --method {c.method}",
                 f"pass --method {names}")


FOLDER_DATA = Needs(("data",), lambda c: str(c.data) != "demo", lambda c: "with --data demo",
                    "pass --data DIR (an image folder; the demo images are generated, never augmented)")
CUSTOM_INIT = Needs(("sparse_init",), lambda c: c.sparse_init == "custom",
                    lambda c: f"with --sparse-init {c.sparse_init}", "pass --sparse-init custom")
SELECTOR = Needs(("keep_ratio", "token_number"), lambda c: c.keep_ratio is not None or c.token_number is not None,
                 lambda c: "without a token selector", "pass --keep-ratio R or --token-number K",
                 "neither --keep-ratio nor --token-number was given")
NO_RESUME = Needs(("resume",), lambda c: not c.resume, lambda c: "with --resume",
                  "leave out --resume (a resumed run continues from its own weights)")

ALWAYS: tuple[Needs, ...] = ()  # used by every method and setup
NOT_A_FLAG = None  # a TrainConfig field with no command-line flag (set through TrainConfig only)

_ALWAYS_FIELDS = (
    "out", "model", "img_size", "patch_size", "embed_dim", "depth", "num_heads", "data", "train_size", "val_size",
    "epochs", "batch_size", "lr", "min_lr", "weight_decay", "warmup_epochs", "label_smoothing", "mixup", "cutmix",
    "clip_grad", "seed", "device", "amp", "compile", "num_workers", "max_steps", "log_every", "checkpoint_every",
    "log_to",
    "resume", "method", "token_number", "keep_ratio", "quiet",
)

#: flag (TrainConfig field, or CLI-only dest) -> the conditions under which it takes effect.
FLAG_USE: dict[str, tuple[Needs, ...] | None] = {
    **{name: ALWAYS for name in _ALWAYS_FIELDS},
    "warmup_lr": NOT_A_FLAG,
    "aa": (FOLDER_DATA,),
    "init": (NO_RESUME,),
    # SViTE and its weight-level baselines: the layer budgets
    "density": (method_in(*UNSTRUCTURED),),
    "sparse_init": (method_in(*UNSTRUCTURED),),
    "mask_path": (method_in(*UNSTRUCTURED), CUSTOM_INIT),
    "include": (method_in(*UNSTRUCTURED),),
    "exclude": (method_in(*UNSTRUCTURED),),
    "oneshot_at": (method_in("oneshot"),),
    # the methods that update their topology on the schedule
    "update_frequency": (method_in(*DYNAMIC),),
    "death_rate": (method_in(*DYNAMIC),),
    "decay_schedule": (method_in(*DYNAMIC),),
    "t_end": (method_in(*DYNAMIC),),
    "update_start": (method_in(*DYNAMIC),),
    "growth": (method_in(*DYNAMIC),),
    "grown_moments": (method_in(*DYNAMIC),),
    # AdamW moments of masked weights only: every sparse method
    "optimizer_state": (method_in("static", "oneshot", *DYNAMIC),),
    "death": (method_in("svite"),),
    # S2ViTE's units
    "atten_density": (method_in("s2vite"),),
    "other_density": (method_in("s2vite"),),
    "head_growth": (method_in("s2vite"),),
    # the token selector's settings (SViTE+)
    "selector_block": (SELECTOR,),
    "selector_scorer": (SELECTOR,),
    "selector_mode": (SELECTOR,),
    "selector_keep_warmup": (SELECTOR,),
}


def takes_effect(field: str, cfg: Any) -> bool:
    """Does ``field`` change what a run with ``cfg`` computes (every condition of :data:`FLAG_USE` holds)?
    Runs that differ only in fields without effect are the same experiment (``runs/identity.py``)."""
    return all(n.holds(cfg) for n in FLAG_USE.get(field) or ())


def flag_name(field: str) -> str:
    return "--" + field.replace("_", "-")


@dataclass(frozen=True)
class Unused:
    """A typed flag that has no effect: its one line, and whether the run is refused."""

    field: str
    message: str
    refuse: bool


def unused_flags(cfg: Any, typed: Iterable[str]) -> list[Unused]:
    """The typed flags (TrainConfig fields) that ``cfg``'s method and setup do not use, in ``typed`` order."""
    typed = list(typed)
    found = []
    for field in typed:
        needs = FLAG_USE.get(field) or ()
        failing = [n for n in needs if not n.holds(cfg)]
        if not failing:
            continue
        untyped = [n for n in failing if not set(n.decided_by) & set(typed)]
        flag = flag_name(field)
        message = f"{flag} has no effect " + " and ".join(n.without(cfg) for n in failing)
        if untyped:
            message += f" ({untyped[0].default}); {untyped[0].fix} to use it, or leave {flag} out"
        found.append(Unused(field, message, bool(untyped)))
    return found


def typed_flags(parser: argparse.ArgumentParser, command: str, argv: list[str]) -> list[str]:
    """The flags (dests) of ``command`` that the user typed in ``argv``, defaults left out: ``parser``
    (a fresh one: it is changed) with every default of the command suppressed, so abbreviations and
    ``--flag=value`` count exactly as argparse reads them."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for action in sub.choices[command]._actions:
        action.default = argparse.SUPPRESS
    typed = vars(parser.parse_args(argv))
    return [dest for dest in typed if dest not in ("command", "func")]


def check_unused_flags(cfg: Any, typed: Iterable[str], warn: Callable[[str], None]) -> None:
    """Refuse (FlagError, the first refused flag) or warn (``warn(line)``, one per flag), as the module
    docstring says. Refusals come first: a refused run prints no warnings."""
    found = unused_flags(cfg, typed)
    refused = next((u for u in found if u.refuse), None)
    if refused is not None:
        raise FlagError(flag_name(refused.field), refused.message)
    for unused in found:
        warn(unused.message)
