"""Fused backbones ("a+b"): features side by side, each part seeing its own preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import petalnet
from conftest import QUICK_FIT
from petalnet.backbones.base import FeatureExtractor
from petalnet.backbones.fusion import fuse
from petalnet.images import read_image
from petalnet.preprocessing import Preprocessing

WIDE = Preprocessing(resize_size=72, crop_size=64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


@petalnet.register_backbone("tiny_test_wide", overwrite=True)
def tiny_test_wide(weights="DEFAULT") -> FeatureExtractor:
    """tiny_test's network with a larger crop and another normalisation."""
    return petalnet.build_backbone("tiny_test", weights).derive(preprocessing=WIDE)


def test_a_fused_backbone_is_each_part_on_its_own_input():
    fused = petalnet.build_backbone("tiny_test+tiny_test_wide").eval()
    small = petalnet.build_backbone("tiny_test").eval()
    wide = petalnet.build_backbone("tiny_test_wide").eval()
    assert fused.meta.name == "tiny_test+tiny_test_wide"
    assert fused.feature_dim == small.feature_dim + wide.feature_dim == 64
    assert fused.preprocessing == WIDE  # the input is prepared for the largest crop
    assert fused.restorable and fused.weights == "SEEDED"
    assert fused.block_names == small.block_names  # its first part's (here one)

    x = torch.rand(3, 3, 64, 64)  # normalised for WIDE
    with torch.no_grad():
        out = fused(x)
        # the wide part sees x itself
        torch.testing.assert_close(out[:, 32:], wide(x))
        # the small part: back to pixels, its own normalisation, its own 32 px crop size
        pixels = x * 0.25 + 0.5
        mean = torch.tensor(small.preprocessing.mean).view(1, 3, 1, 1)
        std = torch.tensor(small.preprocessing.std).view(1, 3, 1, 1)
        mine = torch.nn.functional.interpolate(
            (pixels - mean) / std, size=(32, 32), mode="bilinear", antialias=True
        )
        torch.testing.assert_close(out[:, :32], small(mine), rtol=1e-4, atol=1e-5)


def test_fused_classifier_trains_saves_and_loads(single_folder, tmp_path):
    clf = petalnet.FlowerClassifier("tiny_test+tiny_test_wide", **QUICK_FIT, epochs=2)
    clf.fit(single_folder)
    image = single_folder / "1" / "img_000.jpg"
    path = clf.save(tmp_path / "fused.pt")
    # weights_only: rebuilt from the name and weights id, nothing executed
    back = petalnet.FlowerClassifier.load(path)
    assert back.model_.backbone.meta.name == "tiny_test+tiny_test_wide"
    torch.testing.assert_close(
        torch.from_numpy(back.predict_proba([image])),
        torch.from_numpy(clf.predict_proba([image])),
        rtol=1e-4,
        atol=1e-6,
    )
    # the .pt2 export runs both parts inside one graph
    program = torch.export.load(clf.export(tmp_path / "fused.pt2")).module()
    batch = clf.backbone_.preprocessing.transform()(read_image(image))[None]
    np.testing.assert_allclose(
        program(batch).numpy(), clf.predict_proba([image]), rtol=1e-4, atol=1e-6
    )


def test_fused_names_and_weights_fail_clearly(single_folder):
    with pytest.raises(petalnet.BackboneNotFoundError, match="no_such_net"):
        petalnet.build_backbone("tiny_test+no_such_net")
    with pytest.raises(petalnet.PetalnetError, match="two or more"):
        fuse([petalnet.build_backbone("tiny_test")])
    with pytest.raises(petalnet.PetalnetError, match="3 parts"):
        petalnet.build_backbone("tiny_test+tiny_test_wide", weights="A+B+C")
    # one weights id per part, as a checkpoint stores them when they differ
    mixed = petalnet.build_backbone("tiny_test+tiny_test_wide", weights="SEEDED+OTHER")
    assert mixed.weights == "SEEDED+OTHER"
    assert petalnet.build_backbone("tiny_test+tiny_test", weights=None).weights is None


def test_a_fused_backbone_splits_its_first_part_and_keeps_the_others_whole():
    fused = petalnet.build_backbone("tiny_blocks+tiny_test_wide").eval()
    blocks = petalnet.build_backbone("tiny_blocks")
    assert fused.block_names == blocks.block_names == ["stem", "block1", "block2"]
    front, back = fused.split(1)
    assert front.meta.name == fused.meta.name and front.preprocessing == WIDE
    assert front.feature_dim == 8 * 8 * 8 + 32  # block1's output flattened, then tiny_test_wide
    x = torch.rand(3, 3, 64, 64)  # prepared for the largest part
    with torch.no_grad():
        rows = front(x)
        torch.testing.assert_close(back(rows), fused(x))  # front then back: the backbone
        torch.testing.assert_close(rows[:, 512:], fused.body.parts[1](x))  # passed through
    # the back trains the first part's last block only, shared with the backbone
    assert {id(p) for p in back.parameters()} == {
        id(p) for p in fused.body.parts[0].body.block2.parameters()
    }


def test_a_fused_backbone_fine_tunes_its_first_part_beside_the_frozen_others(
    single_folder, tmp_path
):
    pretrained = petalnet.build_backbone("tiny_blocks+tiny_test_wide")
    clf = petalnet.FlowerClassifier(
        "tiny_blocks+tiny_test_wide",
        strategy="freeze_unfreeze",
        unfreeze_blocks=1,
        freeze_epochs=1,
        augment_views=2,
        tta="flip",
        **{**QUICK_FIT, "epochs": 3},
    )
    clf.fit(single_folder)
    before, after = pretrained.state_dict(), clf.backbone_.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith("body.parts.0.body.block2.") for k in moved)
    assert not clf.backbone_.restorable  # fine-tuned: saved with its parameters
    images = sorted(single_folder.rglob("*.jpg"))[:4]
    saved = clf.save(tmp_path / "tuned.pt")
    loaded = petalnet.FlowerClassifier.load(saved)
    torch.testing.assert_close(
        torch.from_numpy(loaded.predict_proba(images)),
        torch.from_numpy(clf.predict_proba(images)),
        rtol=1e-4,
        atol=1e-6,
    )
    report = clf.evaluate(single_folder)
    assert report["accuracy"] == pytest.approx(loaded.evaluate(single_folder)["accuracy"])
    program = torch.export.load(clf.export(tmp_path / "tuned.pt2")).module()
    batch = clf.backbone_.preprocessing.transform()(read_image(images[0]))[None]
    centre_only = petalnet.FlowerClassifier.load(saved, tta=False)  # what the export runs
    np.testing.assert_allclose(
        program(batch).numpy(), centre_only.predict_proba(images[:1]), rtol=1e-4, atol=1e-6
    )


def test_a_fused_backbones_frozen_side_stays_float(single_folder):
    from petalnet.quantize import resolve_quantize

    # "auto" builds no int8 graph for it (two parts, a front): float
    assert resolve_quantize("auto", "freeze_unfreeze", torch.device("cpu"), (True, True)) is None
    with pytest.raises(petalnet.PetalnetError, match="quantize=None"):
        petalnet.FlowerClassifier(
            "tiny_blocks+tiny_test_wide",
            strategy="freeze_unfreeze",
            unfreeze_blocks=1,
            quantize="int8",
            **QUICK_FIT,
        ).fit(single_folder)


def test_cli_describes_a_fused_backbone(capsys):
    from petalnet import cli

    assert cli.main(["backbones", "tiny_test+tiny_test_wide"]) == 0
    line = capsys.readouterr().out.splitlines()[1].split()
    assert line[:2] == ["tiny_test+tiny_test_wide", "64"]
    assert cli.main(["backbones", "tiny_test+no_such_net"]) == 1
    assert "no_such_net" in capsys.readouterr().err
