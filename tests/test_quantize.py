"""quantize="int8": a frozen backbone quantised by torchao's PT2E flow, through every door."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import petalnet
from conftest import FITTED_PARAMS
from petalnet import fitting, quantize
from petalnet.backbones.registry import auto_int8, build_backbone, get_backbone, registered
from petalnet.backbones.registry import int8_float as registry_int8_float
from petalnet.errors import ExportOptionsError, PetalnetError, PetalnetWarning
from petalnet.features import feature_cache, prepare_backbone
from petalnet.images import read_image
from petalnet.onednn import PackedConv2d
from petalnet.quantize import (
    Int8Scales,
    calibrate_int8,
    calibration_images,
    int8_runner,
    resolve_quantize,
)

pytest.importorskip("torchao")

INT8 = {**FITTED_PARAMS, "quantize": "int8"}


def _images(root: Path) -> list[Path]:
    return sorted((root / "valid").glob("*/*.jpg"))


def _batch(backbone: petalnet.FeatureExtractor, paths: list[Path]) -> torch.Tensor:
    pre = backbone.preprocessing
    return torch.stack([pre.transform()(read_image(p, pre.resize_size)) for p in paths])


def _saved_loaded_and_exported_alike(clf, scales, x, flowers_root, tmp_path) -> None:
    """The checkpoint keeps the scales; the loaded model and a pt2 export answer alike."""
    saved = clf.save(tmp_path / "int8.pt")
    loaded = petalnet.FlowerClassifier.load(saved, cache_dir=tmp_path / "loaded")
    assert loaded.fitted_model().backbone.meta.int8 == scales
    images = _images(flowers_root)
    proba = clf.predict_proba(images)
    np.testing.assert_array_equal(loaded.predict_proba(images), proba)
    program = torch.export.load(loaded.export(tmp_path / "int8.pt2")).module()
    np.testing.assert_allclose(program(x).numpy(), proba, atol=0.02)  # reference kernels


@pytest.fixture(scope="module")
def int8_fitted(flowers_root: Path, tmp_path_factory: pytest.TempPathFactory):
    cache = tmp_path_factory.mktemp("int8-cache")
    return petalnet.FlowerClassifier(**INT8, cache_dir=cache).fit(flowers_root)


def test_fit_carries_scales_and_every_door_answers_alike(int8_fitted, flowers_root, tmp_path):
    model = int8_fitted.fitted_model()
    scales = model.backbone.meta.int8
    assert isinstance(scales, Int8Scales) and scales.observers
    assert int8_fitted.pipeline_.precision == torch.float32  # int8, never autocast
    images = _images(flowers_root)
    proba = int8_fitted.predict_proba(images)
    assert int8_fitted.evaluate(flowers_root / "valid")["accuracy"] > 0.5

    saved = int8_fitted.save(tmp_path / "int8.pt")
    loaded = petalnet.FlowerClassifier.load(saved, cache_dir=tmp_path / "other-cache")
    assert loaded.fitted_model().backbone.meta.int8 == scales  # the checkpoint's scales
    np.testing.assert_array_equal(loaded.predict_proba(images), proba)  # rebuilt, not re-observed

    program = torch.export.load(loaded.export(tmp_path / "int8.pt2")).module()
    exported = program(_batch(model.backbone, images)).numpy()
    # the program runs the quantised graph uncompiled: the same int8 arithmetic in reference
    # kernels, so the same answers to rounding
    np.testing.assert_allclose(exported, proba, atol=0.02)
    assert (exported.argmax(1) == proba.argmax(1)).all()
    with pytest.raises(ExportOptionsError, match="pt2 only"):
        loaded.export(tmp_path / "int8.onnx", format="onnx")
    with pytest.raises(ExportOptionsError, match="amp off"):
        loaded.export(tmp_path / "bf16.pt2", amp=True)


def test_int8_rows_are_close_to_float_but_stored_apart(tmp_path, flowers_root):
    backbone = build_backbone("tiny_test")
    paths = sorted((flowers_root / "train").glob("*/*.jpg"))
    scales = calibrate_int8(
        prepare_backbone(backbone, torch.device("cpu")), _batch(backbone, paths)
    )
    quantised = backbone.derive(int8=scales)
    x = _batch(backbone, _images(flowers_root))
    with torch.inference_mode():
        rows = prepare_backbone(quantised, torch.device("cpu"))(x)
        again = prepare_backbone(quantised, torch.device("cpu"))(x)
        floats = prepare_backbone(backbone, torch.device("cpu"))(x)
    torch.testing.assert_close(rows, again, rtol=0, atol=0)  # scales fix the graph
    assert not torch.equal(rows, floats)
    assert torch.nn.functional.cosine_similarity(rows, floats).min() > 0.95
    stores = [feature_cache(b, torch.float32, tmp_path) for b in (backbone, quantised)]
    other = backbone.derive(int8=Int8Scales(tuple((n, s * 2, z) for n, s, z in scales.observers)))
    stores.append(feature_cache(other, torch.float32, tmp_path))
    assert len({s.namespace for s in stores if s is not None}) == 3


def test_the_graph_is_traced_once_to_calibrate_and_run(flowers_root, monkeypatch):
    backbone = build_backbone("tiny_test")
    x = _batch(backbone, _images(flowers_root))
    traces = []
    real = quantize._export
    monkeypatch.setattr(quantize, "_export", lambda *a: traces.append(1) or real(*a))
    monkeypatch.setattr(quantize, "_TRACES", {})  # nothing traced before this test
    runner = prepare_backbone(backbone, torch.device("cpu"))
    scales = calibrate_int8(runner, x)
    again = prepare_backbone(backbone.derive(int8=scales), torch.device("cpu"))  # a new copy
    assert len(traces) == 1  # the same weights: the calibration's trace is reused
    with torch.inference_mode():
        rows = again(x)
    other = prepare_backbone(build_backbone("tiny_test"), torch.device("cpu"))
    with torch.no_grad():
        next(other.parameters()).add_(0.5)  # other weights: traced anew
    int8_runner(other, scales, x[:2])
    assert len(traces) == 2
    quantised = prepare_backbone(backbone.derive(int8=scales), torch.device("cpu"))
    assert len(traces) == 2  # the first weights' trace is still kept (one per part)
    with torch.inference_mode():  # rebuilt from a trace of the same weights: the same rows
        torch.testing.assert_close(quantised(x), rows, rtol=0, atol=0)


def test_refit_reuses_the_first_runs_scales(flowers_root, tmp_path, monkeypatch):
    calls = []
    real = fitting.calibrate_int8
    monkeypatch.setattr(
        fitting,
        "calibrate_int8",
        lambda runner, images, *rest: calls.append(len(images)) or real(runner, images, *rest),
    )
    clf = petalnet.FlowerClassifier(**{**INT8, "refit": True, "epochs": 2}, cache_dir=tmp_path).fit(
        flowers_root
    )
    train = len(sorted((flowers_root / "train").glob("*/*.jpg")))
    assert calls == [min(train, quantize.CALIBRATION_IMAGES)]  # once, not again for the refit
    assert clf.fitted_model().backbone.meta.int8 is not None


def test_calibration_takes_evenly_spaced_readable_images(flowers_root, tmp_path):
    paths = sorted((flowers_root / "train").glob("*/*.jpg"))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    pre = build_backbone("tiny_test").preprocessing
    assert len(paths) == 72  # 73 images, every 9th picked: 8, the unreadable first one left out
    assert calibration_images([broken, *paths], pre, count=8).shape == (7, 3, 32, 32)
    with pytest.raises(petalnet.DataError, match="quantize=None"):
        calibration_images([broken], pre)


def test_int8_needs_a_frozen_backbone_the_cpu_and_torchao(flowers_root, monkeypatch):
    with pytest.raises(ValueError, match="quantize must be None or 'auto' with strategy 'full'"):
        petalnet.FlowerClassifier(**INT8, strategy="full").fit(flowers_root)
    nothing_frozen = {**INT8, "backbone": "tiny_blocks", "strategy": "freeze_unfreeze"}
    with pytest.raises(PetalnetError, match="leaves nothing frozen"):
        petalnet.FlowerClassifier(**nothing_frozen, unfreeze_blocks=None).fit(flowers_root)
    scales = Int8Scales((("activation_post_process_0", 0.1, 0),))
    with pytest.raises(PetalnetError, match="CPU only"):
        prepare_backbone(build_backbone("tiny_test").derive(int8=scales), torch.device("meta"))
    monkeypatch.setitem(sys.modules, "torchao", None)  # as if it were not installed
    with pytest.raises(PetalnetError, match=r"pip install 'petalnet\[int8\]'"):
        petalnet.FlowerClassifier(**INT8).fit(flowers_root)


def test_auto_quantises_a_frozen_backbone_where_the_cpu_runs_onednn_int8(flowers_root, monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_quantize("auto", "freeze", cpu) == ()  # this x86 CPU, torchao installed
    assert resolve_quantize("int8", "freeze", cpu) == ()  # the whole backbone
    assert resolve_quantize(None, "freeze", cpu) is None
    # only the backbones registered with auto_int8 (int8 measured to keep their accuracy)
    assert resolve_quantize("auto", "freeze", cpu, auto_parts=(False,)) is None
    assert resolve_quantize("int8", "freeze", cpu, auto_parts=(False,)) == ()  # asked for
    # of a fused backbone, those parts, where the float parts compute in float32 anyway
    assert resolve_quantize("auto", "freeze", cpu, (True, False), torch.float32) == (0,)
    assert resolve_quantize("auto", "freeze", cpu, (False, True), torch.float32) == (1,)
    assert resolve_quantize("auto", "freeze", cpu, (True, False), torch.bfloat16) is None
    assert resolve_quantize("auto", "freeze", cpu, (True, True), torch.bfloat16) == ()
    # the frozen front of a partly fine-tuned backbone, where the float path is float32
    assert resolve_quantize("auto", "freeze_unfreeze", cpu, (True,), torch.float32) == ()
    assert resolve_quantize("auto", "freeze_unfreeze", cpu, (True,), torch.bfloat16) is None
    assert resolve_quantize("auto", "freeze_unfreeze", cpu, (False,), torch.float32) is None
    assert resolve_quantize("auto", "full", cpu) is None  # nothing stays frozen
    assert resolve_quantize("auto", "freeze", torch.device("meta")) is None  # not the CPU
    clf = petalnet.FlowerClassifier(**{**INT8, "quantize": "auto", "epochs": 2}).fit(flowers_root)
    assert clf.fitted_model().backbone.meta.int8 is not None
    assert clf.get_params()["quantize"] == "auto"  # the parameter as given; the backbone says
    # a fine-tuning strategy with "auto" is not an error: it runs in floating point
    tuned = {**INT8, "quantize": "auto", "strategy": "full", "epochs": 1}
    assert (
        petalnet.FlowerClassifier(**tuned).fit(flowers_root).fitted_model().backbone.meta.int8
        is None
    )
    # "auto" with freeze_unfreeze: the front of a backbone measured in int8 (tiny_blocks
    # stands in for lite0 here), and no error where nothing stays frozen
    monkeypatch.setattr(fitting, "auto_int8", lambda name: (True,))
    partly = {**INT8, "quantize": "auto", "backbone": "tiny_blocks", "epochs": 2}
    partly.update(strategy="freeze_unfreeze", freeze_epochs=1)
    for unfreeze, front in ((1, 2), (None, None)):
        fitted = petalnet.FlowerClassifier(**partly, unfreeze_blocks=unfreeze).fit(flowers_root)
        scales = fitted.fitted_model().backbone.meta.int8
        assert (scales.front if scales else None) == front
    monkeypatch.undo()
    with registered("tiny_unmeasured", get_backbone("tiny_test")):
        assert auto_int8("tiny_unmeasured") == (False,)  # registered without auto_int8
        assert auto_int8("tiny_test+tiny_unmeasured") == (True, False)
        # lite0 in int8; lite1 too, but for its first block (measured: docs/benchmarks.md)
        assert auto_int8("efficientnet_lite0+efficientnet_lite1") == (True, True)
        assert auto_int8("efficientnet_lite2") == (False,)
        assert registry_int8_float("efficientnet_lite0+efficientnet_lite1") == (
            (),
            ("stem", "stage1"),
        )
    with registered("tiny_test", get_backbone("tiny_test_wide_crop")):  # another builder
        assert auto_int8("tiny_test") == (False,)  # is not what int8 was measured on
    assert auto_int8("tiny_test") == (True,)  # the registration's flag comes back
    monkeypatch.setenv("PETALNET_ONEDNN", "0")  # as a torch without oneDNN's int8 kernels
    assert resolve_quantize("auto", "freeze", cpu) is None
    monkeypatch.delenv("PETALNET_ONEDNN")
    monkeypatch.setitem(sys.modules, "torchao", None)  # as if it were not installed
    assert resolve_quantize("auto", "freeze", cpu) is None


def test_auto_quantises_only_the_measured_parts_of_a_fused_backbone(
    flowers_root, tmp_path, monkeypatch
):
    # tiny_test is registered with auto_int8 (as efficientnet_lite0), tiny_test_wide_crop not
    fused = {**FITTED_PARAMS, "backbone": "tiny_test+tiny_test_wide_crop", "epochs": 2}
    clf = petalnet.FlowerClassifier(**fused, quantize="auto", cache_dir=tmp_path / "a")
    clf.fit(flowers_root)  # amp=False: the float part computes in float32 either way
    backbone = clf.fitted_model().backbone
    scales = backbone.meta.int8
    assert scales is not None and scales.parts == (0,)
    assert all(name.startswith("0:") for name, _, _ in scales.observers)  # part 0's graph
    cpu = torch.device("cpu")
    runner = prepare_backbone(backbone, cpu)
    int8_part, float_part = runner.body.parts
    assert isinstance(int8_part, quantize._Int8Runner) and int8_part.lowered is not None
    calls = {node.target for node in int8_part.lowered.graph.nodes}
    assert torch.ops.onednn.qconv2d_pointwise.default in calls  # part 0: oneDNN int8
    assert torch.ops.aten.conv2d.default not in calls
    assert isinstance(float_part, petalnet.FeatureExtractor)  # part 1: its eager modules
    x = _batch(backbone, _images(flowers_root))
    with torch.inference_mode():
        rows = runner(x)
        floats = prepare_backbone(backbone.derive(int8=None), cpu)(x)
        packed = clf.pipeline_.runner(x)  # what fit computes with: the float part packed
    assert any(isinstance(m, PackedConv2d) for m in clf.pipeline_.runner.body.parts[1].modules())
    torch.testing.assert_close(rows[:, 32:], floats[:, 32:], rtol=0, atol=0)  # float rows
    torch.testing.assert_close(packed, rows, rtol=1e-4, atol=1e-5)
    assert not torch.equal(rows[:, :32], floats[:, :32])  # part 0 its int8 ones
    assert torch.nn.functional.cosine_similarity(rows[:, :32], floats[:, :32]).min() > 0.95
    # part 0 alone in int8 is the same graph, whether or not it sits in a fused backbone
    alone = Int8Scales(tuple((n.removeprefix("0:"), s, z) for n, s, z in scales.observers))
    part0 = backbone.body.parts[0]
    x0 = runner.body.part_input(x, 0)
    with torch.inference_mode():
        torch.testing.assert_close(
            prepare_backbone(part0.derive(int8=alone), cpu)(x0).flatten(1),
            rows[:, :32],
            rtol=0,
            atol=0,
        )

    _saved_loaded_and_exported_alike(clf, scales, x, flowers_root, tmp_path)  # with its parts
    whole = Int8Scales(scales.observers)  # a whole backbone's scales: the format as before
    assert (
        isinstance(whole.to_payload(), list)
        and Int8Scales.from_payload(whole.to_payload()) == whole
    )
    assert Int8Scales.from_payload(scales.to_payload()) == scales
    assert whole.fingerprint != scales.fingerprint  # rows of other parts never mix

    monkeypatch.setenv("PETALNET_CPU_BF16", "1")  # a CPU whose float path is bfloat16:
    bf16 = petalnet.FlowerClassifier(**{**fused, "amp": "auto"}, quantize="auto")
    assert bf16.fit(flowers_root).fitted_model().backbone.meta.int8 is None  # stays float
    with pytest.raises(PetalnetError, match="not the fused backbone"):
        int8_runner(prepare_backbone(build_backbone("tiny_test"), cpu), scales, x[:2])
    one_graph = Int8Scales(alone.observers, (0,))  # as saved before each part had its graph
    with pytest.raises(PetalnetError, match="earlier petalnet.*fit again"):
        int8_runner(prepare_backbone(backbone.derive(int8=None), cpu), one_graph, x[:2])


def test_the_frozen_front_of_a_partly_fine_tuned_backbone_runs_in_int8(flowers_root, tmp_path):
    partly = {
        **INT8,
        "backbone": "tiny_blocks",  # stem, block1, block2, pool
        "strategy": "freeze_unfreeze",
        "unfreeze_blocks": 1,
        "freeze_epochs": 1,
        "epochs": 3,
    }
    clf = petalnet.FlowerClassifier(**partly, cache_dir=tmp_path / "a").fit(flowers_root)
    backbone = clf.fitted_model().backbone
    scales = backbone.meta.int8
    assert scales is not None and scales.front == 2 and not scales.parts  # stem and block1
    assert Int8Scales.from_payload(json.loads(json.dumps(scales.to_payload()))) == scales
    assert scales.fingerprint != Int8Scales(scales.observers).fingerprint
    cpu = torch.device("cpu")
    runner = prepare_backbone(backbone, cpu)
    first, *rest = runner.body.children()
    assert isinstance(first, quantize._Int8Runner) and len(rest) == 2  # block2, pool in float
    assert not any(isinstance(m, quantize._Int8Runner) for r in rest for m in r.modules())
    x = _batch(backbone, _images(flowers_root))
    front, back = backbone.split(1)  # what training computed: the int8 front's rows, then
    with torch.inference_mode():  # the fine-tuned block on them
        rows = prepare_backbone(front.derive(int8=scales), cpu)(x)
        features = runner(x)
        torch.testing.assert_close(back.eval()(rows), features)
        floats = prepare_backbone(backbone.derive(int8=None), cpu)(x)
    assert not torch.equal(features, floats)  # the front is not float
    assert torch.nn.functional.cosine_similarity(features, floats).min() > 0.9
    # the fine-tuned block is the model's own (not the pretrained one)
    pretrained = build_backbone("tiny_blocks").body.block2[0].weight
    assert not torch.equal(backbone.body.block2[0].weight, pretrained)

    _saved_loaded_and_exported_alike(clf, scales, x, flowers_root, tmp_path)


def test_an_int8_model_computes_on_the_cpu_where_the_device_is_auto(
    int8_fitted, tmp_path, monkeypatch
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine
    assert fitting.resolve_device("auto").type == "cuda"
    path = int8_fitted.save(tmp_path / "int8.pt")
    loaded = petalnet.FlowerClassifier.load(path, cache_dir=tmp_path / "cache")
    assert loaded.pipeline_.device.type == "cpu"  # not the GPU, where int8 cannot run


def test_scales_of_another_graph_are_refused():
    backbone = build_backbone("tiny_test")
    wrong = Int8Scales((("activation_post_process_99", 0.1, 0),))
    with pytest.raises(PetalnetError, match="do not fit"):
        int8_runner(
            prepare_backbone(backbone, torch.device("cpu")), wrong, torch.zeros(2, 3, 32, 32)
        )


def test_int8_needs_no_compiler_and_runs_reference_kernels_without_onednn(
    flowers_root, monkeypatch
):
    backbone = build_backbone("tiny_test")
    x = _batch(backbone, _images(flowers_root))
    runner = prepare_backbone(backbone, torch.device("cpu"))
    scales = calibrate_int8(runner, x)

    def no_compiler(*args, **kwargs):
        raise AssertionError("the int8 path compiled something")

    monkeypatch.setattr(torch, "compile", no_compiler)
    int8 = int8_runner(runner, scales, x[:2])
    assert int8.lowered is not None  # type: ignore[union-attr]
    with torch.inference_mode():
        lowered, reference = int8(x), int8.graph(x)  # type: ignore[operator]
    # oneDNN's integer kernels against float kernels on dequantised values: rounding apart
    assert torch.nn.functional.cosine_similarity(lowered, reference).min() > 0.99

    monkeypatch.setenv("PETALNET_ONEDNN", "0")  # as a torch without oneDNN's int8 kernels
    with pytest.warns(PetalnetWarning, match="reference kernels"):
        plain = int8_runner(runner, scales, x[:2])
    assert plain.lowered is None  # type: ignore[union-attr]
    with torch.inference_mode():
        torch.testing.assert_close(plain(x), reference, rtol=0, atol=0)


def test_the_command_line_trains_and_predicts_in_int8(flowers_root, tmp_path):
    from petalnet.cli import main

    argv = ["train", str(flowers_root), "--arch", "tiny_test", "--epochs", "3", "--quiet"]
    argv += ["--quantize", "int8", "--save_dir", str(tmp_path), "--seed", "0"]
    assert main(argv) == 0
    checkpoint = tmp_path / "checkpoint.pt"
    clf = petalnet.FlowerClassifier.load(checkpoint, device="cpu")
    assert clf.get_params()["quantize"] == "int8" and clf.fitted_model().backbone.meta.int8
    out = tmp_path / "predictions.jsonl"
    images = flowers_root / "test"
    assert main(["predict", str(images), str(checkpoint), "--output", str(out)]) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    proba = clf.predict_proba([Path(r["image"]) for r in records])
    top = [r["top"][0]["probability"] for r in records]
    np.testing.assert_allclose(top, proba.max(1), atol=1e-4)  # the same answer, both doors


def test_serve_answers_like_the_int8_classifier(tmp_path, flowers_root):
    pytest.importorskip("starlette")
    pytest.importorskip("multipart")
    from starlette.testclient import TestClient

    from petalnet.serve import create_app

    # a fresh load: its first int8 call happens in the server's worker thread
    clf = petalnet.FlowerClassifier(**{**INT8, "epochs": 3}).fit(flowers_root)
    served = petalnet.FlowerClassifier.load(clf.save(tmp_path / "int8.pt"))
    image = _images(flowers_root)[0]
    with TestClient(create_app(served)) as client:
        response = client.post("/predict?topk=3", files={"file": ("a.jpg", image.read_bytes())})
    assert response.status_code == 200
    expected = clf.predict(image, topk=3)
    body = response.json()["predictions"]
    assert [p["class_id"] for p in body] == [p.class_id for p in expected]
    got = [p["probability"] for p in body]
    np.testing.assert_allclose(got, [p.probability for p in expected], atol=1e-5)


def _conv_calls(module: torch.nn.Module) -> list[str]:
    graphs = [m.lowered for m in module.modules() if isinstance(m, quantize._Int8Runner)]
    nodes = [n for g in graphs for n in g.graph.nodes if n.op == "call_function"]
    return [str(n.target) for n in nodes if "conv" in str(n.target)]


def test_a_backbones_first_blocks_registered_int8_float_stay_float(
    flowers_root, tmp_path, monkeypatch
):
    from petalnet.backbones import registry

    monkeypatch.setitem(registry._INT8_FLOAT, "tiny_blocks", ("stem",))  # as lite1's
    assert registry.int8_float("tiny_test+tiny_blocks") == ((), ("stem",))
    params = {**INT8, "backbone": "tiny_blocks", "epochs": 2}
    clf = petalnet.FlowerClassifier(**params, cache_dir=tmp_path / "a").fit(flowers_root)
    backbone = clf.fitted_model().backbone
    scales = backbone.meta.int8
    assert scales is not None and scales.floats == ("body.stem",)
    assert Int8Scales.from_payload(json.loads(json.dumps(scales.to_payload()))) == scales
    assert scales.fingerprint != Int8Scales(scales.observers).fingerprint
    cpu = torch.device("cpu")
    runner = prepare_backbone(backbone, cpu)
    # the stem is a float convolution in the graph, block1 and block2 oneDNN int8 calls
    assert (
        sorted(_conv_calls(runner))
        == ["aten.conv2d.default"] + ["onednn.qconv2d_pointwise.default"] * 2
    )
    x = _batch(backbone, _images(flowers_root))
    with torch.inference_mode():  # against the same backbone with every block in int8
        everything = calibrate_int8(prepare_backbone(backbone.derive(int8=None), cpu), x)
        all_int8 = int8_runner(prepare_backbone(backbone.derive(int8=None), cpu), everything, x)
        assert not torch.equal(all_int8(x), runner(x))
    assert len(everything.observers) > len(scales.observers)  # the stem's are not observed
    _saved_loaded_and_exported_alike(clf, scales, x, flowers_root, tmp_path)


def test_int8_float_paths_follow_the_graph_that_is_traced(flowers_root, monkeypatch):
    from petalnet.backbones import registry

    monkeypatch.setitem(registry._INT8_FLOAT, "tiny_blocks", ("stem",))
    cpu = torch.device("cpu")
    fused = prepare_backbone(build_backbone("tiny_test+tiny_blocks"), cpu)
    x = _batch(build_backbone("tiny_test+tiny_blocks"), _images(flowers_root))
    floats = registry.int8_float("tiny_test+tiny_blocks")
    whole = calibrate_int8(fused, x, floats=floats)  # both parts, one graph
    assert whole.floats == ("body.parts.1.body.stem",)
    parts = calibrate_int8(fused, x, (0, 1), floats=floats)  # each part its own graph
    assert parts.floats == ("1:body.stem",)
    with torch.inference_mode():
        one = int8_runner(copy.deepcopy(fused), whole, x)(x)
        each = int8_runner(copy.deepcopy(fused), parts, x)
        assert _conv_calls(each.body.parts[1]).count("aten.conv2d.default") == 1
        torch.testing.assert_close(each(x), one, rtol=0.05, atol=0.05)
    blocks = prepare_backbone(build_backbone("tiny_blocks"), cpu)  # a front: children by index
    assert calibrate_int8(blocks, x, front=2, floats=(("stem",),)).floats == ("0",)
    with pytest.raises(PetalnetError, match="int8_float names \\['trunk'\\]"):
        calibrate_int8(blocks, x, floats=(("trunk",),))
    # "auto" keeps a backbone whose first blocks stay float out of int8 where float is bf16
    auto = ("auto", "freeze", cpu, (True,))
    assert resolve_quantize(*auto, torch.float32, (("stem",),)) == ()
    assert resolve_quantize(*auto, torch.bfloat16, (("stem",),)) is None
    assert resolve_quantize(*auto, torch.bfloat16, ((),)) == ()
