"""evaluate never scores training photos: a fitted folder's held-out split, remembered."""

from __future__ import annotations

import shutil

import pytest

from conftest import QUICK_FIT, draw_flower, make_class_folders
from petalnet import DataError, FlowerClassifier
from petalnet.cli import main

FAST = {**QUICK_FIT, "epochs": 2}


@pytest.fixture
def folder(tmp_path):
    return make_class_folders(tmp_path / "words", per_class=5, seed=7, n_classes=4)


def test_evaluate_on_the_fitted_folder_scores_the_held_out_images_only(folder, tmp_path):
    clf = FlowerClassifier("tiny_test", **FAST).fit(folder)
    report = clf.evaluate(folder)
    assert report["held_out"] and report["n_images"] == clf.n_valid_ == 4  # 1 of 5 per class
    loaded = FlowerClassifier.load(clf.save(tmp_path / "m.pt"), device="cpu")
    again = loaded.evaluate(folder)  # the checkpoint remembers the split
    assert again["held_out"] and again["n_images"] == 4
    moved = shutil.copytree(folder, tmp_path / "moved")  # the same images elsewhere
    assert loaded.evaluate(moved)["n_images"] == 4


def test_other_images_are_scored_whole_and_a_changed_folder_refuses(folder, tmp_path):
    clf = FlowerClassifier("tiny_test", **FAST).fit(folder)
    other = make_class_folders(tmp_path / "other", per_class=3, seed=9, n_classes=4)
    report = clf.evaluate(other)
    assert not report["held_out"] and report["n_images"] == 12
    draw_flower("1", seed=5).save(folder / "1" / "new.jpg")
    with pytest.raises(DataError, match="changed since the model was fitted"):
        clf.evaluate(folder)


def test_the_cli_says_which_images_it_scored(folder, tmp_path, capsys):
    ckpt = FlowerClassifier("tiny_test", **FAST).fit(folder).save(tmp_path / "m.pt")
    assert main(["evaluate", str(folder), str(ckpt), "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "on 4 images" in captured.out and "held out for validation" in captured.err


def test_after_refit_nothing_is_left_to_measure(folder):
    clf = FlowerClassifier("tiny_test", **{**FAST, "refit": True}).fit(folder)
    with pytest.raises(DataError, match="none is left to measure"):
        clf.evaluate(folder)


def test_a_valid_folder_is_evaluated_as_before(flowers_root):
    clf = FlowerClassifier("tiny_test", **FAST).fit(flowers_root)
    report = clf.evaluate(flowers_root)
    assert not report["held_out"] and report["folder"].endswith("test")
