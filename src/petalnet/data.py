"""Image folders: layouts, splits, class lists, category names and reading one image.

Two layouts are understood:

* the Udacity layout: ``root/train/<class>/*.jpg``, ``root/valid/<class>/...`` and maybe
  ``root/test/<class>/...``, with an optional ``root/cat_to_name.json``;
* one folder of class folders, from which a seeded, stratified validation fraction is held out.

Class folders are sorted as strings, exactly like ``torchvision.datasets.ImageFolder``
(``"1", "10", "100", "101", "11", ...``); ``classes[i]`` is the folder of output ``i``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torchvision.datasets.folder import IMG_EXTENSIONS

from petalnet.errors import DataError, ImageReadError

__all__ = [
    "CATEGORY_NAMES_FILE",
    "IMG_EXTENSIONS",
    "MAX_IMAGE_PIXELS",
    "ImageDataset",
    "ImageInput",
    "Sample",
    "TrainingData",
    "collate_readable",
    "find_classes",
    "image_to_tensor",
    "list_samples",
    "load_category_names",
    "load_training_data",
    "read_image",
    "resolve_eval_folder",
]

CATEGORY_NAMES_FILE = "cat_to_name.json"
MAX_IMAGE_PIXELS = 89_478_485
"""Images with more pixels are refused before decoding (Pillow's decompression-bomb limit)."""
Sample = tuple[Path, int]
"""An image path and the index of its class in the training class list."""


def _is_image(path: Path) -> bool:
    return not path.name.startswith(".") and path.suffix.lower() in IMG_EXTENSIONS


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.name,
    )


def _has_images(folder: Path) -> bool:
    return any(_is_image(Path(r) / f) for r, _, files in os.walk(folder) for f in files)


def find_classes(folder: str | os.PathLike[str]) -> list[str]:
    """List the class folders of ``folder`` that hold at least one image, sorted as strings.

    Args:
        folder: A folder of class folders.

    Returns:
        The class folder names.

    Raises:
        DataError: ``folder`` is missing or holds no class folder with an image.
    """
    path = Path(folder)
    if not path.is_dir():
        raise DataError(f"Data folder {str(path)!r} does not exist; check the path.")
    classes = [d.name for d in _class_dirs(path) if _has_images(d)]
    if not classes:
        raise DataError(
            f"{str(path)!r} holds no class folders with images; expected "
            f"{path}/<class>/<image>.jpg (or a root with train/ and valid/ folders)."
        )
    return classes


def list_samples(folder: str | os.PathLike[str], class_to_idx: Mapping[str, int]) -> list[Sample]:
    """List ``(image path, class index)`` pairs of a folder of class folders.

    Hidden files and files without an image extension are ignored.

    Args:
        folder: A folder of class folders.
        class_to_idx: Class folder name to output index, from the training data.

    Returns:
        The samples, sorted by class then path.

    Raises:
        DataError: ``folder`` has class folders with images that ``class_to_idx`` lacks.
    """
    path = Path(folder)
    present = find_classes(path)
    unknown = [c for c in present if c not in class_to_idx]
    if unknown:
        raise DataError(
            f"{str(path)!r} has classes the model was not trained on: {', '.join(unknown)}. "
            "Use a folder with the training classes only."
        )
    samples: list[Sample] = []
    for name in present:
        for root, _, files in sorted(os.walk(path / name)):
            samples += [
                (Path(root) / f, class_to_idx[name])
                for f in sorted(files)
                if _is_image(Path(root) / f)
            ]
    return samples


def load_category_names(source: str | os.PathLike[str] | Mapping[str, str]) -> dict[str, str]:
    """Load a class-folder-name to display-name mapping such as ``cat_to_name.json``.

    Args:
        source: A JSON file holding one object of strings, or such a mapping.

    Returns:
        The mapping, keys and values as strings.

    Raises:
        DataError: The file is missing, not JSON, or not an object of names.
    """
    if isinstance(source, Mapping):
        return {str(k): str(v) for k, v in source.items()}
    path = Path(source)
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"Category names file {str(path)!r} does not exist.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(
            f"Category names file {str(path)!r} is not valid JSON ({exc}); it must hold an "
            'object such as {"1": "pink primrose", ...}.'
        ) from None
    scalars = (str, int, float)
    if not isinstance(data, dict) or not all(isinstance(v, scalars) for v in data.values()):
        raise DataError(
            f"Category names file {str(path)!r} must hold one JSON object mapping class folder "
            'names to flower names, such as {"1": "pink primrose", ...}.'
        )
    return {str(k): str(v) for k, v in data.items()}


@dataclass
class TrainingData:
    """The images ``fit`` learns from.

    Attributes:
        classes: Class folder names; ``classes[i]`` is output ``i``.
        train: Training samples.
        valid: Validation samples (held out from ``train`` for a single folder).
        root: The folder given to ``fit``.
        category_names_file: ``cat_to_name.json`` found in ``root``, if any.
    """

    classes: list[str]
    train: list[Sample]
    valid: list[Sample]
    root: Path
    category_names_file: Path | None = None
    layout: str = "split"
    class_to_idx: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


def _stratified_split(
    samples: Sequence[Sample], fraction: float, seed: int | None
) -> tuple[list[Sample], list[Sample]]:
    """Hold out ``fraction`` of each class (at least one image where a class has two)."""
    gen = torch.Generator().manual_seed(0 if seed is None else int(seed))
    by_class: dict[int, list[Sample]] = {}
    for s in samples:
        by_class.setdefault(s[1], []).append(s)
    train: list[Sample] = []
    valid: list[Sample] = []
    for idx in sorted(by_class):
        items = by_class[idx]
        order = torch.randperm(len(items), generator=gen).tolist()
        n_valid = 0 if fraction <= 0 or len(items) < 2 else max(1, round(fraction * len(items)))
        n_valid = min(n_valid, len(items) - 1)
        valid += [items[i] for i in sorted(order[:n_valid])]
        train += [items[i] for i in sorted(order[n_valid:])]
    return train, valid


def _at_least_two(classes: list[str], folder: Path) -> list[str]:
    if len(classes) < 2:
        raise DataError(
            f"{str(folder)!r} has {len(classes)} class folder with images ({', '.join(classes)}); "
            "a classifier needs at least two."
        )
    return classes


def load_training_data(
    data_dir: str | os.PathLike[str], *, valid_fraction: float = 0.2, seed: int | None = None
) -> TrainingData:
    """Find the training and validation images under ``data_dir``.

    Args:
        data_dir: A root with ``train/`` (and usually ``valid/``) class folders, or one folder
            of class folders.
        valid_fraction: Share of each class held out for validation when there is no
            ``valid/`` folder.
        seed: Seed of that hold-out split.

    Returns:
        The classes and samples.

    Raises:
        DataError: The folder is missing or holds no usable images.
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"Data folder {str(root)!r} does not exist; check the path.")
    names_file = root / CATEGORY_NAMES_FILE
    names = names_file if names_file.is_file() else None
    if (root / "train").is_dir():
        classes = _at_least_two(find_classes(root / "train"), root / "train")
        data = TrainingData(classes, [], [], root, names, layout="split")
        data.train = list_samples(root / "train", data.class_to_idx)
        valid_dir = next((root / d for d in ("valid", "val") if (root / d).is_dir()), None)
        if valid_dir is not None:
            data.valid = list_samples(valid_dir, data.class_to_idx)
        else:
            data.train, data.valid = _stratified_split(data.train, valid_fraction, seed)
            data.layout = "holdout"
        return data
    classes = _at_least_two(find_classes(root), root)
    data = TrainingData(classes, [], [], root, names, layout="holdout")
    data.train, data.valid = _stratified_split(
        list_samples(root, data.class_to_idx), valid_fraction, seed
    )
    return data


def resolve_eval_folder(path: str | os.PathLike[str]) -> Path:
    """Pick the folder of class folders to evaluate on.

    Args:
        path: A folder of class folders, or a root holding ``test/`` or ``valid/``.

    Returns:
        ``path/test`` if present, else ``path/valid``, else ``path`` itself.

    Raises:
        DataError: ``path`` does not exist.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"Evaluation folder {str(root)!r} does not exist; check the path.")
    for sub in ("test", "valid", "val"):
        if (root / sub).is_dir():
            return root / sub
    return root


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB; transparency is composited on white."""
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


def read_image(path: str | os.PathLike[str], draft_size: int | None = None) -> Image.Image:
    """Read an image file as RGB, applying its EXIF orientation.

    Args:
        path: The image file.
        draft_size: For JPEG files, let the decoder shrink by a power of two while both sides
            stay at least this many pixels (much faster for large photos).

    Returns:
        The decoded RGB image.

    Raises:
        ImageReadError: The file is missing, not an image, truncated or corrupt, or larger
            than :data:`MAX_IMAGE_PIXELS` (checked from the header, before decoding).
    """
    try:
        with Image.open(path) as im:  # reads the header only
            width, height = im.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ImageReadError(
                    f"Image {str(path)!r} is {width}x{height} pixels, more than the "
                    f"{MAX_IMAGE_PIXELS:,}-pixel limit (a decompression bomb?); shrink it, or "
                    "raise petalnet.data.MAX_IMAGE_PIXELS if you trust it."
                )
            if draft_size and im.format == "JPEG":
                im.draft("RGB", (draft_size, draft_size))
            im.load()
            return _to_rgb(ImageOps.exif_transpose(im))
    except ImageReadError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageReadError(
            f"Cannot read image {str(path)!r} ({type(exc).__name__}: {exc}); "
            "remove or replace the file."
        ) from None


ImageInput = str | os.PathLike[str] | Image.Image | np.ndarray | torch.Tensor
"""One image: a file path, a ``PIL.Image``, an HxWxC uint8 array or a CxHxW tensor."""


def image_to_tensor(image: ImageInput, transform: Any, draft_size: int | None = None) -> Any:
    """Apply ``transform`` to any supported kind of image.

    Args:
        image: A file path, a ``PIL.Image`` (any mode), an ``HxW``/``HxWxC`` array (uint8),
            or a ``CxHxW`` tensor (uint8, or float in ``[0, 1]``; 1 or 3 channels).
        transform: A transform accepting RGB ``PIL.Image``s and ``CxHxW`` tensors.
        draft_size: Passed to :func:`read_image` for file paths.

    Returns:
        What ``transform`` returns.

    Raises:
        ImageReadError: A file cannot be read.
        ValueError: An array or tensor has an unsupported shape.
        TypeError: ``image`` is none of the supported kinds.
    """
    if isinstance(image, (str, os.PathLike)):
        return transform(read_image(image, draft_size))
    if isinstance(image, Image.Image):
        return transform(_to_rgb(image))
    if isinstance(image, np.ndarray):
        if image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4)):
            return transform(_to_rgb(Image.fromarray(np.ascontiguousarray(image).squeeze())))
        raise ValueError(f"Expected an HxW or HxWxC image array, got shape {image.shape}.")
    if isinstance(image, torch.Tensor):
        if image.ndim == 3 and image.shape[0] in (1, 3):
            return transform(image.expand(3, -1, -1) if image.shape[0] == 1 else image)
        raise ValueError(f"Expected a CxHxW image tensor, got shape {tuple(image.shape)}.")
    raise TypeError(
        f"Cannot predict on {type(image).__name__}; pass a file path, a PIL.Image, "
        "an HxWxC uint8 array, a CxHxW tensor, or a list of those."
    )


class ImageDataset(torch.utils.data.Dataset[tuple[torch.Tensor, int]]):
    """``(image tensor, class index)`` pairs for a list of samples.

    Args:
        samples: ``(path, class index)`` pairs.
        transform: Maps an RGB ``PIL.Image`` to a tensor.
        draft_size: Passed to :func:`read_image`.
        seeds: One seed per sample for a random ``transform``, making each sample's random
            draw reproducible whatever the worker or order.
        skip_unreadable: Instead of raising :class:`ImageReadError`, return
            ``(None, index, message)`` for an unreadable file and ``(tensor, index, None)``
            otherwise, so that a loader can carry on past bad files (see
            :func:`collate_readable`).
    """

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Any,
        draft_size: int | None = None,
        seeds: Sequence[int] | None = None,
        skip_unreadable: bool = False,
    ):
        self.samples = list(samples)
        self.transform = transform
        self.draft_size = draft_size
        self.seeds = list(seeds) if seeds is not None else None
        self.skip_unreadable = skip_unreadable

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Any:
        path, target = self.samples[index]
        try:
            image = read_image(path, self.draft_size)
        except ImageReadError as exc:
            if not self.skip_unreadable:
                raise
            return None, index, str(exc)
        if self.seeds is None:
            tensor = self.transform(image)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seeds[index])
                tensor = self.transform(image)
        return (tensor, index, None) if self.skip_unreadable else (tensor, target)


def collate_readable(
    batch: Sequence[tuple[torch.Tensor | None, int, str | None]],
) -> tuple[torch.Tensor | None, list[int], list[str]]:
    """Collate ``ImageDataset(skip_unreadable=True)`` items.

    Args:
        batch: ``(tensor or None, index, error message or None)`` items.

    Returns:
        ``(stacked tensors or None, their dataset indices, error messages)``.
    """
    kept = [(t, i) for t, i, _ in batch if t is not None]
    images = torch.stack([t for t, _ in kept]) if kept else None
    return images, [i for _, i in kept], [e for _, _, e in batch if e is not None]
