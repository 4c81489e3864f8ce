"""How an image becomes the tensor a backbone expects: resize, centre-crop, normalise.

A :class:`Preprocessing` is plain data (numbers and strings), so it travels inside a
checkpoint and rebuilds the exact same transform on another machine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import torch
from torchvision.transforms import InterpolationMode, v2

from petalnet._types import Augmentation

AUGMENTATIONS: tuple[Augmentation, ...] = get_args(Augmentation)

__all__ = [
    "AUGMENTATIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Augmentation",
    "CropAt",
    "Preprocessing",
]

CropAt = Literal["center", "start", "end"]
"""Where the square crop sits on the image's longer side (always centred on the shorter)."""

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def _triple(values: Any) -> tuple[float, float, float]:
    """Three per-channel numbers (mean or std) as floats."""
    red, green, blue = (float(v) for v in values)
    return red, green, blue


def _first(value: Any) -> int:
    """Return an int from torchvision's ``[224]``-style size lists."""
    return int(value[0]) if isinstance(value, (list, tuple)) else int(value)


@dataclass(frozen=True)
class Preprocessing:
    """Evaluation-time preprocessing of a backbone.

    Attributes:
        resize_size: The shorter image side is resized to this many pixels.
        crop_size: Side of the square centre crop fed to the network.
        mean: Per-channel mean subtracted after scaling pixels to ``[0, 1]``.
        std: Per-channel standard deviation divided by after subtracting the mean.
        interpolation: ``"bilinear"`` or ``"bicubic"`` (any torchvision InterpolationMode value).
    """

    resize_size: int = 256
    crop_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"

    @classmethod
    def from_torchvision(cls, weights: Any) -> Preprocessing:
        """Read the preprocessing a torchvision ``Weights`` entry was trained with.

        Args:
            weights: A member of a torchvision ``WeightsEnum`` (e.g. ``VGG16_Weights.DEFAULT``).

        Returns:
            The matching :class:`Preprocessing`.
        """
        t = weights.transforms()
        return cls(
            resize_size=_first(t.resize_size),
            crop_size=_first(t.crop_size),
            mean=_triple(t.mean),
            std=_triple(t.std),
            interpolation=InterpolationMode(t.interpolation).value,
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as JSON-compatible values (lists, ints, strings)."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        """Rebuild from :meth:`to_dict` output.

        Args:
            data: A mapping with this class's field names.

        Returns:
            The preprocessing.
        """
        return cls(
            resize_size=int(data["resize_size"]),
            crop_size=int(data["crop_size"]),
            mean=_triple(data["mean"]),
            std=_triple(data["std"]),
            interpolation=str(data.get("interpolation", "bilinear")),
        )

    def augment_transform(self, policy: Augmentation = "classic") -> Callable[[Any], torch.Tensor]:
        """Build a random training augmentation, ending like :meth:`transform`.

        ``"classic"``: the classic recipe's random rotation (up to 30 degrees), random resized
        crop to ``crop_size`` and random horizontal flip. ``"trivialaugment"`` adds
        torchvision's ``TrivialAugmentWide`` (one random colour or geometry operation of
        random strength per image) after them, a stronger, tuning-free policy.

        Args:
            policy: One of :data:`AUGMENTATIONS`.

        Returns:
            A random transform with the same inputs and output as :meth:`transform`.

        Raises:
            ValueError: Unknown ``policy``.
        """
        if policy not in AUGMENTATIONS:
            raise ValueError(
                f"augmentation must be one of {', '.join(AUGMENTATIONS)}; got {policy!r}."
            )
        interpolation = InterpolationMode(self.interpolation)
        steps: list[Any] = [  # geometry first: on a PIL image it runs in Pillow's C code
            v2.RandomRotation(30, interpolation=interpolation),
            v2.RandomResizedCrop(self.crop_size, interpolation=interpolation, antialias=True),
            v2.RandomHorizontalFlip(),
        ]
        if policy == "trivialaugment":
            steps.append(v2.TrivialAugmentWide(interpolation=interpolation))
        steps += [
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(self.mean), std=list(self.std)),
        ]
        augment: Callable[[Any], torch.Tensor] = v2.Compose(steps)
        return augment

    def augmentation_id(self, policy: Augmentation = "classic") -> str:
        """Id of :meth:`augment_transform`'s recipe, part of row-store keys.

        A hash of the transform's own description (every step and its settings), so a
        changed recipe can never be served the views of the old one.

        Args:
            policy: One of :data:`AUGMENTATIONS`.

        Returns:
            ``policy`` and 12 hex digits.
        """
        described = repr(self.augment_transform(policy))
        return f"{policy}-{hashlib.blake2b(described.encode(), digest_size=6).hexdigest()}"

    def transform(self, at: CropAt = "center") -> Callable[[Any], torch.Tensor]:
        """Build the evaluation transform.

        Args:
            at: Where the square crop sits on the resized image's longer side: its centre
                (the evaluation crop), or its start (left or top) or end (right or bottom),
                which test-time augmentation adds to see what the centre crop cuts off.

        Returns:
            A callable mapping a ``PIL.Image``, an HxWxC uint8 array or a CxHxW tensor
            (uint8, or float in ``[0, 1]``) to a normalised float32 CxHxW tensor.
        """
        evaluate: Callable[[Any], torch.Tensor] = v2.Compose(
            [self._resize(), self._crop(at), *self._finish()]
        )
        return evaluate

    def crops(self, ats: Sequence[CropAt]) -> Callable[[Any], tuple[torch.Tensor, ...]]:
        """Build the evaluation transform of several crops of one resize.

        The image is resized once and each crop then finished as :meth:`transform` finishes
        it, so ``crops(ats)(image)[k]`` equals ``transform(ats[k])(image)``, for the cost
        of one resize (test-time crops of a photo decoded once).

        Args:
            ats: Where each crop sits (see :meth:`transform`).

        Returns:
            A callable mapping an image (as :meth:`transform` takes) to one normalised
            float32 CxHxW tensor per crop, in the order of ``ats``.
        """
        return _Crops(self._resize(), [v2.Compose([self._crop(a), *self._finish()]) for a in ats])

    def _resize(self) -> Any:
        return v2.Compose(
            [
                v2.ToImage(),
                v2.Resize(
                    self.resize_size,
                    interpolation=InterpolationMode(self.interpolation),
                    antialias=True,
                ),
            ]
        )

    def _crop(self, at: CropAt) -> Any:
        return v2.CenterCrop(self.crop_size) if at == "center" else _SideCrop(self.crop_size, at)

    def _finish(self) -> list[Any]:
        return [
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(self.mean), std=list(self.std)),
        ]


class _Crops:
    """One resize, then several crops of it (:meth:`Preprocessing.crops`)."""

    def __init__(self, resize: Any, crops: Sequence[Any]) -> None:
        self.resize, self.crops = resize, list(crops)

    def __call__(self, image: Any) -> tuple[torch.Tensor, ...]:
        resized = self.resize(image)
        return tuple(crop(resized) for crop in self.crops)


class _SideCrop(torch.nn.Module):
    """A square crop at the start or end of the longer side, centred on the shorter one."""

    def __init__(self, size: int, at: CropAt) -> None:
        super().__init__()
        self.size, self.at = size, at

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        height, width = image.shape[-2:]
        top = round((height - self.size) / 2.0)  # as CenterCrop centres
        left = round((width - self.size) / 2.0)
        end = self.at == "end"
        if width >= height:
            left = width - self.size if end else 0
        else:
            top = height - self.size if end else 0
        cropped: torch.Tensor = v2.functional.crop(image, top, left, self.size, self.size)
        return cropped

    def extra_repr(self) -> str:
        return f"size={self.size}, at={self.at!r}"
