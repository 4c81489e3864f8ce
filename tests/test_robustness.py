"""Bad input never crashes a run or loses work; checkpoints never execute code."""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import petalnet
from conftest import QUICK_FIT, make_class_folders
from petalnet import (
    CheckpointError,
    DataError,
    FlowerClassifier,
    ImageReadError,
    PetalnetError,
    PetalnetWarning,
)
from petalnet import images as images_module
from petalnet.check import check_dataset
from petalnet.checkpoint import read_checkpoint, write_checkpoint
from petalnet.cli import main
from petalnet.fitted import FittedModel
from petalnet.images import read_image

FAST = {**QUICK_FIT, "epochs": 3}


def _bad_files(folder):
    """Zero-byte, truncated, text-as-jpg and HTML error page, in one class folder."""
    (folder / "zero.jpg").write_bytes(b"")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buf, format="JPEG")
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    (folder / "notes.jpg").write_text("just some text")
    (folder / "error_page.png").write_text("<html><body>404 Not Found</body></html>")
    return ["zero.jpg", "truncated.jpg", "notes.jpg", "error_page.png"]


@pytest.fixture
def dirty(tmp_path):
    root = tmp_path / "dirty"
    make_class_folders(root / "train", per_class=4, seed=1, n_classes=3)
    make_class_folders(root / "valid", per_class=2, seed=2, n_classes=3)
    bad = _bad_files(root / "train" / "2")
    (root / "train" / "1" / ".DS_Store").write_bytes(b"\x00\x01")
    (root / "train" / "1" / "readme.txt").write_text("ignored")
    return root, bad


def test_fit_skips_bad_files_with_one_warning_each(dirty):
    root, bad = dirty
    with pytest.warns(PetalnetWarning) as record:
        clf = FlowerClassifier("tiny_test", **FAST).fit(root)
    messages = [str(w.message) for w in record if issubclass(w.category, PetalnetWarning)]
    for name in bad:
        assert sum(name in m for m in messages) == 1, name
    assert len(clf.skipped_) == 4 and clf.n_train_ == 12 and clf.n_valid_ == 6
    assert all("remove or replace the file" in m for m in clf.skipped_)


def test_strict_stops_at_the_first_bad_file(dirty):
    root, _ = dirty
    with pytest.raises(ImageReadError, match=r"train/2/.*strict=True"):
        FlowerClassifier("tiny_test", strict=True, **FAST).fit(root)


def test_evaluate_counts_skipped_files(dirty, tmp_path):
    root, _ = dirty
    clf = FlowerClassifier("tiny_test", **FAST)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PetalnetWarning)
        clf.fit(root)
        report = clf.evaluate(root / "train")
    assert report["n_skipped"] == 4 and report["n_images"] == 12
    assert any("truncated.jpg" in m for m in report["skipped"])


def test_predict_on_a_bad_file_names_it(fitted, tmp_path):
    bad = _bad_files(tmp_path)
    for name in bad:
        with pytest.raises(ImageReadError, match=name):
            fitted.predict(tmp_path / name)


def test_oversized_images_are_refused_before_decoding(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("L", (300, 300)).save(path)
    monkeypatch.setattr(images_module, "MAX_IMAGE_PIXELS", 250 * 250)
    with pytest.raises(ImageReadError, match=r"300x300 pixels.*decompression bomb"):
        read_image(path)


def test_tiny_images_still_work(fitted, tmp_path):
    Image.new("RGB", (1, 1), (10, 200, 10)).save(tmp_path / "dot.png")
    assert len(fitted.predict(tmp_path / "dot.png", topk=3)) == 3


@pytest.mark.parametrize(
    ("layout", "match"),
    [
        ("one_class", "at least two"),
        ("no_class_folders", "no class folders with images"),
        ("empty_valid", "no class folders with images"),
        ("foreign_valid", "not trained on: 9"),
    ],
)
def test_dataset_structure_errors(tmp_path, layout, match):
    root = tmp_path / layout
    if layout == "one_class":
        make_class_folders(root, per_class=3, seed=0, n_classes=1)
    elif layout == "no_class_folders":
        root.mkdir()
        Image.new("RGB", (8, 8)).save(root / "loose.jpg")
    elif layout == "empty_valid":
        make_class_folders(root / "train", per_class=3, seed=0, n_classes=2)
        (root / "valid" / "1").mkdir(parents=True)
    else:
        make_class_folders(root / "train", per_class=3, seed=0, n_classes=2)
        make_class_folders(root / "valid", per_class=1, seed=0, n_classes=2)
        make_class_folders(root / "tmp", per_class=1, seed=0, n_classes=9)
        os.rename(root / "tmp" / "9", root / "valid" / "9")
    with pytest.raises(DataError, match=match):
        FlowerClassifier("tiny_test", **FAST).fit(root)
    assert not check_dataset(root).ok


def test_empty_class_folders_are_ignored(tmp_path):
    make_class_folders(tmp_path, per_class=3, seed=0, n_classes=3)
    (tmp_path / "empty").mkdir()
    clf = FlowerClassifier("tiny_test", **FAST).fit(tmp_path)
    assert clf.classes_ == ["1", "2", "3"]


def test_check_reports_everything_at_once(dirty, capsys):
    root, bad = dirty
    (root / "train" / "empty_class").mkdir()
    (root / "cat_to_name.json").write_text(json.dumps({"1": "rose"}))
    report = check_dataset(root)
    assert report.ok and report.layout == "split"
    assert report.counts["train"] == {"1": 4, "2": 4, "3": 4}
    text = "\n".join(report.warnings)
    for name in bad:
        assert name in text
    assert "empty_class" in text and "no name for 2, 3" in text
    assert report.ignored == 2  # .DS_Store and readme.txt
    assert main(["check", str(root)]) == 0
    assert "ready to train" in capsys.readouterr().out
    (root / "cat_to_name.json").write_text("{broken")
    assert main(["check", str(root)]) == 1
    assert "not valid JSON" in capsys.readouterr().out


def test_nan_loss_stops_with_a_clear_message_and_keeps_best(single_folder, monkeypatch):
    from petalnet import training

    real = training.evaluate_model
    calls = {"n": 0}

    def poison_after_two_epochs(head, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            with torch.no_grad():
                for p in head.parameters():
                    p.fill_(float("nan"))
            return real(head, *args, **kwargs)
        return real(head, *args, **kwargs)

    monkeypatch.setattr(training, "evaluate_model", poison_after_two_epochs)
    clf = FlowerClassifier("tiny_test", **{**FAST, "epochs": 5})
    with pytest.raises(PetalnetError, match="loss became nan in epoch 3"):
        clf.fit(single_folder)
    assert clf.best_epoch_ == 1  # epoch 2 validated as NaN, never the best
    assert all(torch.isfinite(p).all() for p in clf.head_.parameters())
    assert clf.predict(single_folder / "1" / "img_000.jpg")[0].probability > 0


def test_cli_saves_best_weights_when_training_fails(single_folder, tmp_path, monkeypatch, capsys):
    from petalnet import training

    real = training.evaluate_model
    calls = {"n": 0}

    def io_error_in_epoch_three(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(5, "Input/output error")
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "evaluate_model", io_error_in_epoch_three)
    code = main(
        [
            "train",
            str(single_folder),
            "--arch",
            "tiny_test",
            "--epochs",
            "5",
            "--save_dir",
            str(tmp_path),
            "--quiet",
            "--no_cache",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1 and "Input/output error" in err and "checkpoint.partial.pt" in err
    partial = FlowerClassifier.load(tmp_path / "checkpoint.partial.pt", device="cpu")
    assert len(partial.history_) == 2


def test_save_is_atomic(fitted, tmp_path, monkeypatch):
    path = fitted.save(tmp_path / "model.pt")
    before = path.read_bytes()

    def crash_mid_write(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", crash_mid_write)
    with pytest.raises(CheckpointError, match="No space left"):
        fitted.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temp file left


def test_truncated_checkpoint(fitted, tmp_path):
    good = fitted.save(tmp_path / "good.pt").read_bytes()
    for cut in (10, len(good) // 2, len(good) - 5):
        (tmp_path / "cut.pt").write_bytes(good[:cut])
        with pytest.raises(CheckpointError, match="cut.pt"):
            FlowerClassifier.load(tmp_path / "cut.pt")


def test_checkpoint_from_another_program_with_missing_parts(tmp_path):
    write_checkpoint({"classes": ["a"]}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="incomplete: no backbone, head, preprocessing"):
        read_checkpoint(tmp_path / "partial.pt")


# ---------------------------------------------------------------- property-based

FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_as_an_image_raise_only_image_read_error(tmp_path, blob):
    path = tmp_path / "fuzz.jpg"
    path.write_bytes(blob)
    try:
        image = read_image(path)
    except ImageReadError as exc:
        message = str(exc)
    else:
        message = "fuzz.jpg"
        assert image.mode == "RGB"
    assert "fuzz.jpg" in message


@FUZZ
@given(
    mode=st.sampled_from(["1", "L", "LA", "P", "RGB", "RGBA", "CMYK", "I;16", "I", "F"]),
    width=st.integers(1, 40),
    height=st.integers(1, 40),
    fmt=st.sampled_from(["PNG", "TIFF", "JPEG", "BMP", "WEBP", "GIF"]),
    seed=st.integers(0, 2**16),
)
def test_random_small_images_become_rgb(tmp_path, mode, width, height, fmt, seed):
    rng = np.random.default_rng(seed)
    if mode == "I;16":
        image = Image.fromarray(rng.integers(0, 65535, (height, width), dtype=np.uint16))
    elif mode == "I":
        image = Image.fromarray(rng.integers(-(2**20), 2**20, (height, width), dtype=np.int32))
    elif mode == "F":
        image = Image.fromarray(rng.normal(0, 1000, (height, width)).astype(np.float32))
    else:
        rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        image = Image.fromarray(rgb).convert(mode)
    path = tmp_path / f"img.{fmt.lower()}"
    try:
        image.save(path, format=fmt)
    except (OSError, ValueError, KeyError):
        return  # that format cannot store that mode: nothing to read back
    out = read_image(path)
    assert out.mode == "RGB" and out.size in ((width, height), (height, width))


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes_as_a_checkpoint_raise_only_checkpoint_error(tmp_path, blob):
    path = tmp_path / "fuzz.pt"
    path.write_bytes(blob)
    with pytest.raises(CheckpointError):
        FlowerClassifier.load(path)


@FUZZ
@given(st.integers(0, 10_000), st.binary(min_size=1, max_size=64))
def test_corrupted_real_checkpoints_raise_only_checkpoint_error(tmp_path, offset, junk):
    path = tmp_path / "real.pt"
    if not path.exists():
        clf = FlowerClassifier("tiny_test", **{**FAST, "hidden_units": None, "dropout": 0.0})
        head = torch.nn.Sequential(torch.nn.Linear(32, 2), torch.nn.LogSoftmax(dim=1))
        backbone = petalnet.build_backbone("tiny_test")
        clf.model_ = FittedModel(backbone, head, [], 0.0, ["a", "b"], None)
        clf.save(path)
    good = path.read_bytes()
    broken = tmp_path / "broken.pt"
    at = offset % len(good)
    broken.write_bytes(good[:at] + junk + good[at + len(junk) :])
    # a flipped byte in the backbone's name gives an unknown backbone: also a clear error
    with contextlib.suppress(CheckpointError, petalnet.BackboneNotFoundError):
        FlowerClassifier.load(broken, device="cpu")
