"""Image folders: layouts, splits, class lists and category names.

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

import torch
from torchvision.datasets.folder import IMG_EXTENSIONS

from petalnet.errors import DataError

__all__ = [
    "CATEGORY_NAMES_FILE",
    "IMG_EXTENSIONS",
    "Sample",
    "TrainingData",
    "class_dirs",
    "find_classes",
    "is_image_file",
    "list_samples",
    "load_category_names",
    "load_training_data",
    "resolve_eval_folder",
]

CATEGORY_NAMES_FILE = "cat_to_name.json"
Sample = tuple[Path, int]
"""An image path and the index of its class in the training class list."""


def is_image_file(path: Path) -> bool:
    """Tell whether ``path`` is an image petalnet reads: not hidden, an image extension."""
    return not path.name.startswith(".") and path.suffix.lower() in IMG_EXTENSIONS


def class_dirs(folder: Path) -> list[Path]:
    """The visible sub-folders of ``folder``, sorted by name as strings."""
    return sorted(
        (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.name,
    )


def _has_images(folder: Path) -> bool:
    return any(is_image_file(Path(r) / f) for r, _, files in os.walk(folder) for f in files)


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
    classes = [d.name for d in class_dirs(path) if _has_images(d)]
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
                if is_image_file(Path(root) / f)
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
