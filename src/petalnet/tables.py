"""Labels from a table instead of class folders: a CSV file, ``(path, label)`` pairs, a DataFrame.

A CSV has a header with ``path`` and ``label`` columns (paths relative to the CSV file's
folder, or absolute) and optionally ``split`` (``train``, ``valid``/``val``, ``test``) or
``valid`` (``1``/``true`` marks a validation row). Read with the standard library's ``csv``;
a pandas ``DataFrame`` with the same columns works too, without petalnet importing pandas.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from petalnet.errors import DataError

__all__ = ["LabelRow", "is_table", "labelled", "read_table"]

_SPLITS = {
    "train": "train",
    "valid": "valid",
    "val": "valid",
    "validation": "valid",
    "test": "test",
}
_TRUE = {"1", "true", "yes", "y", "valid"}


@dataclass(frozen=True)
class LabelRow:
    """One labelled image of a table.

    Attributes:
        path: The image file.
        label: Its class name.
        split: ``"train"``, ``"valid"``, ``"test"``, or ``None`` when the table says none.
    """

    path: Path
    label: str
    split: str | None = None


def is_table(source: object) -> bool:
    """Whether ``source`` is a table of labels rather than a folder.

    Args:
        source: What was passed to ``fit`` or ``evaluate``.

    Returns:
        ``True`` for a ``.csv`` path, a list or tuple (of pairs), or a DataFrame.
    """
    if isinstance(source, (str, os.PathLike)):
        return Path(source).suffix.lower() == ".csv"
    return isinstance(source, (list, tuple)) or hasattr(source, "to_dict")


def read_table(source: Any) -> list[LabelRow]:
    """The rows of a labels table.

    Args:
        source: A ``.csv`` file, a sequence of ``(path, label)`` or ``(path, label, split)``
            tuples, or a DataFrame with ``path`` and ``label`` (and ``split``) columns.

    Returns:
        The rows, in table order.

    Raises:
        DataError: The file is missing or lacks the columns, a row is malformed, or a
            split is not one of train/valid/test (the message names the row).
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise DataError(f"Labels file {str(path)!r} does not exist.")
        with path.open(newline="", encoding="utf-8-sig") as f:
            return _rows(csv.DictReader(f), path.parent, str(path))
    if hasattr(source, "to_dict"):  # a pandas DataFrame
        records: list[Mapping[str, Any]] = source.to_dict("records")
        return _rows(records, Path.cwd(), "the DataFrame")
    pairs = list(source)
    bad = next((p for p in pairs if not isinstance(p, (list, tuple)) or len(p) not in (2, 3)), None)
    if bad is not None or not pairs:
        raise DataError(
            f"A list of labels must hold (path, label) pairs, such as [('rose.jpg', 'rose')]; "
            f"got {bad!r}."
            if pairs
            else "The list of labelled images is empty."
        )
    return _rows(
        ({"path": p[0], "label": p[1], "split": p[2] if len(p) == 3 else None} for p in pairs),
        Path.cwd(),
        "the list",
    )


def _rows(records: Iterable[Mapping[str, Any]], base: Path, name: str) -> list[LabelRow]:
    rows = []
    for n, record in enumerate(records, 2 if name.endswith(".csv") else 1):
        if "path" not in record or "label" not in record:
            raise DataError(
                f"{name} needs 'path' and 'label' columns (and maybe 'split'); it has "
                f"{', '.join(map(str, record)) or 'none'}."
            )
        path, label = str(record["path"] or "").strip(), str(record["label"] or "").strip()
        if not path or not label:
            raise DataError(f"{name}, row {n}: empty path or label.")
        split = _split(record, f"{name}, row {n}")
        file = Path(path).expanduser()
        rows.append(LabelRow(file if file.is_absolute() else base / file, label, split))
    if not rows:
        raise DataError(f"{name} holds no labelled images.")
    return rows


def _split(record: Mapping[str, Any], where: str) -> str | None:
    value = record.get("split")
    if value is not None and str(value).strip():
        word = str(value).strip().lower()
        if word not in _SPLITS:
            raise DataError(f"{where}: split {value!r} is none of train, valid, test.")
        return _SPLITS[word]
    flag = record.get("valid")
    if flag is not None and str(flag).strip():
        return "valid" if str(flag).strip().lower() in _TRUE else "train"
    return None


def labelled(rows: Sequence[LabelRow], split: str | None) -> list[LabelRow]:
    """The rows of one split (``"train"`` also takes rows the table gives no split)."""
    return [r for r in rows if r.split == split or (split == "train" and r.split is None)]
