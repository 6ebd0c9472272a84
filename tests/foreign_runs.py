"""Run folders as other tools write them, made by the tests: a DeiT/SViTE output folder (``log.txt`` and
``checkpoint.pth`` in the official layout), a timm ``train.py`` folder (``summary.csv``, ``args.yaml``) and a
TensorBoard log folder. Small (a 2-block ViT of width 24), but in the tools' own formats."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from sparsity_core.models.builder import ModelConfig, build_model

DEIT_LOG_FIELDS = ("train_lr", "train_loss", "test_loss", "test_acc1", "test_acc5", "epoch", "n_parameters")


def tiny_state(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = build_model(ModelConfig(name="vit_tiny_demo", embed_dim=24, depth=2, num_heads=2, num_classes=10))
    return model.state_dict()


def deit_folder(folder: Path, seed: int = 0, epochs: int = 3, done: int = 3, density: float | None = 0.5,
                order: tuple[str, ...] = DEIT_LOG_FIELDS, extra: dict | None = None, log: bool = True,
                checkpoint: bool = True) -> Path:
    """``main.py --output_dir folder`` of DeiT (density None) or SViTE (unstructured at ``density``)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = tiny_state(seed)
    if log:
        lines = []
        for e in range(done):
            values = {"train_lr": 5e-4 * (1 - e / epochs), "train_loss": 2.3 - 0.3 * e, "test_loss": 2.2 - 0.25 * e,
                      "test_acc1": 20.0 + 10 * e + seed, "test_acc5": 60.0 + 5 * e, "epoch": e,
                      "n_parameters": sum(v.numel() for v in state.values())}
            lines.append(json.dumps({**{k: values[k] for k in order}, **(extra or {})}))
        (folder / "log.txt").write_text("\n".join(lines) + "\n")
    if checkpoint:
        args = argparse.Namespace(model="deit_tiny_patch16_224", seed=seed, epochs=epochs, lr=5e-4, batch_size=64,
                                  data_set="IMNET", data_path="/data/imagenet", output_dir=str(folder))
        ckpt = {"model": state, "optimizer": {}, "lr_scheduler": {}, "epoch": done - 1, "args": args}
        if density is not None:
            args.sparse, args.pruning_type, args.density = True, "unstructure", density
            gen = torch.Generator().manual_seed(seed)
            masks = {}
            for i, (name, value) in enumerate(state.items()):
                if value.ndim in (2, 4):
                    masks[f"module.{name}_{i}"] = (torch.rand(value.shape, generator=gen) < density).float()
            ckpt["mask"] = masks
        torch.save(ckpt, folder / "checkpoint.pth")
    return folder


def timm_folder(folder: Path, seed: int = 0, epochs: int = 4, done: int = 4, columns: tuple[str, ...] | None = None,
                args: bool = True) -> Path:
    """``train.py --output folder``: summary.csv (timm's columns, or ``columns`` in another order) and args.yaml."""
    folder.mkdir(parents=True, exist_ok=True)
    cols = columns or ("epoch", "train_loss", "eval_loss", "eval_top1", "eval_top5", "lr")
    rows = [",".join(cols)]
    for e in range(done):
        values = {"epoch": e, "train_loss": 2.0 - 0.2 * e, "eval_loss": 1.9 - 0.2 * e, "eval_top1": 30.0 + 8 * e + seed,
                  "eval_top5": 70.0 + 4 * e, "lr": 1e-3, "lr_extra": 0.5}
        rows.append(",".join(str(values.get(c, 1.0)) for c in cols))
    (folder / "summary.csv").write_text("\n".join(rows) + "\n")
    if args:
        (folder / "args.yaml").write_text(f"model: vit_small_patch16_224\nseed: {seed}\nepochs: {epochs}\n"
                                          "cooldown_epochs: 0\nlr: 0.001\nbatch_size: 128\ndataset: torch/cifar10\n")
    return folder


def tensorboard_folder(folder: Path, steps: int = 5, fraction: bool = True) -> Path:
    """A loop's own SummaryWriter: accuracy (as a fraction, or in percent), loss and learning rate."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(folder))
    for s in range(steps):
        writer.add_scalar("Loss/train", 2.0 - 0.1 * s, s)
        writer.add_scalar("Accuracy/val", (0.3 + 0.1 * s) if fraction else (30 + 10 * s), s)
        writer.add_scalar("learning_rate", 1e-3, s)
    writer.close()
    return folder
