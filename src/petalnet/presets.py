"""Named recipes: one word for a set of ``FlowerClassifier`` parameters, with its measurement.

``FlowerClassifier.from_preset("best-cpu")`` and ``petalnet train DATA --preset best-cpu``
use them; ``petalnet presets`` lists them. Every preset is a fixed recipe (its epoch count
was chosen on a hold-out carved from ``train/`` and it keeps the last epoch,
``monitor="last"``), so ``valid/`` only reports. The figures beside each are what
``python benchmarks/presets.py`` measured (docs/benchmarks.md, "Presets"); they are
documentation, not promises: another machine has other times.

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
    "the same source, measured outside this project on 2026-12-01 on a 2-core AVX2 EPYC) are "
    "1.0-1.5 points under valid/"
)
"""What ``petalnet presets`` says under the list."""


@dataclass(frozen=True)
class Preset:
    """A named recipe and what it measured.

    Attributes:
        name: The one word, e.g. ``"best-cpu"``.
        summary: What it is for, in one line.
        params: The ``FlowerClassifier`` keywords it sets; the others keep their defaults.
        holdout_accuracy: Accuracy on the 15 % hold-out from ``train/`` (a fraction).
        valid_accuracy: Accuracy on Flowers-102 ``valid/``, measured once (a fraction).
        untouched_accuracy: Accuracy on an untouched Flowers-102 test split (photos of the
            same source never shown to this project, measured outside it): what new photos
            score, about a point under ``valid/``.
        seconds: End-to-end time of fit + evaluate from JPEG files and an empty cache.
        machine: Where the figures were measured.
    """

    name: str
    summary: str
    params: Mapping[str, Any] = field(default_factory=dict)
    holdout_accuracy: float | None = None
    valid_accuracy: float | None = None
    untouched_accuracy: float | None = None
    seconds: float | None = None
    machine: str = ""

    def describe(self) -> str:
        """One line: the figures, or that there are none yet."""
        if self.valid_accuracy is None or self.seconds is None:
            return "not measured yet"
        held = f"hold-out {self.holdout_accuracy:.2%}, " if self.holdout_accuracy else ""
        new = f" (untouched test {self.untouched_accuracy:.2%}*)" if self.untouched_accuracy else ""
        return (
            f"{held}valid {self.valid_accuracy:.2%}{new} in {self.seconds / 60:.1f} min "
            f"on {self.machine}"
        )


_DEV_CPU = "2 AVX2 cores (AMD EPYC Zen 3, no bf16)"

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
            "frozen efficientnet_lite0 features and a regularised head: minutes on a laptop",
            MappingProxyType({**_HEAD, "epochs": 12}),
            holdout_accuracy=0.9541,
            valid_accuracy=0.9597,
            untouched_accuracy=0.9499,
            seconds=171.2,
            machine=_DEV_CPU,
        ),
        Preset(
            "balanced-cpu",
            "fast-cpu's head on efficientnet_lite0 and efficientnet_lite1 features side by "
            "side (both frozen)",
            MappingProxyType(
                {**_HEAD, "backbone": "efficientnet_lite0+efficientnet_lite1", "epochs": 12}
            ),
            holdout_accuracy=0.9663,
            valid_accuracy=0.9694,
            untouched_accuracy=0.9560,
            seconds=418.5,
            machine=_DEV_CPU,
        ),
        Preset(
            "best-cpu",
            "efficientnet_lite0, head then its last 2 blocks fine-tuned on 2 cached augmented "
            "views, mirror TTA",
            MappingProxyType(
                {
                    **_HEAD,
                    "strategy": "freeze_unfreeze",
                    "unfreeze_blocks": 2,
                    "freeze_epochs": 3,
                    "backbone_lr_scale": 0.3,
                    "augment_views": 2,
                    "epochs": 14,
                    "tta": True,
                }
            ),
            holdout_accuracy=0.9643,
            valid_accuracy=0.9743,
            untouched_accuracy=0.9597,
            seconds=754.6,
            machine=_DEV_CPU,
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
