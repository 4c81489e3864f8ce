"""``petalnet check --deep``: leaks, copies, siblings and likely mislabels, found before training.

:func:`deep_check` decodes every image of every split once, and from that one decode takes
both its perceptual hashes (:mod:`petalnet.hashes`) and its backbone features (rows come
from, and go to, the same row store ``fit`` uses, so a second run decodes nothing; pairs are
compared block by block, so memory never holds an ``N x N`` matrix). It reports:

- **copies**: the same photo. *Exact* (the same decoded pixels, e.g. a re-save as PNG) or
  re-encoded, resized, slightly cropped or brightened (perceptual hashes within
  :data:`~petalnet.hashes.COPY_DISTANCE` bits).
- **siblings**: another shot of the same plant (a burst): backbone features at or above
  ``near_threshold`` cosine, not a copy. Not an error, but a sibling in valid/ of a photo in
  train/ makes valid/ easier than new photos.
- a pair in two splits is a **leak**, listed first, for both kinds;
- **groups**: images connected by copies and siblings (what a leak-aware split keeps
  together), with how many span two splits;
- **conflicts**: one photo (a copy) filed under two classes: one finding, not two mislabels;
- **likely mislabels**: out-of-sample class probabilities from a ``folds``-fold logistic
  regression on the features (seconds on a CPU); an image is flagged when its given class is
  below that class's average self-confidence (confident learning, Northcutt et al. 2021) and
  another class beats it by at least 0.5, ranked by the margin between the two. Lookalike species
  rank high too (a correctly filed flower that resembles another): each flag says how many
  other photos of its class the model also takes for the suggested one.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import imagehash
import numpy as np
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from torch import nn

from petalnet import hashes
from petalnet.backbones.registry import build_backbone
from petalnet.data import CATEGORY_NAMES_FILE, class_dirs, list_samples, load_category_names
from petalnet.errors import DataError
from petalnet.features import Also, fill_rows, readable_rows
from petalnet.fitting import make_pipeline
from petalnet.images import Unreadable
from petalnet.params import ClassifierParams
from petalnet.rows import compact, empty_rows
from petalnet.rowstore import RowStore

__all__ = [
    "GROUPING_BACKBONE",
    "NEAR_THRESHOLD",
    "Conflict",
    "DeepReport",
    "Duplicate",
    "Group",
    "LikelyMislabel",
    "deep_check",
    "near_duplicate_groups",
]

GROUPING_BACKBONE = "efficientnet_lite0"
"""The backbone whose features find siblings (the thresholds are calibrated on it)."""

NEAR_THRESHOLD = 0.92
"""Default cosine similarity of siblings (efficientnet_lite0 features). Feature cosine
cannot tell a copy from a sibling (a q60, 0.9x copy scores 0.887; bursts of one plant score
above 0.92), so copies come from perceptual hashes and this threshold only decides which
other shots are close enough to report: Flowers-102 as shipped has 556 pairs at or above
it (``benchmarks/check_deep.py``). Lower it to see more."""

_SPLITS = ("train", "valid", "val", "test")

Kind = Literal["exact", "copy", "sibling"]
_KIND_ORDER = {"exact": 0, "copy": 1, "sibling": 2}


@dataclass(frozen=True)
class Duplicate:
    """Two images that are the same photo (a copy) or two shots of one plant (siblings).

    Attributes:
        files: The two files.
        splits: Their splits (``"all"`` for a folder without splits).
        similarity: Cosine similarity of their features.
        kind: ``"exact"`` (same decoded pixels), ``"copy"`` (perceptual hashes within
            :data:`~petalnet.hashes.COPY_DISTANCE` bits) or ``"sibling"`` (features at or
            above the near threshold only).
        distance: Perceptual-hash distance in bits (0-64; see :func:`petalnet.hashes.copy_pairs`).
        classes: Their class folders.
    """

    files: tuple[str, str]
    splits: tuple[str, str]
    similarity: float
    kind: Kind
    distance: int
    classes: tuple[str, str]

    @property
    def exact(self) -> bool:
        """The same decoded pixels."""
        return self.kind == "exact"

    @property
    def copy(self) -> bool:
        """The same photo (exact or not)."""
        return self.kind != "sibling"

    @property
    def leak(self) -> bool:
        """The pair spans two splits: a photo trained on is also measured on."""
        return self.splits[0] != self.splits[1]


@dataclass(frozen=True)
class Group:
    """Images connected by copies and siblings: what a leak-aware split keeps together.

    Attributes:
        files: Its images.
        splits: Their splits.
        copies: Whether any two of them are copies (else siblings only).
    """

    files: tuple[str, ...]
    splits: tuple[str, ...]
    copies: bool

    @property
    def spans_splits(self) -> bool:
        """Some of the group is in one split and some in another."""
        return len(set(self.splits)) > 1


@dataclass(frozen=True)
class Conflict:
    """One photo filed under two classes (two copies of it in different class folders).

    Attributes:
        files: The two files.
        classes: Their class folders.
        suggested: The class the out-of-sample model believes of the photo.
        probability: Its out-of-sample probability (the two copies averaged).
    """

    files: tuple[str, str]
    classes: tuple[str, str]
    suggested: str
    probability: float


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
        lookalikes: Other photos filed as ``given`` that the model also takes for
            ``suggested`` (several: the two species look alike, and this may be one of them).
    """

    file: str
    split: str
    given: str
    suggested: str
    given_probability: float
    suggested_probability: float
    lookalikes: int = 0

    @property
    def margin(self) -> float:
        """How much more the model believes ``suggested`` than ``given`` (the ranking)."""
        return self.suggested_probability - self.given_probability


@dataclass
class DeepReport:
    """What :func:`deep_check` found.

    Attributes:
        root: The folder checked.
        n_images: Readable images checked.
        counts: Readable images per split (the quick check's counts).
        duplicates: Copies and sibling pairs: leaks first, then exact, copies, siblings.
        groups: Connected groups of two or more images, those spanning splits first.
        conflicts: Photos filed under two classes.
        mislabels: Likely mislabelled images, largest margin first.
        names: Class folder to flower name, where known.
        near_threshold: The cosine similarity used for siblings.
        copy_distance: The hash distance used for copies.
        seconds: Wall time.
        skipped: Unreadable images left out (each named).
    """

    root: Path
    n_images: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    duplicates: list[Duplicate] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    mislabels: list[LikelyMislabel] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)
    near_threshold: float = NEAR_THRESHOLD
    copy_distance: int = hashes.COPY_DISTANCE
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)

    @property
    def leaks(self) -> list[Duplicate]:
        """Copy and sibling pairs across splits."""
        return [d for d in self.duplicates if d.leak]

    @property
    def copies(self) -> list[Duplicate]:
        """Pairs that are the same photo (exact or not)."""
        return [d for d in self.duplicates if d.copy]

    @property
    def siblings(self) -> list[Duplicate]:
        """Pairs that are two shots of one plant."""
        return [d for d in self.duplicates if not d.copy]

    def _name(self, class_id: str) -> str:
        name = self.names.get(class_id)
        return f"{name} ({class_id})" if name else class_id

    def summary(self, limit: int = 10) -> str:
        """Counts first, then the top findings with their files and scores."""
        per_split = ", ".join(f"{s} {n}" for s, n in self.counts.items())
        copies, siblings = self.copies, self.siblings
        exact = sum(d.exact for d in copies)
        spanning = sum(g.spans_splits for g in self.groups)
        lines = [
            f"{self.root}: {self.n_images} readable images checked in {self.seconds:.0f}s "
            f"({per_split})",
            f"  {len(self.leaks)} pairs across splits (leaks): "
            f"{sum(d.leak for d in copies)} copies, {sum(d.leak for d in siblings)} siblings",
            f"  {len(copies)} copy pairs in all ({exact} exact; the same photo re-encoded, "
            f"resized or cropped: hashes within {self.copy_distance} bits)",
            f"  {len(siblings)} sibling pairs (other shots of one plant: cosine >= "
            f"{self.near_threshold})",
            f"  {len(self.groups)} groups of copies and siblings "
            f"({sum(len(g.files) for g in self.groups)} images), {spanning} spanning splits",
            f"  {len(self.conflicts)} photos filed under two classes, "
            f"{len(self.mislabels)} likely mislabels",
        ]
        if self.skipped:
            lines.append(f"  {len(self.skipped)} unreadable images skipped")
        if self.duplicates:
            lines.append("pairs (leaks first, then copies, then siblings):")
        for d in self.duplicates[:limit]:
            kind = {"exact": "exact", "copy": f"copy {d.distance}b"}.get(
                d.kind, f"sibling {d.similarity:.3f}"
            )
            where = f"LEAK {d.splits[0]}/{d.splits[1]}" if d.leak else d.splits[0]
            lines.append(f"  {where:<16} {kind:<15} {d.files[0]}  ==  {d.files[1]}")
        if self.conflicts:
            lines.append("photos filed under two classes:")
        for c in self.conflicts[:limit]:
            lines.append(
                f"  {c.files[0]} ({self._name(c.classes[0])})  ==  {c.files[1]} "
                f"({self._name(c.classes[1])}): looks like {self._name(c.suggested)} "
                f"({c.probability:.0%}); keep the right one"
            )
        if self.mislabels:
            lines.append(
                "likely mislabels (largest margin first; lookalike species rank high too: "
                "look at each before moving it):"
            )
        for m in self.mislabels[:limit]:
            alike = (
                f"; {m.lookalikes} other {self._name(m.given)} photos look like it too: lookalikes?"
                if m.lookalikes
                else ""
            )
            lines.append(
                f"  {m.file}: filed as {self._name(m.given)} ({m.given_probability:.0%}), "
                f"looks like {self._name(m.suggested)} ({m.suggested_probability:.0%}){alike}"
            )
        if not self.duplicates and not self.mislabels and not self.conflicts:
            lines.append("  nothing found")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible content (``leak``/``exact`` added to pairs, ``margin`` to flags)."""
        return {
            "root": str(self.root),
            "n_images": self.n_images,
            "counts": dict(self.counts),
            "near_threshold": self.near_threshold,
            "copy_distance": self.copy_distance,
            "seconds": self.seconds,
            "leaks": len(self.leaks),
            "copies": len(self.copies),
            "siblings": len(self.siblings),
            "duplicates": [
                {**asdict(d), "leak": d.leak, "exact": d.exact} for d in self.duplicates
            ],
            "groups": [{**asdict(g), "spans_splits": g.spans_splits} for g in self.groups],
            "groups_spanning_splits": sum(g.spans_splits for g in self.groups),
            "conflicts": [asdict(c) for c in self.conflicts],
            "mislabels": [{**asdict(m), "margin": m.margin} for m in self.mislabels],
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


def confident_mislabels(
    probs: torch.Tensor, labels: torch.Tensor, min_margin: float = 0.5
) -> list[tuple[int, int]]:
    """Rows that look mislabelled, with the class the model prefers, largest margin first.

    Per class ``j`` the threshold ``t_j`` is the mean probability of ``j`` over the rows
    labelled ``j`` (confident learning's self-confidence). A row is flagged when its given
    class is below its threshold and another class beats it by at least ``min_margin``;
    rows are ranked by that margin. (Confident learning proper also wants the other class
    above *its* threshold: on Flowers-102 that missed 1 of 20 planted mislabels, at 0.85 for
    the right class, and flagged 195 photos; this rule finds 20 of 20 among 383, and the
    ranking puts them first: ``benchmarks/check_deep.py``.)

    Args:
        probs: ``(N, C)`` out-of-sample probabilities.
        labels: ``(N,)`` given class indices.
        min_margin: The smallest margin flagged.

    Returns:
        ``(row, suggested class)`` pairs, largest margin first.
    """
    classes = probs.shape[1]
    thresholds = torch.full((classes,), math.inf)
    for j in range(classes):
        mine = labels == j
        if mine.any():
            thresholds[j] = probs[mine, j].mean()
    given = probs[torch.arange(len(labels)), labels]
    top, suggested = probs.max(1)
    doubtful = (suggested != labels) & (given < thresholds[labels]) & (top - given >= min_margin)
    flagged = doubtful.nonzero().flatten()
    ranked = sorted(flagged.tolist(), key=lambda i: float(given[i] - top[i]))
    return [(i, int(suggested[i])) for i in ranked]


def deep_check(
    data_dir: str | os.PathLike[str],
    *,
    backbone: str = "efficientnet_lite0",
    weights: str | None = "DEFAULT",
    near_threshold: float | None = None,
    copy_distance: int | None = None,
    folds: int = 5,
    cache_dir: str | os.PathLike[str] | None = None,
    device: str = "auto",
    verbose: int = 1,
) -> DeepReport:
    """Find leaks, copies, siblings, conflicts and likely mislabels (see the module docs).

    Args:
        data_dir: A root with ``train/`` (``valid/``, ``test/``) or one folder of classes.
        backbone: The backbone whose features compare images (cached like ``fit``'s).
        weights: Its weights.
        near_threshold: Cosine similarity at or above which two images are siblings
            (``None``: :data:`NEAR_THRESHOLD`).
        copy_distance: Perceptual-hash distance in bits at or below which two images are
            copies (``None``: :data:`petalnet.hashes.COPY_DISTANCE`).
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
    report = DeepReport(
        root,
        names=names,
        near_threshold=NEAR_THRESHOLD if near_threshold is None else near_threshold,
        copy_distance=hashes.COPY_DISTANCE if copy_distance is None else copy_distance,
    )
    params = ClassifierParams(
        backbone, weights=weights, cache_dir=cache_dir, device=device, verbose=verbose
    )
    feats, hash_rows = _rows(make_pipeline(params, build_backbone(backbone, weights)), samples)
    report.skipped = [u.message for u in feats.skipped]
    kept = [samples[i] for i in feats.positions.tolist()]
    report.n_images = len(kept)
    report.counts = dict(Counter(split for _, _, split in kept))
    edges = _edges(feats.features, hash_rows, report.near_threshold, report.copy_distance)
    report.duplicates = _pairs(edges, feats.features, hash_rows, kept, classes)
    report.groups = _groups(edges, kept)
    probs = out_of_sample_probs(feats.features, feats.labels, len(classes), folds)
    report.conflicts, in_conflict = _conflicts(edges, kept, probs, classes)
    predicted = probs.argmax(1)
    confused = Counter(zip(feats.labels.tolist(), predicted.tolist(), strict=True))
    report.mislabels = [
        LikelyMislabel(
            str(kept[i][0]),
            kept[i][2],
            classes[int(feats.labels[i])],
            classes[j],
            float(probs[i, feats.labels[i]]),
            float(probs[i, j]),
            lookalikes=confused[(int(feats.labels[i]), j)] - 1,
        )
        for i, j in confident_mislabels(probs, feats.labels)
        if i not in in_conflict
    ]
    # a saturated margin ties many flags: a confusion no other photo of the class shares is
    # likelier a misfiled photo than a lookalike species, so those come first among equals
    report.mislabels.sort(key=lambda m: (-round(m.margin, 2), m.lookalikes))
    report.seconds = round(time.perf_counter() - start, 1)
    return report


Sample = tuple[Path, int, str]


def _rows(
    pipeline: Any, samples: list[Sample], desc: str = "check --deep"
) -> tuple[Any, torch.Tensor]:
    """Features and hash rows of the readable samples, from one decode of each image."""
    paths = [path for path, _, _ in samples]
    labels = torch.tensor([label for _, label, _ in samples], dtype=torch.long)
    rows = empty_rows((len(paths), pipeline.backbone.feature_dim), pipeline.storage)
    hash_rows = empty_rows((len(paths), hashes.ROW_SIZE), torch.float16)
    store = pipeline.cache
    hash_store = None
    if store is not None:
        pre = pipeline.backbone.preprocessing
        hash_store = RowStore(
            store.root,
            {
                "rows": "perceptual hashes",
                "imagehash": imagehash.__version__,
                "crops": hashes.CROPS,
                "draft_size": pre.resize_size,
            },
            dtype="float16",
        )
    skipped = fill_rows(
        pipeline.runner,
        paths,
        rows,
        preprocessing=pipeline.backbone.preprocessing,
        device=pipeline.device,
        unreadable=Unreadable("collect"),
        batch_size=pipeline.batch_size,
        num_workers=pipeline.num_workers,
        precision=pipeline.precision,
        cache=store,
        desc=desc,
        verbose=pipeline.verbose,
        also=Also(hashes.hash_row, hash_rows, hash_store),
    )
    feats = readable_rows(rows, labels, skipped)
    return feats, compact(hash_rows, feats.positions)


Edge = tuple[int, int, Kind, int | None, float | None]
"""``(i, j, kind, hash distance if known, cosine if known)`` of two rows, ``i < j``."""


def _edges(
    features: torch.Tensor, hash_rows: torch.Tensor, near_threshold: float, copy_distance: int
) -> list[Edge]:
    """Exact copies, copies and siblings among the rows, each pair once, by row index."""
    digests = hashes.digests(hash_rows)
    found: dict[tuple[int, int], Edge] = {}
    first: dict[bytes, int] = {}
    for i, d in enumerate(digests):
        if d in first:
            found[(first[d], i)] = (first[d], i, "exact", 0, None)
        else:
            first[d] = i
    for i, j, distance in hashes.copy_pairs(hash_rows, copy_distance):
        if digests[i] != digests[j]:  # the same pixels: reported against the first of them
            found.setdefault((i, j), (i, j, "copy", distance, None))
    for i, j, sim in _near_pairs(features, near_threshold):
        if digests[i] != digests[j]:
            found.setdefault((i, j), (i, j, "sibling", None, sim))
    return list(found.values())


def _components(edges: list[Edge], n: int, at: list[int] | None = None) -> np.ndarray:
    """Connected-component label of each of ``n`` nodes; edge rows map to nodes ``at[row]``."""
    a = [e[0] if at is None else at[e[0]] for e in edges]
    b = [e[1] if at is None else at[e[1]] for e in edges]
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n))
    labels: np.ndarray = connected_components(graph, directed=False)[1]
    return labels


def _pairs(
    edges: list[Edge],
    features: torch.Tensor,
    hash_rows: torch.Tensor,
    kept: list[Sample],
    classes: list[str],
) -> list[Duplicate]:
    """The edges as reported pairs: leaks first, then by kind, most similar first."""
    norms = _norms(features)

    def pair(edge: Edge) -> Duplicate:
        i, j, kind, distance, sim = edge
        if sim is None:
            sim = float(features[i].float() @ features[j].float() / (norms[i] * norms[j]))
        if distance is None:
            distance = hashes.distance(hash_rows[i], hash_rows[j])
        a, b = kept[i], kept[j]
        return Duplicate(
            (str(a[0]), str(b[0])),
            (a[2], b[2]),
            sim,
            kind,
            distance,
            (classes[a[1]], classes[b[1]]),
        )

    pairs = [pair(e) for e in edges]
    return sorted(pairs, key=lambda d: (not d.leak, _KIND_ORDER[d.kind], -d.similarity))


def _groups(edges: list[Edge], kept: list[Sample]) -> list[Group]:
    """Connected groups of two or more images, those spanning splits first, largest first."""
    if not edges:
        return []
    component = _components(edges, len(kept))
    members: dict[int, list[int]] = {}
    for i in sorted({e[0] for e in edges} | {e[1] for e in edges}):
        members.setdefault(int(component[i]), []).append(i)
    with_copies = {int(component[e[0]]) for e in edges if e[2] != "sibling"}
    groups = [
        Group(
            tuple(str(kept[i][0]) for i in rows),
            tuple(kept[i][2] for i in rows),
            label in with_copies,
        )
        for label, rows in members.items()
    ]
    return sorted(groups, key=lambda g: (not g.spans_splits, -len(g.files)))


def _conflicts(
    edges: list[Edge], kept: list[Sample], probs: torch.Tensor, classes: list[str]
) -> tuple[list[Conflict], set[int]]:
    """Copies filed under two classes, and the rows they cover (not reported as mislabels)."""
    conflicts, rows = [], set()
    for i, j, kind, _, _ in edges:
        if kind != "sibling" and kept[i][1] != kept[j][1]:
            mean = (probs[i] + probs[j]) / 2
            conflicts.append(
                Conflict(
                    (str(kept[i][0]), str(kept[j][0])),
                    (classes[kept[i][1]], classes[kept[j][1]]),
                    classes[int(mean.argmax())],
                    float(mean.max()),
                )
            )
            rows |= {i, j}
    return conflicts, rows


def near_duplicate_groups(
    samples: list[tuple[Path, int]],
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    device: str = "auto",
    verbose: int = 0,
) -> list[int]:
    """A group id per sample: copies and siblings (as :func:`deep_check` finds them) share one.

    What ``fit(split="grouped")`` keeps on one side of its validation split. Features
    (:data:`GROUPING_BACKBONE`) and hashes come from, and go to, the row store, so a
    ``petalnet check --deep`` before, or a second fit, makes this a read.

    Args:
        samples: ``(path, class index)`` pairs.
        cache_dir: Row store folder (default: the one ``fit`` uses).
        use_cache: Read and fill the row store.
        device: Where the backbone runs.
        verbose: ``0`` silences progress output.

    Returns:
        One id per sample (an unreadable image is a group of its own).

    Raises:
        WeightsUnavailableError: The backbone's weights are not available here.
    """
    params = ClassifierParams(
        GROUPING_BACKBONE, cache=use_cache, cache_dir=cache_dir, device=device, verbose=verbose
    )
    pipeline = make_pipeline(params, build_backbone(GROUPING_BACKBONE))
    tagged = [(Path(p), label, "all") for p, label in samples]
    feats, hash_rows = _rows(pipeline, tagged, desc="split groups")
    edges = _edges(feats.features, hash_rows, NEAR_THRESHOLD, hashes.COPY_DISTANCE)
    component = _components(edges, len(samples), at=feats.positions.tolist())
    return [int(c) for c in component]
