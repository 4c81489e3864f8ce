"""Image folders and label tables: layouts, splits, class lists and category names.

Three sources are understood:

* the Udacity layout: ``root/train/<class>/*.jpg``, ``root/valid/<class>/...`` and maybe
  ``root/test/<class>/...``, with an optional ``root/cat_to_name.json``;
* one folder of class folders, from which a seeded, stratified validation fraction is held out;
* a table of labels (:mod:`petalnet.tables`): a ``.csv`` with ``path,label`` (and maybe
  ``split``) columns, ``(path, label)`` pairs, or a DataFrame; without a ``valid`` split the
  fraction is held out the same way.

Class folders are sorted as strings, exactly like ``torchvision.datasets.ImageFolder``
(``"1", "10", "100", "101", "11", ...``); ``classes[i]`` is the folder of output ``i``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torchvision.datasets.folder import IMG_EXTENSIONS

from petalnet.errors import DataError
from petalnet.tables import is_table, labelled, read_table

__all__ = [
    "CATEGORY_NAMES_FILE",
    "IMG_EXTENSIONS",
    "DataSource",
    "GroupsOf",
    "HeldOut",
    "Sample",
    "TrainingData",
    "class_dirs",
    "evaluation_samples",
    "find_classes",
    "held_out_samples",
    "is_image_file",
    "list_samples",
    "load_category_names",
    "load_training_data",
    "resolve_eval_folder",
]

CATEGORY_NAMES_FILE = "cat_to_name.json"
Sample = tuple[Path, int]
"""An image path and the index of its class in the training class list."""
DataSource = str | os.PathLike[str] | Sequence[Any] | Any
"""A data folder, a labels ``.csv``, ``(path, label)`` pairs, or a DataFrame."""


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


@dataclass(frozen=True)
class HeldOut:
    """How ``fit`` carved its validation split out of one folder of class folders.

    Enough to carve the same split again later (``evaluate`` on that folder then scores the
    held-out images only), and to know when the folder has changed since.

    Attributes:
        folder: The folder split (absolute).
        fraction: Share of each class held out (0 after ``refit``: every image trained on).
        seed: Seed of the split.
        files: Hash of the folder's sorted image list (class folder and file name).
        split: ``"stratified"`` (carved again from the seed) or ``"grouped"`` (groups of
            copies and siblings kept on one side; the held-out files are listed).
        valid_files: For ``"grouped"``: ``class folder/file name`` of each held-out image.
    """

    folder: str
    fraction: float
    seed: int | None
    files: str
    split: str = "stratified"
    valid_files: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain values, for the checkpoint."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> HeldOut | None:
        """The split :meth:`to_dict` described (``None`` stays ``None``)."""
        if not data:
            return None
        seed = None if data.get("seed") is None else int(data["seed"])
        return cls(
            str(data["folder"]),
            float(data["fraction"]),
            seed,
            str(data["files"]),
            str(data.get("split", "stratified")),
            tuple(str(f) for f in data.get("valid_files", ())),
        )

    @classmethod
    def of(
        cls,
        folder: Path,
        samples: Sequence[Sample],
        fraction: float,
        seed: int | None,
        valid: Sequence[Sample] | None = None,
    ) -> HeldOut:
        """The split of ``samples`` (all of ``folder``): seeded, or ``valid`` as listed."""
        listed = tuple(sorted(_name(p) for p, _ in valid)) if valid is not None else ()
        split = "grouped" if valid is not None else "stratified"
        return cls(
            str(folder.resolve()), float(fraction), seed, _files_digest(samples), split, listed
        )


def _name(path: Path) -> str:
    """An image's name in a split record: its class folder and file name."""
    return f"{path.parent.name}/{path.name}"


def _files_digest(samples: Sequence[Sample]) -> str:
    """Hash of the class folder and file name of each sample (where the folder lives aside)."""
    names = sorted(_name(p) for p, _ in samples)
    return hashlib.blake2b("\0".join(names).encode(), digest_size=12).hexdigest()


def held_out_samples(
    folder: str | os.PathLike[str], samples: Sequence[Sample], held: HeldOut
) -> list[Sample] | None:
    """The validation split ``fit`` carved from ``folder``, carved again.

    Args:
        folder: A folder of class folders.
        samples: Its samples (:func:`list_samples` with the model's classes).
        held: How the split was carved.

    Returns:
        Its validation samples when ``folder`` holds the images the split was carved from
        (wherever it now lives); ``None`` when it holds others.

    Raises:
        DataError: ``folder`` is the folder split and its images changed since (which were
            held out is then unknown).
    """
    if _files_digest(samples) == held.files:
        if held.split == "grouped":
            listed = set(held.valid_files) if held.fraction > 0 else set()
            return [s for s in samples if _name(s[0]) in listed]
        return _stratified_split(samples, held.fraction, held.seed)[1]
    if str(Path(folder).resolve()) == held.folder:
        raise DataError(
            f"{str(folder)!r} changed since the model was fitted on it, so which of its "
            "images were held out for validation is unknown (the rest were trained on); "
            "evaluate on images kept apart, such as a test/ folder."
        )
    return None


@dataclass
class TrainingData:
    """The images ``fit`` learns from.

    Attributes:
        classes: Class folder names; ``classes[i]`` is output ``i``.
        train: Training samples.
        valid: Validation samples (held out from ``train`` for a single folder).
        root: The folder given to ``fit``.
        category_names_file: ``cat_to_name.json`` found in ``root``, if any.
        layout: ``"split"`` (a ``valid/`` folder), ``"holdout"`` (carved here) or
            ``"table"`` (a labels table).
        held_out: How the validation split was carved, for ``"holdout"``.
    """

    classes: list[str]
    train: list[Sample]
    valid: list[Sample]
    root: Path
    category_names_file: Path | None = None
    layout: str = "split"
    held_out: HeldOut | None = None
    class_to_idx: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


GroupsOf = Callable[[Sequence[Sample]], Sequence[int]]
"""Maps samples to a group id each (equal ids: copies or siblings, kept on one side)."""


def _stratified_split(
    samples: Sequence[Sample],
    fraction: float,
    seed: int | None,
    groups: Sequence[int] | None = None,
) -> tuple[list[Sample], list[Sample]]:
    """Hold out ``fraction`` of each class (at least one image where a class has two).

    With ``groups`` (one id per sample), a group goes to one side whole: walking each class
    in the seeded order, an image whose group is not placed yet takes its group to the
    validation side while that keeps the class within its share, else to training. With
    every group a single image this is exactly the plain stratified split.
    """
    gen = torch.Generator().manual_seed(0 if seed is None else int(seed))
    group = list(groups) if groups is not None else list(range(len(samples)))
    by_class: dict[int, list[int]] = {}
    members: dict[int, dict[int, int]] = {}  # group -> {class: images}
    for i, s in enumerate(samples):
        by_class.setdefault(s[1], []).append(i)
        counts = members.setdefault(group[i], {})
        counts[s[1]] = counts.get(s[1], 0) + 1
    side: dict[int, bool] = {}  # group -> held out
    held: dict[int, int] = {}  # class -> images held out so far
    for idx in sorted(by_class):
        items = by_class[idx]
        order = torch.randperm(len(items), generator=gen).tolist()
        n_valid = 0 if fraction <= 0 or len(items) < 2 else max(1, round(fraction * len(items)))
        n_valid = min(n_valid, len(items) - 1)
        for i in order:
            g = group[items[i]]
            if g in side:
                continue
            side[g] = held.get(idx, 0) + members[g][idx] <= n_valid
            if side[g]:
                for c, n in members[g].items():
                    held[c] = held.get(c, 0) + n
    valid = [s for i, s in enumerate(samples) if side[group[i]]]
    train = [s for i, s in enumerate(samples) if not side[group[i]]]
    return train, valid


def _at_least_two(classes: list[str], folder: Path) -> list[str]:
    if len(classes) < 2:
        raise DataError(
            f"{str(folder)!r} has {len(classes)} class folder with images ({', '.join(classes)}); "
            "a classifier needs at least two."
        )
    return classes


def _folder(data_dir: DataSource) -> Path:
    """``data_dir`` as a folder, or a one-line error saying what else it may be."""
    if not isinstance(data_dir, (str, os.PathLike)):
        raise DataError(
            f"Cannot read images from {type(data_dir).__name__}: pass a data folder, a labels "
            ".csv, a list of (path, label) pairs or a DataFrame with path and label columns."
        )
    root = Path(data_dir)
    if root.is_file():
        raise DataError(
            f"{str(root)!r} is a file, not a data folder: pass a folder of class folders, a "
            "root with train/ (and valid/), or a labels .csv with path,label columns."
        )
    if not root.is_dir():
        raise DataError(f"Data folder {str(root)!r} does not exist; check the path.")
    return root


def _table_data(
    source: DataSource, fraction: float, seed: int | None, groups: GroupsOf | None
) -> TrainingData:
    """The training data of a labels table (validation rows, or a held-out fraction)."""
    rows = read_table(source)
    where = Path(source) if isinstance(source, (str, os.PathLike)) else None
    home = where.parent if where is not None else Path.cwd()
    names = home / CATEGORY_NAMES_FILE if where is not None else None
    classes = _at_least_two(sorted({r.label for r in rows}), where or home)
    data = TrainingData(classes, [], [], home, names if names and names.is_file() else None)
    data.layout = "table"
    idx = data.class_to_idx
    data.train = [(r.path, idx[r.label]) for r in labelled(rows, "train")]
    data.valid = [(r.path, idx[r.label]) for r in labelled(rows, "valid") if r.label in idx]
    if not data.valid:
        _hold_out(data, where or home, data.train, fraction, seed, groups, layout="table")
    return data


def evaluation_samples(
    source: DataSource, class_to_idx: Mapping[str, int], held: HeldOut | None
) -> tuple[str, list[Sample], bool]:
    """What ``evaluate`` scores: never images the model trained on.

    ``test/`` if present, else ``valid/``; a table's ``test`` rows, else its ``valid`` rows.
    Otherwise the folder or table itself: when it is the one ``fit`` carved its validation
    split from (``held``, the same images wherever they now live), only that split.

    Args:
        source: A folder, a root with ``test/``/``valid/``, or a labels table.
        class_to_idx: The model's classes.
        held: How the model's validation split was carved, if it was.

    Returns:
        ``(what was evaluated, its samples, whether they are a held-out split)``.

    Raises:
        DataError: Missing, unknown classes, every image trained on, or the split folder
            changed since fitting.
    """
    if is_table(source):
        rows = read_table(source)
        unknown = sorted({r.label for r in rows} - set(class_to_idx))
        if unknown:
            raise DataError(
                f"{source!s:.80}: labels the model does not know: {', '.join(unknown)}."
            )
        chosen = labelled(rows, "test") or labelled(rows, "valid") or rows
        name = str(source) if isinstance(source, (str, os.PathLike)) else "the table"
        samples = [(r.path, class_to_idx[r.label]) for r in chosen]
        split_here = chosen is rows
    else:
        folder = resolve_eval_folder(_folder(source))
        name, samples = str(folder), list_samples(folder, class_to_idx)
        split_here = folder.name not in ("test", "valid", "val")
    if held is None or not split_here:
        return name, samples, False
    kept = held_out_samples(name, samples, held)
    if kept is None:
        return name, samples, False
    if not kept:
        raise DataError(
            f"Every image of {name!r} was trained on (refit, or no class with two images), "
            "so none is left to measure; evaluate on images kept apart, such as a test/ folder."
        )
    return name, kept, True


def load_training_data(
    data_dir: DataSource,
    *,
    valid_fraction: float = 0.2,
    seed: int | None = None,
    groups: GroupsOf | None = None,
) -> TrainingData:
    """Find the training and validation images under ``data_dir``.

    Args:
        data_dir: A root with ``train/`` (and usually ``valid/``) class folders, one folder
            of class folders, or a labels table (:mod:`petalnet.tables`).
        valid_fraction: Share of each class held out for validation when there is no
            ``valid/`` folder.
        seed: Seed of that hold-out split.
        groups: Groups of copies and siblings, kept on one side of that split (``None``:
            per class at random).

    Returns:
        The classes and samples.

    Raises:
        DataError: The folder is missing or holds no usable images.
    """
    if is_table(data_dir):
        return _table_data(data_dir, valid_fraction, seed, groups)
    root = _folder(data_dir)
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
            _hold_out(data, root / "train", data.train, valid_fraction, seed, groups)
        return data
    classes = _at_least_two(find_classes(root), root)
    data = TrainingData(classes, [], [], root, names, layout="holdout")
    _hold_out(data, root, list_samples(root, data.class_to_idx), valid_fraction, seed, groups)
    return data


def _hold_out(
    data: TrainingData,
    folder: Path,
    samples: list[Sample],
    fraction: float,
    seed: int | None,
    groups: GroupsOf | None,
    layout: str = "holdout",
) -> None:
    """Carve ``data``'s validation split out of ``samples`` (all of ``folder``)."""
    ids = groups(samples) if groups is not None and fraction > 0 else None
    data.train, data.valid = _stratified_split(samples, fraction, seed, ids)
    listed = data.valid if ids is not None else None
    data.held_out = HeldOut.of(folder, samples, fraction, seed, listed)
    data.layout = layout


def resolve_eval_folder(path: str | os.PathLike[str]) -> Path:
    """Pick the folder of class folders to evaluate on.

    Args:
        path: A folder of class folders, or a root holding ``test/`` or ``valid/``.

    Returns:
        ``path/test`` if present, else ``path/valid``, else ``path/train`` (a root whose
        validation split ``fit`` carved from ``train/``), else ``path`` itself.

    Raises:
        DataError: ``path`` does not exist.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"Evaluation folder {str(root)!r} does not exist; check the path.")
    for sub in ("test", "valid", "val", "train"):  # train/ alone: its held-out part
        if (root / sub).is_dir():
            return root / sub
    return root
