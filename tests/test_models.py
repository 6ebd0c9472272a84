from __future__ import annotations

import pytest
import torch
from conftest import tiny_model_config
from safetensors.torch import save_file

from sparsity_core.checkpoint import load_checkpoint
from sparsity_core.errors import SviteError
from sparsity_core.models.builder import (
    ModelConfig,
    available_models,
    build_model,
    describe_model,
    infer_config_from_state_dict,
    input_geometry,
)


@pytest.mark.parametrize("name,dim,heads", [("deit_tiny_patch16_224", 192, 3), ("deit_small_patch16_224", 384, 6),
                                            ("deit_base_patch16_224", 768, 12)])
def test_deit_by_name_keeps_width_and_heads(name, dim, heads):
    # small image so that building is cheap; width and heads come from the timm definition
    model = build_model(ModelConfig(name=name, img_size=32, depth=1, num_classes=7))
    info = describe_model(model)
    assert info["embed_dim"] == dim and info["num_heads"] == [heads]
    assert info["num_classes"] == 7 and info["num_patches"] == 4  # 32 px / patch 16 -> 2x2


def test_overrides_and_tiny_preset():
    info = describe_model(build_model(ModelConfig()))
    assert info == {**info, "img_size": 32, "patch_size": 4, "embed_dim": 96, "depth": 4, "num_heads": [6] * 4,
                    "num_patches": 64}
    info = describe_model(build_model(tiny_model_config(img_size=48, patch_size=8)))
    assert info["num_patches"] == 36 and info["embed_dim"] == 48 and info["depth"] == 2
    assert input_geometry(ModelConfig(name="deit_small_patch16_224")) == (224, 16)
    assert input_geometry(ModelConfig()) == (32, 4)
    assert "vit_tiny_demo" in available_models() and "deit_small_patch16_224" in available_models()


def test_unknown_model_is_a_clear_error():
    with pytest.raises(SviteError, match="unknown model 'resnet50'"):
        build_model(ModelConfig(name="resnet50"))
    with pytest.raises(SviteError, match="cannot build"):
        build_model(tiny_model_config(embed_dim=50, num_heads=4))  # 50 not divisible by 4 heads


def test_config_round_trips_through_dict():
    cfg = tiny_model_config()
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(SviteError, match="unknown fields"):
        ModelConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_local_pretrained_weights(tmp_path, tiny_model):
    """A plain timm state dict on disk loads (through the checkpoint loader) into the same weights."""
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in tiny_model.state_dict().items()}, str(path))
    again = load_checkpoint(path, num_heads=4).model
    for (k, a), b in zip(tiny_model.state_dict().items(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_infer_config_from_state_dict(tiny_model):
    cfg = infer_config_from_state_dict(tiny_model.state_dict(), num_heads=4)
    rebuilt = build_model(cfg)
    assert describe_model(rebuilt) == describe_model(tiny_model)
