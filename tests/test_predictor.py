"""One answer through every door: the Predictor behind Python, the CLI and HTTP."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
from PIL import Image

from conftest import QUICK_FIT, draw_flower
from petalnet import FlowerClassifier
from petalnet.callbacks import EarlyStopping, TrainingState
from petalnet.cli import main
from petalnet.predictor import Predictor
from petalnet.preprocessing import Preprocessing
from petalnet.results import check_topk


def big_jpeg(path, size=(2000, 1500)):
    """A smooth 2000 px photo-like JPEG (draft decoding shrinks it while reading)."""
    y, x = np.mgrid[0 : size[1], 0 : size[0]]
    pixels = np.stack([x * 255 // size[0], y * 255 // size[1], (x + y) % 256], axis=-1)
    Image.fromarray(pixels.astype(np.uint8)).save(path, quality=90)
    return path


def test_the_classifier_delegates_to_one_predictor(fitted, flowers_root):
    images = sorted((flowers_root / "test").glob("*/*.jpg"))[:4]
    predictor = fitted.predictor_
    assert isinstance(predictor, Predictor) and fitted.predictor_ is predictor  # kept
    np.testing.assert_array_equal(fitted.predict_proba(images), predictor.predict_proba(images))
    assert fitted.evaluate(flowers_root)["accuracy"] == predictor.evaluate(flowers_root)["accuracy"]


def test_paths_bytes_and_open_files_decode_alike(fitted, tmp_path):
    path = big_jpeg(tmp_path / "big.jpg")
    data = path.read_bytes()
    by_path = fitted.predict_proba(path)
    np.testing.assert_array_equal(fitted.predict_proba(data), by_path)
    np.testing.assert_array_equal(fitted.predict_proba(io.BytesIO(data)), by_path)
    # bytes and files are encoded images: the draft JPEG decoding applies, as for a path
    decoded = Image.open(path).convert("RGB")
    assert not np.array_equal(fitted.predict_proba(decoded), by_path)


def test_http_answers_a_large_jpeg_like_a_path(fitted, tmp_path):
    pytest.importorskip("starlette")
    pytest.importorskip("multipart")
    from starlette.testclient import TestClient

    from petalnet.serve import create_app

    path = big_jpeg(tmp_path / "big.jpg")
    expected = fitted.predict(path, topk=5)
    with TestClient(create_app(fitted, max_upload_bytes=20_000_000)) as client:
        body = client.post("/predict?topk=5", files={"file": ("big.jpg", path.read_bytes())}).json()
    got = {p["class_id"]: p["probability"] for p in body["predictions"]}
    assert list(got) == [p.class_id for p in expected]
    for p in expected:
        assert abs(got[p.class_id] - p.probability) <= 1e-4


@pytest.fixture(scope="module")
def tta_checkpoint(flowers_root, tmp_path_factory):
    clf = FlowerClassifier("tiny_test", **{**QUICK_FIT, "epochs": 3, "tta": True})
    return clf.fit(flowers_root).save(tmp_path_factory.mktemp("tta") / "tta.pt")


def test_cli_evaluate_keeps_the_saved_tta(tta_checkpoint, flowers_root, capsys):
    python = FlowerClassifier.load(tta_checkpoint, device="cpu").evaluate(flowers_root)
    assert main(["evaluate", str(flowers_root), str(tta_checkpoint), "--quiet"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert f"accuracy {python['accuracy']:.2%}" in line and "TTA on" in line
    assert main(["evaluate", str(flowers_root), str(tta_checkpoint), "--no-tta", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"tta": false' in out


def test_every_door_averages_the_same_side_crops(tta_checkpoint, flowers_root, capsys):
    python = FlowerClassifier.load(tta_checkpoint, device="cpu", tta="crops")
    report = python.evaluate(flowers_root)
    argv = ["evaluate", str(flowers_root), str(tta_checkpoint), "--tta", "crops", "--json"]
    assert main(argv) == 0
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert out["tta"] == "crops" and out["accuracy"] == pytest.approx(report["accuracy"])
    image = sorted((flowers_root / "test").rglob("*.jpg"))[0]
    flip = FlowerClassifier.load(tta_checkpoint, device="cpu").predict_proba(image)
    assert not np.allclose(python.predict_proba(image), flip, atol=1e-4)  # other views
    assert main(["predict", str(image), str(tta_checkpoint), "--tta", "crops", "--json"]) == 0
    said = json.loads(capsys.readouterr().out)["top"][0]
    top = python.predict(image, topk=5)[0]
    assert said["class_id"] == top.class_id
    assert said["probability"] == pytest.approx(top.probability, abs=1e-5)


def test_one_topk_check_for_every_door(fitted, flowers_root, capsys):
    assert check_topk(3) == 3 and check_topk("4", most=20) == 4
    for bad in (0, -1, "x", 2.5, True, "21"):
        with pytest.raises(ValueError, match="topk must be"):
            check_topk(bad, most=20)
    image = next((flowers_root / "test").glob("*/*.jpg"))
    with pytest.raises(ValueError, match="topk must be at least 1"):
        fitted.predict(image, topk=0)
    with pytest.raises(ValueError, match="topk must be"):
        next(fitted.iter_predictions([image], topk=0))


def test_verbose_takes_bools_like_scikit_learn():
    FlowerClassifier(verbose=False).validate()
    FlowerClassifier(verbose=True).validate()
    with pytest.raises(ValueError, match="verbose"):
        FlowerClassifier(verbose="loud").validate()


def test_unfreeze_blocks_zero_is_an_error_not_every_block(capsys, flowers_root):
    with pytest.raises(ValueError, match="unfreeze_blocks must be at least 1, or None"):
        FlowerClassifier(unfreeze_blocks=0).validate()
    assert main(["train", str(flowers_root), "--unfreeze_blocks", "0"]) == 2
    assert "unfreeze_blocks" in capsys.readouterr().err


def test_the_augmentation_id_follows_the_transform(monkeypatch):
    pre = Preprocessing()
    before = pre.augmentation_id("classic")
    assert before == Preprocessing().augmentation_id("classic")
    assert before != pre.augmentation_id("trivialaugment")
    assert before != Preprocessing(crop_size=200).augmentation_id("classic")
    from torchvision.transforms import v2

    real = v2.RandomRotation
    monkeypatch.setattr(v2, "RandomRotation", lambda degrees, **kw: real(15, **kw))
    assert pre.augmentation_id("classic") != before  # a changed recipe, a new id


def test_early_stopping_resumes_with_its_counters():
    stop = EarlyStopping(patience=3)
    state = TrainingState()
    for loss in (1.0, 0.9, 0.95, 0.96):  # the run so far: two epochs without improvement
        state.history.append({"epoch": len(state.history) + 1.0, "valid_loss": loss})
    stop.on_train_begin(state)  # a resumed run starts here
    state.history.append({"epoch": 5.0, "valid_loss": 0.97})
    stop.on_epoch_end(state)
    assert state.stop  # the third epoch without improvement, as without the interruption


def test_the_report_has_one_name_per_number(fitted, flowers_root):
    report = fitted.evaluate(flowers_root)
    assert "nll" not in report and math.isfinite(report["loss"])


def test_cli_help_says_what_flags_do(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in ("confusion_matrix.png", "misclassified.png", "reliability.png"):
        assert name in text  # evaluate --plots writes all three
    assert "without one, the CPU with a notice" in text  # --gpu falls back
    assert "--tta [flip|crops|crops+flip]" in text and "--no-tta" in text


def test_a_bad_upload_is_refused_by_its_kind(fitted):
    pytest.importorskip("starlette")
    pytest.importorskip("multipart")
    from starlette.testclient import TestClient

    from petalnet.serve import create_app

    photo = io.BytesIO()
    draw_flower("2", seed=1).save(photo, format="JPEG")
    whole = photo.getvalue()
    with TestClient(create_app(fitted)) as client:
        page = client.post("/predict", files={"file": ("a.jpg", b"<html>404</html>")})
        cut = client.post("/predict", files={"file": ("b.jpg", whole[: len(whole) // 3])})
    assert page.status_code == 415 and "a.jpg" in page.json()["error"]
    assert cut.status_code == 400 and "b.jpg" in cut.json()["error"]


def test_history_epochs_are_whole_numbers(fitted):
    assert all(type(r["epoch"]) is int for r in fitted.history_)


def test_training_curves_mark_the_kept_epoch(fitted):
    pytest.importorskip("matplotlib")
    from petalnet import plot

    fig = plot.training_curves(fitted.history_, kept=2)
    (label,) = fig.axes[1].texts
    assert label.xy[0] == 2 and label.get_text().startswith("kept")


def test_check_names_its_layouts_in_words(flowers_root, single_folder):
    from petalnet.check import check_dataset as check_data

    assert "Udacity layout" in check_data(flowers_root).summary()
    assert "one folder of class folders" in check_data(single_folder).summary()


def test_an_unknown_backbone_suggests_without_listing_every_name():
    from petalnet import BackboneNotFoundError, get_backbone

    with pytest.raises(BackboneNotFoundError) as caught:
        get_backbone("vgg17")
    message = str(caught.value)
    assert "Did you mean vgg1" in message and "petalnet backbones` lists all" in message
    assert len(message) < 600  # not the ~80 names


def test_train_says_it_kept_the_last_epoch_when_told_to(single_folder, tmp_path, capsys):
    argv = ["train", str(single_folder), "--arch", "tiny_test", "--epochs", "2", "--quiet"]
    argv += ["--monitor", "last", "--no_cache", "--save_dir", str(tmp_path)]
    assert main(argv) == 0
    assert "kept the last epoch (2)" in capsys.readouterr().out


def test_serve_logs_each_request_and_says_whether_tta_is_on(fitted, monkeypatch):
    uvicorn = pytest.importorskip("uvicorn")
    pytest.importorskip("starlette")
    from petalnet import serve

    seen: dict = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(kw))
    lines: list[str] = []
    serve.run(fitted, log=lines.append)
    assert seen["access_log"] is True and seen["log_level"] == "info"
    assert "TTA off" in lines[0]


def test_augmented_draws_keep_their_seeds_when_the_recipe_id_moves():
    from petalnet.features import View

    view = View("augmented", 1)
    # the names the draws have always had: the same seed, the same augmentations
    assert view.draw("classic", 0) == "aug1:rot30-rrc-flip-v2:0"
    assert view.draw("trivialaugment", 3) == "aug1:rot30-rrc-flip-trivialaugment-v1:3"
    assert view.key(Preprocessing(), "classic", 0) != view.draw("classic", 0)
