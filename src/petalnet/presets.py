"""Named recipes: one word for a set of ``FlowerClassifier`` parameters, with its measurement.

``FlowerClassifier.from_preset("best-cpu")`` and ``petalnet train DATA --preset best-cpu``
use them; ``petalnet presets`` lists them. Every preset is a fixed recipe (its epoch count
was chosen on a hold-out carved from ``train/`` and it keeps the last epoch,
``monitor="last"``), so ``valid/`` only reports; fast-cpu and balanced-cpu then refit on
train + valid, so they have no ``valid/`` figure, only their hold-out one. The figures
beside each are what ``python benchmarks/presets.py`` measured (docs/benchmarks.md,
"Presets"); they are documentation, not promises: another machine has other times.

This module imports no torch, so ``petalnet presets`` and ``--help`` stay fast.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = ["UNTOUCHED_NOTE", "Preset", "get_preset", "list_presets"]

UNTOUCHED_NOTE = (
    "* valid/ shares plants with train/ (the data doctor finds 56 groups of copies and siblings "
    "spanning the two), so new photos score lower: the untouched test figures (819 photos of "
    "the same source, measured outside this project on 2026-12-01 on a 2-core AVX2 EPYC, with "
    "the recipes before test-time crops and refit) are 1.0-1.5 points under valid/. Hold-out: "
    "the grouped 15 % of train/ the recipes were chosen on (without the refit). On a CPU "
    "without bf16 (AVX2 only) --no_tta (or, for best-cpu, --tta crops: three views instead of "
    "six) trades test-time views for time."
)
"""What ``petalnet presets`` says under the list."""


@dataclass(frozen=True)
class Preset:
    """A named recipe and what it measured.

    Attributes:
        name: The one word, e.g. ``"best-cpu"``.
        summary: What it is for, in one line.
        params: The ``FlowerClassifier`` keywords it sets; the others keep their defaults.
        holdout_accuracy: Accuracy on the grouped 15 % hold-out from ``train/`` (a fraction),
            the figure the recipe was chosen on (without its refit, which would train on it).
        valid_accuracy: Accuracy on Flowers-102 ``valid/``, measured once (a fraction);
            ``None`` for a recipe that refits on train + valid: it has trained on them.
        untouched_accuracy: Accuracy on an untouched Flowers-102 test split (photos of the
            same source never shown to this project, measured outside it): what new photos
            score, about a point under ``valid/``.
        untouched_recipe: ``""`` when ``untouched_accuracy`` is of this recipe, else the
            recipe it was measured with (an earlier version of this preset).
        seconds: End-to-end time from JPEG files and an empty cache: the fit, then
            ``valid/`` scored as new photos (loaded with a second empty cache, so none of
            its views' rows are stored yet).
        machine: Where ``seconds`` was measured.
        avx2_seconds: The same run with oneDNN and ATen held to AVX2 and no bfloat16
            (``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 PETALNET_CPU_BF16=0``), the
            stand-in here for the AVX2-only CPUs of this machine kind (float32, or int8
            where the preset quantises).
    """

    name: str
    summary: str
    params: Mapping[str, Any] = field(default_factory=dict)
    holdout_accuracy: float | None = None
    valid_accuracy: float | None = None
    untouched_accuracy: float | None = None
    untouched_recipe: str = ""
    seconds: float | None = None
    machine: str = ""
    avx2_seconds: float | None = None

    def describe(self) -> str:
        """One line: the figures, or that there are none yet."""
        if self.holdout_accuracy is None or self.seconds is None:
            return "not measured yet"
        figures = [f"hold-out {self.holdout_accuracy:.2%}"]
        if self.valid_accuracy is not None:
            figures.append(f"valid {self.valid_accuracy:.2%}")
        else:
            figures.append("no valid figure (it refits on train + valid)")
        if self.untouched_accuracy is not None:
            of = f" of {self.untouched_recipe}" if self.untouched_recipe else ""
            figures.append(f"untouched test {self.untouched_accuracy:.2%}*{of}")
        slow = f" ({self.avx2_seconds / 60:.1f} min held to AVX2)" if self.avx2_seconds else ""
        return f"{', '.join(figures)}; {self.seconds / 60:.1f} min{slow} on {self.machine}"


_EPYC = "2 AMD EPYC cores with AVX-512 BF16 (no AMX)"

# The regularised head every preset shares (chosen on the hold-out: docs/benchmarks.md).
_HEAD = {
    "backbone": "efficientnet_lite0",
    "weights": "DEFAULT",
    "hidden_units": 1024,
    "dropout": 0.3,
    "label_smoothing": 0.1,
    "weight_decay": 0.01,
    "lr_schedule": "cosine",
    "monitor": "last",
}

_PRESETS = {
    p.name: p
    for p in (
        Preset(
            "fast-cpu",
            "frozen efficientnet_lite0 features (int8 on x86 CPUs) and a regularised head, "
            "refitted on train + valid, three crops at test time: minutes on a laptop",
            MappingProxyType(
                {**_HEAD, "epochs": 12, "tta": "crops", "refit": True, "quantize": "auto"}
            ),
            holdout_accuracy=0.9714,
            untouched_accuracy=0.9499,
            untouched_recipe="the recipe before the test-time crops, the refit and int8",
            seconds=86.7,  # one stretch, run after run (benchmarks.md); not balanced's AVX2
            machine=f"{_EPYC}, int8 backbone",
            avx2_seconds=114.3,
        ),
        Preset(
            "balanced-cpu",
            "fast-cpu's recipe on efficientnet_lite0 and efficientnet_lite1 features side by "
            "side (both frozen; in int8 on x86 CPUs without bfloat16, lite1's first block "
            "in float32)",
            MappingProxyType(
                {
                    **_HEAD,
                    "backbone": "efficientnet_lite0+efficientnet_lite1",
                    "epochs": 12,
                    "tta": "crops",
                    "refit": True,
                    "quantize": "auto",
                }
            ),
            holdout_accuracy=0.9735,
            untouched_accuracy=0.9560,
            untouched_recipe="the recipe before the test-time crops, the refit and int8",
            seconds=177.1,
            machine=f"{_EPYC}, bf16",
            avx2_seconds=259.6,  # both in int8 (lite0 int8, lite1 float32: 290.4 s beside it)
        ),
        Preset(
            "best-cpu",
            "efficientnet_lite0, head then its last 2 blocks fine-tuned on 2 cached augmented "
            "views (the frozen front in int8 on x86 CPUs without bfloat16), three crops and "
            "their mirrors at test time",
            MappingProxyType(
                {
                    **_HEAD,
                    "strategy": "freeze_unfreeze",
                    "unfreeze_blocks": 2,
                    "freeze_epochs": 3,
                    "backbone_lr_scale": 0.3,
                    "augment_views": 2,
                    "epochs": 14,
                    "tta": "crops+flip",
                    "quantize": "auto",
                }
            ),
            holdout_accuracy=0.9694,
            valid_accuracy=0.9707,
            untouched_accuracy=0.9597,
            untouched_recipe="the recipe before tta='crops+flip' and the int8 front",
            seconds=437.0,
            machine=f"{_EPYC}, bf16",
            avx2_seconds=493.8,  # int8 front (a slower hour: 524.9 s, float32's 593.0 s)
        ),
    )
}


def list_presets() -> list[Preset]:
    """Every preset, fastest first.

    Returns:
        The presets.
    """
    return list(_PRESETS.values())


def get_preset(name: str) -> Preset:
    """The preset called ``name``.

    Args:
        name: A preset name (``petalnet presets`` lists them).

    Returns:
        The preset.

    Raises:
        ValueError: No preset has that name; the message lists those that exist.
    """
    try:
        return _PRESETS[name]
    except KeyError:
        raise ValueError(
            f"no preset {name!r}; the presets are {', '.join(_PRESETS)} (`petalnet presets`)"
        ) from None
