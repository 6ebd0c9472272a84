"""SViTE+ token selector: selection semantics, gradients, checkpoints, training, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_model_config, tiny_train_config

from sparsity_core.checkpoint import load_checkpoint, save_checkpoint
from sparsity_core.cli import main
from sparsity_core.errors import SviteError
from sparsity_core.masks.maskset import default_sparsifiable
from sparsity_core.models.builder import ModelConfig, SelectorConfig, build_model
from sparsity_core.models.evaluate import count_flops
from sparsity_core.models.token_selector import TAU_END, TAU_START, TokenSelector, keep_at, temperature_at
from sparsity_core.training.config import TrainConfig
from sparsity_core.training.loop import train


def _pair(**selector):
    """Two models with the same weights, one gathering and one zeroing (the reference)."""
    out = []
    for mode in ("gather", "zero"):
        torch.manual_seed(0)
        out.append(build_model(tiny_model_config(selector=SelectorConfig(keep_ratio=0.5, mode=mode, **selector))))
    out[1].load_state_dict(out[0].state_dict())
    return out


def _tokens_seen(model, block):
    seen = []
    handle = model.blocks[block].register_forward_pre_hook(lambda m, args: seen.append(tuple(args[0].shape)))
    return seen, handle


def test_module_layout_and_state_dict_keys():
    model = _pair()[0]
    sel = model.token_selector
    assert isinstance(sel, TokenSelector) and isinstance(sel.scorer, torch.nn.Linear)
    keys = [k for k in model.state_dict() if k.startswith("token_selector.")]
    assert keys == ["token_selector.scorer.weight", "token_selector.scorer.bias"]
    assert tuple(sel.scorer.weight.shape) == (1, 48)
    assert not [n for n in default_sparsifiable(model) if "token_selector" in n]  # never masked
    mlp = build_model(tiny_model_config(selector=SelectorConfig(keep=10, scorer="mlp", mode="gather")))
    assert mlp.token_selector.keep == 10 and mlp.token_selector(torch.randn(2, 65, 48)).shape == (2, 11, 48)


def test_keep_warmup_falls_from_all_patches_to_k_in_training_only():
    assert [keep_at(t, 16, 64, 0.5) for t in (0.0, 0.25, 0.5, 0.9)] == [64, 40, 16, 16]
    assert keep_at(0.0, 16, 64, 0.0) == 16  # no warm-up: k from the start (the reference)
    model = _pair()[0]
    sel = model.token_selector
    seen, _ = _tokens_seen(model, 1)
    x = torch.randn(2, 3, 32, 32)
    model.train()
    for t in (0.0, 0.15, 0.3, 0.6):
        sel.set_progress(t, keep_warmup=0.3)
        model(x)
    model.eval()
    sel.set_progress(0.0, keep_warmup=0.3)
    model(x)  # evaluation always keeps k
    assert [n for _, n, _ in seen] == [65, 49, 33, 33, 33]


def test_keep_warmup_is_a_checked_training_flag(tmp_path, capsys):
    code = main(["train", "--model", "vit_tiny_demo", "--data", "demo", "--keep-ratio", "0.5",
                 "--selector-keep-warmup", "1.5", "--out", str(tmp_path / "r")])
    assert code == 2
    assert "--selector-keep-warmup must be in [0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("block", [0, 1])
def test_gathered_sequence_is_k_plus_1_in_training_and_eval(block):
    model = _pair(block_index=block)[0]
    seen, _ = _tokens_seen(model, 1)
    x = torch.randn(3, 3, 32, 32)
    model.train()
    model(x)
    model.eval()
    model(x)
    assert seen == [(3, 33, 48), (3, 33, 48)]  # block 1 always sees cls + 32 kept patches
    first, _ = _tokens_seen(model, 0)
    model(x)
    assert first == [(3, 65 if block == 1 else 33, 48)]


def test_gather_and_zero_modes_keep_the_same_tokens():
    gather, zero = _pair()
    x = torch.randn(4, 3, 32, 32)
    for model in (gather, zero):
        model.eval()
        model(x)
    assert torch.equal(gather.token_selector.last_keep_indices, zero.token_selector.last_keep_indices)
    # training: the same Gumbel noise (same RNG state) -> the same kept set, and it differs from eval's
    for model in (gather, zero):
        model.train()
        torch.manual_seed(123)
        model(x)
    kept_train = gather.token_selector.last_keep_indices
    assert torch.equal(kept_train, zero.token_selector.last_keep_indices)
    assert not torch.equal(kept_train, zero.token_selector.last_keep_indices.new_zeros(kept_train.shape))
    # and with an explicit noise tensor, at the module level
    tokens = torch.randn(4, 65, 48)
    noise = -torch.empty(4, 64).exponential_().log()
    out_g = gather.token_selector(tokens, gumbel=noise)
    out_z = zero.token_selector(tokens, gumbel=noise)
    idx = gather.token_selector.last_keep_indices
    assert torch.equal(idx, zero.token_selector.last_keep_indices)
    assert torch.equal(idx, idx.sort(dim=1).values)  # kept in their original order
    # the zeroed sequence holds exactly the gathered tokens at the kept places and zeros elsewhere
    assert torch.equal(out_z[:, 1:].gather(1, idx[..., None].expand(-1, -1, 48)), out_g[:, 1:])
    dropped = torch.ones(4, 64, dtype=torch.bool).scatter_(1, idx, False)
    assert (out_z[:, 1:][dropped] == 0).all() and torch.equal(out_z[:, 0], tokens[:, 0])


def test_training_selection_is_the_top_k_of_scores_plus_gumbel_noise():
    sel = _pair()[0].token_selector.train()
    scores = torch.randn(5, 64)
    noise = -torch.empty(5, 64).exponential_().log()
    idx, y = sel.select(scores, noise)
    expected = (torch.log_softmax(scores, 1) + noise).topk(32, dim=1).indices.sort(dim=1).values
    assert torch.equal(idx, expected)
    hard = torch.zeros(5, 64).scatter_(1, idx, 1.0)
    assert torch.equal(y, hard)  # straight-through: exactly one-hot in value
    sel.eval()
    idx_eval, y_eval = sel.select(scores)
    assert y_eval is None and torch.equal(idx_eval, scores.topk(32, dim=1).indices.sort(dim=1).values)


def test_inference_is_deterministic_and_draws_no_noise():
    model = _pair()[0]
    model.train()
    model(torch.randn(2, 3, 32, 32))  # a training step in between changes nothing at inference
    model.eval()
    x = torch.randn(3, 3, 32, 32)
    rng = torch.get_rng_state()
    out1 = model(x)
    idx1 = model.token_selector.last_keep_indices.clone()
    out2 = model(x)
    assert torch.equal(torch.get_rng_state(), rng)  # no Gumbel noise at test time (the reference draws some)
    assert torch.equal(out1, out2) and torch.equal(idx1, model.token_selector.last_keep_indices)


@pytest.mark.parametrize("mode,scorer", [("soft", "linear"), ("soft", "mlp"), ("gather", "linear"), ("gather", "mlp"),
                                        ("zero", "linear")])
def test_straight_through_gradient_reaches_the_scorer(mode, scorer):
    torch.manual_seed(0)
    model = build_model(tiny_model_config(selector=SelectorConfig(keep_ratio=0.5, mode=mode, scorer=scorer)))
    model.train()
    model.token_selector.set_progress(0.5)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    grads = [p.grad for p in model.token_selector.scorer.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert grads[0].abs().sum() > 0


def _weight_gradients(mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """dL/dy (the straight-through keep weights) of one training step, and the kept mask."""
    torch.manual_seed(0)
    model = build_model(tiny_model_config(selector=SelectorConfig(keep_ratio=0.5, mode=mode)))
    model.train()
    sel = model.token_selector
    sel.set_progress(0.5)
    weights = []
    select = sel.select

    def spy(scores, gumbel=None):
        idx, y = select(scores, gumbel)
        y.retain_grad()
        weights.append(y)
        return idx, y

    sel.select = spy
    x = torch.randn(4, 3, 32, 32)
    torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()
    kept = torch.zeros_like(weights[0], dtype=torch.bool).scatter_(1, sel.last_keep_indices, True)
    return weights[0].grad, kept


def test_soft_mode_gives_each_dropped_patch_its_own_signal():
    """Gather: a dropped patch is simply absent, dL/dy is exactly 0 for every one of them, and the scorer
    cannot tell a useful dropped patch from the others. Soft: each dropped patch gets its own gradient."""
    grad, kept = _weight_gradients("gather")
    assert not grad[~kept].any()
    grad, kept = _weight_gradients("soft")
    dropped = grad[~kept].reshape(4, -1)
    assert (dropped != 0).all()
    assert (dropped.std(dim=1) > 1e-3 * dropped.abs().mean(dim=1)).all()  # distinct, not one shared value
    assert len(torch.unique(dropped)) == dropped.numel()


def test_soft_mode_masks_dropped_tokens_out_of_every_later_block():
    """In soft training the class token sees exactly what it sees in the gathered sequence: its output
    does not change when dropped tokens are changed."""
    torch.manual_seed(0)
    model = build_model(tiny_model_config(selector=SelectorConfig(keep_ratio=0.5, mode="soft", block_index=1)))
    model.train()
    sel = model.token_selector
    sel.set_progress(0.9)
    noise = torch.randn(1, 64)
    sel.select = lambda scores, gumbel=None, s=sel.select: s(scores, noise.expand_as(scores))
    feats = {}
    model.blocks[-1].register_forward_hook(lambda m, i, o: feats.__setitem__("cls", o[:, 0].detach().clone()))
    x = torch.randn(1, 3, 32, 32)
    model(x)
    first, kept = feats["cls"], sel.last_keep_indices[0]
    dropped = torch.ones(64, dtype=torch.bool)
    dropped[kept] = False

    def perturb(module, args):  # change the dropped tokens as block 1 receives them
        x = args[0].clone()
        x[:, 1:][:, dropped] += 5.0
        return (x, *args[1:])

    handle = model.blocks[1].register_forward_pre_hook(perturb)
    model(x)
    handle.remove()
    torch.testing.assert_close(feats["cls"], first, rtol=0, atol=1e-4)


def test_training_forward_equals_inference_forward_for_the_same_kept_set():
    """The straight-through weights are exactly 1 in value: a training step computes the same logits as
    inference would on the same kept tokens (dropout is 0 in these models)."""
    model = _pair()[0]
    x = torch.randn(2, 3, 32, 32)
    model.train()
    train_out = model(x)
    idx = model.token_selector.last_keep_indices
    model.eval()
    model.token_selector.select = lambda scores, gumbel=None: (idx, None)
    assert torch.allclose(train_out, model(x), atol=1e-6)


def test_temperature_falls_linearly_from_10_to_0_1():
    sel = _pair()[0].token_selector
    assert sel.temperature == TAU_START == 10.0
    sel.set_progress(0.5)
    assert sel.temperature == pytest.approx(5.05)
    sel.set_progress(1.0)
    assert sel.temperature == pytest.approx(TAU_END)
    assert temperature_at(-1) == TAU_START and temperature_at(2) == pytest.approx(TAU_END)
    assert "tau" not in sel.state_dict()  # set from the step, not stored


def test_flops_fall_with_the_kept_tokens():
    torch.manual_seed(0)
    dense = count_flops(build_model(tiny_model_config()))["dense"]
    half = count_flops(_pair()[0])["dense"]
    zero = count_flops(_pair()[1])["dense"]
    assert half < 0.6 * dense  # gathering halves the blocks' work (patch embed and head stay)
    assert zero >= dense  # zeroing (the reference) saves nothing


@pytest.mark.parametrize("selector,message", [
    (SelectorConfig(keep=65), "keeps 65 tokens"),
    (SelectorConfig(keep_ratio=0.5, block_index=2), "--selector-block 2"),
    (SelectorConfig(keep_ratio=0.5, scorer="cnn"), "--selector-scorer"),
    (SelectorConfig(keep_ratio=0.5, mode="mask"), "--selector-mode"),
    (SelectorConfig(), "--token-number K or --keep-ratio R"),
])
def test_bad_selector_settings_are_one_clear_error(selector, message):
    with pytest.raises(SviteError, match=message):
        build_model(tiny_model_config(selector=selector))


def test_checkpoint_round_trip_with_a_selector(tmp_path):
    cfg = tiny_model_config(selector=SelectorConfig(keep=20, block_index=1, scorer="mlp"))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    path = save_checkpoint(tmp_path / "c.safetensors", model, cfg)
    loaded = load_checkpoint(path)
    assert loaded.model_config.selector == cfg.selector and loaded.has_selector
    a, b = model.state_dict(), loaded.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), loaded.model(x))
    assert torch.equal(model.token_selector.last_keep_indices, loaded.model.token_selector.last_keep_indices)


def test_official_gumbel_weights_map_onto_the_scorer(tmp_path):
    """checkpoint.py renames the reference's `gumbel.*` to `token_selector.scorer.*`: they must fit."""
    torch.manual_seed(0)
    model = build_model(tiny_model_config())
    state = {k: v for k, v in model.state_dict().items()}
    state["gumbel.weight"], state["gumbel.bias"] = torch.randn(1, 48), torch.randn(1)
    masks = {f"module.{n}_{i}": (p != 0).float() for i, (n, p) in enumerate(model.named_parameters())
             if n in default_sparsifiable(model)}
    torch.save({"model": state, "mask": masks, "epoch": 3}, tmp_path / "checkpoint.pth")
    loaded = load_checkpoint(tmp_path / "checkpoint.pth", num_heads=4)
    assert loaded.method.endswith("+") and loaded.has_selector
    assert torch.equal(loaded.model.token_selector.scorer.weight, state["gumbel.weight"])


def test_compiled_model_keeps_the_same_tokens():
    model = _pair()[0].eval()
    x = torch.randn(2, 3, 32, 32)
    expected = model(x)
    compiled = torch.compile(model, backend="eager", fullgraph=False)
    assert torch.allclose(compiled(x), expected, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# real runs
DEMO_CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "svite.safetensors"


@pytest.fixture(scope="module")
def selector_run(tmp_path_factory):
    """A short real SViTE+ run (``train``): a fresh MLP-scored selector on the shipped SViTE demo model.

    From scratch, a selector cannot learn which patches matter before the ViT itself has learned
    anything (the demo ViT stays at chance for several epochs), so the run starts from the trained
    demo checkpoint and fine-tunes model and selector together for 64 steps.
    """
    if not DEMO_CHECKPOINT.exists():
        pytest.fail(f"{DEMO_CHECKPOINT} is missing: build it with scripts/make_demo_checkpoints.py --only svite")
    tmp = tmp_path_factory.mktemp("selector")
    base = load_checkpoint(DEMO_CHECKPOINT)
    cfg = base.model_config
    cfg.selector = SelectorConfig(keep_ratio=0.5, scorer="mlp")
    torch.manual_seed(0)
    model = build_model(cfg)
    missing, unexpected = model.load_state_dict(base.model.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("token_selector.") for k in missing)
    init = save_checkpoint(tmp / "init.safetensors", model, cfg)
    run = TrainConfig(out=str(tmp / "run"), model=cfg.name, init=str(init), keep_ratio=0.5, selector_scorer="mlp",
                      train_size=1024, val_size=100, epochs=2, batch_size=32, lr=1e-3, log_every=8)
    return train(run, show_progress=False, echo_metrics=False), init


def test_keep_maps_match_the_objects_after_a_short_run(selector_run):
    from sparsity_core.analysis.patches import object_patch_recall
    from sparsity_core.data import DemoShapes

    ckpt, init = selector_run
    val = DemoShapes("val", 300)
    before = object_patch_recall(load_checkpoint(init).model, val)
    after = object_patch_recall(load_checkpoint(ckpt).model, val)
    assert after > 0.7 and after > before + 0.2  # chance is the keep ratio, 0.5


def test_snapshots_hold_the_selector_weights(selector_run):
    from sparsity_core.analysis.patches import keep_map_history, selector_at_snapshot, selector_snapshots

    loaded = load_checkpoint(selector_run[0])
    assert len(loaded.history) == 3 and selector_snapshots(loaded) == [0, 1, 2]  # init + 2 epochs
    name = "token_selector.scorer.1.fc1.weight"
    final = loaded.model.token_selector.scorer[1].fc1.weight.detach().clone()
    first = selector_at_snapshot(loaded, 0)
    assert torch.equal(first.token_selector.scorer[1].fc1.weight, loaded.history[0].state[name])
    assert not torch.equal(final, loaded.history[0].state[name])
    assert torch.equal(loaded.model.token_selector.scorer[1].fc1.weight, final)  # loaded is not changed
    assert torch.equal(selector_at_snapshot(loaded, -1).token_selector.scorer[1].fc1.weight, final)
    frame = keep_map_history(loaded, torch.zeros(3, 32, 32))
    assert len(frame) == 3 * 64 and frame.groupby("snapshot")["kept"].sum().eq(32).all()
    with pytest.raises(SviteError, match="snapshots"):
        selector_at_snapshot(loaded, 9)


def test_eval_and_inspect_report_the_selector(selector_run, capsys):
    ckpt = selector_run[0]
    assert main(["eval", str(ckpt), "--data", "demo", "--json", "--throughput-batch", "4", "--val-size", "100"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["keep_ratio"] == 0.5 and 0.7 < doc["object_patch_recall"] <= 1.0
    dense_flops = count_flops(build_model(ModelConfig(name="vit_tiny_demo")))["dense"]
    assert doc["flops"] < 0.6 * dense_flops
    assert main(["inspect", str(ckpt), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["token_selector"]["keep"] == 32 and doc["token_selector"]["of"] == 64


def test_resumed_selector_run_equals_an_uninterrupted_one(tmp_path):
    small = dict(keep_ratio=0.5, selector_scorer="mlp", train_size=128, val_size=32, epochs=2)
    full = train(tiny_train_config(tmp_path / "full", **small), show_progress=False, echo_metrics=False)
    train(tiny_train_config(tmp_path / "part", max_steps=5, checkpoint_every=2, **small), show_progress=False,
          echo_metrics=False)
    resumed = train(tiny_train_config(tmp_path / "part", resume=str(tmp_path / "part"), **small),
                    show_progress=False, echo_metrics=False)
    a, b = load_checkpoint(full).model.state_dict(), load_checkpoint(resumed).model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
