"""`petalnet check --deep`: planted copies, siblings, leaks, conflicts and mislabels are found;
clean is clean; the counts are the quick check's; a second run decodes nothing."""

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
from petalnet import hashes
from petalnet.backbones import FeatureExtractor, register_backbone
from petalnet.check import check_dataset
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
    assert leak.leak and leak.exact and leak.kind == "exact" and leak.distance == 0
    assert leak.similarity == pytest.approx(1.0)
    assert {Path(f).name for f in leak.files} == {"1_0.png", "copy.bmp"}
    assert {s for s in leak.splits} == {"train", "valid"}
    near_pairs = [d for d in report.duplicates if not d.exact]
    assert [{Path(f).name for f in d.files} for d in near_pairs] == [{"2_3.png", "near.jpg"}]
    assert near_pairs[0].kind == "copy" and not near_pairs[0].leak
    doubtful = {Path(m.file).name: m for m in report.mislabels}
    assert {"wrong_a.png", "wrong_b.png"} <= set(doubtful)
    assert doubtful["wrong_a.png"].suggested == "3" and doubtful["wrong_b.png"].suggested == "4"
    assert doubtful["wrong_a.png"].given == "1"
    assert len(report.mislabels) <= 4  # few false alarms on the rest
    text = report.summary()
    assert text.splitlines()[1].strip().startswith("1 pairs across splits (leaks): 1 copies")
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


def test_mislabels_are_ranked_by_margin_and_need_no_confident_rival():
    labels = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    probs = torch.tensor(
        [
            [0.9, 0.05, 0.05],
            [0.9, 0.05, 0.05],
            [0.2, 0.75, 0.05],  # smaller margin for 1
            [0.4, 0.5, 0.1],  # margin under 0.5: not flagged
            [0.1, 0.2, 0.7],  # large margin for 2
            [0.0, 1.0, 0.0],
            [0.0, 1.0, 0.0],
            [0.0, 1.0, 0.0],
            [0.1, 0.0, 0.9],
            [0.1, 0.0, 0.9],
            [0.1, 0.0, 0.9],
        ]
    )
    # row 2's rival (class 1 at 0.75) is below class 1's self-confidence of 1.0: plain
    # confident learning would miss it; it is flagged, ranked below the larger margin
    assert confident_mislabels(probs, labels) == [(4, 2), (2, 1)]


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
    assert "1 pairs across splits (leaks): 1 copies" in text
    data = json.loads((out / "r.json").read_text())
    assert data["leaks"] == 1 and data["duplicates"][0]["leak"] is True
    assert (out / "duplicates.png").stat().st_size > 5_000
    assert (out / "mislabels.png").is_file()


def _scene(seed: int, detail_seed: int | None = None, size: tuple[int, int] = (160, 120)):
    """A photo-like picture: smooth colour fields, plus mid-frequency detail of its own.

    Two scenes with one ``seed`` and other ``detail_seed`` are siblings: the same layout and
    colours (a 6x6 thumbnail barely differs), different detail (their hashes do).
    """
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(30, 220, size=(4, 3, 3))
    w, h = size
    base = np.asarray(
        Image.fromarray(coarse.astype(np.uint8)).resize((w, h), Image.BICUBIC), dtype=float
    )
    detail = np.random.default_rng(detail_seed if detail_seed is not None else seed + 1)
    pattern = detail.uniform(-40, 40, size=(12, 16, 1))
    pattern = (
        np.asarray(
            Image.fromarray(((pattern[..., 0] + 40) * 3).astype(np.uint8)).resize((w, h)), float
        )[..., None]
        / 3
        - 40
    )
    return Image.fromarray(np.clip(base + pattern, 0, 255).astype(np.uint8))


def _scenes(root: Path) -> Path:
    for split, count in (("train", 8), ("valid", 3)):
        for label in ("a", "b"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for i in range(count):
                seed = (0 if label == "a" else 500) + (0 if split == "train" else 100) + i * 7
                _scene(seed).save(folder / f"{label}{i}.jpg", quality=90)
    return root


def test_a_reencoded_resized_copy_and_a_cropped_copy_are_cross_split_copies(tmp_path):
    root = _scenes(tmp_path / "d")
    original = Image.open(root / "train/a/a2.jpg")
    w, h = original.size
    original.resize((int(w * 0.9), int(h * 0.9))).save(root / "valid/a/q60.jpg", quality=60)
    original = Image.open(root / "train/b/b5.jpg")
    original.crop((0, 0, int(w * 0.9), int(h * 0.9))).save(root / "valid/b/crop.jpg", quality=85)
    report = deep_check(root, backbone="thumb_test", cache_dir=tmp_path / "c", verbose=0)
    found = {frozenset(Path(f).name for f in d.files): d for d in report.duplicates}
    for pair in ({"a2.jpg", "q60.jpg"}, {"b5.jpg", "crop.jpg"}):
        d = found[frozenset(pair)]
        assert d.kind == "copy" and d.leak and d.distance <= hashes.COPY_DISTANCE
    assert report.duplicates[0].leak and report.duplicates[1].leak
    assert all(d.kind == "copy" for d in report.leaks)
    # each copy and its original form one group spanning train and valid
    spanning = [set(map(lambda f: Path(f).name, g.files)) for g in report.groups if g.spans_splits]
    assert {"a2.jpg", "q60.jpg"} in spanning and {"b5.jpg", "crop.jpg"} in spanning
    data = report.to_dict()
    assert data["copies"] >= 2 and data["groups_spanning_splits"] >= 2
    assert "2 pairs across splits (leaks): 2 copies" in report.summary()


def test_another_shot_of_the_same_scene_is_a_sibling_not_a_copy(tmp_path):
    root = _scenes(tmp_path / "d")
    _scene(0, detail_seed=999).save(root / "valid/a/sibling.jpg", quality=90)  # a0's layout
    report = deep_check(root, backbone="thumb_test", cache_dir=tmp_path / "c", verbose=0)
    found = {frozenset(Path(f).name for f in d.files): d for d in report.duplicates}
    d = found[frozenset({"a0.jpg", "sibling.jpg"})]
    assert d.kind == "sibling" and d.leak
    assert d.distance > hashes.COPY_DISTANCE and d.similarity >= report.near_threshold
    assert "1 siblings" in report.summary().splitlines()[1]


def test_a_photo_filed_under_two_classes_is_one_conflict_not_a_mislabel(tmp_path):
    root = _clean(tmp_path / "d")
    shutil.copy(root / "train/2/2_4.png", root / "train/1/stray.png")  # a "2" also filed as 1
    report = deep_check(root, backbone="thumb_test", cache_dir=tmp_path / "c", verbose=0)
    assert len(report.conflicts) == 1
    conflict = report.conflicts[0]
    assert {Path(f).name for f in conflict.files} == {"2_4.png", "stray.png"}
    assert set(conflict.classes) == {"1", "2"} and conflict.suggested == "2"
    flagged = {Path(m.file).name for m in report.mislabels}
    assert not flagged & {"2_4.png", "stray.png"}  # the genuine one is not blamed
    assert "1 photos filed under two classes" in report.summary()


def test_counts_agree_with_the_quick_check(tmp_path):
    root = _clean(tmp_path / "d", per_class=4)
    (root / "train/1/broken.jpg").write_bytes(b"not a jpeg")
    (root / "valid/2/notes.txt").write_text("ignored")
    quick = check_dataset(root)
    report = deep_check(root, backbone="thumb_test", cache_dir=tmp_path / "c", verbose=0)
    assert report.counts == {s: sum(c.values()) for s, c in quick.counts.items()}
    assert report.n_images == sum(report.counts.values()) == 4 * 4 + 4 * 4
    assert len(report.skipped) == 1 and "broken.jpg" in report.skipped[0]
    assert "(train 16, valid 16)" in report.summary().splitlines()[0]


def test_hash_rows_are_stored_beside_features_from_one_decode(tmp_path, decoded_files):
    decoded = decoded_files
    root = _clean(tmp_path / "d", per_class=3)
    first = deep_check(root, backbone="thumb_test", cache_dir=tmp_path / "c", verbose=0)
    assert len(decoded) == first.n_images == 4 * 7  # once each: hashes and features alike
    decoded.clear()
    again = deep_check(root, backbone="thumb_test", cache_dir=tmp_path / "c", verbose=0)
    assert decoded == []  # rows and hashes from the store
    assert again.to_dict()["duplicates"] == first.to_dict()["duplicates"]
