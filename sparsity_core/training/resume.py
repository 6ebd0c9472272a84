"""Where a run starts from, when not from scratch: ``--init`` (another checkpoint's weights and masks)
or ``--resume`` (this run's own checkpoint and resume state, for a batch-exact continuation)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import LoadedCheckpoint, load_checkpoint, load_resume_state
from ..data.matching import checkpoint_classes, match_classes, quote
from ..dst import SparsityEngine
from ..errors import SviteError
from ..history.lazy import MaskHistory
from ..masks.maskset import MaskSet
from .runtime import set_rng_state

SELECTOR_PREFIX = "token_selector."


def _shape(t: torch.Tensor) -> str:
    return "×".join(str(d) for d in t.shape) or "scalar"


def init_from(path: str, model: nn.Module, class_names: Sequence[str] | None = None,
              data_what: str = "the data") -> tuple[MaskSet | None, str]:
    """``--init PATH``: load the checkpoint's weights into ``model``; returns its masks (if any) and a
    sentence for the user when its classes differ from the data's ('' when they are the same).

    With ``class_names`` (the training data's classes) the checkpoint's classifier rows are matched to
    them by name (``data.matching``): a class it knows keeps its trained row, wherever it sits in the
    data's order, and a class it does not know starts with the fresh row of ``model``."""
    init = load_checkpoint(path)
    bad = next((k for k, v in init.model.state_dict().items() if v.is_floating_point() and not v.isfinite().all()),
               None)
    if bad is not None:
        raise SviteError(f"--init {path}: weight {bad} holds NaN or infinite values; refusing to start from it")
    note = ""
    if class_names is not None:
        note = _match_head(init, model, list(class_names), f"--init {path}", data_what)
    load_init_weights(model, init.model, f"--init {path}")
    return init.masks, note


def _match_head(init: LoadedCheckpoint, model: nn.Module, names: list[str], what: str, data_what: str) -> str:
    """Rebuild ``init``'s classifier head (weights and mask) in the order of ``names``; returns the note."""
    src, own = getattr(init.model, "head", None), getattr(model, "head", None)
    if not isinstance(src, nn.Linear) or not isinstance(own, nn.Linear) or src.in_features != own.in_features:
        return ""  # nothing to match; load_init_weights names any misfit
    classes = checkpoint_classes(init.meta, src.out_features)
    match = match_classes(names, classes, data_what, what, require_known=False)
    if match.identity:
        return "" if match.by == "name" else f"{what}: {match.note()}"
    with torch.no_grad():
        weight, bias = own.weight.detach().clone(), own.bias.detach().clone() if own.bias is not None else None
        mask = torch.ones_like(weight, dtype=torch.bool)
        old_mask = init.masks.get("head.weight") if init.masks is not None else None
        for row, target in enumerate(match.targets):
            if target is None:
                continue
            weight[row] = src.weight[target]
            if bias is not None and src.bias is not None:
                bias[row] = src.bias[target]
            if old_mask is not None:
                mask[row] = old_mask[target]
        head = nn.Linear(own.in_features, own.out_features, bias=bias is not None)
        head.weight.copy_(weight)
        if bias is not None:
            head.bias.copy_(bias)
    init.model.head = head
    if old_mask is not None:
        init.masks["head.weight"] = mask
    if not match.kept:
        return (f"{what}: none of {data_what}'s classes ({quote(names)}) is among its classes "
                f"({quote(classes.short_names)}): the classifier head starts fresh, every other weight is kept")
    fresh = f"; new classes start with a fresh head row: {quote(match.left_out)}" if match.left_out else ""
    return (f"{what}: its classifier rows matched to {data_what}'s classes by name ({len(match.kept)} of "
            f"{len(names)} found){fresh}")


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
        raise SviteError(f"{what}: its weights do not fit the model these flags build: "
                         f"{_misfits(own, state, missing, extra, shapes)}. {_hint(source, missing + extra + shapes)}")
    model.load_state_dict(state, strict=False)


def _misfits(own: dict[str, torch.Tensor], state: dict[str, torch.Tensor], missing: list[str], extra: list[str],
             shapes: list[str]) -> str:
    parts = []
    if shapes:
        parts.append(f"{len(shapes)} tensor(s) differ in shape (first: {shapes[0]} is "
                     f"{_shape(state[shapes[0]])} in the checkpoint, {_shape(own[shapes[0]])} here)")
    if missing:
        parts.append(f"{len(missing)} tensor(s) of this model are not in the checkpoint (first: {missing[0]})")
    if extra:
        parts.append(f"{len(extra)} tensor(s) of the checkpoint have no place in this model (first: {extra[0]})")
    return "; ".join(parts)


def _hint(source: nn.Module, misfits: list[str]) -> str:
    if all(k.startswith(SELECTOR_PREFIX) for k in misfits):
        kind = source.token_selector.scorer_kind
        return (f"The checkpoint's token selector has {'an MLP' if kind == 'mlp' else 'a linear'} scorer: "
                f"pass --selector-scorer {kind}.")
    return "Pass the model flags the checkpoint was trained with (svite inspect shows them)."


def resume(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
           engine: SparsityEngine, device: torch.device, steps_per_epoch: int) -> tuple[int, int, MaskHistory]:
    """Restore weights, masks, history, optimizer, schedule, engine and RNG from a run directory;
    returns (step, epoch, history).

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


def _restore(path: Path, loaded: LoadedCheckpoint, state: dict[str, Any], model: nn.Module,
             optimizer: torch.optim.Optimizer, scheduler: Any, engine: SparsityEngine, device: torch.device,
             steps_per_epoch: int) -> tuple[int, int, MaskHistory]:
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
    engine.check_optimizer_state()
    set_rng_state(state["rng"])
    step = int(state["step"])
    scheduler.step_update(num_updates=step)
    return step, step // steps_per_epoch, loaded.history
