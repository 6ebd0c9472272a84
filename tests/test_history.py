"""The keyframe + delta mask history: exact coding, its byte budget against the entropy bound, lazy
decoding in any order, the counts the charts use, the distance sample, resuming, format-1 files,
damaged files, and a real training run whose masks are recorded independently of the history."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_model_config, tiny_train_config
from safetensors import safe_open
from safetensors.torch import save as safetensors_save

import sparsity_core.history.lazy as history_mod
import sparsity_core.training.loop as train_mod
from sparsity_core.analysis import distance_basis, fired_rate, mask_churn, snapshot_distances
from sparsity_core.checkpoint import load_checkpoint, save_checkpoint
from sparsity_core.errors import CheckpointError
from sparsity_core.history import codec as codec
from sparsity_core.history.fileformat import history_from_file, history_summary, history_to_file
from sparsity_core.history.lazy import MaskHistory
from sparsity_core.masks.maskset import MaskSet, Snapshot, default_sparsifiable
from sparsity_core.models.builder import build_model
from sparsity_core.training.loop import train

ROOT = Path(__file__).resolve().parent.parent


def log2_binom(n: int, f: int) -> float:
    return (math.lgamma(n + 1) - math.lgamma(f + 1) - math.lgamma(n - f + 1)) / math.log(2)


def _roundtrip_bits(flat: np.ndarray) -> tuple[int, int]:
    method, count, k, data = codec.encode_bits(flat)
    codec.check_bits_header(method, count, k, len(data), len(flat))
    state = np.zeros(len(flat), dtype=bool)
    codec.apply_bits(state, method, count, k, np.frombuffer(data, dtype=np.uint8))
    assert np.array_equal(state, flat)
    return method, len(data)


# ----------------------------------------------------------------------------------------------
# the coder
@pytest.mark.parametrize("p", [0.0005, 0.005, 0.023, 0.1, 0.186, 0.3, 0.5, 0.7, 0.95, 0.9995])
def test_a_random_set_is_exact_and_within_1_25x_of_its_entropy(p):
    rng = np.random.default_rng(int(p * 1e4))
    n = 300_007
    flat = rng.random(n) < p
    method, nbytes = _roundtrip_bits(flat)
    f = int(flat.sum())
    assert 8 * nbytes <= 1.25 * log2_binom(n, f), (method, nbytes, log2_binom(n, f) / 8)
    assert nbytes <= -(-n // 8)  # never more than the bitmap


def test_edge_sets_round_trip():
    for flat in (np.zeros(13, bool), np.ones(13, bool), np.eye(1, 1000, 999, dtype=bool)[0],
                 np.eye(1, 1000, 0, dtype=bool)[0], np.arange(4096) % 7 == 0, np.zeros(0, bool)):
        _roundtrip_bits(flat)
    assert codec.encode_bits(np.zeros(100, bool))[0] == codec.EMPTY
    runs = np.zeros(100_000, bool)
    runs[5000:9000] = True  # a structured flip (whole rows): a bit per position plus the first gap
    method, nbytes = _roundtrip_bits(runs)
    assert method == codec.RICE and 8 * nbytes <= 4000 + 5000 + 8 < 0.4 * log2_binom(100_000, 4000)


def test_byte_layers_round_trip_and_an_unchanged_one_is_empty():
    rng = np.random.default_rng(0)
    a = rng.standard_normal(5000).astype(np.float32)
    b = a + rng.standard_normal(5000).astype(np.float32) * 1e-3
    xor = np.frombuffer(a.tobytes(), np.uint8) ^ np.frombuffer(b.tobytes(), np.uint8)
    method, data = codec.encode_bytes(xor, 4)
    assert method == codec.ZLIB and len(data) < len(xor)
    state = np.frombuffer(a.tobytes(), np.uint8).copy()
    codec.apply_bytes(state, method, np.frombuffer(data, np.uint8), 4)
    assert state.tobytes() == b.tobytes()
    assert codec.encode_bytes(np.zeros(64, np.uint8), 4) == (codec.EMPTY, b"")


def test_damaged_segments_raise_value_errors_never_crash():
    rng = np.random.default_rng(1)
    flat = rng.random(50_000) < 0.02
    method, count, k, data = codec.encode_bits(flat)
    seg = np.frombuffer(data, np.uint8)
    bad = [(count + 1, k, seg), (count, k, seg[:-1]), (count, k, np.r_[seg, np.uint8(0)]),
           (count, k + 1, seg), (count - 1, k, seg)]
    for c, kk, d in bad:
        with pytest.raises(ValueError):
            codec.check_bits_header(method, c, kk, len(d), len(flat))
            codec.apply_bits(np.zeros(len(flat), bool), method, c, kk, d)
    for i in range(0, len(seg), max(1, len(seg) // 50)):  # any flipped byte: an error or a different set
        d = seg.copy()
        d[i] ^= 0xA5
        state = np.zeros(len(flat), bool)
        try:
            codec.apply_bits(state, method, count, k, d)
        except ValueError:
            continue
        assert not np.array_equal(state, flat)
    with pytest.raises(ValueError, match="inflate"):
        codec.apply_bytes(np.zeros(100, np.uint8), codec.ZLIB, np.frombuffer(b"x\x9c\x03\x00", np.uint8), 4)
    with pytest.raises(ValueError):
        codec.check_bits_header(9, 0, 0, 0, 10)


# ----------------------------------------------------------------------------------------------
# the history
def _random_run(n_snaps: int = 14, seed: int = 0, shapes=((64, 48), (40, 96), (10, 7, 3, 3))):
    """Snapshots of a fake run (one update in three changes nothing, like epoch ends) and the
    truth, kept as plain tensors outside any history object."""
    gen = torch.Generator().manual_seed(seed)
    masks = MaskSet({f"blocks.{i}.w": torch.rand(s, generator=gen) < 0.5 for i, s in enumerate(shapes)})
    masks["head.w"] = torch.rand(30, 50, generator=gen) < 0.97  # nearly dense: its key codes the complement
    units = MaskSet({"blocks.0.attn.heads": torch.tensor([True, False, True, True])})
    state = {"token_selector.w": torch.randn(3, 5, generator=gen)}
    snaps, truth = [], []
    for t in range(n_snaps):
        if t and t % 3:
            p = [0.3, 0.05, 0.01][t % 3]
            masks = MaskSet({n: m ^ (torch.rand(m.shape, generator=gen) < (p if n != "head.w" or t % 3 == 1 else 0))
                             for n, m in masks.items()})
            state = {"token_selector.w": state["token_selector.w"] + 0.01 * torch.randn(3, 5, generator=gen)}
        if t == 7:
            units = MaskSet({"blocks.0.attn.heads": torch.tensor([True, True, False, True])})
        snaps.append(Snapshot.take(10 * t, t / 2, masks=masks, units=units, state=state, event="update"))
        truth.append((masks.clone(), units.clone(), {k: v.clone() for k, v in state.items()}))
    return snaps, truth


def test_any_snapshot_decodes_exactly_in_any_order_with_short_keyframe_chains():
    snaps, truth = _random_run()
    h = MaskHistory.from_snapshots(snaps, keyframe_every=3)
    kinds = [e.kind for e in h.entries["masks"]]
    assert kinds[0] == "key" and "same" in kinds and kinds.count("key") >= 3
    chain = 0
    for kind in kinds:  # never more than keyframe_every deltas between keyframes
        chain = 0 if kind == "key" else chain + (kind == "delta")
        assert chain <= 3
    order = np.random.default_rng(0).permutation(len(snaps)).tolist()
    for i in order + order[::-1]:
        masks, units, state = truth[i]
        for name in masks:
            assert torch.equal(h.layer(i, name), masks[name]), (i, name)
        assert h.masks_at(i).equal(masks) and MaskSet(h.group_at(i, "units")).equal(units)
        assert torch.equal(h.layer(i, "token_selector.w", "state"), state["token_selector.w"])
    for name in truth[0][0]:
        walked = {t: s.copy() for t, s in h.walk("masks", name)}
        assert all(np.array_equal(walked[t], truth[t][0][name].reshape(-1).numpy()) for t in range(len(snaps)))


def test_counts_need_no_decoding_and_equal_brute_force():
    snaps, truth = _random_run()
    h = MaskHistory.from_snapshots(snaps)
    stats = h.stats("masks")
    union = None
    for row, t in enumerate(stats.index):
        masks = truth[t][0]
        prev = truth[t - 1][0] if t else masks
        union = masks.clone() if union is None else MaskSet({n: union[n] | masks[n] for n in masks})
        for j, layer in enumerate(stats.layers):
            m, q = masks[layer.name], prev[layer.name]
            assert stats.ones[row, j] == int(m.sum()) and stats.fired[row, j] == int(union[layer.name].sum())
            assert stats.flips[row, j] == int((m ^ q).sum()) and stats.grown[row, j] == int((m & ~q).sum())
    churn = mask_churn(h)
    assert churn["grown"].tolist() == [int(stats.grown[r].sum()) for r in range(1, len(stats.index))]
    assert fired_rate(h)["fired"].is_monotonic_increasing


def test_an_unchanged_snapshot_costs_a_few_bytes_and_deltas_stay_near_the_bound():
    snaps, truth = _random_run(n_snaps=9, shapes=((512, 384), (384, 384)))
    h = MaskHistory.from_snapshots(snaps)
    n = sum(m.numel() for m in truth[0][0].values())
    assert 8 * h.entries["masks"][0].payload <= n  # the first snapshot: at most one bit per weight
    for t in range(1, len(snaps)):
        entry = h.entries["masks"][t]
        flips = sum(int((truth[t][0][k] ^ truth[t - 1][0][k]).sum()) for k in truth[t][0])
        if flips == 0:
            assert entry.kind == "same" and entry.payload == 0 and len(json.dumps(entry.to_json())) <= 20
        else:
            assert entry.kind == "delta" and 8 * entry.payload <= 1.25 * log2_binom(n, flips)


def test_sampled_distances_equal_brute_force_on_the_sampled_positions():
    snaps, truth = _random_run(n_snaps=10)
    h = MaskHistory.from_snapshots(snaps, sample_min=0, sample_target=1000)
    assert h.sample_stride > 1 and h.sample_stride % 2 == 1
    basis = distance_basis(h)
    assert not basis["exact"] and basis["sampled"] == h.layers["sample"][0].numel
    dist, idx = snapshot_distances(h, "hamming")
    flat = [torch.cat([m.reshape(-1) for m in t[0].values()])[::h.sample_stride] for t in truth]
    for a in range(len(flat)):
        for b in range(len(flat)):
            assert dist[a, b] == pytest.approx(int((flat[a] ^ flat[b]).sum()) / len(flat[a]))
    exact = snapshot_distances(MaskHistory.from_snapshots(snaps), "hamming")[0]
    assert np.abs(exact - dist).max() < 6 * basis["stderr"]  # and it estimates the exact ones
    assert distance_basis(MaskHistory.from_snapshots(snaps))["exact"]


def test_absent_groups_and_a_gap_force_a_keyframe():
    gen = torch.Generator().manual_seed(3)
    m1 = MaskSet({"w": torch.rand(40, 40, generator=gen) < 0.5})
    m2 = MaskSet({"w": m1["w"] ^ (torch.rand(40, 40, generator=gen) < 0.1)})
    snaps = [Snapshot.take(0, 0, masks=None), Snapshot.take(1, 1, masks=m1), Snapshot.take(2, 2, masks=None),
             Snapshot.take(3, 3, masks=m2), Snapshot.take(4, 4, masks=m2)]
    h = MaskHistory.from_snapshots(snaps)
    assert [e.kind if e else None for e in h.entries["masks"]] == [None, "key", None, "key", "same"]
    assert h.stats("masks").flips[1].tolist() == [int((m1["w"] ^ m2["w"]).sum())]  # counted across the gap
    assert torch.equal(h.layer(4, "w"), m2["w"]) and not h.has(2)


def test_a_resumed_history_writes_the_same_bytes_as_one_written_in_one_go():
    snaps, _ = _random_run()
    whole = MaskHistory.from_snapshots(snaps, keyframe_every=3)
    tensors, header = history_to_file(MaskHistory.from_snapshots(snaps[:8], keyframe_every=3))
    resumed = history_from_file(json.loads(json.dumps(header)), tensors, "part.safetensors")
    for snap in snaps[8:]:
        resumed.append(snap)
    t1, h1 = history_to_file(whole)
    t2, h2 = history_to_file(resumed)
    assert h1 == h2 and t1.keys() == t2.keys() and all(torch.equal(t1[k], t2[k]) for k in t1)


# ----------------------------------------------------------------------------------------------
# files
def _save(path: Path, snaps, **kwargs) -> Path:
    cfg = tiny_model_config()
    model = build_model(cfg)
    h = MaskHistory.from_snapshots(snaps, **kwargs)
    return save_checkpoint(path, model, cfg, history=h, meta={"method": "svite"})


def _tiny_snaps(n: int = 6):
    model = build_model(tiny_model_config())
    params = dict(model.named_parameters())
    gen = torch.Generator().manual_seed(0)
    masks = MaskSet({k: torch.rand(params[k].shape, generator=gen) < 0.5 for k in default_sparsifiable(model)})
    snaps = []
    for t in range(n):
        if t:
            masks = MaskSet({k: m ^ (torch.rand(m.shape, generator=gen) < 0.05) for k, m in masks.items()})
        snaps.append(Snapshot.take(t, t, masks=masks))
    return snaps


def _rewrite(path: Path, out: Path, edit) -> Path:
    """Copy a checkpoint with its JSON header and tensors changed by ``edit(header, tensors)``."""
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k).clone() for k in fh.keys()}  # noqa: SIM118
    header = json.loads(meta["svite_explorer"])
    edit(header, tensors)
    out.write_bytes(safetensors_save(tensors, metadata={"svite_explorer": json.dumps(header)}))
    return out


def _first_delta(header) -> int:
    return next(i for i, s in enumerate(header["history"]["snapshots"]) if s.get("masks", {}).get("kind") == "delta")


BAD_INDEX = {
    "method": lambda h, t: h["history"]["snapshots"][_first_delta(h)]["masks"]["method"].__setitem__(0, 7),
    "count": lambda h, t: h["history"]["snapshots"][_first_delta(h)]["masks"]["count"].__setitem__(0, 10**9),
    "bytes": lambda h, t: h["history"]["snapshots"][_first_delta(h)]["masks"]["bytes"].__setitem__(0, 1),
    "kind": lambda h, t: h["history"]["snapshots"][0]["masks"].__setitem__("kind", "delta"),
    "stray tensor": lambda h, t: t.__setitem__("history/999/masks", torch.zeros(3, dtype=torch.uint8)),
    "missing tensor": lambda h, t: t.pop(f"history/{_first_delta(h)}/masks"),
    "tensor dtype": lambda h, t: t.__setitem__(f"history/{_first_delta(h)}/masks",
                                               t[f"history/{_first_delta(h)}/masks"].to(torch.int16)),
    "huge shape": lambda h, t: h["history"]["groups"]["masks"]["layers"][0].__setitem__(1, [2**40, 2**40]),
    "encoding": lambda h, t: h["history"].__setitem__("encoding", "zip"),
    "stats": lambda h, t: h["history"]["snapshots"][_first_delta(h)]["masks"]["grown"].__setitem__(0, 10**8),
}


@pytest.mark.parametrize("case", sorted(BAD_INDEX))
def test_a_damaged_index_is_refused_at_load_naming_the_file(tmp_path, case):
    good = _save(tmp_path / "good.safetensors", _tiny_snaps())
    bad = _rewrite(good, tmp_path / "bad.safetensors", BAD_INDEX[case])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(bad)
    assert str(bad) in str(err.value) and "\n" not in str(err.value)


def test_damaged_segment_bytes_fail_on_decode_naming_the_file_and_tensor(tmp_path):
    good = _save(tmp_path / "good.safetensors", _tiny_snaps())

    def scramble(header, tensors):
        name = f"history/{_first_delta(header)}/masks"
        t = tensors[name]
        tensors[name] = torch.from_numpy((t.numpy() ^ np.uint8(0x5A)).copy())

    bad = _rewrite(good, tmp_path / "bad.safetensors", scramble)
    loaded = load_checkpoint(bad)  # the index is intact: loading decodes nothing
    i = next(t for t, e in enumerate(loaded.history.entries["masks"]) if e.kind == "delta")
    with pytest.raises(CheckpointError) as err:
        for layer in loaded.history.layers["masks"]:
            loaded.history.layer(i, layer.name)
    assert str(bad) in str(err.value) and f"history/{i}/masks" in str(err.value)


def test_a_loaded_history_never_reads_the_file_again(tmp_path):
    snaps = _tiny_snaps()
    path = _save(tmp_path / "c.safetensors", snaps, keyframe_every=2)
    loaded = load_checkpoint(path)
    path.write_bytes(b"\0" * path.stat().st_size)  # rewritten in place, same size
    for i, snap in enumerate(snaps):  # decoded after the rewrite, from what the load kept: the masks saved
        assert loaded.history.masks_at(i).equal(snap.masks.unpack()), f"snapshot {i} decoded wrong"


def _format_1_file(path: Path, snaps) -> Path:
    """A checkpoint as format 1 wrote it: every snapshot's masks, units and state stored whole."""
    cfg = tiny_model_config()
    model = build_model(cfg)
    tensors = {f"model/{k}": v.clone() for k, v in model.state_dict().items()}
    entries = []
    for i, snap in enumerate(snaps):
        entries.append({"step": snap.step, "epoch": snap.epoch, "info": snap.info, "state": sorted(snap.state),
                        "mask_shapes": {n: list(s) for n, s in snap.masks.shapes.items()},
                        "unit_shapes": {n: list(s) for n, s in snap.units.shapes.items()}})
        tensors.update({f"history/{i}/mask/{n}": t for n, t in snap.masks.data.items()})
        tensors.update({f"history/{i}/unit/{n}": t for n, t in snap.units.data.items()})
        tensors.update({f"history/{i}/state/{n}": t for n, t in snap.state.items()})
    header = {"format": "svite-explorer", "format_version": 1, "model_config": cfg.to_dict(), "method": "svite",
              "mask_shapes": None, "unit_shapes": None, "fired_shapes": None, "history": entries}
    path.write_bytes(safetensors_save(tensors, metadata={"svite_explorer": json.dumps(header)}))
    return path


def test_format_1_files_load_as_keyframes_that_equal_their_packed_tensors(tmp_path):
    snaps = _tiny_snaps(5)
    gen = torch.Generator().manual_seed(5)
    snaps = [Snapshot.take(s.step, s.epoch, masks=s.masks.unpack(),
                           units=MaskSet({"blocks.0.attn.heads": torch.rand(4, generator=gen) < 0.5}),
                           state={"token_selector.w": torch.randn(7, generator=gen)}, event="update") for s in snaps]
    path = _format_1_file(tmp_path / "old.safetensors", snaps)
    h = load_checkpoint(path).history
    assert len(h) == len(snaps) and history_summary(h)["groups"]["masks"]["key"] == len(h)
    for i, snap in enumerate(snaps):
        assert h.masks_at(i).equal(snap.masks.unpack())
        assert MaskSet(h.group_at(i, "units")).equal(snap.units.unpack())
        assert torch.equal(h.layer(i, "token_selector.w", "state"), snap.state["token_selector.w"])
    st = h.stats("masks")
    assert st.flips[1:].sum() > 0 and (st.ones[:, 0] == [int(s.masks.unpack().nonzeros()[st.layers[0].name])
                                                          for s in snaps]).all()
    for ship in sorted((ROOT / "checkpoints").glob("*.safetensors")):  # the shipped demos, whatever format
        assert len(load_checkpoint(ship).history) >= 10


def test_the_safetensors_header_stays_valid_json_of_modest_size(tmp_path):
    path = _save(tmp_path / "c.safetensors", _tiny_snaps(12))
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
    assert n < 64 * 1024


# ----------------------------------------------------------------------------------------------
# a real training run, its masks recorded independently of the history
@pytest.mark.parametrize("method", ["svite", "s2vite", "svite+"])
def test_every_snapshot_of_a_training_run_decodes_to_the_masks_training_had(tmp_path, monkeypatch, method):
    recorded = []
    take = Snapshot.take

    def recording_take(step, epoch, masks=None, units=None, state=None, **info):
        recorded.append((step, masks.clone() if masks is not None else None,
                         units.clone() if units is not None else None,
                         {k: v.detach().clone() for k, v in (state or {}).items()}))
        return take(step, epoch, masks=masks, units=units, state=state, **info)

    monkeypatch.setattr(train_mod.Snapshot, "take", staticmethod(recording_take))
    monkeypatch.setattr(history_mod, "KEYFRAME_EVERY", 2)  # short chains: keyframes and deltas both
    extra = {"keep_ratio": 0.5} if method == "svite+" else {}
    cfg = tiny_train_config(tmp_path / "run", method=method.rstrip("+"), train_size=64, val_size=16, batch_size=16,
                            update_frequency=1, epochs=2, **extra)
    loaded = load_checkpoint(train(cfg, show_progress=False, echo_metrics=False))
    h = loaded.history
    assert len(h) == len(recorded) >= 6
    kinds = {e.kind for g in ("masks", "units", "state") for e in h.entries[g] if e is not None}
    assert {"key", "delta"} <= kinds
    for i, (step, masks, units, state) in enumerate(recorded):
        assert h.steps[i] == step
        assert h.masks_at(i).equal(masks) if masks is not None else not h.has(i, "masks")
        if units is not None:
            assert MaskSet(h.group_at(i, "units")).equal(units)
        got = h.group_at(i, "state")
        assert got.keys() == state.keys() and all(torch.equal(got[k], state[k]) for k in state)


def test_the_readme_reader_decodes_what_the_library_decodes(tmp_path):
    """The README's checkpoint-format section is enough for a third party: its reader, run as printed."""
    text = (ROOT / "README.md").read_text()
    start = text.index("```python\nimport json, zlib")
    code = text[start + len("```python\n"):text.index("```", start + 10)]
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102
    snaps, _ = _random_run(n_snaps=9)
    h = MaskHistory.from_snapshots(snaps, keyframe_every=2, sample_min=0, sample_target=500)
    methods = {(g in ("state",), m) for g in h.layers for e in h.entries[g] if e and e.kind != "same" for m in e.method}
    assert methods >= {(False, 0), (False, 1), (False, 2), (False, 3), (True, 4), (True, 5)}  # every method
    tensors, header = history_to_file(h)
    path = tmp_path / "history.safetensors"
    path.write_bytes(safetensors_save(tensors, metadata={"svite_explorer": json.dumps({"history": header})}))
    for i in range(len(h)):
        for group in ("masks", "units", "sample", "state"):
            for layer in h.layers[group]:
                got = scope["history_tensor"](str(path), i, group, layer.name)
                want = h.layer(i, layer.name, group).numpy()
                assert got.dtype == want.dtype and np.array_equal(got, want), (i, group, layer.name)


def test_a_large_history_without_a_stored_sample_is_sampled_while_decoding():
    snaps, truth = _random_run(n_snaps=6)
    stored = MaskHistory.from_snapshots(snaps, sample_min=0, sample_target=1000)
    legacy = MaskHistory.from_snapshots(snaps, sample_min=1 << 40)  # stores none, as format 1 did
    legacy.sample_min, legacy.sample_target = 0, 1000  # ... and counts as large when read
    basis = distance_basis(legacy)
    assert not basis["exact"] and "while decoding" in basis["text"] and basis["stride"] == stored.sample_stride
    assert np.array_equal(snapshot_distances(legacy, "jaccard")[0], snapshot_distances(stored, "jaccard")[0])
    for snap in snaps:  # a run resumed from such a file starts storing a sample midway: still sampled whole
        legacy.append(snap)
    assert legacy.entries["sample"][0] is None and legacy.entries["sample"][-1] is not None
    assert "while decoding" in distance_basis(legacy)["text"]
    both = MaskHistory.from_snapshots(snaps + snaps, sample_min=0, sample_target=1000)
    assert np.array_equal(snapshot_distances(legacy, "hamming")[0], snapshot_distances(both, "hamming")[0])
