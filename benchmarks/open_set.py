"""Does petalnet say "I don't know"? Held-out species and non-flower photos vs known flowers.

Usage (from the repository root; needs ``pip install -e ".[bench]"`` for the photos)::

    python benchmarks/open_set.py                          # the default lite0 recipe
    python benchmarks/open_set.py --preset fast-cpu
    python benchmarks/open_set.py --preset best-cpu --json out.json

Protocol (nothing is chosen on what is reported):

- 10 species (:data:`HELD_OUT`, fixed) are removed from training entirely.
- The classifier is fitted on the other 92 species of ``train/`` minus a stratified 15 %
  hold-out, which is its validation split: the temperature and the unknown threshold
  are chosen there.
- Reported on images it has never seen: **known** = ``valid/`` images of the 92 species;
  **held-out species** = every ``train/`` and ``valid/`` image of the 10; **non-flower** =
  the real photographs bundled in scikit-image's wheel (a cat, a rocket, coffee, coins, a
  motorcycle, the moon, ...; not noise).
- For each novelty score: AUROC (known vs novel) and FPR at 95 % TPR (the share of novel
  images scored below the score that keeps 95 % of known images), plus the share of each
  group the fitted threshold calls unknown, and ECE on the known images with and without
  the temperature.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _shared import DEFAULT_DATA, emit, holdout_preset, link_holdout, machine

import petalnet
from petalnet.calibration import (
    NOVELTY_SCORES,
    Calibration,
    HeadOutput,
    calibration_metrics,
    sample_rows,
)
from petalnet.images import Unreadable

HELD_OUT = ["3", "12", "21", "34", "45", "56", "67", "78", "89", "100"]
"""Class folders never trained on (fixed, spread over the ids): the reported run."""
SELECTION = ["5", "15", "25", "36", "48", "58", "69", "80", "91", "99"]
"""Other species held out to choose the default score on (``--held_out selection``)."""

PHOTOS = [
    "astronaut.png",
    "brick.png",
    "camera.png",
    "cell.png",
    "chelsea.png",
    "clock_motion.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "moon.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "page.png",
    "retina.jpg",
    "rocket.jpg",
    "text.png",
]
"""Real photographs inside scikit-image's wheel (no download)."""

DEFAULT_RECIPE: dict[str, Any] = {"backbone": "efficientnet_lite0", "epochs": 10}


def _photos() -> list[Path]:
    try:
        import skimage
    except ModuleNotFoundError:
        sys.exit('Needs scikit-image for its bundled photos: pip install -e ".[bench]"')
    folder = Path(skimage.__file__).parent / "data"
    return [folder / name for name in PHOTOS if (folder / name).is_file()]


def auroc(known: np.ndarray, novel: np.ndarray) -> float:
    """P(novel score > known score), ties counted half (the Mann-Whitney statistic)."""
    scores = np.concatenate([known, novel])
    order = scores.argsort(kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # average ranks of ties
        tie = scores == value
        ranks[tie] = ranks[tie].mean()
    n_k, n_n = len(known), len(novel)
    return float((ranks[n_k:].sum() - n_n * (n_n + 1) / 2) / (n_k * n_n))


def fpr_at_95_tpr(known: np.ndarray, novel: np.ndarray) -> float:
    """Share of novel images accepted as known at the score keeping 95 % of known ones."""
    return float((novel <= np.quantile(known, 0.95)).mean())


@dataclasses.dataclass
class OpenSetRun:
    """A classifier fitted without the held-out species, and the features of every group."""

    clf: petalnet.FlowerClassifier
    train: torch.Tensor
    """``(N, D)`` centre-crop features of the training rows (hold-out excluded)."""
    train_labels: torch.Tensor
    valid: torch.Tensor | None
    """Features of the fit's validation split (the hold-out carved from ``train/``), when
    asked for."""
    groups: dict[str, list[Path]]
    feats: dict[str, torch.Tensor]
    """Per group, the features of the views ``predict`` averages."""
    fit_seconds: float


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The arguments every open-set script takes."""
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--preset", help="a preset name (default: the default lite0 recipe)")
    ap.add_argument("--holdout", type=float, default=0.15)
    ap.add_argument("--cache_dir", type=Path, help="feature cache (default: a new one)")
    ap.add_argument("--json", type=Path)


def fit_open_set(
    args: argparse.Namespace, held_out: list[str], *, with_valid: bool = False
) -> OpenSetRun:
    """Fit the recipe without ``held_out`` and compute the features of each group (and,
    with ``with_valid``, of the fit's validation split, which only exists during the call)."""
    photos = _photos()
    cache = args.cache_dir or Path(tempfile.mkdtemp(prefix="petalnet-openset-cache-"))
    common = {"cache_dir": cache, "random_state": 0}
    clf = (
        holdout_preset(args.preset, **common)
        if args.preset
        else petalnet.FlowerClassifier(**DEFAULT_RECIPE, **common)
    )
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="petalnet-openset-") as tmp:
        link_holdout(args.data, args.holdout, Path(tmp), frozenset(held_out))
        clf.fit(tmp)
        fit_s = time.perf_counter() - start
        train_files = sorted((Path(tmp) / "train").rglob("*.jpg"))
        labels = [clf.model_.class_to_idx[p.parent.name] for p in train_files]
        pipe = clf.pipeline_
        views = pipe.test_views(clf.tta)
        train = pipe.features(train_files, labels, unreadable=Unreadable(), quiet=True)
        valid = None
        if with_valid:
            valid_files = sorted((Path(tmp) / "valid").rglob("*.jpg"))
            got = pipe.features(valid_files, unreadable=Unreadable(), views=views, quiet=True)
            valid = got.features
    groups = {
        "known": sorted(
            p for p in (args.data / "valid").rglob("*.jpg") if p.parent.name not in held_out
        ),
        "held_out_species": sorted(
            p
            for split in ("train", "valid")
            for c in held_out
            for p in (args.data / split / c).glob("*.jpg")
        ),
        "non_flower": photos,
    }
    feats = {  # one pass per group, through the pipeline predict uses (cached)
        g: pipe.features(files, unreadable=Unreadable(), views=views, quiet=True).features
        for g, files in groups.items()
    }
    return OpenSetRun(clf, train.features, train.labels, valid, groups, feats, fit_s)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(ap)
    ap.add_argument(
        "--held_out",
        choices=["reported", "selection"],
        default="reported",
        help="which 10 species to hold out: the reported ones, or others to choose a score on",
    )
    args = ap.parse_args(argv)
    held_out = HELD_OUT if args.held_out == "reported" else SELECTION
    run = fit_open_set(args, held_out)
    clf, train, groups, feats = run.clf, run.train, run.groups, run.feats
    model, pipe = clf.model_, clf.pipeline_
    base = model.calibration

    def outputs(calibration: Calibration, group: str) -> HeadOutput:
        return calibration.outputs(model.head, feats[group], pipe.device)

    # every score on the same model; knn gets its bank of (at most 4096) training features
    bank = torch.nn.functional.normalize(train[sample_rows(len(train))].float(), dim=1).half()
    variants = {s: dataclasses.replace(base, score=s, bank=bank) for s in NOVELTY_SCORES}
    scores = {
        score: {g: outputs(variant, g).novelty.numpy() for g in groups}
        for score, variant in variants.items()
    }
    flagged = {g: float(outputs(base, g).unknown.float().mean()) for g in groups}
    known_labels = torch.tensor(
        [model.class_to_idx[p.parent.name] for p in groups["known"]], dtype=torch.long
    )
    probs = outputs(base, "known").log_probs.exp()
    raw_probs = outputs(dataclasses.replace(base, temperature=1.0), "known").log_probs.exp()
    result = {
        "date": date.today().isoformat(),
        "torch": torch.__version__,
        **machine(),
        "command": " ".join(["python benchmarks/open_set.py", *(argv or sys.argv[1:])]),
        "recipe": args.preset or "default (lite0, 10 epochs)",
        "held_out_classes": held_out,
        "images": {g: len(files) for g, files in groups.items()},
        "fit_seconds": round(run.fit_seconds, 1),
        "default_score": base.score,
        "temperature": base.temperature,
        "threshold": base.threshold,
        "known_accuracy": float((probs.argmax(1) == known_labels).float().mean()),
        "ece_known_raw": calibration_metrics(raw_probs, known_labels)["ece"],
        "ece_known_calibrated": calibration_metrics(probs, known_labels)["ece"],
        "called_unknown": flagged,
        "scores": {
            score: {
                f"{g}_{metric}": fn(by_group["known"], by_group[g])
                for g in ("held_out_species", "non_flower")
                for metric, fn in (("auroc", auroc), ("fpr95", fpr_at_95_tpr))
            }
            for score, by_group in scores.items()
        },
    }
    return emit(result, args.json)


if __name__ == "__main__":
    main()
