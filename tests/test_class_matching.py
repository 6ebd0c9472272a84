"""Classes matched by name where folder data meets a checkpoint (issue 19).

A folder's class index is its sorted position; the model's is whatever it was trained with. These tests
evaluate the shipped SViTE demo checkpoint on folders of the demo's own images, and an official-format
DeiT checkpoint (tiny random weights, a 1000-class head) on WordNet-id folders, and check the three
cases: every class known, none known, and two known with one unknown.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sparsity_core.analysis.report import evaluation_data
from sparsity_core.checkpoint import load_checkpoint
from sparsity_core.cli import main
from sparsity_core.data import (
    DemoShapes,
    checkpoint_classes,
    checkpoint_preprocess,
    make_loader,
    match_classes,
)
from sparsity_core.errors import SviteError
from sparsity_core.models.builder import ModelConfig, build_model
from sparsity_core.models.evaluate import evaluate_accuracy
from sparsity_core.training.resume import init_from

SVITE = Path(__file__).resolve().parents[1] / "checkpoints" / "svite.safetensors"
DEMO_IMAGES = 300  # the first 300 demo validation images (seed 0): 30 of each class
QUICK = ["--json", "--throughput-batch", "2"]


def _demo_folder(root: Path, classes: dict[str, str]) -> list[int]:
    """Write the demo validation images of ``classes`` (demo name -> folder name) as PNGs; returns the
    demo indices written, in order."""
    demo = DemoShapes("val", size=DEMO_IMAGES, seed=0)
    written = []
    for i in range(len(demo)):
        sample = demo.sample(i)
        name = demo.class_names[sample.label]
        if name in classes:
            folder = root / classes[name]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(sample.image).save(folder / f"{i:04d}.png")
            written.append(i)
    return written


def _demo_path_top1(indices: list[int]) -> float:
    """The same images through the demo path (DemoShapes, its own normalisation and labels)."""
    loaded = load_checkpoint(SVITE)
    loaded.masks.apply(loaded.model)
    subset = torch.utils.data.Subset(DemoShapes("val", size=DEMO_IMAGES, seed=0), indices)
    return evaluate_accuracy(loaded.model, make_loader(subset, 64, shuffle=False, seed=0))["top1"]


def _eval_json(capsys, path: Path, folder: Path) -> dict:
    assert main(["eval", str(path), "--data", str(folder), *QUICK]) == 0
    return json.loads(capsys.readouterr().out)


def test_three_demo_classes_by_name_score_as_through_the_demo_path(tmp_path, capsys):
    indices = _demo_folder(tmp_path / "three", {"ring": "ring", "vbar": "vbar", "xcross": "xcross"})
    doc = _eval_json(capsys, SVITE, tmp_path / "three")
    assert doc["images"] == len(indices) == 90
    assert doc["classes_matched_by"] == "name" and doc["classes_left_out"] == []
    assert doc["classes_evaluated"] == ["ring", "vbar", "xcross"]
    reference = _demo_path_top1(indices)
    assert reference > 60  # the model knows these images (sorted-position labels gave 8.9%)
    assert abs(doc["top1"] - reference) <= 1.0, (doc["top1"], reference)
    # per image, the target is the checkpoint's own index of the folder's class
    _, val, _ = evaluation_data(load_checkpoint(SVITE), str(tmp_path / "three"))
    names = DemoShapes.CLASSES
    assert [names[t] for t in val.targets] == [Path(val.filename(i)).parent.name for i in range(len(val))]


def test_a_folder_with_no_class_of_the_checkpoint_is_refused(tmp_path, capsys):
    _demo_folder(tmp_path / "none", {"ring": "alpha", "vbar": "beta"})
    assert main(["eval", str(SVITE), "--data", str(tmp_path / "none"), *QUICK]) == 2
    err = capsys.readouterr().err
    assert err == (f"svite eval: error: --data {tmp_path / 'none'}: none of its classes (alpha, beta) is a class of "
                   f"{SVITE} (circle, square, triangle, diamond, cross, ... (10 in all))\n")


def test_two_known_and_one_unknown_are_evaluated_on_the_two_and_the_third_named(tmp_path, capsys):
    indices = _demo_folder(tmp_path / "two", {"ring": "ring", "vbar": "vbar", "xcross": "gamma"})
    doc = _eval_json(capsys, SVITE, tmp_path / "two")
    assert doc["classes_evaluated"] == ["ring", "vbar"] and doc["classes_left_out"] == ["gamma"]
    assert "left out, not classes of the checkpoint: gamma" in doc["classes_note"]
    demo = DemoShapes("val", size=DEMO_IMAGES, seed=0)
    kept = [i for i in indices if demo.class_names[demo.labels[i]] != "xcross"]
    assert doc["images"] == len(kept) == 60
    assert abs(doc["top1"] - _demo_path_top1(kept)) <= 1.0
    assert main(["eval", str(SVITE), "--data", str(tmp_path / "two"), "--throughput-batch", "2"]) == 0
    text = capsys.readouterr().out
    assert "classes_left_out: gamma\n" in text and "classes_evaluated: ring, vbar\n" in text


# ----------------------------------------------------------------------------------------------
# an official-format DeiT checkpoint ({"model": state_dict}, 1000 classes) on WordNet-id folders
WNIDS = {"n01440764": 0, "n02102040": 217, "n03000684": 491}  # tench, English springer, chain saw


@pytest.fixture(scope="module")
def deit(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = ModelConfig(name="deit_tiny_patch16_224", img_size=32, patch_size=16, embed_dim=64, depth=1,
                         num_heads=1, num_classes=1000)
    path = tmp_path_factory.mktemp("deit") / "deit_tiny_patch16_224-a1311bcf.pth"
    torch.save({"model": build_model(config).state_dict()}, path)
    return path


def _image_folder(root: Path, classes: list[str], per_class: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for j in range(per_class):
            Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / name / f"{j}.png")
    return root


def _targets(path: Path, folder: Path) -> list[tuple[str, int]]:
    _, val, _ = evaluation_data(load_checkpoint(path), str(folder))
    return [(Path(val.filename(i)).parent.name, int(val[i][1])) for i in range(len(val))]


def test_deit_on_wordnet_folders_all_known(deit, tmp_path, capsys):
    folder = _image_folder(tmp_path / "in3", list(WNIDS))
    assert _targets(deit, folder) == [(w, i) for w, i in WNIDS.items() for _ in range(3)]
    doc = _eval_json(capsys, deit, folder)
    assert doc["images"] == 9 and doc["classes_left_out"] == [] and doc["classes_matched_by"] == "name"


def test_deit_on_folders_it_does_not_know_is_refused(deit, tmp_path, capsys):
    folder = _image_folder(tmp_path / "none", ["alpha", "beta"])
    assert main(["eval", str(deit), "--data", str(folder), *QUICK]) == 2
    err = capsys.readouterr().err
    assert f"--data {folder}: none of its classes (alpha, beta) is a class of {deit} (tench, goldfish, great white shark, tiger shark, hammerhead, ... (1000 in all))" in err
    assert err.count("\n") == 1


def test_deit_two_known_and_one_unknown(deit, tmp_path, capsys):
    folder = _image_folder(tmp_path / "in2", ["n01440764", "n02102040", "n99999999"])
    assert _targets(deit, folder) == [("n01440764", 0)] * 3 + [("n02102040", 217)] * 3
    doc = _eval_json(capsys, deit, folder)
    assert doc["images"] == 6 and doc["classes_left_out"] == ["n99999999"]
    assert doc["classes_evaluated"] == ["n01440764", "n02102040"]


def test_imagenet_names_synonyms_and_ambiguous_names():
    classes = checkpoint_classes({}, 1000)
    match = match_classes(["Tench", "goldfish", "English_springer", "crane", "n03000684"], classes, "--data d", "c")
    assert match.targets == (0, 1, 217, None, 491)
    assert match.ambiguous == ("crane",) and match.left_out == ("crane",)
    assert "names that fit several of its classes: crane" in match.note()


def test_no_recorded_names_match_by_position_only_when_the_counts_agree():
    classes = checkpoint_classes({"data": {"class_names": "not a list"}}, 3)
    assert not classes.named
    match = match_classes(["b", "a", "c"], classes, "--data d", "ck")
    assert match.by == "position" and match.targets == (0, 1, 2)
    with pytest.raises(SviteError, match=r"--data d: its 2 classes \(a, b\) cannot be matched to ck, which records "
                                         r"no class names and has 3 outputs"):
        match_classes(["a", "b"], classes, "--data d", "ck")


def test_the_checkpoints_preprocessing_is_used():
    demo = checkpoint_preprocess(load_checkpoint(SVITE).meta)
    assert demo.mean == (0.5, 0.5, 0.5) and demo.std == (0.5, 0.5, 0.5) and demo.crop_pct == 1.0
    foreign = checkpoint_preprocess({"data": {"mean": [0, 0, "x"], "std": [1, 1, 1]}})
    assert foreign.mean == (0.485, 0.456, 0.406) and foreign.crop_pct is None


def test_init_from_a_checkpoint_with_other_classes_matches_head_rows_and_says_so(tmp_path, capsys):
    source = load_checkpoint(SVITE)
    torch.manual_seed(1)
    model = build_model(ModelConfig(**{**source.model_config.to_dict(), "num_classes": 3}))
    fresh = model.head.weight.detach().clone()
    masks, note = init_from(str(SVITE), model, ["ring", "vbar", "gamma"], "--data d")
    w = source.model.head.weight.detach()
    assert torch.equal(model.head.weight[0], w[6]) and torch.equal(model.head.weight[1], w[9])
    assert torch.equal(model.head.weight[2], fresh[2])
    assert torch.equal(masks["head.weight"][:2], source.masks["head.weight"][[6, 9]])
    assert note == (f"--init {SVITE}: its classifier rows matched to --data d's classes by name (2 of 3 found); "
                    "new classes start with a fresh head row: gamma")
    _, note = init_from(str(SVITE), build_model(source.model_config), list(DemoShapes.CLASSES), "--data demo")
    assert note == ""  # the same classes in the same order: nothing to say
    _demo_folder(tmp_path / "two", {"ring": "ring", "vbar": "vbar", "xcross": "gamma"})
    assert main(["train", "--data", str(tmp_path / "two"), "--init", str(SVITE), "--method", "svite", "--epochs", "1",
                 "--max-steps", "1", "--batch-size", "16", "--quiet", "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err
    assert (f"svite train: note: --init {SVITE}: its classifier rows matched to --data {tmp_path / 'two'}'s classes "
            "by name (2 of 3 found); new classes start with a fresh head row: gamma\n") in err


def test_init_with_no_class_in_common_starts_a_fresh_head_and_keeps_the_rest():
    source = load_checkpoint(SVITE)
    torch.manual_seed(2)
    model = build_model(ModelConfig(**{**source.model_config.to_dict(), "num_classes": 2}))
    fresh = model.head.weight.detach().clone()
    _, note = init_from(str(SVITE), model, ["alpha", "beta"], "--data d")
    assert torch.equal(model.head.weight, fresh)
    assert torch.equal(model.blocks[0].attn.qkv.weight, source.model.blocks[0].attn.qkv.weight)
    assert note == (f"--init {SVITE}: none of --data d's classes (alpha, beta) is among its classes (circle, square, "
                    "triangle, diamond, cross, ... (10 in all)): the classifier head starts fresh, every other weight "
                    "is kept")
