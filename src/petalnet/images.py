"""One image, from a file or memory, to a tensor; and the one policy for unreadable files.

Every path that reads images (feature extraction for ``fit`` and ``evaluate``, images
streamed while fine-tuning, ``predict``, ``petalnet check``) reads them with
:func:`read_image` and hands failures to an :class:`Unreadable` policy, which alone decides
whether a bad file stops the run, is skipped with a warning, or is collected for the caller.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable, Sequence
from typing import IO, Any, Literal

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, default_collate

from petalnet.errors import ImageReadError, ImageTooLargeError, NotAnImageError, PetalnetWarning

__all__ = [
    "MAX_IMAGE_PIXELS",
    "EncodedImage",
    "FileOrArray",
    "ImageInput",
    "LoadedBatch",
    "Transform",
    "Unreadable",
    "as_image_list",
    "default_num_workers",
    "image_loader",
    "image_to_tensor",
    "read_image",
    "to_rgb",
]

MAX_IMAGE_PIXELS = 89_478_485
"""Images with more pixels are refused before decoding (Pillow's decompression-bomb limit)."""

ImageInput = str | os.PathLike[str] | bytes | IO[bytes] | Image.Image | np.ndarray | torch.Tensor
"""One image: a file path, its bytes or an open binary file (decoded by :func:`read_image`),
or one already decoded: a ``PIL.Image``, an HxWxC array or a CxHxW tensor."""

FileOrArray = str | os.PathLike[str] | bytes | IO[bytes] | Image.Image | np.ndarray
"""One image that is never a batch: a path, bytes, an open file, a ``PIL.Image``, an array."""

Transform = Callable[[Any], torch.Tensor]
"""Maps an RGB ``PIL.Image`` (or a CxHxW tensor) to a normalised CxHxW float tensor."""


class Unreadable:
    """What happens to an image file that cannot be read: the one place that decides.

    Args:
        mode: ``"raise"`` stops at the first one with :class:`~petalnet.ImageReadError`;
            ``"warn"`` skips it with one :class:`~petalnet.PetalnetWarning` per file;
            ``"collect"`` skips it silently, for a caller that reports them itself.
        hint: Added to the message of a raised error (e.g. how to skip instead).

    Attributes:
        messages: One message per unreadable file met, each naming the file, in order.
    """

    def __init__(self, mode: Literal["raise", "warn", "collect"] = "warn", hint: str = "") -> None:
        self.mode = mode
        self.hint = hint
        self.messages: list[str] = []

    @classmethod
    def for_training(cls, strict: bool) -> Unreadable:
        """The policy of ``fit`` and ``evaluate``: warn and skip, or stop when ``strict``."""
        if strict:
            return cls("raise", hint=" (strict=True stops at the first one)")
        return cls("warn")

    def __call__(self, error: ImageReadError | str) -> None:
        """Handle one unreadable file (the same file twice is warned about once).

        Args:
            error: What :func:`read_image` raised (or said), naming the file.

        Raises:
            ImageReadError: In ``"raise"`` mode (of the same kind as ``error``).
        """
        message = str(error)
        if self.mode == "raise":
            kind = type(error) if isinstance(error, ImageReadError) else ImageReadError
            raise kind(message + self.hint)
        if message in self.messages:
            return
        self.messages.append(message)
        if self.mode == "warn":
            warnings.warn(f"Skipped: {message}", PetalnetWarning, stacklevel=3)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB; transparency is composited on white.

    Args:
        image: An image in any mode.

    Returns:
        The RGB image (``image`` itself when it is RGB already).
    """
    if image.mode == "RGB":
        return image
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode.startswith("I") or image.mode == "F":  # 16/32-bit integer or float gray
        arr = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I") and arr.max(initial=0) > 255 else 255.0
        arr = np.clip(arr / top * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    return image.convert("RGB")


EncodedImage = str | os.PathLike[str] | bytes | IO[bytes]
"""An image not decoded yet: a file path, its bytes, or an open binary file."""


def read_image(source: EncodedImage, draft_size: int | None = None) -> Image.Image:
    """Decode an image as RGB, applying its EXIF orientation: the one decoder of every door.

    Files, uploads (bytes) and open files all pass here, so a photo gives the same pixels
    whichever way it arrives.

    Args:
        source: The image file, its bytes (an upload), or an open binary file.
        draft_size: For JPEGs, let the decoder shrink by a power of two while both sides
            stay at least this many pixels (much faster for large photos).

    Returns:
        The decoded RGB image.

    Raises:
        NotAnImageError: No image format recognised (the message names the file).
        ImageTooLargeError: More than :data:`MAX_IMAGE_PIXELS` pixels (read from the
            header, before decoding).
        ImageReadError: Missing, truncated or corrupt.
    """
    name = str(source) if isinstance(source, (str, os.PathLike)) else "<image in memory>"
    opened = io.BytesIO(source) if isinstance(source, bytes) else source
    try:
        with Image.open(opened) as im:  # reads the header only
            width, height = im.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ImageTooLargeError(
                    f"Image {name!r} is {width}x{height} pixels, more than the "
                    f"{MAX_IMAGE_PIXELS:,}-pixel limit (a decompression bomb?); shrink it, or "
                    "raise petalnet.images.MAX_IMAGE_PIXELS if you trust it."
                )
            if draft_size and im.format == "JPEG":
                im.draft("RGB", (draft_size, draft_size))
            im.load()
            return to_rgb(ImageOps.exif_transpose(im))
    except ImageReadError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        kind = ImageReadError
        if isinstance(exc, Image.DecompressionBombError):
            kind = ImageTooLargeError
        elif isinstance(exc, UnidentifiedImageError):
            kind = NotAnImageError
        raise kind(
            f"Cannot read image {name!r} ({type(exc).__name__}: {exc}); remove or replace the file."
        ) from None


def _array_to_pil(image: np.ndarray) -> Image.Image:
    """An ``HxW``/``HxWxC`` array (uint8, or float in ``[0, 1]``) as an RGB image."""
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4))):
        raise ValueError(f"Expected an HxW or HxWxC image array, got shape {image.shape}.")
    if image.dtype.kind == "f":
        image = (np.clip(np.nan_to_num(image), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ValueError(
            f"Expected a uint8 image array (or float in [0, 1]), got dtype {image.dtype}."
        )
    return to_rgb(Image.fromarray(np.ascontiguousarray(image).squeeze()))


def image_to_tensor(
    image: ImageInput, transform: Callable[[Any], Any], draft_size: int | None = None
) -> Any:
    """Apply ``transform`` to any supported kind of image.

    Args:
        image: A file path, a ``PIL.Image`` (any mode), an ``HxW``/``HxWxC`` array (uint8,
            or float in ``[0, 1]``), or a ``CxHxW`` tensor (uint8, or float in ``[0, 1]``;
            1 or 3 channels).
        transform: A transform accepting RGB ``PIL.Image``s and ``CxHxW`` tensors.
        draft_size: Passed to :func:`read_image` for file paths.

    Returns:
        What ``transform`` returns.

    Raises:
        ImageReadError: A file cannot be read.
        ValueError: An array or tensor has an unsupported shape or dtype.
        TypeError: ``image`` is none of the supported kinds.
    """
    if isinstance(image, (str, os.PathLike, bytes)) or hasattr(image, "read"):
        return transform(read_image(image, draft_size))  # type: ignore[arg-type]  # IO
    if isinstance(image, Image.Image):
        return transform(to_rgb(image))
    if isinstance(image, np.ndarray):
        return transform(_array_to_pil(image))
    if isinstance(image, torch.Tensor):
        if image.ndim == 3 and image.shape[0] in (1, 3):
            return transform(image.expand(3, -1, -1) if image.shape[0] == 1 else image)
        raise ValueError(f"Expected a CxHxW image tensor, got shape {tuple(image.shape)}.")
    raise TypeError(
        f"Cannot predict on {type(image).__name__}; pass a file path, a PIL.Image, "
        "an HxWxC uint8 array, a CxHxW tensor, or a list of those."
    )


def as_image_list(images: ImageInput | Sequence[ImageInput]) -> tuple[list[ImageInput], bool]:
    """One image or several as a list, and whether one image was given.

    Args:
        images: An image, a list or tuple of them, or a 4-D tensor (a batch).

    Returns:
        ``(images as a list, single)``.
    """
    if isinstance(images, (list, tuple)) or (isinstance(images, torch.Tensor) and images.ndim == 4):
        return [_readable(i) for i in images], False
    return [_readable(images)], True  # type: ignore[arg-type]  # not a sequence: one ImageInput


def _readable(image: ImageInput) -> ImageInput:
    """An open file's bytes (a loader's worker processes cannot share an open file)."""
    read = getattr(image, "read", None)
    return read() if callable(read) and not isinstance(image, Image.Image) else image


_Item = tuple[Any, int, ImageReadError | None]


class _ImageDataset(Dataset[_Item]):
    """``(transformed image or None, index, error or None)`` for each image.

    It never raises :class:`ImageReadError`: the loader's consumer hands the messages to an
    :class:`Unreadable`.
    """

    def __init__(
        self,
        images: Sequence[ImageInput],
        transform: Callable[[Any], Any],
        draft_size: int | None,
        seeds: Sequence[int] | None,
    ) -> None:
        self.images = list(images)
        self.transform = transform
        self.draft_size = draft_size
        self.seeds = list(seeds) if seeds is not None else None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> _Item:
        image = self.images[index]
        try:
            if self.seeds is None:
                return image_to_tensor(image, self.transform, self.draft_size), index, None
            with torch.random.fork_rng(devices=[]):
                # the CPU generator alone, which the transforms draw from: torch.manual_seed
                # would also queue a seed (and a formatted stack) for every accelerator
                # backend, ~80 us an image for nothing
                torch.default_generator.manual_seed(self.seeds[index])
                return image_to_tensor(image, self.transform, self.draft_size), index, None
        except ImageReadError as exc:
            return None, index, exc


LoadedBatch = tuple[Any, list[int], list[tuple[int, ImageReadError]]]
"""``(stacked images or None, their positions in the input list, (position, error) of
each unreadable one)``. The images are one tensor, or a list of tensors for a transform
that returns a tuple (each element stacked)."""


def _collate(batch: Sequence[_Item]) -> LoadedBatch:
    kept = [(t, i) for t, i, _ in batch if t is not None]
    images = default_collate([t for t, _ in kept]) if kept else None
    return images, [i for _, i in kept], [(i, e) for _, i, e in batch if e is not None]


def default_num_workers() -> int:
    """Image-decoding worker processes: none on machines with two cores or fewer."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return 0 if (cpus or 1) <= 2 else min(4, (cpus or 1) // 2)


def image_loader(
    images: Sequence[ImageInput],
    transform: Callable[[Any], Any],
    *,
    draft_size: int | None,
    seeds: Sequence[int] | None = None,
    batch_size: int,
    num_workers: int | None = None,
    pin_memory: bool = False,
) -> DataLoader[_Item]:
    """A loader of ``images`` in order that carries on past unreadable files.

    Args:
        images: File paths or in-memory images.
        transform: Maps an RGB ``PIL.Image`` to a tensor (or a tuple of tensors).
        draft_size: Passed to :func:`read_image`.
        seeds: One seed per image for a random ``transform``, making each image's random
            draw reproducible whatever the worker or order.
        batch_size: Images per batch.
        num_workers: Worker processes; ``None`` picks a default for this machine.
        pin_memory: Pin batches for a fast copy to a GPU.

    Returns:
        A loader of :data:`LoadedBatch` tuples; hand their messages to an
        :class:`Unreadable`.
    """
    return DataLoader(
        _ImageDataset(images, transform, draft_size, seeds),
        batch_size=batch_size,
        shuffle=False,
        collate_fn=_collate,
        num_workers=default_num_workers() if num_workers is None else num_workers,
        pin_memory=pin_memory,
    )
