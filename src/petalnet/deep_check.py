"""``petalnet check --deep``: leaks, duplicates and likely mislabels, found before training.

:func:`deep_check` reads every image of every split once for its pixels and once through the
backbone (rows come from, and go to, the same row store ``fit`` uses, and are compared block
by block, so memory does not grow with the square of the images), then reports:

- **exact duplicates**: the same pixels after decoding (a re-saved file with other bytes
  counts), within a split and across splits;
- **near duplicates**: cosine similarity of the backbone features at or above
  ``near_threshold`` (re-encoded, resized, slightly cropped copies), not already exact;
- a pair in two splits is a **leak** (the same photo trained on and measured on), listed
  first;
- **likely mislabels**: out-of-sample class probabilities from a ``folds``-fold logistic
  regression on the features (seconds on a CPU), filtered by confident learning (Northcutt
  et al. 2021: an image whose given class is below that class's average self-confidence while
  another class is above its own), most doubtful first. Implemented here in a few lines on
  the cached features rather than through cleanlab, which would add a dependency (and its
  own classifier loop) for the same rule.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from petalnet.backbones.registry import build_backbone
from petalnet.data import CATEGORY_NAMES_FILE, class_dirs, list_samples, load_category_names
from petalnet.errors import DataError
from petalnet.fitting import make_pipeline
from petalnet.images import Unreadable, read_image
from petalnet.params import ClassifierParams
from petalnet.rows import empty_rows

__all__ = ["NEAR_THRESHOLD", "DeepReport", "Duplicate", "LikelyMislabel", "deep_check"]

NEAR_THRESHOLD = 0.92
"""Default cosine similarity of near duplicates (efficientnet_lite0 features), chosen with
``benchmarks/check_deep.py``: planted copies of Flowers-102 photos (resized to 80 % or 10 %
cropped, re-encoded as JPEG 75) scored 0.86-0.98, and 29 of 40 are at or above 0.92; the
data as shipped has 556 pairs there, many of them bursts of nearly the same shot. A
compromise between missing copies and flagging bursts: lower it to catch more."""

_SPLITS = ("train", "valid", "val", "test")


@dataclass(frozen=True)
class Duplicate:
    """Two images that are the same photo.

    Attributes:
        files: The two files.
        splits: Their splits (``"all"`` for a folder without splits).
        similarity: Cosine similarity of their features (1.0 for exact duplicates).
        exact: Same pixels after decoding.
    """

    files: tuple[str, str]
    splits: tuple[str, str]
    similarity: float
    exact: bool

    @property
    def leak(self) -> bool:
        """The pair spans two splits: a photo trained on is also measured on."""
        return self.splits[0] != self.splits[1]


@dataclass(frozen=True)
class LikelyMislabel:
    """An image whose folder looks wrong to a model that never saw it.

    Attributes:
        file: The image.
        split: Its split.
        given: Its class folder.
        suggested: The class the out-of-sample model believes.
        given_probability: Out-of-sample probability of ``given``.
        suggested_probability: Out-of-sample probability of ``suggested``.
    """

    file: str
    split: str
    given: str
    suggested: str
    given_probability: float
    suggested_probability: float


@dataclass
class DeepReport:
    """What :func:`deep_check` found.

    Attributes:
        root: The folder checked.
        n_images: Images read.
        duplicates: Exact and near duplicate pairs, leaks first, most similar first.
        mislabels: Likely mislabelled images, most doubtful first.
        names: Class folder to flower name, where known.
        near_threshold: The similarity used for near duplicates.
        seconds: Wall time.
        skipped: Unreadable images left out (each named).
    """

    root: Path
    n_images: int = 0
    duplicates: list[Duplicate] = field(default_factory=list)
    mislabels: list[LikelyMislabel] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)
    near_threshold: float = NEAR_THRESHOLD
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)

    @property
    def leaks(self) -> list[Duplicate]:
        """Duplicate pairs across splits."""
        return [d for d in self.duplicates if d.leak]

    def _name(self, class_id: str) -> str:
        name = self.names.get(class_id)
        return f"{name} ({class_id})" if name else class_id

    def summary(self, limit: int = 10) -> str:
        """Counts first, then the top findings with their files and scores."""
        exact = sum(d.exact for d in self.duplicates)
        lines = [
            f"{self.root}: {self.n_images} images checked in {self.seconds:.0f}s",
            f"  {len(self.leaks)} duplicate pairs across splits (leaks), "
            f"{exact} exact and {len(self.duplicates) - exact} near duplicate pairs in all "
            f"(cosine >= {self.near_threshold}), {len(self.mislabels)} likely mislabels",
        ]
        if self.skipped:
            lines.append(f"  {len(self.skipped)} unreadable images skipped")
        if self.duplicates:
            lines.append("duplicates (leaks first):")
        for d in self.duplicates[:limit]:
            kind = "exact" if d.exact else f"near {d.similarity:.3f}"
            where = f"LEAK {d.splits[0]}/{d.splits[1]}" if d.leak else d.splits[0]
            lines.append(f"  {where:<16} {kind:<11} {d.files[0]}  ==  {d.files[1]}")
        if self.mislabels:
            lines.append("likely mislabels (most doubtful first):")
        for m in self.mislabels[:limit]:
            lines.append(
                f"  {m.file}: filed as {self._name(m.given)} ({m.given_probability:.0%}), "
                f"looks like {self._name(m.suggested)} ({m.suggested_probability:.0%})"
            )
        if not self.duplicates and not self.mislabels:
            lines.append("  nothing found")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible content (``leak`` added to each duplicate)."""
        return {
            "root": str(self.root),
            "n_images": self.n_images,
            "near_threshold": self.near_threshold,
            "seconds": self.seconds,
            "leaks": len(self.leaks),
            "duplicates": [{**asdict(d), "leak": d.leak} for d in self.duplicates],
            "mislabels": [asdict(m) for m in self.mislabels],
            "skipped": list(self.skipped),
        }


def _samples(root: Path) -> tuple[list[tuple[Path, int, str]], list[str]]:
    """Every image with its class index and split, and the class folder names."""
    splits = [s for s in _SPLITS if (root / s).is_dir()]
    folders = [(s, root / s) for s in splits] if splits else [("all", root)]
    classes = sorted({d.name for _, f in folders for d in class_dirs(f)})
    index = {c: i for i, c in enumerate(classes)}
    samples = [
        (path, label, split)
        for split, folder in folders
        for path, label in list_samples(folder, index)
    ]
    return samples, classes


def _pixel_hash(path: Path) -> str | None:
    try:
        image = read_image(path)
    except DataError:
        return None
    pixels = np.asarray(image)
    return hashlib.blake2b(
        str(pixels.shape).encode() + pixels.tobytes(), digest_size=16
    ).hexdigest()


def _norms(rows: torch.Tensor, block: int = 8192) -> torch.Tensor:
    """``(N,)`` Euclidean norms of ``rows``, a block at a time (no float copy of all rows)."""
    parts = [rows[s : s + block].float().norm(dim=1) for s in range(0, len(rows), block)]
    return torch.cat(parts).clamp_min(1e-12) if parts else torch.zeros(0)


def _near_pairs(
    rows: torch.Tensor, threshold: float, block: int = 1024
) -> list[tuple[int, int, float]]:
    """Pairs ``(i, j, similarity)``, ``i < j``, of rows whose cosine is at least ``threshold``.

    Blocks of ``block`` rows are compared with the rows after them, so memory holds a
    ``block x N`` strip of similarities, never the ``N x N`` matrix; the rows are read as
    they are stored (a memory map for many), normalised block by block.
    """
    norms = _norms(rows)
    pairs = []
    for start in range(0, len(rows), block):
        a = rows[start : start + block].float() / norms[start : start + block, None]
        for later in range(start, len(rows), 4 * block):
            b = rows[later : later + 4 * block].float() / norms[later : later + 4 * block, None]
            sims = a @ b.T
            i_index = torch.arange(start, start + len(a))[:, None]
            j_index = torch.arange(later, later + len(b))[None, :]
            sims[j_index <= i_index] = -1  # each pair once, not itself
            for i, j in (sims >= threshold).nonzero().tolist():
                pairs.append((start + i, later + j, float(sims[i, j])))
    return pairs


def _standardised(rows: torch.Tensor, order: torch.Tensor, block: int = 8192) -> torch.Tensor:
    """``rows[order]`` with each column at mean 0 and standard deviation 1, block by block."""
    total = torch.zeros(rows.shape[1], dtype=torch.float64)
    squares = torch.zeros(rows.shape[1], dtype=torch.float64)
    for s in range(0, len(rows), block):
        part = rows[s : s + block].double()
        total += part.sum(0)
        squares += (part * part).sum(0)
    n = max(len(rows), 1)
    mean = total / n
    std = ((squares - n * mean * mean) / max(n - 1, 1)).clamp_min(0).sqrt()
    out = empty_rows(rows.shape, torch.float32)
    for s in range(0, len(rows), block):
        part = rows[order[s : s + block]].double()
        out[s : s + block] = ((part - mean) / (std + 1e-6)).float()
    return out


def out_of_sample_probs(
    features: torch.Tensor, labels: torch.Tensor, classes: int, folds: int = 5, seed: int = 0
) -> torch.Tensor:
    """Class probabilities of each row from a logistic regression that never saw it.

    The rows are standardised once, in a shuffled order that makes each fold one
    contiguous range, so a fold's training rows are two slices of that one array: nothing
    is copied per fold or per step, and the full-batch gradient is summed a block at a time.

    Args:
        features: ``(N, D)`` features (in memory or memory-mapped).
        labels: ``(N,)`` class indices.
        classes: Number of classes.
        folds: Stratification-free folds (rows are shuffled with ``seed``).
        seed: Shuffle and initialisation seed.

    Returns:
        ``(N, classes)`` probabilities.
    """
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=g)
    x, y = _standardised(features, order), labels[order]
    bounds = [len(labels) * f // folds for f in range(folds + 1)]
    probs = torch.zeros(len(labels), classes)
    block = 16_384
    for fold in range(folds):
        lo, hi = bounds[fold], bounds[fold + 1]
        parts = [(0, lo), (hi, len(labels))]
        n_train = max(1, len(labels) - (hi - lo))
        torch.manual_seed(seed + fold)
        model = nn.Linear(x.shape[1], classes)
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.05)
        for _ in range(150):  # full-batch: a few seconds for 10 000 rows
            optimizer.zero_grad()
            for first, last in parts:
                for s in range(first, last, block):
                    e = min(s + block, last)
                    loss = nn.functional.cross_entropy(model(x[s:e]), y[s:e], reduction="sum")
                    (loss / n_train).backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        with torch.no_grad():
            probs[order[lo:hi]] = model(x[lo:hi]).softmax(1)
    return probs


def confident_mislabels(probs: torch.Tensor, labels: torch.Tensor) -> list[tuple[int, int]]:
    """Rows confident learning calls mislabelled, with the class it suggests, most doubtful first.

    Per class ``j`` the threshold ``t_j`` is the mean probability of ``j`` over the rows
    labelled ``j``. A row is flagged when its given class is below its threshold and the most
    probable class among those at or above their own threshold is another one.

    Args:
        probs: ``(N, C)`` out-of-sample probabilities.
        labels: ``(N,)`` given class indices.

    Returns:
        ``(row, suggested class)`` pairs, lowest given-class probability first.
    """
    classes = probs.shape[1]
    thresholds = torch.full((classes,), math.inf)
    for j in range(classes):
        mine = labels == j
        if mine.any():
            thresholds[j] = probs[mine, j].mean()
    given = probs[torch.arange(len(labels)), labels]
    confident = torch.where(probs >= thresholds, probs, torch.zeros(()))
    suggested = confident.argmax(1)
    flagged = (
        ((confident.amax(1) > 0) & (suggested != labels) & (given < thresholds[labels]))
        .nonzero()
        .flatten()
    )
    ranked = sorted(flagged.tolist(), key=lambda i: float(given[i]))
    return [(i, int(suggested[i])) for i in ranked]


def deep_check(
    data_dir: str | os.PathLike[str],
    *,
    backbone: str = "efficientnet_lite0",
    weights: str | None = "DEFAULT",
    near_threshold: float | None = None,
    folds: int = 5,
    cache_dir: str | os.PathLike[str] | None = None,
    device: str = "auto",
    verbose: int = 1,
) -> DeepReport:
    """Find leaks, duplicates and likely mislabels in a data folder (see the module docs).

    Args:
        data_dir: A root with ``train/`` (``valid/``, ``test/``) or one folder of classes.
        backbone: The backbone whose features compare images (cached like ``fit``'s).
        weights: Its weights.
        near_threshold: Cosine similarity at or above which two images are near duplicates
            (``None``: :data:`NEAR_THRESHOLD`).
        folds: Folds of the out-of-sample probabilities.
        cache_dir: Feature cache folder (default: the one ``fit`` uses).
        device: Where the backbone runs.
        verbose: ``0`` silences progress output.

    Returns:
        The report.

    Raises:
        DataError: The folder is missing or has fewer than two classes.
        BackboneNotFoundError: Unknown ``backbone``.
        WeightsUnavailableError: Its weights are not available here.
    """
    start = time.perf_counter()
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"{str(root)!r} does not exist; pass a data folder.")
    samples, classes = _samples(root)
    if len(classes) < 2:
        raise DataError(f"{str(root)!r} has fewer than two class folders with images.")
    names_file = root / CATEGORY_NAMES_FILE
    names = load_category_names(names_file) if names_file.is_file() else {}
    near = NEAR_THRESHOLD if near_threshold is None else near_threshold
    report = DeepReport(root, names=names, near_threshold=near)
    params = ClassifierParams(
        backbone, weights=weights, cache_dir=cache_dir, device=device, verbose=verbose
    )
    pipeline = make_pipeline(params, build_backbone(backbone, weights))
    paths = [p for p, _, _ in samples]
    feats = pipeline.features(
        paths,
        [label for _, label, _ in samples],
        unreadable=Unreadable("collect"),
        desc="check --deep",
    )
    report.skipped = [u.message for u in feats.skipped]
    kept = [samples[i] for i in feats.positions.tolist()]
    report.n_images = len(kept)
    hashes = [_pixel_hash(p) for p, _, _ in kept]
    files = [str(p) for p, _, _ in kept]
    found: dict[tuple[int, int], Duplicate] = {}
    first: dict[str, int] = {}
    for i, digest in enumerate(hashes):
        if digest is None:
            continue
        if digest in first:
            j = first[digest]
            found[(j, i)] = Duplicate((files[j], files[i]), (kept[j][2], kept[i][2]), 1.0, True)
        else:
            first[digest] = i
    for i, j, sim in _near_pairs(feats.features, near):
        if (i, j) not in found and hashes[i] is not None and hashes[i] == hashes[j]:
            continue  # the same pixels as an earlier copy: reported against that one
        found.setdefault(
            (i, j), Duplicate((files[i], files[j]), (kept[i][2], kept[j][2]), sim, False)
        )
    report.duplicates = sorted(found.values(), key=lambda d: (not d.leak, -d.similarity))
    probs = out_of_sample_probs(feats.features, feats.labels, len(classes), folds)
    report.mislabels = [
        LikelyMislabel(
            files[i],
            kept[i][2],
            classes[int(feats.labels[i])],
            classes[j],
            float(probs[i, feats.labels[i]]),
            float(probs[i, j]),
        )
        for i, j in confident_mislabels(probs, feats.labels)
    ]
    report.seconds = round(time.perf_counter() - start, 1)
    return report
