"""Scan a data folder before training: layout, classes, unreadable files, category names."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from petalnet.data import CATEGORY_NAMES_FILE, class_dirs, is_image_file, load_category_names
from petalnet.errors import DataError
from petalnet.images import Unreadable, read_image

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
        lines = [f"{self.root}: layout {self.layout}"]
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
        data_dir: A root with ``train/`` (and ``valid/``, ``test/``) or a folder of classes.
        decode: Decode every image (slower, finds corrupt files); else check names only.

    Returns:
        The report; ``report.ok`` tells whether ``fit`` can run.
    """
    root = Path(data_dir)
    report = DatasetReport(root)
    if not root.is_dir():
        report.errors.append(f"{str(root)!r} does not exist")
        return report
    splits = [s for s in ("train", "valid", "val", "test") if (root / s).is_dir()]
    if "train" in splits:
        report.layout = "split"
        for s in splits:
            _scan_split(report, s, root / s, decode)
    else:
        report.layout = "holdout"
        _scan_split(report, "all", root, decode)
    base = "train" if report.layout == "split" else "all"
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
