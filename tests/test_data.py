"""Folder layouts, class order, splits, category names and reading images."""

from __future__ import annotations

import json

import pytest

from conftest import make_class_folders
from petalnet import DataError
from petalnet.data import (
    find_classes,
    list_samples,
    load_category_names,
    load_training_data,
    resolve_eval_folder,
)


def test_udacity_layout(flowers_root):
    data = load_training_data(flowers_root)
    assert data.layout == "split"
    # ImageFolder's string order, not numeric
    assert data.classes == ["1", "10", "11", "12", "2", "3", "4", "5", "6", "7", "8", "9"]
    assert len(data.train) == 72 and len(data.valid) == 24
    assert data.category_names_file == flowers_root / "cat_to_name.json"
    for path, idx in data.train + data.valid:
        assert path.parent.name == data.classes[idx]


def test_single_folder_is_split_stratified_and_seeded(single_folder):
    a = load_training_data(single_folder, valid_fraction=0.34, seed=3)
    b = load_training_data(single_folder, valid_fraction=0.34, seed=3)
    c = load_training_data(single_folder, valid_fraction=0.34, seed=4)
    assert a.layout == "holdout" and a.category_names_file is None
    assert a.train == b.train and a.valid == b.valid
    assert a.valid != c.valid
    assert len(a.valid) == 10 and len(a.train) == 20  # 2 of 6 per class, 5 classes
    assert sorted({i for _, i in a.valid}) == [0, 1, 2, 3, 4]
    assert not {p for p, _ in a.train} & {p for p, _ in a.valid}


def test_train_without_valid_holds_out(tmp_path):
    make_class_folders(tmp_path / "train", per_class=5, seed=0, n_classes=3)
    data = load_training_data(tmp_path, valid_fraction=0.2, seed=0)
    assert data.layout == "holdout" and len(data.valid) == 3 and len(data.train) == 12


def test_unknown_classes_in_valid_are_named(tmp_path):
    make_class_folders(tmp_path / "train", per_class=2, seed=0, n_classes=3)
    make_class_folders(tmp_path / "valid", per_class=1, seed=1, n_classes=5)
    with pytest.raises(DataError, match="not trained on: 4, 5"):
        load_training_data(tmp_path)


def test_hidden_and_non_image_files_are_ignored(tmp_path):
    make_class_folders(tmp_path, per_class=2, seed=0, n_classes=2)
    (tmp_path / "1" / ".hidden.jpg").write_bytes(b"junk")
    (tmp_path / "1" / "notes.txt").write_text("hello")
    (tmp_path / ".git").mkdir()
    (tmp_path / "empty_class").mkdir()
    assert find_classes(tmp_path) == ["1", "2"]
    samples = list_samples(tmp_path, {"1": 0, "2": 1})
    assert len(samples) == 4 and all(p.suffix == ".jpg" for p, _ in samples)


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_training_data(tmp_path / "nope")
    with pytest.raises(DataError, match="no class folders with images"):
        load_training_data(tmp_path)


def test_eval_folder_prefers_test_then_valid(flowers_root, tmp_path):
    assert resolve_eval_folder(flowers_root) == flowers_root / "test"
    make_class_folders(tmp_path / "valid", per_class=1, seed=0, n_classes=2)
    assert resolve_eval_folder(tmp_path) == tmp_path / "valid"
    assert resolve_eval_folder(tmp_path / "valid") == tmp_path / "valid"


def test_category_names(tmp_path):
    good = tmp_path / "names.json"
    good.write_text(json.dumps({"1": "pink primrose", 2: "hard-leaved pocket orchid"}))
    assert load_category_names(good) == {"1": "pink primrose", "2": "hard-leaved pocket orchid"}
    assert load_category_names({1: "a"}) == {"1": "a"}
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="bad.json.*not valid JSON"):
        load_category_names(bad)
    wrong = tmp_path / "list.json"
    wrong.write_text("[1, 2]")
    with pytest.raises(DataError, match="list.json.*one JSON object"):
        load_category_names(wrong)
    with pytest.raises(DataError, match="does not exist"):
        load_category_names(tmp_path / "missing.json")
