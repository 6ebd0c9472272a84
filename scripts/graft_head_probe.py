"""Give a checkpoint made before the head probe existed the probe of an identical rerun.

    python scripts/graft_head_probe.py checkpoints/s2vite.safetensors /tmp/rerun/checkpoint.safetensors OUT

The rerun must be the same training run (same command and seed, same torch build, one thread): the script
checks that its final weights and masks and every snapshot's masks, head/neuron masks and selector weights
equal the checkpoint's, bit for bit, and refuses otherwise. OUT is then the checkpoint as it was (weights,
masks, metadata, history) plus the rerun's head probe at every snapshot and its ``history.probe`` metadata.
Used once, for the shipped S²ViTE and SViTE+ demos (their reruns gave the same bits, which also shows that
recording the probe changes nothing that training computes); a demo remade by
``scripts/make_demo_checkpoints.py`` records its probe itself.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import sparsity_core  # noqa: E402,F401
from sparsity_core.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from sparsity_core.checkpoint.convert import _same_sets  # noqa: E402
from sparsity_core.history.lazy import MaskHistory  # noqa: E402
from sparsity_core.masks.maskset import Snapshot  # noqa: E402


def main(argv: list[str]) -> int:
    if len(argv) != 3 or Path(argv[2]).exists():
        print("usage: graft_head_probe.py CHECKPOINT RERUN OUT (OUT must not exist)", file=sys.stderr)
        return 2
    old, rerun = load_checkpoint(argv[0]), load_checkpoint(argv[1])
    a, b = old.model.state_dict(), rerun.model.state_dict()
    same = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    same &= all(_same_sets(getattr(old, g), getattr(rerun, g)) for g in ("masks", "units", "fired"))
    same &= old.history.steps == rerun.history.steps and len(old.history) == len(rerun.history)
    for x, y in zip(old.history, rerun.history, strict=True):
        same &= x.masks.unpack().equal(y.masks.unpack()) and x.units.unpack().equal(y.units.unpack())
        same &= x.state.keys() == y.state.keys() and all(torch.equal(x.state[k], y.state[k]) for k in x.state)
    if not same or not rerun.meta.get("head_probe"):
        print(f"{argv[1]} is not an identical rerun of {argv[0]} with a head probe", file=sys.stderr)
        return 2
    history = MaskHistory.from_snapshots([Snapshot(x.step, x.epoch, x.masks, x.units, x.state, x.info, y.probe)
                                          for x, y in zip(old.history, rerun.history, strict=True)])
    meta = {k: v for k, v in old.meta.items() if k not in ("format", "format_version")}
    meta["head_probe"] = rerun.meta["head_probe"]
    save_checkpoint(argv[2], old.model, old.model_config, masks=old.masks, units=old.units, fired=old.fired,
                    history=history, meta=meta)
    print(f"{argv[2]}: {argv[0]} with the head probe of {argv[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
