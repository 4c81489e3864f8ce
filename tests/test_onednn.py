"""Frozen CPU convolutions as prepacked oneDNN calls: the same rows, the backbone untouched."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import petalnet
from petalnet.features import prepare_backbone
from petalnet.onednn import PackedConv2d, onednn_available, pack_convolutions
from petalnet.pipeline import ImagePipeline
from petalnet.precision import autocast

CPU = torch.device("cpu")

pytestmark = pytest.mark.skipif(not onednn_available(), reason="torch built without oneDNN")


def _packed(module: nn.Module) -> list[PackedConv2d]:
    return [m for m in module.modules() if isinstance(m, PackedConv2d)]


def _pack_keeping_the_output(model: nn.Module, x: torch.Tensor) -> None:
    """Pack ``model`` in place and check that it computes what it did."""
    with torch.no_grad():
        want = model(x)
    pack_convolutions(model)
    with torch.no_grad():
        torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("precision", [torch.float32, torch.bfloat16])
def test_packed_lite0_gives_the_rows_of_the_plain_front_at_every_shape(precision):
    plain = prepare_backbone(petalnet.build_backbone("efficientnet_lite0", weights=None), CPU)
    packed = pack_convolutions(copy.deepcopy(plain))
    convs = _packed(packed)
    assert len(convs) == 49  # every convolution of lite0
    # each conv_bn with a ReLU6 takes it into its call; the projections have none
    assert {c.activation for c in convs} == {"hardtanh", "none"}
    assert not any(isinstance(m, nn.ReLU6) for m in packed.modules())
    # odd and even sizes (every grown "SAME" kernel), two batch sizes
    for shape in [(2, 3, 64, 64), (1, 3, 65, 71), (2, 3, 64, 64)]:
        x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), autocast(CPU, precision):
            want, got = plain(x), packed(x)
        assert got.dtype == want.dtype
        tolerance = 1e-5 if precision == torch.float32 else 2e-2
        torch.testing.assert_close(got.float(), want.float(), rtol=tolerance, atol=tolerance)


def test_a_relu_after_a_convolution_is_fused_and_the_rest_is_left_alone():
    trainable = nn.Conv2d(4, 4, 3, padding=1)
    frozen = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.Identity(),  # where BN folding leaves its batch norm
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding="same"),  # string padding: plain
        nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),  # not zeros: plain
        nn.AdaptiveAvgPool2d(1),
    ).requires_grad_(False)
    model = nn.Sequential(frozen, trainable)
    expected_plain = [frozen[3], frozen[4], trainable]
    _pack_keeping_the_output(model, torch.randn(2, 3, 9, 9))
    assert isinstance(frozen[0], PackedConv2d) and frozen[0].activation == "relu"
    assert isinstance(frozen[2], nn.Identity)
    assert [frozen[3], frozen[4], model[1]] == expected_plain  # unchanged objects


class _Reordered(nn.Sequential):
    """A Sequential that does not run its children in order."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self[0](self[1](x))  # the ReLU first


def test_no_activation_is_fused_where_a_sequential_runs_its_own_forward():
    model = _Reordered(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU()).requires_grad_(False)
    _pack_keeping_the_output(model, torch.randn(1, 3, 6, 6))
    assert isinstance(model[0], PackedConv2d) and model[0].activation == "none"
    assert isinstance(model[1], nn.ReLU)


def test_a_convolution_keeps_packed_weights_for_a_bounded_number_of_shapes(monkeypatch):
    import petalnet.onednn as onednn

    monkeypatch.setattr(onednn, "_SHAPES_KEPT", 2)
    conv = PackedConv2d(nn.Conv2d(3, 4, 3, padding=1).requires_grad_(False))
    with torch.inference_mode():
        for n in (1, 2, 3, 3, 1):
            conv(torch.randn(n, 3, 8, 8))
    assert [key[0] for key in conv._packed] == [3, 1]  # the last two used, oldest dropped


def test_petalnet_onednn_0_turns_packing_off(monkeypatch):
    monkeypatch.setenv("PETALNET_ONEDNN", "0")
    assert not onednn_available()
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).requires_grad_(False)
    assert not _packed(pack_convolutions(model))


def test_the_pipeline_packs_its_runner_and_never_the_backbone_it_saves():
    # tiny_test has no batch norm: prepare_backbone hands back the backbone itself
    backbone = petalnet.build_backbone("tiny_test")
    state = {k: v.clone() for k, v in backbone.state_dict().items()}
    pipeline = ImagePipeline(backbone, device=CPU, use_cache=False)
    runner = pipeline.runner
    assert _packed(runner) and not _packed(backbone)
    assert backbone.state_dict().keys() == state.keys()
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(runner(x), backbone(x), rtol=1e-5, atol=1e-5)


def test_a_cpu_without_onednn_bfloat16_computes_packed_convolutions_as_eager_ones(monkeypatch):
    import petalnet.onednn as onednn

    # as on an AVX2-only CPU, where oneDNN's weight reorder refuses bfloat16
    monkeypatch.setattr(onednn, "_onednn_bf16", lambda: False)
    plain = prepare_backbone(petalnet.build_backbone("efficientnet_lite0", weights=None), CPU)
    packed = pack_convolutions(copy.deepcopy(plain))
    x = torch.randn(2, 3, 65, 71).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(CPU, torch.bfloat16):
        want, got = plain(x), packed(x)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, rtol=0, atol=0)  # ATen's path, the same sums
    assert not any(c._packed for c in _packed(packed))  # nothing was reordered


class _Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(channels, 4 * channels, 1), nn.ReLU6())
        self.depthwise = nn.Sequential(
            nn.Conv2d(4 * channels, 4 * channels, 3, padding=1, groups=4 * channels), nn.ReLU6()
        )
        self.project = nn.Conv2d(4 * channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.depthwise(self.expand(x)))


def test_the_int8_graph_runs_as_onednn_calls_and_computes_what_it_did():
    pytest.importorskip("torchao")
    from petalnet.onednn import lower_int8_graph
    from petalnet.quantize import calibrate_int8, int8_runner

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        _Residual(8),
        nn.Conv2d(8, 16, 1),  # no activation, then pooled in float
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    ).eval()
    model.requires_grad_(False)
    x = torch.rand(12, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    scales = calibrate_int8(model, x)
    reference = int8_runner(model, scales, x[:8]).graph  # type: ignore[union-attr]
    lowered = lower_int8_graph(copy.deepcopy(reference))
    calls = [str(n.target) for n in lowered.graph.nodes if n.op == "call_function"]
    assert "aten.conv2d.default" not in calls  # every convolution is one oneDNN call
    assert calls.count("onednn.qconv2d_pointwise.binary") == 1  # the residual, fused
    assert calls.count("onednn.qconv2d_pointwise.default") == 4
    assert not [c for c in calls if c.startswith("quantized_decomposed")]  # in place instead
    with torch.inference_mode():
        want, got, floats = reference(x), lowered(x[:5]), model(x)
    torch.testing.assert_close(got, want[:5], rtol=0.05, atol=0.05 * float(want.abs().max()))
    assert torch.nn.functional.cosine_similarity(got, floats[:5]).min() > 0.98


def test_a_torchvision_resnet_lowers_as_well():
    pytest.importorskip("torchao")
    from petalnet.quantize import calibrate_int8, int8_runner

    torch.manual_seed(0)
    backbone = petalnet.build_backbone("resnet18", weights=None)  # ReLU after the residual add
    runner = prepare_backbone(backbone, CPU)
    x = torch.rand(12, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    int8 = int8_runner(runner, calibrate_int8(runner, x[:8]), x[:8])
    calls = [str(n.target) for n in int8.lowered.graph.nodes if n.op == "call_function"]  # type: ignore[union-attr]
    assert "aten.conv2d.default" not in calls
    assert calls.count("onednn.qconv2d_pointwise.default") == 20
    with torch.inference_mode():
        got, want = int8(x[8:]), int8.graph(x[8:])  # type: ignore[operator]
    assert torch.nn.functional.cosine_similarity(got, want).min() > 0.99


def test_the_quantisations_outside_convolutions_compute_the_same_bits_in_place():
    pytest.importorskip("torchao")
    from petalnet.onednn import _dequantize_uint8, _quantize_uint8
    from petalnet.quantize import _import_torchao

    _import_torchao()  # registers quantized_decomposed
    q = torch.ops.quantized_decomposed
    torch.manual_seed(0)
    x = (torch.randn(2, 5, 9, 9) * 3).contiguous(memory_format=torch.channels_last)
    x[0, 0, 0, :4] = torch.tensor([0.5, 1.5, -0.5, 2.5]) * 0.05  # ties round to even
    for low, high in ((0, 127), (0, 255)):
        want = q.quantize_per_tensor.default(x, 0.05, 60, low, high, torch.uint8)
        got = _quantize_uint8(x, 0.05, 60, low, high)
        assert torch.equal(got, want) and got.is_contiguous(memory_format=torch.channels_last)
        back = q.dequantize_per_tensor.default(want, 0.05, 60, low, high, torch.uint8)
        assert torch.equal(_dequantize_uint8(want, 0.05, 60), back)
