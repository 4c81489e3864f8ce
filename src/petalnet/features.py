"""Running a frozen backbone over images: batched, gradient-free, device-agnostic, cached.

With a frozen backbone its output never changes, so ``fit`` computes each image's features
once here and trains the head on them for every epoch. A *view* is one rendering of an
image that a backbone sees: the centre crop, its mirror image (test-time augmentation), or
the k-th random augmentation (cached augmented training views).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.transforms.functional import to_pil_image

from petalnet._progress import tqdm
from petalnet.backbones.base import FeatureExtractor
from petalnet.cache import default_cache_dir, parameter_fingerprint
from petalnet.errors import PetalnetError
from petalnet.images import ImageInput, Transform, Unreadable, image_loader
from petalnet.precision import autocast
from petalnet.preprocessing import Augmentation, CropAt, Preprocessing
from petalnet.quantize import int8_runner, require_int8
from petalnet.rows import compact
from petalnet.rowstore import RowStore, row_keys

__all__ = [
    "Also",
    "Features",
    "Unread",
    "View",
    "as_labels",
    "feature_cache",
    "fill_rows",
    "prepare_backbone",
    "readable_rows",
    "run_backbone",
    "sample_seed",
]


def _conv_bn_pairs(module: nn.Module) -> list[tuple[nn.Sequential, int]]:
    """Find ``Conv2d`` layers directly followed by a ``BatchNorm2d`` inside ``Sequential``s."""
    pairs = []
    for seq in module.modules():
        if isinstance(seq, nn.Sequential):
            kids = list(seq)
            pairs += [
                (seq, i)
                for i in range(len(kids) - 1)
                if isinstance(kids[i], nn.Conv2d)
                and isinstance(kids[i + 1], nn.BatchNorm2d)
                and kids[i].out_channels == kids[i + 1].num_features
            ]
    return pairs


def prepare_backbone(backbone: FeatureExtractor, device: torch.device) -> nn.Module:
    """Freeze ``backbone`` and return the module to run it with, for inference only.

    ``backbone`` is frozen and put in eval mode. Where it has convolutions followed by batch
    norm, the returned module is a copy with each pair folded into one convolution (the same
    function, 1.3-1.6x faster on a CPU) and the copy's layers with a ``freeze_kernels()``
    method precompute from their frozen weights (EfficientNet-Lite's grown strided
    kernels); otherwise it is ``backbone`` itself. Either way it sits on ``device`` in
    channels-last layout. Keep ``backbone`` for saving: the copy's
    parameters no longer match the architecture's. A backbone with int8 scales
    (``meta.int8``) runs quantised with them (:func:`~petalnet.quantize.int8_runner`).

    Args:
        backbone: The feature extractor.
        device: Where to compute.

    Returns:
        The module to compute features with.

    Raises:
        PetalnetError: An int8 backbone on a device other than the CPU, or without
            ``torchao``.
    """
    backbone.requires_grad_(False)
    backbone.eval()
    fast = backbone
    if _conv_bn_pairs(backbone):
        fast = copy.deepcopy(backbone)
        for seq, i in _conv_bn_pairs(fast):
            conv, bn = seq[i], seq[i + 1]
            assert isinstance(conv, nn.Conv2d)
            assert isinstance(bn, nn.BatchNorm2d)
            seq[i] = fuse_conv_bn_eval(conv, bn)
            seq[i + 1] = nn.Identity()
        for module in fast.modules():  # the copy's weights never change: precompute
            freeze = getattr(module, "freeze_kernels", None)
            if callable(freeze):
                freeze()
    fast = fast.to(device).to(memory_format=torch.channels_last)
    scales = backbone.meta.int8
    if scales is None:
        return fast
    require_int8(device)
    if fast is backbone and (scales.parts or scales.front):  # int8_runner replaces modules
        fast = copy.deepcopy(backbone)  # of the runner in place: never the backbone's own
    crop = backbone.preprocessing.crop_size
    return int8_runner(fast, scales, torch.zeros(8, 3, crop, crop))


def run_backbone(
    backbone: nn.Module,
    batch: torch.Tensor,
    device: torch.device,
    precision: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Compute features of one preprocessed batch, returned as float32 on ``device``.

    Args:
        backbone: A prepared (frozen, eval-mode) backbone on ``device``.
        batch: ``(N, 3, H, W)`` normalised images.
        device: Where to compute.
        precision: Autocast dtype (see :func:`~petalnet.precision.resolve_precision`).

    Returns:
        ``(N, D)`` features.
    """
    x = batch.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast(device, precision):
        out: torch.Tensor = backbone(x)
        return out.float()


def feature_cache(
    backbone: FeatureExtractor,
    precision: torch.dtype,
    root: str | os.PathLike[str] | None,
    storage: torch.dtype = torch.float32,
) -> RowStore | None:
    """Open the row store for ``backbone``, or ``None`` where storing rows is pointless.

    The namespace is the backbone's registered name, weights id, a hash of its parameters
    (so fine-tuned or file weights never share entries), its output size, preprocessing and
    the precision, and for an int8 backbone its scales' fingerprint. A randomly initialised
    backbone is never cached: its features would never be asked for again.

    Args:
        backbone: The unprepared backbone (its parameters are fingerprinted).
        precision: The dtype features are computed in.
        root: Cache folder; ``None`` for :func:`~petalnet.cache.default_cache_dir`.
        storage: The dtype rows are stored in (``torch.float32`` or ``torch.float16``).

    Returns:
        The store, or ``None``.
    """
    meta = backbone.meta
    if meta.source == "random":
        return None
    namespace = {
        "backbone": meta.name,
        "weights": meta.weights,
        "parameters": parameter_fingerprint(backbone),
        "feature_dim": meta.feature_dim,
        "preprocessing": meta.preprocessing.to_dict(),
        "precision": str(precision),
    }
    if meta.int8 is not None:  # int8 rows depend on the calibration's scales
        namespace["int8"] = meta.int8.fingerprint
    return RowStore(
        default_cache_dir() if root is None else root,
        namespace,
        dtype=str(storage).removeprefix("torch."),
    )


@dataclass(frozen=True)
class View:
    """One rendering of an image that a backbone sees.

    Attributes:
        kind: ``"center"`` (resize and centre crop), ``"side"`` (the same resize, cropped
            at one end of the longer side: test-time augmentation) or ``"augmented"`` (a
            random augmentation, drawn reproducibly per image from a seed).
        index: For ``"augmented"``: which one, from 1; for ``"side"``: 1 for the start of
            the longer side (left or top), 2 for its end (right or bottom).
        mirrored: The crop flipped left-right (test-time augmentation).
    """

    kind: Literal["center", "side", "augmented"] = "center"
    index: int = 0
    mirrored: bool = False

    @classmethod
    def augmented(cls, count: int) -> list[View]:
        """The first ``count`` augmented views; the centre crop alone when ``count`` is 0."""
        return [cls("augmented", k) for k in range(1, count + 1)] or [cls()]

    @property
    def label(self) -> str:
        """How progress output names this view."""
        if self.kind == "center":
            return "mirror" if self.mirrored else "center"
        word = f"{self.kind} {self.index}"
        return f"{word} mirror" if self.mirrored else word

    @property
    def crop_at(self) -> CropAt:
        """Where an unaugmented view's crop sits (see :meth:`Preprocessing.transform`)."""
        if self.kind == "side":
            return "start" if self.index == 1 else "end"
        return "center"

    def transform(self, pre: Preprocessing, augmentation: Augmentation) -> Transform:
        """The transform producing this view (before the mirror flip, done on the batch)."""
        if self.kind == "augmented":
            return pre.augment_transform(augmentation)
        return pre.transform(self.crop_at)

    def key(self, pre: Preprocessing, augmentation: Augmentation, seed: int | None) -> str:
        """Name of this view in row-store keys (for augmented ones, the recipe's own id).

        A changed recipe therefore never meets the stored rows of the old one.
        """
        if self.kind == "augmented":
            return f"aug{self.index}:{pre.augmentation_id(augmentation)}:{seed}"
        if self.kind == "side":
            return f"side{self.index}" + ("-mirror" if self.mirrored else "")
        return "mirror" if self.mirrored else "center"

    def draw(self, augmentation: Augmentation, seed: int | None) -> str:
        """Name of this view's random draw (with the image, it fixes each image's seed).

        Fixed words, not the recipe's id, so that the same seed draws the same
        augmentations from one petalnet version to the next.
        """
        return f"aug{self.index}:{_DRAW_NAMES[augmentation]}:{seed}"


_DRAW_NAMES: dict[str, str] = {
    "classic": "rot30-rrc-flip-v2",
    "trivialaugment": "rot30-rrc-flip-trivialaugment-v1",
}


CENTER = View()
MIRROR = View(mirrored=True)


class Unread(NamedTuple):
    """An input that could not be read.

    Attributes:
        position: Its position in the input list.
        message: What went wrong, naming the file.
    """

    position: int
    message: str


class Features(NamedTuple):
    """What :meth:`~petalnet.pipeline.ImagePipeline.features` returns.

    Attributes:
        features: ``(N, D)`` rows on the CPU, one per readable image in input order, or
            ``(V, N, D)`` for ``V`` views (float32 unless extracted with another ``storage``
            dtype; memory-mapped when large, see :mod:`petalnet.rows`).
        labels: ``(N,)`` int64 labels of those images.
        positions: ``(N,)`` positions of those images in the input list.
        skipped: Each unreadable input, with its position, in input order.
    """

    features: torch.Tensor
    labels: torch.Tensor
    positions: torch.Tensor
    skipped: list[Unread]


def sample_seed(image: object, view: str, seed: int | None) -> int:
    """A 63-bit seed for one image's random draw, fixed by its path, the view and ``seed``."""
    digest = hashlib.blake2b(f"{image}\0{view}\0{seed}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


class Also(NamedTuple):
    """A second row per image, computed from the same decoded picture as the backbone's.

    :func:`fill_rows` then decodes each image once for both (the data doctor's perceptual
    hashes beside its features).

    Attributes:
        compute: Maps the decoded RGB ``PIL.Image`` to a 1-D tensor (a module-level
            function, so that decoding workers can run it).
        out: ``(len(images), d)`` CPU tensor to fill, like ``fill_rows``'s ``out``.
        cache: Row store of these rows (the same keys as the backbone's), or ``None``.
    """

    compute: Callable[[Image.Image], torch.Tensor]
    out: torch.Tensor
    cache: RowStore | None


class _WithAlso:
    """A transform that returns the view and :class:`Also`'s row of one decoded picture."""

    def __init__(
        self, transform: Callable[[Any], Any], compute: Callable[[Image.Image], torch.Tensor]
    ):
        self.transform = transform
        self.compute = compute

    def __call__(self, image: Image.Image | torch.Tensor) -> tuple[Any, torch.Tensor]:
        picture = image if isinstance(image, Image.Image) else to_pil_image(image)
        return self.transform(image), self.compute(picture)


BLOCK = 16_384
"""Images looked up and extracted per block: what a call holds besides the rows is bounded."""


def fill_rows(
    backbone: nn.Module,
    images: Sequence[ImageInput],
    out: torch.Tensor,
    *,
    preprocessing: Preprocessing,
    device: torch.device,
    unreadable: Unreadable,
    batch_size: int = 32,
    num_workers: int | None = None,
    precision: torch.dtype = torch.float32,
    cache: RowStore | None = None,
    views: Sequence[View] = (CENTER,),
    seed: int | None = None,
    augmentation: Augmentation = "classic",
    desc: str = "features",
    verbose: int = 1,
    also: Also | None = None,
) -> list[Unread]:
    """Write the row of image ``i`` into ``out[i]``, from the row store or the backbone.

    With several views each image is decoded and resized once for all of them: the
    test-time crops are cut from the same resize and a mirrored view flips its crop.

    Args:
        backbone: A prepared (frozen, eval-mode) backbone on ``device``.
        images: File paths (stored when ``cache`` is given) or in-memory images.
        out: ``(len(images), D)`` CPU tensor to fill, or ``(V, len(images), D)`` with
            several views; its dtype is the storage dtype.
        preprocessing: How images become the backbone's input.
        device: Where to compute.
        unreadable: What to do with an unreadable file.
        batch_size: Images per forward pass.
        num_workers: Image-decoding workers; ``None`` picks a default for this machine.
        precision: Autocast dtype (see :func:`~petalnet.precision.resolve_precision`).
        cache: Row store to read and fill, or ``None``.
        views: Which renderings of each image (see :class:`View`); an augmented view
            (drawn from its own seed per image) comes alone.
        seed: Seed of augmented views.
        augmentation: Policy of augmented views.
        desc: Label of the progress bar.
        verbose: ``0`` silences progress output.
        also: A second row per image from the same decode (an image missing from either
            store is decoded once for both), keyed as the first view.

    Returns:
        The unreadable images, in input order (their rows of ``out`` are left unset).

    Raises:
        ImageReadError: ``unreadable`` raises (the message names the file).
        PetalnetError: The backbone's rows are not ``D`` wide.
        ValueError: No view, an augmented view with others, or ``out`` of another shape.
    """
    if not views or (len(views) > 1 and any(v.kind == "augmented" for v in views)):
        raise ValueError(f"fill_rows takes one augmented view or unaugmented ones, got {views}")
    outs = list(out) if len(views) > 1 else [out]
    if len(outs) != len(views) or any(o.shape[0] != len(images) for o in outs):
        raise ValueError(f"out is {tuple(out.shape)}: not one row per image for each view")
    names = [v.key(preprocessing, augmentation, seed) for v in views]
    start = time.perf_counter()
    skipped: list[Unread] = []
    computed = 0
    crops = list(dict.fromkeys(dataclasses.replace(v, mirrored=False) for v in views))
    source = [crops.index(dataclasses.replace(v, mirrored=False)) for v in views]
    transform: Callable[[Any], Any]
    if len(crops) == 1:
        transform = views[0].transform(preprocessing, augmentation)
    else:
        transform = preprocessing.crops([v.crop_at for v in crops])
    if also is not None:
        transform = _WithAlso(transform, also.compute)
    stores: list[RowStore | None] = [cache] * len(views)  # one per target, also's last
    keyed = list(names)
    if also is not None:
        stores.append(also.cache)
        keyed.append(names[0])
    bar_off = None if verbose > 0 and images else True  # None: bars on a terminal only
    with (
        tqdm(total=len(images), desc=desc, unit="img", disable=bar_off, leave=False) as bar,
        ExitStack() as stack,
    ):
        distinct = {id(s): s for s in stores if s is not None}  # the views share one store
        appender_of = {i: stack.enter_context(s.appender()) for i, s in distinct.items()}
        for first in range(0, len(images), BLOCK):
            block = images[first : first + BLOCK]
            targets = [o[first : first + len(block)] for o in outs]
            if also is not None:
                targets.append(also.out[first : first + len(block)])
            keys: list[list[bytes | None]] = [[None] * len(block) for _ in stores]
            stored = [k for k, store in enumerate(stores) if store is not None]
            names_stored = [keyed[k] for k in stored]
            for i, image in enumerate(block):
                if stored and isinstance(image, (str, os.PathLike)):
                    with suppress(OSError):  # a missing file: the loader reports it
                        found_keys = row_keys(image, names_stored)  # one lookup of the file
                        for k, digest in zip(stored, found_keys, strict=True):
                            keys[k][i] = digest
            found = [
                s.read_into(k, t.numpy()) if s is not None else np.zeros(len(block), bool)
                for s, k, t in zip(stores, keys, targets, strict=True)
            ]
            done = np.logical_and.reduce(found)
            bar.update(int(done.sum()))
            todo = np.flatnonzero(~done).tolist()
            computed += len(todo)
            seeds = None
            if views[0].kind == "augmented":
                draw = views[0].draw(augmentation, seed)
                seeds = [sample_seed(block[i], draw, seed) for i in todo]
            loader = image_loader(
                [block[i] for i in todo],
                transform,
                draft_size=preprocessing.resize_size,
                seeds=seeds,
                batch_size=batch_size,
                num_workers=num_workers,
                pin_memory=device.type == "cuda",
            )
            for batch, positions, errors in loader:
                for pos, error in errors:
                    unreadable(error)
                    skipped.append(Unread(first + todo[pos], str(error)))
                if batch is None:
                    bar.update(len(errors))
                    continue
                parts = list(batch) if also is not None else [batch]
                rendered = list(parts[0]) if len(crops) > 1 else [parts[0]]
                rows_of = []
                for view, k in zip(views, source, strict=True):
                    x = rendered[k].flip(-1) if view.mirrored else rendered[k]
                    feats = run_backbone(backbone, x, device, precision).cpu().flatten(1)
                    if feats.shape[1:] != outs[0].shape[1:]:
                        raise PetalnetError(
                            f"The backbone returned rows of {feats.shape[1]} values, but "
                            f"declares feature_dim={outs[0].shape[1]}; fix its feature_dim."
                        )
                    rows_of.append(feats)
                rows_of += parts[1:]
                slots = [todo[p] for p in positions]
                for rows, target, store, key, had in zip(
                    rows_of, targets, stores, keys, found, strict=True
                ):
                    if target.dtype != rows.dtype:  # clamped: an overflow would be inf, then NaN
                        limit = torch.finfo(target.dtype).max
                        rows = rows.clamp(-limit, limit).to(target.dtype)
                    target[slots] = rows
                    new = [(key[s], j) for j, s in enumerate(slots) if key[s] and not had[s]]
                    if store is not None and new:
                        appender_of[id(store)].add(
                            [k for k, _ in new], rows[[j for _, j in new]].numpy()
                        )
                bar.update(len(positions) + len(errors))
    elapsed = time.perf_counter() - start
    if verbose > 0 and images:
        cached = len(images) - computed
        rate = f", {computed / elapsed:.1f} img/s" if computed and elapsed > 0 else ""
        bad = f", {len(skipped)} unreadable skipped" if skipped else ""
        per = f" x {len(views)} views" if len(views) > 1 else ""
        print(
            f"{desc}: {len(images)} images{per} ({cached} from cache{bad}) in {elapsed:.1f}s{rate}"
        )
    return sorted(skipped)


def readable_rows(rows: torch.Tensor, labels: torch.Tensor, skipped: Sequence[Unread]) -> Features:
    """The :class:`Features` of filled ``rows``: unreadable inputs' slots squeezed out.

    Args:
        rows: ``(N, D)`` or ``(V, N, D)`` rows at their input positions.
        labels: ``(N,)`` labels of all inputs.
        skipped: The unreadable inputs (their slots are unset).

    Returns:
        Rows of the readable inputs, their labels, positions, and ``skipped``.
    """
    n = labels.shape[0]
    keep = torch.ones(n, dtype=torch.bool)
    keep[[u.position for u in skipped]] = False
    positions = keep.nonzero().flatten()
    if rows.ndim == 3:
        rows = torch.stack([compact(view, positions) for view in rows]) if skipped else rows
    else:
        rows = compact(rows, positions)
    return Features(rows, labels[positions], positions, list(skipped))


def as_labels(labels: Sequence[int] | None, n: int) -> torch.Tensor:
    """``labels`` as an int64 tensor; the positions ``0..n-1`` when ``None``."""
    return torch.as_tensor(list(labels) if labels is not None else range(n), dtype=torch.long)
