"""Getting the Oxford 102 Category Flower Dataset into the Udacity folder layout.

``torchvision.datasets.Flowers102`` knows the official files, their addresses and checksums;
this module only lays its splits out as ``train/ valid/ test/<class>/image_XXXXX.jpg`` with a
``cat_to_name.json``, which is what ``FlowerClassifier.fit`` reads. Class folders are named
``1`` to ``102`` as in the Udacity project.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
from importlib import resources
from pathlib import Path

from petalnet.errors import DataError, PetalnetError

__all__ = ["DATASETS", "download_flowers102", "flowers102_names"]

DATASETS = ("flowers102",)
_SPLITS = {"train": "train", "valid": "val", "test": "test"}


def flowers102_names() -> dict[str, str]:
    """Return the 102 flower names keyed by class folder ``"1"`` … ``"102"``."""
    text = resources.files("petalnet").joinpath("flowers102_names.json").read_text("utf-8")
    names: dict[str, str] = json.loads(text)
    return names


def download_flowers102(root: str | os.PathLike[str]) -> Path:
    """Download Flowers-102 (about 330 MB) and lay it out for ``FlowerClassifier.fit``.

    The official archive and label files go to ``root/flowers-102/`` (torchvision's layout;
    files already there are checked and reused). The images are then hard-linked (copied
    where links are impossible) into ``root/train``, ``root/valid`` and ``root/test``.

    Args:
        root: Destination folder.

    Returns:
        ``root``.

    Raises:
        PetalnetError: The files cannot be downloaded (the message says how to get them
            by hand), or scipy, which reads the label files, is missing.
        DataError: ``root`` already holds a ``train/`` folder.
    """
    from torchvision.datasets import Flowers102

    out = Path(root).expanduser()
    if (out / "train").exists():
        raise DataError(f"{str(out / 'train')!r} already exists; choose an empty folder.")
    out.mkdir(parents=True, exist_ok=True)
    try:
        import scipy.io  # noqa: F401  (torchvision reads the .mat label files with it)
    except ModuleNotFoundError:
        raise PetalnetError(
            "Reading Flowers-102's labels needs scipy: pip install scipy."
        ) from None
    try:
        splits = {
            name: Flowers102(str(out), split=tv, download=True) for name, tv in _SPLITS.items()
        }
    except (urllib.error.URLError, OSError) as exc:
        files = ", ".join(f for f, _ in Flowers102._file_dict.values())
        raise PetalnetError(
            f"Cannot download Flowers-102 from {Flowers102._download_url_prefix} ({exc}); "
            f"with no network, fetch {files} elsewhere, put them in "
            f"{out / 'flowers-102'} (extract 102flowers.tgz there) and run again."
        ) from None
    except RuntimeError as exc:  # torchvision: files present but corrupt
        raise PetalnetError(
            f"Flowers-102 files in {out / 'flowers-102'} are damaged: {exc}"
        ) from None
    for name, ds in splits.items():
        for image, label in zip(ds._image_files, ds._labels, strict=True):
            folder = out / name / str(label + 1)
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / Path(image).name
            try:
                os.link(image, target)
            except OSError:
                shutil.copy2(image, target)
    (out / "cat_to_name.json").write_text(json.dumps(flowers102_names(), indent=1))
    return out
