"""`petalnet check --deep` on Flowers-102: what it finds, how fast, and planted-case recall.

Usage (from the repository root)::

    python benchmarks/check_deep.py [--planted 20] [--json out.json]

1. **As shipped**: ``deep_check`` on ``train/`` + ``valid/`` (symbolic links), cold (empty
   feature cache), then warm (the cache filled): counts of cross-split duplicates, all
   duplicates and likely mislabels, and both times.
2. **Planted**: the same data plus ``--planted`` cases of each kind, then recall at the
   default thresholds: exact copies (a train photo re-saved as PNG into valid/), near
   copies (resized to 80 % and re-encoded as JPEG quality 75; or 10 % cropped and
   re-encoded) also into valid/, and mislabels (valid photos moved into another class).
   Also reported: the similarity of each planted near copy, and how many natural pairs
   exceed a few thresholds (what the default was chosen from).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch
from _shared import DEFAULT_DATA, emit, link, machine
from PIL import Image

from petalnet.deep_check import NEAR_THRESHOLD, _near_pairs, deep_check
from petalnet.images import Unreadable


def _link_all(data: Path, root: Path, skip: frozenset[Path] = frozenset()) -> None:
    for split in ("train", "valid"):
        for path in (data / split).rglob("*.jpg"):
            if path in skip:
                continue
            link(path, root / split / path.parent.name / path.name)
    link(data / "cat_to_name.json", root / "cat_to_name.json")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--planted", type=int, default=20)
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
    natural = {
        "images": report.n_images,
        "cross_split_duplicates": len(report.leaks),
        "exact_duplicates": sum(d.exact for d in report.duplicates),
        "near_duplicates": sum(not d.exact for d in report.duplicates),
        "likely_mislabels": len(report.mislabels),
        "examples": report.summary(limit=5).splitlines(),
    }

    rng = random.Random(0)
    train = sorted((args.data / "train").rglob("*.jpg"))
    valid = sorted((args.data / "valid").rglob("*.jpg"))
    n = args.planted
    sources = rng.sample(train, 3 * n)
    moved = rng.sample(valid, n)
    planted = tmp / "planted"
    _link_all(args.data, planted, skip=frozenset(moved))
    exact, near, wrong = [], [], []
    for i, src in enumerate(sources):
        image = Image.open(src).convert("RGB")
        folder = planted / "valid" / src.parent.name
        if i < n:
            target = folder / f"planted_exact_{i}.png"
            image.save(target)
            exact.append({src.name, target.name})
            continue
        if i < 2 * n:
            w, h = image.size
            image = image.resize((int(w * 0.8), int(h * 0.8)))
        else:
            w, h = image.size
            image = image.crop((w // 20, h // 20, w - w // 20, h - h // 20))  # 10 % cropped
        target = folder / f"planted_near_{i}.jpg"
        image.save(target, quality=75)
        near.append({src.name, target.name})
    classes = sorted(p.name for p in (args.data / "train").iterdir())
    for i, src in enumerate(moved):
        other = rng.choice([c for c in classes if c != src.parent.name])
        target = planted / "valid" / other / f"planted_wrong_{i}.jpg"
        target.symlink_to(src.resolve())
        wrong.append(target.name)
    start = time.perf_counter()
    report = deep_check(planted, cache_dir=cache, verbose=0)
    planted_s = round(time.perf_counter() - start, 1)
    pairs = [{Path(f).name for f in d.files} for d in report.duplicates]
    flagged = {Path(m.file).name for m in report.mislabels}
    # similarities of the planted near copies, and of natural pairs, to judge the threshold
    from petalnet.backbones.registry import build_backbone
    from petalnet.fitting import make_pipeline
    from petalnet.params import ClassifierParams

    pipe = make_pipeline(
        ClassifierParams("efficientnet_lite0", cache_dir=cache, verbose=0),
        build_backbone("efficientnet_lite0"),
    )
    near_sims = []
    for pair in near:
        a, b = sorted(pair, key=lambda name: name.startswith("planted"))
        src = next(p for p in sources if p.name == a)
        copy = next((planted / "valid").rglob(b))
        f = pipe.features([src, copy], unreadable=Unreadable(), quiet=True).features
        unit = torch.nn.functional.normalize(f.float(), dim=1)
        near_sims.append(round(float(unit[0] @ unit[1]), 4))
    feats = pipe.features(sorted(shipped.rglob("*.jpg")), unreadable=Unreadable(), quiet=True)
    unit = torch.nn.functional.normalize(feats.features.float(), dim=1)
    natural_pairs = {t: len(_near_pairs(unit, t)) for t in (0.85, 0.9, 0.92, 0.95, 0.98)}
    return emit(
        {
            "date": date.today().isoformat(),
            **machine(),
            "command": " ".join(["python benchmarks/check_deep.py", *(argv or sys.argv[1:])]),
            "near_threshold": NEAR_THRESHOLD,
            "seconds": {**runs, "planted_warm": planted_s},
            "as_shipped": natural,
            "planted": {
                "exact_found": sum(p in pairs for p in exact),
                "exact_planted": len(exact),
                "near_found": sum(p in pairs for p in near),
                "near_planted": len(near),
                "near_similarities": sorted(near_sims),
                "mislabels_found": sum(w in flagged for w in wrong),
                "mislabels_planted": len(wrong),
                "flagged_in_all": len(report.mislabels),
            },
            "natural_pairs_at_or_above": natural_pairs,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
