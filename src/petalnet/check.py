"""Scan a data folder before training: layout, classes, unreadable files, category names."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from petalnet.data import CATEGORY_NAMES_FILE, class_dirs, is_image_file, load_category_names
from petalnet.errors import DataError
from petalnet.images import Unreadable, read_image
from petalnet.tables import is_table, labelled, read_table

__all__ = ["DatasetReport", "check_dataset"]


@dataclass
class DatasetReport:
    """What :func:`check_dataset` found.

    Attributes:
        root: The folder scanned.
        layout: ``"split"`` (train/valid[/test]), ``"holdout"`` (one folder of classes) or
            ``"none"``.
        counts: Readable images per split and class folder.
        errors: Problems that stop training (no classes, one class, foreign classes,
            malformed category names).
        warnings: Problems petalnet works around (unreadable files are skipped, empty class
            folders ignored, missing names fall back to the folder name).
        ignored: Files skipped because they are hidden or have no image extension.
    """

    root: Path
    layout: str = "none"
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    ignored: int = 0

    @property
    def ok(self) -> bool:
        """``True`` when nothing stops training."""
        return not self.errors

    def summary(self) -> str:
        """A readable multi-line summary."""
        words = {
            "split": "Udacity layout (train/ valid/ test/)",
            "holdout": "one folder of class folders (fit holds out valid_fraction)",
            "table": "a labels table (path,label[,split] rows)",
        }
        lines = [f"{self.root}: {words.get(self.layout, 'no usable layout')}"]
        for split, per_class in self.counts.items():
            lines.append(
                f"  {split}: {sum(per_class.values())} readable images in {len(per_class)} classes"
            )
        if self.ignored:
            lines.append(f"  {self.ignored} hidden or non-image files ignored")
        lines += [f"  warning: {w}" for w in self.warnings]
        lines += [f"  ERROR: {e}" for e in self.errors]
        lines.append("  OK: ready to train" if self.ok else "  not ready: fix the errors above")
        return "\n".join(lines)


def _scan_split(report: DatasetReport, name: str, folder: Path, decode: bool) -> None:
    per_class: dict[str, int] = {}
    unreadable = Unreadable("collect")
    for class_dir in class_dirs(folder):
        n = 0
        for base, _, files in os.walk(class_dir):
            for f in sorted(files):
                path = Path(base) / f
                if not is_image_file(path):
                    report.ignored += 1
                    continue
                if decode and not _readable(path, unreadable):
                    continue
                n += 1
        if n:
            per_class[class_dir.name] = n
        else:
            report.warnings.append(f"class folder {str(class_dir)!r} has no images; ignored")
    report.counts[name] = per_class
    report.warnings += [f"unreadable, will be skipped: {m}" for m in unreadable.messages]


def _scan_table(report: DatasetReport, decode: bool) -> None:
    """Counts per split and class of a labels table; missing and unreadable files."""
    try:
        rows = read_table(report.root)
    except DataError as exc:
        report.errors.append(str(exc))
        return
    unreadable = Unreadable("collect")
    for split in ("train", "valid", "test"):
        per_class: dict[str, int] = {}
        for row in labelled(rows, split):
            if not row.path.is_file():
                report.warnings.append(f"missing, will be skipped: {row.path}")
                continue
            if decode and not _readable(row.path, unreadable):
                continue
            per_class[row.label] = per_class.get(row.label, 0) + 1
        if per_class:
            report.counts[split] = per_class
    report.warnings += [f"unreadable, will be skipped: {m}" for m in unreadable.messages]


def _readable(path: Path, unreadable: Unreadable) -> bool:
    """Decode ``path`` (small); hand a failure to ``unreadable``."""
    try:
        read_image(path, draft_size=64)
    except DataError as exc:
        unreadable(str(exc))
        return False
    return True


def check_dataset(data_dir: str | os.PathLike[str], *, decode: bool = True) -> DatasetReport:
    """Scan a data folder the way ``fit`` would read it, and report every problem at once.

    Args:
        data_dir: A root with ``train/`` (and ``valid/``, ``test/``), a folder of classes,
            or a labels ``.csv``.
        decode: Decode every image (slower, finds corrupt files); else check names only.

    Returns:
        The report; ``report.ok`` tells whether ``fit`` can run.
    """
    root = Path(data_dir)
    report = DatasetReport(root)
    splits: list[str]
    if is_table(root):
        report.layout = "table"
        _scan_table(report, decode)
        splits = [s for s in ("train", "valid", "test") if s in report.counts]
    elif not root.is_dir():
        report.errors.append(
            f"{str(root)!r} is a file, not a data folder or a labels .csv"
            if root.is_file()
            else f"{str(root)!r} does not exist"
        )
        return report
    else:
        splits = [s for s in ("train", "valid", "val", "test") if (root / s).is_dir()]
        report.layout = "split" if "train" in splits else "holdout"
        if report.layout == "split":
            for s in splits:
                _scan_split(report, s, root / s, decode)
        else:
            _scan_split(report, "all", root, decode)
    base = "train" if report.layout in ("split", "table") else "all"
    train_classes = set(report.counts.get(base, {}))
    if len(train_classes) < 2:
        report.errors.append(
            f"{len(train_classes)} class folder(s) with images in {base}; at least two are needed"
            + ("" if train_classes else f" (expected {root}/<class>/<image>.jpg)")
        )
    for s in splits:
        extra = sorted(set(report.counts.get(s, {})) - train_classes)
        if s != "train" and extra:
            report.errors.append(f"{s}/ has classes that train/ lacks: {', '.join(extra)}")
        if s != "train" and not report.counts.get(s):
            report.errors.append(f"{s}/ holds no readable images")
    names_file = root / CATEGORY_NAMES_FILE
    if names_file.is_file():
        try:
            names = load_category_names(names_file)
        except DataError as exc:
            report.errors.append(str(exc))
        else:
            missing = sorted(train_classes - set(names), key=lambda c: (len(c), c))
            if missing:
                report.warnings.append(
                    f"{CATEGORY_NAMES_FILE} has no name for {', '.join(missing)}; "
                    "the folder name is shown instead"
                )
    return report
