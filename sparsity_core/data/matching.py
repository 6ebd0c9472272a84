"""Where a data set meets a checkpoint: whose class is which, and how its images are prepared.

A folder's classes are numbered by their sorted position (0, 1, 2, ...). A checkpoint numbers its own
classes however it was trained. Reading a folder's index as the model's index is how an evaluation
reported 8.9% for a model that gets 84% on the same images, and 75% for classes the model has never
seen. So every place where data meets a checkpoint (``svite eval``, ``--init`` fine-tuning, the app)
goes through :func:`match_classes`, which matches *names*:

* the class names the checkpoint recorded when it was trained (our checkpoints record them);
* for a head of an ImageNet size (1000 classes: ImageNet-1k), also the WordNet ids (``n01440764``) and
  the names of timm's ``ImageNetInfo`` (``tench, Tinca tinca``, or any one of its synonyms), so that an
  ImageNet-100 subset in WordNet-id folders evaluates an official DeiT correctly.

Matching ignores case, ``_`` and ``-``. A name that fits several classes (ImageNet has two "crane"s) is
left out and said so, never guessed. Only a checkpoint that records no names and has no ImageNet-size
head is matched by position, and only when the counts agree; the result says so.

:func:`checkpoint_preprocess` gives the normalisation and crop the checkpoint was validated with, so a
folder of the demo's images evaluates like the demo data does.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import torch.utils.data

from ..errors import SviteError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_SHOWN = 5  # names quoted from each side in a message


@dataclass(frozen=True)
class CheckpointClasses:
    """What a checkpoint says its output classes are."""

    names: tuple[str, ...]  # one display name per output (recorded, ImageNetInfo, or "class i")
    source: str  # "recorded" | the ImageNet subset name ("imagenet-1k") | "none"
    aliases: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # normalised name -> outputs

    @property
    def named(self) -> bool:
        return self.source != "none"

    @property
    def short_names(self) -> tuple[str, ...]:
        """Names for a one-line message: an ImageNet description's first synonym ("tench", not "tench,
        Tinca tinca"), so the commas between names stay readable."""
        if self.source in ("recorded", "none"):
            return self.names
        return tuple(n.split(",")[0].strip() for n in self.names)

    def describe(self) -> str:
        """Where the names come from, in words (the app shows it beside a prediction)."""
        if self.source == "recorded":
            return "the checkpoint's own class names"
        if self.source == "none":
            return "class numbers (the checkpoint names no classes)"
        return f"{self.source} class names from timm's ImageNetInfo (assumed from the {len(self.names)}-class head)"


@dataclass(frozen=True)
class ClassMatch:
    """How a data set's classes map onto a checkpoint's outputs."""

    data_names: tuple[str, ...]  # the data set's classes, in its own index order
    targets: tuple[int | None, ...]  # data index -> model output, None: left out
    model: CheckpointClasses
    by: str  # "name" | "position"
    ambiguous: tuple[str, ...] = ()  # left out because the name fits several outputs

    @property
    def left_out(self) -> tuple[str, ...]:
        return tuple(n for n, t in zip(self.data_names, self.targets, strict=True) if t is None)

    @property
    def kept(self) -> tuple[str, ...]:
        return tuple(n for n, t in zip(self.data_names, self.targets, strict=True) if t is not None)

    @property
    def identity(self) -> bool:
        """True when the data's indices already are the model's (nothing to remap, nothing left out)."""
        return self.targets == tuple(range(len(self.model.names)))

    def note(self) -> str:
        """One sentence on what was matched and what was left out ('' when there is nothing to say)."""
        if self.identity and self.by == "name":
            return ""
        if self.by == "position":
            n = len(self.data_names)
            return f"the checkpoint names no classes: the data's {n} classes are taken in order as its outputs 0..{n - 1}"
        parts = [f"{len(self.kept)} of the data's {len(self.data_names)} classes matched by name"]
        unknown = [n for n in self.left_out if n not in self.ambiguous]
        if unknown:
            parts.append(f"left out, not classes of the checkpoint: {quote(unknown)}")
        if self.ambiguous:
            parts.append(f"left out, names that fit several of its classes: {quote(self.ambiguous)}")
        return "; ".join(parts)

    def summary(self) -> dict[str, Any]:
        """What ``svite eval`` reports about the classes (text and ``--json``)."""
        return {"classes_matched_by": self.by, "classes_evaluated": list(self.kept),
                "classes_left_out": list(self.left_out), "classes_note": self.note() or None}


def quote(names: Sequence[str], shown: int = _SHOWN) -> str:
    """``a, b, c`` or ``a, b, c, ... (12 in all)``: the first few names of a set, for one-line messages."""
    names = list(names)
    head = ", ".join(names[:shown])
    return head if len(names) <= shown else f"{head}, ... ({len(names)} in all)"


def normalise(name: str) -> str:
    return re.sub(r"[\s_\-]+", " ", str(name)).strip().lower()


def recorded_names(meta: Mapping[str, Any], num_classes: int) -> list[str] | None:
    """The class names a checkpoint's metadata records, if they are a list of strings, one per output
    (metadata comes from an untrusted file: anything else counts as no names)."""
    data = meta.get("data")
    names = data.get("class_names") if isinstance(data, Mapping) else None
    if isinstance(names, list) and len(names) == num_classes and all(isinstance(n, str) for n in names):
        return list(names)
    return None


@cache
def _imagenet(num_classes: int) -> tuple[str, tuple[str, ...], tuple[str, ...]] | None:
    """(subset, WordNet ids, descriptions) from timm's own ImageNetInfo for an ImageNet-size head."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset({"num_classes": num_classes})
    if subset is None:
        return None
    info = ImageNetInfo(subset)
    return (subset, tuple(info.index_to_label_name(i) for i in range(num_classes)),
            tuple(info.index_to_description(i) for i in range(num_classes)))


def _add(aliases: dict[str, set[int]], name: str, index: int) -> None:
    key = normalise(name)
    if key:
        aliases.setdefault(key, set()).add(index)


def checkpoint_classes(meta: Mapping[str, Any], num_classes: int) -> CheckpointClasses:
    """The names of a checkpoint's ``num_classes`` outputs: recorded ones first; for an ImageNet-size
    head (with no names, or names that are its WordNet ids) also timm's WordNet ids and descriptions."""
    recorded = recorded_names(meta, num_classes)
    aliases: dict[str, set[int]] = {}
    for i, name in enumerate(recorded or []):
        _add(aliases, name, i)
    imagenet = _imagenet(int(num_classes))
    if imagenet is not None and (recorded is None or list(recorded) == list(imagenet[1])):
        subset, wnids, descriptions = imagenet
        for i, (wnid, desc) in enumerate(zip(wnids, descriptions, strict=True)):
            _add(aliases, wnid, i)
            _add(aliases, desc, i)
            for synonym in desc.split(","):
                _add(aliases, synonym, i)
        names = tuple(recorded) if recorded is not None else descriptions
        return CheckpointClasses(names, "recorded" if recorded is not None else subset,
                                 {k: tuple(sorted(v)) for k, v in aliases.items()})
    if recorded is not None:
        return CheckpointClasses(tuple(recorded), "recorded", {k: tuple(sorted(v)) for k, v in aliases.items()})
    return CheckpointClasses(tuple(f"class {i}" for i in range(num_classes)), "none")


def match_classes(data_names: Sequence[str], model: CheckpointClasses, data_what: str, model_what: str,
                  require_known: bool = True) -> ClassMatch:
    """Map a data set's classes onto a checkpoint's outputs by name (see the module docstring).

    Raises SviteError naming both sets (the first few names of each) when no class is known (unless
    ``require_known`` is False: fine-tuning on new classes is legitimate, evaluating on them is not), or
    when the checkpoint names no classes and the counts differ. ``data_what`` / ``model_what`` say what
    the two are in that sentence (``--data DIR``, the checkpoint's path).
    """
    data_names = tuple(str(n) for n in data_names)
    if not model.named:
        if len(data_names) != len(model.names):
            raise SviteError(f"{data_what}: its {len(data_names)} classes ({quote(data_names)}) cannot be matched "
                             f"to {model_what}, which records no class names and has {len(model.names)} outputs")
        return ClassMatch(data_names, tuple(range(len(data_names))), model, "position")
    targets: list[int | None] = []
    ambiguous = []
    for name in data_names:
        hits = model.aliases.get(normalise(name), ())
        targets.append(hits[0] if len(hits) == 1 else None)
        if len(hits) > 1:
            ambiguous.append(name)
    match = ClassMatch(data_names, tuple(targets), model, "name", tuple(ambiguous))
    if require_known and not match.kept:
        raise SviteError(f"{data_what}: none of its classes ({quote(data_names)}) is a class of {model_what} "
                         f"({quote(model.short_names)})")
    return match


class MatchedDataset(torch.utils.data.Dataset):
    """A data set seen through a :class:`ClassMatch`: samples of left-out classes dropped, targets given
    as the model's outputs, and ``class_names`` the model's (so per-class tables name what the model
    calls them)."""

    def __init__(self, base: torch.utils.data.Dataset, match: ClassMatch) -> None:
        self.base, self.match = base, match
        self.class_names = list(match.model.names)
        targets = dataset_targets(base)
        self.indices = [i for i, t in enumerate(targets) if match.targets[t] is not None]
        self.targets = [int(match.targets[targets[i]]) for i in self.indices]  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        x, _ = self.base[self.indices[i]]
        return x, self.targets[i]

    def filename(self, i: int) -> str:
        return self.base.filename(self.indices[i])  # type: ignore[attr-defined]


def dataset_targets(dataset: Any) -> list[int]:
    """Every sample's class index, without loading an image (``targets`` of a folder, ``labels`` of the demo)."""
    targets = getattr(dataset, "targets", None)
    if targets is None:
        targets = getattr(dataset, "labels", None)
    if targets is None:
        raise SviteError(f"{type(dataset).__name__}: the data set does not list its targets")
    return [int(t) for t in targets]


@dataclass(frozen=True)
class Preprocess:
    """How images are prepared for a checkpoint: its normalisation, and the centre-crop fraction of the
    evaluation transform (None: timm's default, 0.875)."""

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    crop_pct: float | None = None


def _triple(value: Any, positive: bool) -> tuple[float, float, float] | None:
    if not isinstance(value, list) or len(value) != 3:
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        return None
    if positive and min(value) <= 0:
        return None
    return (float(value[0]), float(value[1]), float(value[2]))


def checkpoint_preprocess(meta: Mapping[str, Any]) -> Preprocess:
    """The preprocessing a checkpoint was validated with: its recorded mean/std (ImageNet's for foreign
    checkpoints) and, for a model trained on the demo data, no crop (the demo images are made at the
    model's size and never rescaled; a folder of them must be seen the same way)."""
    data = meta.get("data")
    data = data if isinstance(data, Mapping) else {}
    mean, std = _triple(data.get("mean"), False), _triple(data.get("std"), True)
    if mean is None or std is None:
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    return Preprocess(mean, std, 1.0 if data.get("source") == "demo" else None)
