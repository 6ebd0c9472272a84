"""The Recorder's cost on DeiT-S: time per snapshot and memory per masked weight. Run by hand (never part
of the test suite; the issue's targets: a snapshot <= 0.5 s on this machine, <= 0.3 byte per masked weight):

    python benchmarks/bench_recorder.py                     # mask dict, 8 snapshots, 5% of the weights move each
    python benchmarks/bench_recorder.py --source ao         # torch.ao.pruning parametrizations instead
    python benchmarks/bench_recorder.py --moved 0.0 --json out.json
    python benchmarks/bench_recorder.py --threads 0                # torch's default thread count

A ``deit_small_patch16_224`` (timm, 22.1 M parameters) gets masks at density 0.5 on its 21.9 M sparsifiable
weights (every 2-D/4-D weight, the reference's rule); between snapshots ``--moved`` of each layer's active
weights move (pruned at random, as many grown: a RigL-like update; 0 = an unchanged topology). Each
``rec.snapshot`` is timed whole and in its parts: reading and packing the masks, encoding them into the
history, rewriting the checkpoint (weights, masks, history: atomic, fsynced). Memory is what the recorder
holds between snapshots, traced with ``tracemalloc`` (numpy's buffers are traced; the masks are numpy-packed):
the encoder's state (last masks, ever-active union), the history's bytes, and the peak inside a snapshot, each
divided by the masked weights. The machine's load average is printed beside the figures: the 2-core machine
is shared, and times grow with it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

# isort: off
import sparsity_core  # noqa: F401  (before timm: makes it importable next to a CPU-only torch)
import timm
import torch
from torch.ao.pruning import WeightNormSparsifier
# isort: on

from sparsity_core import Recorder
from sparsity_core.masks import default_sparsifiable


def _held(rec: Recorder) -> dict[str, int]:
    """Bytes the recorder's history holds: the encoder's state and the stored entries."""
    enc = rec.history._encoders["masks"]
    state = sum(a.nbytes for a in (enc.prev or [])) + sum(a.nbytes for a in (enc.fired or []))
    stored = sum(e.payload for g in rec.history.entries.values() for e in g if e is not None)
    return {"encoder_state": state, "history": stored}


def _move(masks: dict[str, torch.Tensor], share: float, gen: torch.Generator) -> None:
    for mask in masks.values():
        flat = mask.view(-1)
        n = int(share * int(flat.sum()))
        if n:
            on, off = flat.nonzero().view(-1), (~flat).nonzero().view(-1)
            flat[on[torch.randperm(len(on), generator=gen)[:n]]] = False
            flat[off[torch.randperm(len(off), generator=gen)[:n]]] = True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", choices=["dict", "ao"], default="dict")
    p.add_argument("--snapshots", type=int, default=8)
    p.add_argument("--moved", type=float, default=0.05, help="share of each layer's active weights moved per update")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on the shared 2-core machine two threads wait on each other, as "
                        "app/settings.py measured; 0 keeps torch's default)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = timm.create_model("deit_small_patch16_224", pretrained=False)
    names = default_sparsifiable(model)
    params = dict(model.named_parameters())
    masked = sum(params[n].numel() for n in names)
    out = Path(tempfile.mkdtemp(prefix="bench_recorder_"))
    masks = None
    if args.source == "ao":
        sparsifier = WeightNormSparsifier(sparsity_level=0.5, sparse_block_shape=(1, 1), zeros_per_block=1)
        sparsifier.prepare(model, [{"tensor_fqn": n} for n in names if params[n].ndim == 2])
        sparsifier.step()
        names = [n for n in names if params[n].ndim == 2]
        masked = sum(params[n].numel() for n in names)
    else:
        masks = {n: torch.rand(params[n].shape, generator=gen) < 0.5 for n in names}
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    rec = Recorder(out / "run", model, masks=masks, config={"seed": 0})
    times, parts, peaks = [], [], []
    for i in range(args.snapshots):
        if i:
            if masks is not None:
                _move(masks, args.moved, gen)
            else:
                for m in model.modules():
                    if hasattr(m, "parametrizations"):
                        fake = m.parametrizations.weight[0]
                        moved = {"w": fake.mask.bool()}
                        _move(moved, args.moved, gen)
                        fake.mask.copy_(moved["w"])
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        t0 = time.perf_counter()
        packed, _ = rec._read_masks()
        t1 = time.perf_counter()
        rec.snapshot(i, epoch=float(i))  # reads and packs again, encodes, saves: the whole call, timed
        t2 = time.perf_counter()
        peaks.append(tracemalloc.get_traced_memory()[1] - before)
        del packed
        times.append(t2 - t1)
        parts.append(t1 - t0)
    after = tracemalloc.get_traced_memory()[0] - base
    held = _held(rec)
    save_t0 = time.perf_counter()
    rec.save()
    save_s = time.perf_counter() - save_t0
    rec.close()
    size = (out / "run" / "checkpoint.safetensors").stat().st_size
    shutil.rmtree(out)
    res = {"source": args.source, "masked_weights": masked, "snapshots": args.snapshots, "moved": args.moved,
           "snapshot_s_median": statistics.median(times[1:] or times), "snapshot_s_first": times[0],
           "snapshot_s_max": max(times), "read_pack_s_median": statistics.median(parts),
           "save_s": save_s, "encode_s_median": max(0.0, statistics.median(times[1:] or times)
                                                   - statistics.median(parts) - save_s),
           "encoder_state_B_per_weight": held["encoder_state"] / masked,
           "history_B_per_weight": held["history"] / masked,
           "traced_B_per_weight": after / masked, "peak_in_snapshot_B_per_weight": max(peaks) / masked,
           "checkpoint_MB": size / 1e6, "threads": torch.get_num_threads(), "load_average": os.getloadavg()[0]}
    for k, v in res.items():
        print(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
