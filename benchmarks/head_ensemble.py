"""Two cheap levers of a frozen preset, on the grouped hold-out: a seed ensemble, more data.

Usage (from the repository root)::

    python benchmarks/head_ensemble.py --preset fast-cpu --seeds 5

On ``train/`` minus the grouped 15 % hold-out (``valid/`` is never read):

1. **seed ensemble**: the preset is fitted with ``random_state`` 0, 1, ... on the same
   cached rows (a frozen preset's rows do not depend on the seed, so only the first fit
   extracts); each head alone and the average of the first k heads' probabilities are
   scored on the hold-out.
2. **how much more data helps** (what ``refit`` on train + valid adds: 818 images to
   6552, 12.5 % more): the preset is fitted on a random 1/1.125 of the training side and
   scored on the same hold-out, so the gap to the full training side estimates the gain
   of 12.5 % more images.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _shared import DEFAULT_DATA, emit, holdout_preset, link, link_holdout, machine

from petalnet.data import load_training_data
from petalnet.precision import cpu_has_native_bf16


def _holdout_images(root: Path, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    data = load_training_data(root / "valid", valid_fraction=0.0)
    index = {c: i for i, c in enumerate(classes)}
    paths = [p for p, _ in data.train]
    labels = np.array([index[data.classes[y]] for _, y in data.train])
    return paths, labels


def _subsample(root: Path, share: float, out: Path) -> int:
    """Links: out/train (a random ``share`` of each class of root/train), out/valid."""
    rng, kept = random.Random(0), 0
    for folder in sorted((root / "train").iterdir()):
        files = sorted(folder.iterdir())
        keep = rng.sample(files, max(1, round(len(files) * share)))
        for f in keep:
            link(f, out / "train" / folder.name / f.name)
        kept += len(keep)
    for folder in sorted((root / "valid").iterdir()):
        for f in folder.iterdir():
            link(f, out / "valid" / folder.name / f.name)
    return kept


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--preset", default="fast-cpu")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    cache = Path(tempfile.mkdtemp(prefix="petalnet-ensemble-cache-"))
    singles, probs = [], []
    with tempfile.TemporaryDirectory(prefix="petalnet-holdout-") as tmp:
        root = Path(tmp) / "split"
        n_train, n_held = link_holdout(args.data, 0.15, root, split="grouped")
        labels = None
        for seed in range(args.seeds):
            start = time.perf_counter()
            clf = holdout_preset(args.preset, cache_dir=cache, random_state=seed, verbose=0)
            clf.fit(root)
            if labels is None:
                paths, labels = _holdout_images(root, clf.classes_)
            p = clf.predict_proba(paths)
            probs.append(p)
            acc = float((p.argmax(1) == labels).mean())
            singles.append(
                {
                    "seed": seed,
                    "accuracy": round(acc, 4),
                    "fit_s": round(time.perf_counter() - start, 1),
                }
            )
            print(singles[-1], flush=True)
        ensembles = []
        for k in range(2, args.seeds + 1):
            mean = np.mean(probs[:k], axis=0)
            ensembles.append(
                {"heads": k, "accuracy": round(float((mean.argmax(1) == labels).mean()), 4)}
            )
            print(ensembles[-1], flush=True)
        sub = Path(tmp) / "sub"
        n_sub = _subsample(root, 1 / 1.125, sub)
        less = []
        for seed in range(min(args.seeds, 3)):
            clf = holdout_preset(args.preset, cache_dir=cache, random_state=seed, verbose=0)
            clf.fit(sub)
            p = clf.predict_proba(paths)
            less.append(round(float((p.argmax(1) == labels).mean()), 4))
            print({"train_images": n_sub, "seed": seed, "accuracy": less[-1]}, flush=True)
    result = {
        "preset": args.preset,
        "command": "python benchmarks/head_ensemble.py --preset "
        f"{args.preset} --seeds {args.seeds}",
        "date": date.today().isoformat(),
        "torch": torch.__version__,
        **machine(),
        "cpu_bf16": cpu_has_native_bf16(),
        "train_images": n_train,
        "holdout_images": n_held,
        "single_heads": singles,
        "single_mean": round(float(np.mean([s["accuracy"] for s in singles])), 4),
        "ensembles": ensembles,
        "less_data": {
            "train_images": n_sub,
            "accuracy": less,
            "mean": round(float(np.mean(less)), 4),
        },
        "full_data_mean_same_seeds": round(
            float(np.mean([s["accuracy"] for s in singles[: len(less)]])), 4
        ),
    }
    return emit(result, args.json)


if __name__ == "__main__":
    main()
