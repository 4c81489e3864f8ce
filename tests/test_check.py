"""`petalnet check` / check_dataset: every structural problem at once, read as fit reads."""

from __future__ import annotations

import json

from conftest import make_class_folders
from petalnet.check import check_dataset
from petalnet.cli import main


def test_a_clean_split_folder_is_ready(flowers_root):
    report = check_dataset(flowers_root)
    assert report.ok and report.layout == "split"
    assert set(report.counts) == {"train", "valid", "test"}
    assert sum(report.counts["train"].values()) == 72 and len(report.counts["valid"]) == 12
    assert report.errors == [] and report.warnings == [] and report.ignored == 0
    assert report.summary().splitlines()[-1].strip() == "OK: ready to train"


def test_one_folder_of_classes_is_a_holdout_layout(single_folder):
    report = check_dataset(single_folder, decode=False)
    assert report.ok and report.layout == "holdout" and list(report.counts) == ["all"]
    assert report.counts["all"] == {str(i): 6 for i in range(1, 6)}


def test_errors_that_stop_training(tmp_path):
    assert check_dataset(tmp_path / "missing").errors == [
        f"{str(tmp_path / 'missing')!r} does not exist"
    ]
    root = tmp_path / "root"
    make_class_folders(root / "train", per_class=2, seed=1, n_classes=1)
    make_class_folders(root / "valid", per_class=1, seed=2, n_classes=2)
    report = check_dataset(root)
    assert not report.ok
    assert any("at least two are needed" in e for e in report.errors)
    assert any("valid/ has classes that train/ lacks: 2" in e for e in report.errors)
    assert "not ready" in report.summary()


def test_unreadable_files_are_warnings_naming_each_file(tmp_path):
    root = tmp_path / "d"
    make_class_folders(root, per_class=2, seed=1, n_classes=2)
    (root / "1" / "page.jpg").write_text("<html></html>")
    (root / "2" / "empty.png").write_bytes(b"")
    report = check_dataset(root)
    assert report.ok and report.counts["all"] == {"1": 2, "2": 2}
    assert len(report.warnings) == 2
    assert all(w.startswith("unreadable, will be skipped:") for w in report.warnings)
    assert "page.jpg" in report.warnings[0] and "empty.png" in report.warnings[1]
    quick = check_dataset(root, decode=False)  # names only: not decoded, counted as images
    assert quick.warnings == [] and quick.counts["all"] == {"1": 3, "2": 3}


def test_category_names_are_checked(tmp_path, capsys):
    root = make_class_folders(tmp_path / "d", per_class=2, seed=1, n_classes=3)
    (root / "cat_to_name.json").write_text(json.dumps({"1": "rose", "3": "tulip"}))
    report = check_dataset(root, decode=False)
    assert report.ok and report.warnings == [
        "cat_to_name.json has no name for 2; the folder name is shown instead"
    ]
    (root / "cat_to_name.json").write_text("[1, 2]")
    assert main(["check", str(root), "--quick"]) == 1
    assert "must hold one JSON object" in capsys.readouterr().out
