"""split="grouped": copies and other shots of one plant stay on one side of a carved split."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image
from torch import nn

import petalnet.deep_check as deep_check
from conftest import QUICK_FIT, TINY_PRE
from petalnet import FlowerClassifier, PetalnetWarning
from petalnet.backbones import FeatureExtractor, register_backbone
from petalnet.data import HeldOut, _stratified_split, list_samples
from petalnet.errors import WeightsUnavailableError
from test_deep_check import _scene


@pytest.fixture
def thumbnails(monkeypatch: pytest.MonkeyPatch) -> None:
    """Group with 6x6 thumbnails instead of efficientnet_lite0 (fast, and alike = similar)."""

    @register_backbone("thumb_split", overwrite=True)
    def thumb_split(weights="DEFAULT") -> FeatureExtractor:
        body = nn.Sequential(nn.AdaptiveAvgPool2d(6), nn.Flatten())
        return FeatureExtractor(body, feature_dim=108, preprocessing=TINY_PRE, weights="FIXED")

    monkeypatch.setattr(deep_check, "GROUPING_BACKBONE", "thumb_split")


def _samples(n_per_class: int, classes: int = 3) -> list[tuple[Path, int]]:
    return [(Path(f"{c}/{i}.jpg"), c) for c in range(classes) for i in range(n_per_class)]


def test_single_image_groups_split_exactly_as_the_plain_stratified_split():
    samples = _samples(10)
    plain = _stratified_split(samples, 0.2, seed=3)
    assert _stratified_split(samples, 0.2, 3, groups=list(range(len(samples)))) == plain


def test_a_group_is_never_split_and_shares_stay_close():
    samples = _samples(20)
    groups = list(range(len(samples)))
    for c in range(3):  # in each class, images 0-3 are one burst, 4-5 another
        first = c * 20
        for i in range(4):
            groups[first + i] = first
        groups[first + 5] = first + 4
    for seed in range(8):
        train, valid = _stratified_split(samples, 0.25, seed, groups)
        held = {s[0] for s in valid}
        for g in set(groups):
            members = {samples[i][0] for i in range(len(samples)) if groups[i] == g}
            assert members <= held or not members & held  # one side, whole
        for c in range(3):
            assert 3 <= sum(s[1] == c for s in valid) <= 5  # about 25 % of 20
        assert len(train) + len(valid) == len(samples)


def _scene_folder(root: Path) -> Path:
    for label, base in (("a", 0), ("b", 500), ("c", 900)):
        folder = root / label
        folder.mkdir(parents=True)
        for i in range(10):
            _scene(base + i * 7).save(folder / f"{label}{i}.jpg", quality=90)
    original = Image.open(root / "a" / "a3.jpg")
    original.resize((144, 108)).save(root / "a" / "a3_copy.jpg", quality=60)
    shutil.copy(root / "b" / "b4.jpg", root / "b" / "b4_again.jpg")
    return root


def test_fit_keeps_copies_together_and_evaluate_scores_the_listed_split(
    tmp_path, thumbnails, monkeypatch
):
    root = _scene_folder(tmp_path / "scenes")
    fast = {**QUICK_FIT, "split": "grouped", "epochs": 2, "valid_fraction": 0.3}
    sides = set()
    for seed in range(4):
        clf = FlowerClassifier("tiny_test", **{**fast, "random_state": seed}).fit(root)
        held = clf.model_.held_out
        assert held is not None and held.split == "grouped"
        listed = set(held.valid_files)
        for pair in (("a/a3.jpg", "a/a3_copy.jpg"), ("b/b4.jpg", "b/b4_again.jpg")):
            assert (pair[0] in listed) == (pair[1] in listed)
            sides.add(pair[0] in listed)
        report = clf.evaluate(root)
        assert report["held_out"] and report["n_images"] == len(listed) == clf.n_valid_
    assert sides == {True, False}  # the seeds put the copies on either side, never apart
    loaded = FlowerClassifier.load(clf.save(tmp_path / "m.pt"), device="cpu")
    assert loaded.model_.held_out == held and loaded.evaluate(root)["n_images"] == len(listed)


def test_without_the_grouping_backbone_the_split_is_stratified_with_a_warning(
    tmp_path, monkeypatch
):
    root = _scene_folder(tmp_path / "scenes")

    def unavailable(*args, **kwargs):
        raise WeightsUnavailableError("no weights here")

    monkeypatch.setattr(deep_check, "build_backbone", unavailable)
    clf = FlowerClassifier("tiny_test", **{**QUICK_FIT, "split": "grouped", "epochs": 1})
    with pytest.warns(PetalnetWarning, match="stratified at random"):
        clf.fit(root)
    samples = list_samples(root, clf.class_to_idx_)
    plain = _stratified_split(samples, 0.2, 0)[1]  # each image its own group: the same split
    assert set(clf.model_.held_out.valid_files) == {f"{p.parent.name}/{p.name}" for p, _ in plain}


def test_old_split_records_read_as_stratified():
    old = {"folder": "/x", "fraction": 0.2, "seed": 0, "files": "abc"}
    held = HeldOut.from_dict(old)
    assert held is not None and held.split == "stratified" and held.valid_files == ()
    assert HeldOut.from_dict(held.to_dict()) == held
