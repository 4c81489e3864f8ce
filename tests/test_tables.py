"""Labels in a table: a CSV, (path, label) pairs or a DataFrame, through fit, evaluate, check."""

from __future__ import annotations

import csv

import pytest

from conftest import QUICK_FIT, make_class_folders
from petalnet import DataError, FlowerClassifier
from petalnet.check import check_dataset
from petalnet.cli import main

FAST = {**QUICK_FIT, "epochs": 2}


@pytest.fixture
def table(tmp_path):
    """labels.csv beside images/<class>/..., class names as words, a split column."""
    make_class_folders(tmp_path / "images", per_class=6, seed=3, n_classes=3)
    words = {"1": "rose", "2": "tulip", "3": "daisy"}
    rows = []
    for i, image in enumerate(sorted((tmp_path / "images").glob("*/*.jpg"))):
        split = ("train", "train", "train", "train", "valid", "test")[i % 6]
        rows.append((image.relative_to(tmp_path).as_posix(), words[image.parent.name], split))
    path = tmp_path / "labels.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        writer.writerows(rows)
    return path, rows


def test_fit_and_evaluate_a_csv_with_splits(table):
    path, _ = table
    clf = FlowerClassifier("tiny_test", **FAST).fit(path)
    assert clf.classes_ == ["daisy", "rose", "tulip"]
    assert (clf.n_train_, clf.n_valid_) == (12, 3)
    report = clf.evaluate(path)  # the test rows
    assert report["n_images"] == 3 and not report["held_out"]


def test_a_csv_without_splits_holds_a_fraction_out(table, tmp_path):
    _, rows = table
    plain = tmp_path / "plain.csv"
    plain.write_text("path,label\n" + "".join(f"{p},{label}\n" for p, label, _ in rows))
    clf = FlowerClassifier("tiny_test", **FAST, valid_fraction=0.2).fit(plain)
    assert clf.n_train_ + clf.n_valid_ == 18 and clf.n_valid_ > 0
    report = clf.evaluate(plain)  # never the training rows
    assert report["held_out"] and report["n_images"] == clf.n_valid_


def test_pairs_and_dataframes(table, tmp_path, monkeypatch):
    _, rows = table
    monkeypatch.chdir(tmp_path)  # relative paths of pairs are taken from here
    pairs = [(p, label) for p, label, _ in rows]
    clf = FlowerClassifier("tiny_test", **FAST).fit(pairs)
    assert clf.n_train_ + clf.n_valid_ == 18
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(rows, columns=["path", "label", "split"])
    assert FlowerClassifier("tiny_test", **FAST).fit(frame).n_valid_ == 3


def test_bad_tables_say_what_to_fix(tmp_path, table):
    with pytest.raises(DataError, match="pairs"):
        FlowerClassifier("tiny_test", **FAST).fit(["a.jpg", "b.jpg"])
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("file,class\nx.jpg,rose\n")
    with pytest.raises(DataError, match="needs 'path' and 'label' columns"):
        FlowerClassifier("tiny_test", **FAST).fit(wrong)
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(DataError, match="is a file, not a data folder"):
        FlowerClassifier("tiny_test", **FAST).fit(notes)


def test_the_cli_reads_tables(table, tmp_path, capsys):
    path, _ = table
    argv = ["train", str(path), "--arch", "tiny_test", "--epochs", "2", "--quiet", "--no_cache"]
    assert main([*argv, "--save_dir", str(tmp_path / "run")]) == 0
    ckpt = tmp_path / "run" / "checkpoint.pt"
    assert main(["evaluate", str(path), str(ckpt), "--quiet"]) == 0
    assert "on 3 images" in capsys.readouterr().out
    assert main(["check", str(path)]) == 0
    out = capsys.readouterr().out
    assert "labels table" in out and "train: 12 readable images in 3 classes" in out
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    assert main(["train", str(notes), "--arch", "tiny_test"]) == 1
    err = capsys.readouterr().err
    assert "is a file, not a data folder" in err and err.count("\n") == 1


def test_check_reports_missing_files_of_a_table(table):
    path, rows = table
    (path.parent / rows[0][0]).unlink()
    report = check_dataset(path)
    assert any("missing" in w for w in report.warnings)
