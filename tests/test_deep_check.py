"""`petalnet check --deep`: planted duplicates, leaks and mislabels are found; clean is clean."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import TINY_PRE
from petalnet.backbones import FeatureExtractor, register_backbone
from petalnet.cli import main
from petalnet.deep_check import confident_mislabels, deep_check

COLORS = {"1": (200, 40, 40), "2": (40, 200, 40), "3": (40, 40, 200), "4": (200, 200, 40)}


@pytest.fixture(autouse=True)
def thumbnail_backbone() -> None:
    """Features that are a 6x6 thumbnail: two photos are similar when their pictures are."""

    @register_backbone("thumb_test", overwrite=True)
    def thumb_test(weights="DEFAULT") -> FeatureExtractor:
        body = nn.Sequential(nn.AdaptiveAvgPool2d(6), nn.Flatten())
        return FeatureExtractor(body, feature_dim=108, preprocessing=TINY_PRE, weights="FIXED")


def _photo(label: str, seed: int) -> Image.Image:
    """The class colour under a random pattern of coloured blocks: each photo differs."""
    rng = np.random.default_rng(seed)
    blocks = rng.uniform(0.0, 1.6, size=(6, 6, 3))
    pixels = np.kron(blocks, np.ones((8, 8, 1))) * np.array(COLORS[label])
    pixels = pixels + rng.normal(0, 6, size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _clean(root: Path, per_class: int = 10) -> Path:
    for split, offset in (("train", 0), ("valid", 1000)):
        for label in COLORS:
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(per_class if split == "train" else 4):
                _photo(label, offset + int(label) * 100 + i).save(folder / f"{label}_{i}.png")
    (root / "cat_to_name.json").write_text(json.dumps({c: f"colour {c}" for c in COLORS}))
    return root


def test_a_clean_folder_reports_nothing(tmp_path):
    report = deep_check(
        _clean(tmp_path / "d"), backbone="thumb_test", cache_dir=tmp_path / "c", verbose=0
    )
    assert report.n_images == 4 * 14
    assert report.duplicates == [] and report.mislabels == []
    assert "nothing found" in report.summary()


def test_planted_duplicates_leaks_and_mislabels_are_found(tmp_path):
    root = _clean(tmp_path / "d")
    # an exact duplicate across splits, saved as another format (same pixels, other bytes)
    Image.open(root / "train/1/1_0.png").save(root / "valid/1/copy.bmp")
    # a near duplicate: resized and re-encoded as JPEG, within train
    near = Image.open(root / "train/2/2_3.png").resize((60, 50)).convert("RGB")
    near.save(root / "train/2/near.jpg", quality=85)
    # two mislabels: photos of colour 3 and 4 filed under 1
    _photo("3", 777).save(root / "train/1/wrong_a.png")
    _photo("4", 778).save(root / "train/1/wrong_b.png")
    report = deep_check(root, backbone="thumb_test", cache_dir=tmp_path / "c", verbose=0)

    leak = report.duplicates[0]  # leaks first
    assert leak.leak and leak.exact and leak.similarity == 1.0
    assert {Path(f).name for f in leak.files} == {"1_0.png", "copy.bmp"}
    assert {s for s in leak.splits} == {"train", "valid"}
    near_pairs = [d for d in report.duplicates if not d.exact]
    assert [{Path(f).name for f in d.files} for d in near_pairs] == [{"2_3.png", "near.jpg"}]
    assert near_pairs[0].similarity >= report.near_threshold and not near_pairs[0].leak
    doubtful = {Path(m.file).name: m for m in report.mislabels}
    assert {"wrong_a.png", "wrong_b.png"} <= set(doubtful)
    assert doubtful["wrong_a.png"].suggested == "3" and doubtful["wrong_b.png"].suggested == "4"
    assert doubtful["wrong_a.png"].given == "1"
    assert len(report.mislabels) <= 4  # few false alarms on the rest
    text = report.summary()
    assert text.splitlines()[1].strip().startswith("1 duplicate pairs across splits (leaks)")
    assert "LEAK" in text and "filed as colour 1 (1)" in text


def test_it_reuses_the_feature_cache(tmp_path, backbone_calls):
    root = _clean(tmp_path / "d", per_class=5)
    deep_check(root, backbone="thumb_test", cache_dir=tmp_path / "c", verbose=0)
    first = sum(backbone_calls)
    assert first == 4 * 9
    deep_check(root, backbone="thumb_test", cache_dir=tmp_path / "c", verbose=0)
    assert sum(backbone_calls) == first  # the second run computed nothing


def test_confident_learning_rule():
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.2, 0.8], [0.1, 0.9], [0.3, 0.7]])
    assert confident_mislabels(probs, labels) == [(2, 1)]


def test_cli_deep_check_writes_report_and_plots(tmp_path, capsys):
    root = _clean(tmp_path / "d", per_class=6)
    shutil.copy(root / "train/3/3_0.png", root / "valid/3/leak.png")
    out = tmp_path / "out"
    code = main(
        [
            "check",
            str(root),
            "--deep",
            "--arch",
            "thumb_test",
            "--quiet",
            "--output",
            str(out / "r.json"),
            "--plots",
            str(out),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "1 duplicate pairs across splits (leaks)" in text
    data = json.loads((out / "r.json").read_text())
    assert data["leaks"] == 1 and data["duplicates"][0]["leak"] is True
    assert (out / "duplicates.png").stat().st_size > 5_000
    assert (out / "mislabels.png").is_file()
