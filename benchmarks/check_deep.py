"""`petalnet check --deep` on Flowers-102: what it finds, how fast, and planted-copy recall.

Usage (from the repository root)::

    python benchmarks/check_deep.py [--planted 20] [--plots DIR] [--json out.json]

1. **As shipped**: ``deep_check`` on ``train/`` + ``valid/`` (symbolic links), cold (empty
   feature cache), then warm (rows and hashes stored): counts of copies and siblings, leaks,
   groups, conflicts and likely mislabels, and both times. Every copy pair found among the
   natural photos is a *false copy* unless it really is one: ``--plots DIR`` draws them
   (``natural_copies.png``) to judge by eye.
2. **Planted**: the same data plus ``--planted`` copies of each kind, each a train photo
   written into valid/ (JPEG quality 95/75/50; scaled to 0.9/0.7/0.5; 5 % and 10 % crops,
   centred and from a corner; brightness -10 %/+10 %; the issue's q60 at 0.9x), and
   ``--planted`` mislabels (valid photos linked into another class): recall of each kind at
   the default thresholds, as a cross-split copy, and how many planted mislabels are flagged.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

from _shared import DEFAULT_DATA, emit, link, machine
from PIL import Image, ImageEnhance

from petalnet.deep_check import NEAR_THRESHOLD, deep_check
from petalnet.hashes import COPY_DISTANCE


def _link_all(data: Path, root: Path, skip: frozenset[Path] = frozenset()) -> None:
    for split in ("train", "valid"):
        for path in (data / split).rglob("*.jpg"):
            if path not in skip:
                link(path, root / split / path.parent.name / path.name)
    link(data / "cat_to_name.json", root / "cat_to_name.json")


def _scale(f: float) -> Callable[[Image.Image], Image.Image]:
    return lambda im: im.resize((round(im.width * f), round(im.height * f)), Image.BICUBIC)


def _crop(keep: float, corner: bool) -> Callable[[Image.Image], Image.Image]:
    def crop(im: Image.Image) -> Image.Image:
        w, h = round(im.width * keep), round(im.height * keep)
        x, y = (0, 0) if corner else ((im.width - w) // 2, (im.height - h) // 2)
        return im.crop((x, y, x + w, y + h))

    return crop


def _bright(f: float) -> Callable[[Image.Image], Image.Image]:
    return lambda im: ImageEnhance.Brightness(im).enhance(f)


# kind -> (how the copy is made, JPEG quality it is saved at)
KINDS: dict[str, tuple[Callable[[Image.Image], Image.Image], int]] = {
    "jpeg q95": (lambda im: im, 95),
    "jpeg q75": (lambda im: im, 75),
    "jpeg q50": (lambda im: im, 50),
    "scale 0.9": (_scale(0.9), 90),
    "scale 0.7": (_scale(0.7), 90),
    "scale 0.5": (_scale(0.5), 90),
    "crop 5 % centre": (_crop(0.95, False), 90),
    "crop 10 % centre": (_crop(0.90, False), 90),
    "crop 5 % corner": (_crop(0.95, True), 90),
    "crop 10 % corner": (_crop(0.90, True), 90),
    "brightness -10 %": (_bright(0.9), 90),
    "brightness +10 %": (_bright(1.1), 90),
    "q60 at 0.9x": (_scale(0.9), 60),
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--planted", type=int, default=20)
    ap.add_argument("--plots", type=Path, help="draw the natural copy pairs here")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if not (args.data / "train").is_dir():
        sys.exit(f"No train/ under {args.data}; pass --data DIR.")
    cache = Path(tempfile.mkdtemp(prefix="petalnet-check-cache-"))
    tmp = Path(tempfile.mkdtemp(prefix="petalnet-check-"))
    shipped = tmp / "shipped"
    _link_all(args.data, shipped)
    runs = {}
    for run in ("cold", "warm"):
        start = time.perf_counter()
        report = deep_check(shipped, cache_dir=cache, verbose=0)
        runs[run] = round(time.perf_counter() - start, 1)
    natural_copies = report.copies
    if args.plots:
        from petalnet import plot

        plot.duplicate_pairs(natural_copies, max_pairs=40, path=args.plots / "natural_copies.png")
    natural = {
        "images": report.n_images,
        "counts": report.counts,
        "leaks": len(report.leaks),
        "copy_pairs": len(natural_copies),
        "exact_pairs": sum(d.exact for d in natural_copies),
        "copy_leaks": sum(d.leak for d in natural_copies),
        "sibling_pairs": len(report.siblings),
        "sibling_leaks": sum(d.leak for d in report.siblings),
        "groups": len(report.groups),
        "images_in_groups": sum(len(g.files) for g in report.groups),
        "groups_spanning_splits": sum(g.spans_splits for g in report.groups),
        "conflicts": len(report.conflicts),
        "likely_mislabels": len(report.mislabels),
        "natural_copies": [
            (d.files[0].split("shipped/")[-1], d.files[1].split("shipped/")[-1], d.distance)
            for d in natural_copies
        ],
        "examples": report.summary(limit=5).splitlines(),
    }

    rng = random.Random(0)
    train = sorted((args.data / "train").rglob("*.jpg"))
    valid = sorted((args.data / "valid").rglob("*.jpg"))
    n = args.planted
    sources = rng.sample(train, len(KINDS) * n)
    moved = rng.sample(valid, n)
    planted = tmp / "planted"
    _link_all(args.data, planted, skip=frozenset(moved))
    made: dict[str, list[set[str]]] = {kind: [] for kind in KINDS}
    for i, src in enumerate(sources):
        kind = list(KINDS)[i // n]
        make, quality = KINDS[kind]
        target = planted / "valid" / src.parent.name / f"planted_{i}.jpg"
        make(Image.open(src).convert("RGB")).save(target, quality=quality)
        made[kind].append({src.name, target.name})
    classes = sorted(p.name for p in (args.data / "train").iterdir())
    wrong = []
    for i, src in enumerate(moved):
        other = rng.choice([c for c in classes if c != src.parent.name])
        target = planted / "valid" / other / f"planted_wrong_{i}.jpg"
        target.symlink_to(src.resolve())
        wrong.append(target.name)
    start = time.perf_counter()
    report = deep_check(planted, cache_dir=cache, verbose=0)
    planted_s = round(time.perf_counter() - start, 1)
    found = {frozenset(Path(f).name for f in d.files): d for d in report.copies if d.leak}
    recall = {}
    for kind, pairs in made.items():
        hits = [found[frozenset(p)] for p in pairs if frozenset(p) in found]
        recall[kind] = {
            "found": len(hits),
            "planted": len(pairs),
            "max_distance": max((d.distance for d in hits), default=None),
        }
    flagged = {Path(m.file).name: rank for rank, m in enumerate(report.mislabels)}
    total_found = sum(r["found"] for r in recall.values())
    total_planted = sum(r["planted"] for r in recall.values())
    return emit(
        {
            "date": date.today().isoformat(),
            **machine(),
            "command": " ".join(["python benchmarks/check_deep.py", *(argv or sys.argv[1:])]),
            "near_threshold": NEAR_THRESHOLD,
            "copy_distance": COPY_DISTANCE,
            "seconds": {**runs, "planted_warm": planted_s},
            "as_shipped": natural,
            "planted_copies": {"found": total_found, "planted": total_planted, "by_kind": recall},
            "planted_mislabels": {
                "found": sum(w in flagged for w in wrong),
                "planted": len(wrong),
                "ranks": sorted(flagged[w] for w in wrong if w in flagged),
                "flagged_in_all": len(report.mislabels),
            },
        },
        args.json,
    )


if __name__ == "__main__":
    main()
