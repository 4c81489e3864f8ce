"""The command line: train, predict (text, CSV, JSONL, plot), evaluate, backbones, download."""

from __future__ import annotations

import csv
import hashlib
import http.server
import io
import json
import subprocess
import sys
import tarfile
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from torchvision.datasets import Flowers102

from conftest import draw_flower
from petalnet import FlowerClassifier, __version__
from petalnet.cli import main


@pytest.fixture(scope="module")
def checkpoint(flowers_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt")
    code = main(
        [
            "train",
            str(flowers_root),
            "--arch",
            "tiny_test",
            "--epochs",
            "8",
            "--learning_rate",
            "0.01",
            "--hidden_units",
            "32",
            "--save_dir",
            str(out),
            "--seed",
            "0",
            "--quiet",
            "--batch_size",
            "16",
        ]
    )
    assert code == 0
    return out / "checkpoint.pt"


def test_train_writes_checkpoint_and_curves(checkpoint, capsys):
    assert checkpoint.is_file()
    assert (checkpoint.parent / "checkpoint_curves.png").stat().st_size > 10_000
    clf = FlowerClassifier.load(checkpoint, device="cpu")
    assert clf.get_params()["learning_rate"] == 0.01 and len(clf.history_) == 8


def test_train_prints_one_line_per_epoch(flowers_root, tmp_path, capsys):
    code = main(
        [
            "train",
            str(flowers_root),
            "--arch",
            "tiny_test",
            "--epochs",
            "3",
            "--save_dir",
            str(tmp_path),
            "--no_cache",
        ]
    )
    captured = capsys.readouterr()
    out = captured.out
    assert code == 0
    epoch_lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 3
    assert "train loss" in epoch_lines[0] and "valid accuracy" in epoch_lines[0]
    # no progress-bar noise when output is not a terminal
    assert "\r" not in out and "\r" not in captured.err


def test_predict_text_with_category_names(checkpoint, flowers_root, tmp_path, capsys):
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"10": "ten flower"}))
    image = flowers_root / "test" / "10" / "img_000.jpg"
    assert (
        main(
            ["predict", str(image), str(checkpoint), "--top_k", "3", "--category_names", str(names)]
        )
        == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(image)
    assert len(lines) == 4 and "ten flower" in lines[1] and "(class 10)" in lines[1]


def test_predict_folder_to_csv_and_jsonl(checkpoint, flowers_root, tmp_path, monkeypatch):
    from petalnet import cli

    monkeypatch.setattr(cli, "_PREDICT_CHUNK", 5)  # several chunks for 24 images
    out_csv = tmp_path / "preds.csv"
    assert (
        main(
            [
                "predict",
                str(flowers_root / "test"),
                str(checkpoint),
                "--output",
                str(out_csv),
                "--top_k",
                "2",
            ]
        )
        == 0
    )
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 24
    assert set(rows[0]) == {
        "image",
        "unknown",
        "novelty",
        "label_1",
        "class_id_1",
        "probability_1",
        "label_2",
        "class_id_2",
        "probability_2",
        "error",
    }
    assert not any(r["error"] for r in rows)
    right = sum(r["class_id_1"] == r["image"].split("/")[-2] for r in rows)
    assert right >= 20
    out_jsonl = tmp_path / "preds.jsonl"
    assert (
        main(["predict", str(flowers_root / "test"), str(checkpoint), "--output", str(out_jsonl)])
        == 0
    )
    records = [json.loads(line) for line in out_jsonl.read_text().splitlines()]
    assert len(records) == 24 and len(records[0]["top"]) == 5
    assert {type(r["unknown"]) for r in records} == {bool}
    assert all(isinstance(r["novelty"], float) for r in records)
    assert sum(r["unknown"] for r in records) == sum(int(r["unknown"]) for r in rows)


def test_predict_plot(checkpoint, flowers_root, tmp_path):
    target = tmp_path / "chart.png"
    image = flowers_root / "test" / "3" / "img_001.jpg"
    assert main(["predict", str(image), str(checkpoint), "--plot", str(target)]) == 0
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_report_and_confusion_plot(checkpoint, flowers_root, tmp_path, capsys):
    assert (
        main(["evaluate", str(flowers_root), str(checkpoint), "--quiet", "--plots", str(tmp_path)])
        == 0
    )
    out = capsys.readouterr().out
    assert "accuracy" in out and "on 24 images" in out and "weakest classes" in out
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 10_000
    from PIL import Image

    with Image.open(tmp_path / "misclassified.png") as grid:
        assert grid.format == "PNG" and grid.width > 200
    assert main(["evaluate", str(flowers_root), str(checkpoint), "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    expected = FlowerClassifier.load(checkpoint, device="cpu", verbose=0).evaluate(flowers_root)
    assert report["n_images"] == 24 and report["folder"].endswith("test")
    assert report["accuracy"] == expected["accuracy"] and report["loss"] == expected["loss"]
    wrong = round((1 - report["accuracy"]) * 24)
    assert (
        len(report["misclassified"]) == wrong
        and report["misclassified"] == expected["misclassified"]
    )


def test_backbones_listing(capsys):
    assert main(["backbones", "vgg1[16]"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["name", "features", "params", "blocks", "weights", "offline"]
    vgg16 = next(line for line in out if line.startswith("vgg16 "))
    assert vgg16.split()[:4] == ["vgg16", "25088", "14.7M", "5"]
    assert len(out) == 3  # header, vgg11, vgg16


def test_one_backbone_lists_its_blocks(capsys):
    assert main(["backbones", "efficientnet_lite0"]) == 0
    out = capsys.readouterr().out
    assert "stem, stage1, stage2, stage3, stage4, stage5, stage6, stage7, head" in out


def test_train_with_a_fine_tuning_strategy(single_folder, tmp_path, capsys):
    argv = ["train", str(single_folder), "--arch", "tiny_blocks", "--epochs", "2"]
    argv += ["--strategy", "freeze_unfreeze", "--unfreeze_blocks", "1", "--freeze_epochs", "1"]
    argv += ["--lr_schedule", "onecycle", "--save_dir", str(tmp_path), "--device", "cpu"]
    assert main([*argv, "--seed", "0", "--quiet"]) == 0
    clf = FlowerClassifier.load(tmp_path / "checkpoint.pt", device="cpu")
    assert (clf.strategy, clf.unfreeze_blocks, clf.freeze_epochs) == ("freeze_unfreeze", 1, 1)
    assert clf.lr_schedule == "onecycle" and len(clf.history_) == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["predict", "missing.jpg", "model.pt"], "Checkpoint 'model.pt' does not exist"),
        (["evaluate", ".", "missing.pt"], "does not exist"),
        (["train", "no_such_dir"], "does not exist"),
        (["backbones", "zzz*"], "No backbone matches"),
    ],
)
def test_errors_are_one_line_without_traceback(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("petalnet: error: ") and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2


def test_unknown_arch_and_bad_checkpoint(flowers_root, tmp_path, capsys):
    assert main(["train", str(flowers_root), "--arch", "vgg17"]) == 1
    assert "Unknown backbone 'vgg17'" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    image = flowers_root / "test" / "1" / "img_000.jpg"
    assert main(["predict", str(image), str(bad)]) == 1
    assert "bad.pt" in capsys.readouterr().err


def test_python_dash_m_and_version():
    out = subprocess.run(
        [sys.executable, "-m", "petalnet", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"petalnet {__version__}"


# ---------------------------------------------------------------- download


def _fake_flowers_files(folder):
    """The three official files, in miniature: 6 images of 2 classes, split 2/2/2."""
    from scipy.io import savemat

    folder.mkdir()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for i in range(1, 7):
            img = io.BytesIO()
            draw_flower(str(1 + (i > 3)), seed=i).save(img, format="JPEG")
            info = tarfile.TarInfo(f"jpg/image_{i:05d}.jpg")
            info.size = img.tell()
            img.seek(0)
            tar.addfile(info, img)
    (folder / "102flowers.tgz").write_bytes(buf.getvalue())
    savemat(folder / "imagelabels.mat", {"labels": np.array([[1, 1, 1, 2, 2, 2]])})
    savemat(
        folder / "setid.mat",
        {"trnid": np.array([[1, 4]]), "valid": np.array([[2, 5]]), "tstid": np.array([[3, 6]])},
    )
    md5 = lambda name: hashlib.md5((folder / name).read_bytes()).hexdigest()  # noqa: E731
    return {
        "image": ("102flowers.tgz", md5("102flowers.tgz")),
        "label": ("imagelabels.mat", md5("imagelabels.mat")),
        "setid": ("setid.mat", md5("setid.mat")),
    }


@pytest.fixture
def local_server(tmp_path):
    served = tmp_path / "served"
    file_dict = _fake_flowers_files(served)
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/", file_dict
    server.shutdown()
    server.server_close()


def test_download_flowers102_from_a_local_server(local_server, tmp_path, monkeypatch, capsys):
    url, file_dict = local_server
    monkeypatch.setattr(Flowers102, "_download_url_prefix", url)
    monkeypatch.setattr(Flowers102, "_file_dict", file_dict)
    out = tmp_path / "flowers"
    assert main(["download", "flowers102", str(out)]) == 0
    assert "2 train, 2 valid, 2 test" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "train").iterdir()) == ["1", "2"]
    assert (out / "valid" / "2" / "image_00005.jpg").is_file()
    names = json.loads((out / "cat_to_name.json").read_text())
    assert len(names) == 102 and names["1"] == "pink primrose"
    clf = FlowerClassifier("tiny_test", epochs=1, device="cpu", verbose=0).fit(out)
    assert clf.classes_ == ["1", "2"]


def test_download_offline_is_one_sentence(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(Flowers102, "_download_url_prefix", "http://127.0.0.1:9/")
    assert main(["download", "flowers102", str(tmp_path / "f")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("petalnet: error: Cannot download Flowers-102")
    assert "102flowers.tgz" in err and "run again" in err and "\n" not in err


def test_train_resume_from_a_partial_run(single_folder, tmp_path, capsys):
    base = [
        "train",
        str(single_folder),
        "--arch",
        "tiny_test",
        "--seed",
        "0",
        "--quiet",
        "--no_cache",
        "--lr_schedule",
        "cosine",
        "--label_smoothing",
        "0.1",
    ]
    assert main([*base, "--epochs", "2", "--save_dir", str(tmp_path / "a")]) == 0
    assert (
        main(
            [
                *base,
                "--epochs",
                "3",
                "--save_dir",
                str(tmp_path / "b"),
                "--resume",
                str(tmp_path / "a" / "checkpoint.pt"),
            ]
        )
        == 0
    )
    clf = FlowerClassifier.load(tmp_path / "b" / "checkpoint.pt", device="cpu")
    assert len(clf.history_) == 3 and clf.get_params()["label_smoothing"] == 0.1


@pytest.fixture
def folder_with_bad_files(flowers_root, tmp_path):
    """Five photos, an HTML page saved as .jpg and a truncated JPEG (sorted between them)."""
    import shutil

    folder = tmp_path / "photos"
    folder.mkdir()
    for i, c in enumerate(("1", "4", "7", "9", "12")):
        shutil.copy(flowers_root / "test" / c / "img_000.jpg", folder / f"{i * 2}_{c}.jpg")
    (folder / "1_page.jpg").write_text("<html><body>404 Not Found</body></html>")
    whole = (flowers_root / "test" / "3" / "img_000.jpg").read_bytes()
    (folder / "3_truncated.jpg").write_bytes(whole[: len(whole) // 3])
    return folder


def test_predict_keeps_every_good_row_and_names_every_bad_file(
    checkpoint, folder_with_bad_files, tmp_path, capsys
):
    out = tmp_path / "p.csv"
    argv = ["predict", str(folder_with_bad_files), str(checkpoint), "--output", str(out)]
    assert main(argv) == 0
    rows = list(csv.DictReader(out.open()))
    # a row for every input, in order; the unreadable ones empty but for their error
    assert [Path(r["image"]).name for r in rows] == [
        "0_1.jpg",
        "1_page.jpg",
        "2_4.jpg",
        "3_truncated.jpg",
        "4_7.jpg",
        "6_9.jpg",
        "8_12.jpg",
    ]
    errors = {Path(r["image"]).name: r["error"] for r in rows}
    assert "1_page.jpg" in errors["1_page.jpg"] and "3_truncated.jpg" in errors["3_truncated.jpg"]
    assert all(not errors[n] for n in ("0_1.jpg", "2_4.jpg", "4_7.jpg", "6_9.jpg", "8_12.jpg"))
    assert rows[1]["label_1"] == "" and rows[0]["label_1"]
    captured = capsys.readouterr()
    bad_lines = [
        line for line in captured.err.splitlines() if line.startswith("petalnet: skipped:")
    ]
    assert len(bad_lines) == 2
    assert "1_page.jpg" in bad_lines[0] and "3_truncated.jpg" in bad_lines[1]
    assert "2 unreadable image(s) skipped" in captured.err
    assert "wrote 5 predictions and 2 error row(s)" in captured.out
    jsonl = tmp_path / "p.jsonl"
    assert main([*argv[:-1], str(jsonl)]) == 0
    lines = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [bool(r["error"]) for r in lines] == [False, True, False, True, False, False, False]


def test_predict_repeated_bad_files_keep_the_good_row(checkpoint, folder_with_bad_files, capsys):
    page, good = folder_with_bad_files / "1_page.jpg", folder_with_bad_files / "0_1.jpg"
    assert main(["predict", str(page), str(page), str(good), str(checkpoint)]) == 0
    captured = capsys.readouterr()
    bad_lines = [line for line in captured.err.splitlines() if "skipped: " in line]
    assert len(bad_lines) == 2 and all("1_page.jpg" in line for line in bad_lines)
    assert str(good) in captured.out.splitlines()[0]  # the good row is written
    assert "Traceback" not in captured.err and "StopIteration" not in captured.err


def test_predict_with_no_readable_image_fails(checkpoint, folder_with_bad_files, capsys):
    page = folder_with_bad_files / "1_page.jpg"
    assert main(["predict", str(page), str(checkpoint)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("petalnet: skipped: Cannot read image") and "1_page.jpg" in err[0]
    assert err[-1] == "petalnet: error: none of the 1 image(s) could be read (named above)."


def test_predict_strict_stops_at_the_first_bad_file_after_flushing(
    checkpoint, folder_with_bad_files, tmp_path, capsys
):
    out = tmp_path / "p.jsonl"
    argv = ["predict", str(folder_with_bad_files), str(checkpoint), "--output", str(out)]
    assert main([*argv, "--strict"]) == 1
    err = capsys.readouterr().err
    assert "1_page.jpg" in err and "--strict" in err and "Traceback" not in err
    lines = out.read_text().splitlines()
    # the rows before the stop, the bad file's own error row included
    assert [Path(json.loads(line)["image"]).name for line in lines] == ["0_1.jpg", "1_page.jpg"]
    assert json.loads(lines[1])["error"] and not json.loads(lines[0])["error"]


def _invalid_train_words():
    """(flag, word, exit status) for every train flag that takes a value, from the spec."""
    from petalnet.params import param_specs

    for spec in param_specs():
        if spec.flag is None or spec.annotation is bool:
            continue
        if "str" not in spec.describe():  # str ones take any word: STRING_FLAGS below
            yield spec.flag, "x!", 2  # a word of none of its types
        if spec.choices:
            yield spec.flag, "bogus", 2
        elif spec.check is not None:
            yield spec.flag, "-5", 2  # parses, out of range


STRING_FLAGS = {
    "--arch": "no_such_net",
    "--weights": "no/such/file.pth",
    "--category_names": "no_such.json",
}


@pytest.mark.parametrize(
    ("argv", "status"),
    [
        *((["train", "DATA", flag, word], status) for flag, word, status in _invalid_train_words()),
        *((["train", "DATA", flag, word], 1) for flag, word in STRING_FLAGS.items()),
        (["train", "DATA", "--freeze_epochs", "3", "--epochs", "1"], 2),
        (["train", "DATA", "--hidden_units"], 2),
        (["predict", "IMG", "CKPT", "--top_k", "0"], 2),
        (["predict", "IMG", "CKPT", "--top_k", "x"], 2),
        (["predict", "IMG", "CKPT", "--amp", "bogus"], 2),
        (["evaluate", "DATA", "CKPT", "--amp", "bogus"], 2),
        (["export", "CKPT", "out.x", "--format", "bogus"], 2),
        (["export", "CKPT", "out.x", "--amp", "bogus"], 2),
        (["serve", "CKPT", "--port", "70000"], 2),
        (["serve", "CKPT", "--port", "x"], 2),
        (["serve", "CKPT", "--max_upload_mb", "-1"], 2),
        (["serve", "CKPT", "--amp", "bogus"], 2),
        (["check", "DATA", "--deep", "--near_threshold", "1.5"], 2),
        (["check", "DATA", "--deep", "--near_threshold", "x"], 2),
        (["check", "DATA", "--deep", "--arch", "no_such_net"], 1),
        (["train", "DATA", "--preset", "bogus"], 2),
        (["download", "bogus", "dir"], 2),
        (["frobnicate"], 2),
    ],
)
def test_every_bad_value_is_one_line_without_traceback(
    argv, status, single_folder, checkpoint, flowers_root, tmp_path, capsys
):
    where = {"DATA": str(single_folder), "CKPT": str(checkpoint)}
    where["IMG"] = str(flowers_root / "test" / "1" / "img_000.jpg")
    argv = [where.get(a, a) for a in argv]
    try:
        code = main([*argv, "--save_dir", str(tmp_path)] if argv[0] == "train" else argv)
    except SystemExit as exit_:  # argparse's own exit, through our one-line error()
        code = exit_.code
    err = capsys.readouterr().err
    assert code == status, err
    assert err.startswith("petalnet: error:") and err.count("\n") == 1, err
    assert "Traceback" not in err


def test_ctrl_c_saves_the_best_epoch_and_exits_130(
    single_folder, tmp_path, interrupt_in_epoch_3, capsys
):
    argv = ["train", str(single_folder), "--arch", "tiny_test", "--epochs", "5", "--quiet"]
    code = main([*argv, "--save_dir", str(tmp_path), "--no_cache", "--amp", "false"])
    err = capsys.readouterr().err
    assert code == 130
    assert "petalnet: warning: Training interrupted after 2 epoch(s)" in err
    assert "call save" not in err and "warnings.warn" not in err  # no source line echoed
    assert "the best epoch (" in err and str(tmp_path / "checkpoint.pt") in err
    assert len(FlowerClassifier.load(tmp_path / "checkpoint.pt").history_) == 2
    assert "not calibrated yet" in err and "calibration runs when training completes" in err
    command = err.split("with the same settings: ")[1].split()
    assert command[:2] == ["petalnet", "train"] and "--resume" in command


def test_resume_alone_restores_the_run(single_folder, tmp_path, interrupt_in_epoch_3, capsys):
    argv = ["train", str(single_folder), "--arch", "tiny_test", "--epochs", "5", "--quiet"]
    argv += ["--lr_schedule", "cosine", "--hidden_units", "8", "--no_cache", "--amp", "false"]
    assert main([*argv, "--save_dir", str(tmp_path / "a")]) == 130
    command = capsys.readouterr().err.split("with the same settings: ")[1].split()
    # the printed command names no backbone, epochs or schedule: they come from the checkpoint
    assert "--arch" not in command and "--epochs" not in command
    assert main([*command[1:], "--quiet"]) == 0
    clf = FlowerClassifier.load(tmp_path / "a" / "checkpoint.pt", device="cpu")
    assert clf.backbone == "tiny_test" and clf.lr_schedule == "cosine" and clf.epochs == 5
    assert len(clf.history_) == 5 and clf.hidden_units in (8, [8])
    assert clf.model_.calibration.metrics  # calibrated once the run completed


def test_gpu_without_a_gpu_says_which_device_it_uses(checkpoint, flowers_root, monkeypatch, capsys):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    monkeypatch.setattr("torch.backends.mps.is_available", lambda: False)
    image = flowers_root / "test" / "1" / "img_000.jpg"
    assert main(["predict", str(image), str(checkpoint), "--gpu"]) == 0
    out = capsys.readouterr().out
    assert out.count("no CUDA or MPS GPU: using cpu") == 1


def test_list_flags_take_words_or_commas_and_none():
    from petalnet.cli import build_parser

    parser = build_parser()
    for words, value in (
        (["512", "256"], [512, 256]),
        (["512,256"], [512, 256]),
        (["none"], None),
        (["64"], 64),
    ):
        assert parser.parse_args(["train", "d", "--hidden_units", *words]).hidden_units == value


def test_with_tta_the_epoch_lines_say_which_view_they_measure(flowers_root, tmp_path, capsys):
    argv = ["train", str(flowers_root), "--arch", "tiny_test", "--epochs", "2", "--tta"]
    assert main([*argv, "--save_dir", str(tmp_path), "--no_cache"]) == 0
    out = capsys.readouterr().out
    epoch_lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    note = "(centre crop; with tta, evaluate averages more views)"
    assert all(note in line for line in epoch_lines)
    assert "evaluate and predict run with TTA on (centre crop and mirror averaged), so" in out


def test_a_refit_says_what_it_kept_instead_of_nan(single_folder, tmp_path, capsys):
    argv = ["train", str(single_folder), "--arch", "tiny_test", "--weights", "none"]
    argv += ["--epochs", "2", "--monitor", "last", "--refit", "--save_dir", str(tmp_path)]
    argv += ["--no_cache"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    epochs = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 4  # the validated run, then the refit
    assert all("no validation images (refit" in line for line in epochs[2:])
    assert "refitted on every labelled image for 2 epochs" in out and "nan" not in out
    facts = dict(FlowerClassifier.load(tmp_path / "checkpoint.pt").model_.facts())
    assert facts["kept epoch"].endswith("then refitted on every labelled image")


def test_evaluating_the_valid_split_a_refit_trained_on_says_so(flowers_root, tmp_path, capsys):
    valid_only = tmp_path / "data"
    valid_only.mkdir()
    (valid_only / "train").symlink_to(flowers_root / "train")
    (valid_only / "valid").symlink_to(flowers_root / "valid")
    argv = ["train", str(valid_only), "--arch", "tiny_test", "--weights", "none", "--epochs", "2"]
    assert main([*argv, "--refit", "--save_dir", str(tmp_path), "--no_cache"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(valid_only), str(tmp_path / "checkpoint.pt"), "--quiet"]) == 0
    assert "refitted on train + " in capsys.readouterr().err
