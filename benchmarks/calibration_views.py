"""Calibration on every test-time view, on the centre crop alone, or on a sample's views.

Usage::

    python benchmarks/calibration_views.py --preset fast-cpu

A frozen preset (fast-cpu or balanced-cpu) is fitted once on ``train/`` minus the grouped
15 % hold-out. The hold-out's rows under the six views (``tta="crops+flip"``) are then
split in halves at random, ``--splits`` times each way: one half fits the temperature and
the unknown threshold, with

* ``views``: every view of every image (what ``fit`` does),
* ``centre``: the centre crop alone (what a fit without the views' passes would do),
* ``views256``: every view of 256 of the images,

and the other half is judged with all six views, as ``evaluate`` judges: accuracy, NLL,
ECE, and the share of known photos kept below the threshold (asked to be 0.95). Figures
in docs/benchmarks.md ("Levers measured today").
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from _shared import DEFAULT_DATA, emit, holdout_preset, labelled_images, link_holdout, machine

from petalnet.calibration import Calibration, calibration_metrics, fit_calibration
from petalnet.images import Unreadable


def _batches(x: torch.Tensor, y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i : i + 256], y[i : i + 256]) for i in range(0, len(y), 256)]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--preset", default="fast-cpu", choices=["fast-cpu", "balanced-cpu"])
    ap.add_argument("--splits", type=int, default=5, help="random halvings (each used both ways)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="petalnet-holdout-"))
    link_holdout(args.data, 0.15, root, split="grouped")
    cache = Path(tempfile.mkdtemp(prefix="petalnet-bench-cache-"))
    clf = holdout_preset(args.preset, cache_dir=cache, random_state=0, verbose=0).fit(root)
    classes, pipeline = list(clf.classes_), clf.pipeline_
    unreadable = Unreadable.for_training(False)
    valid_paths, valid_listed = labelled_images(root / "valid", classes)
    train_paths, train_listed = labelled_images(root / "train", classes)
    valid_labels, train_labels = torch.tensor(valid_listed), torch.tensor(train_listed)
    views = pipeline.test_views("crops+flip")
    rows = pipeline.features(
        valid_paths, valid_listed, unreadable=unreadable, views=views, quiet=True
    ).features.float()
    train_rows = pipeline.features(
        train_paths, train_listed, unreadable=unreadable, quiet=True
    ).features.float()
    head, embed = clf.model_.head.eval(), torch.nn.Identity()
    train = _batches(train_rows, train_labels)
    generator = torch.Generator().manual_seed(0)
    results: dict[str, dict[str, list[float]]] = {}

    def calibrated(on: torch.Tensor, all_views: bool) -> Calibration:
        more = [_batches(v[on], valid_labels[on]) for v in rows[1:]] if all_views else []
        centre = _batches(rows[0, on], valid_labels[on])
        return fit_calibration(head, embed, train, centre, views=more)

    with torch.no_grad():
        logits = torch.stack([head(v) for v in rows])
        for _ in range(args.splits):
            order = torch.randperm(len(valid_labels), generator=generator)
            halves = order[: len(order) // 2], order[len(order) // 2 :]
            for fit_on, judge_on in (halves, halves[::-1]):
                candidates = {
                    "views": calibrated(fit_on, True),
                    "centre": calibrated(fit_on, False),
                    "views256": calibrated(fit_on[:256], True),
                }
                for name, calibration in candidates.items():
                    judged = calibration.judge(logits[:, judge_on], rows[:, judge_on])
                    probs, labels = judged.log_probs.exp(), valid_labels[judge_on]
                    metrics = calibration_metrics(probs, labels)
                    got = results.setdefault(name, {})
                    got.setdefault("temperature", []).append(calibration.temperature)
                    accuracy = (probs.argmax(-1) == labels).float().mean().item()
                    got.setdefault("accuracy", []).append(accuracy)
                    got.setdefault("nll", []).append(metrics["nll"])
                    got.setdefault("ece", []).append(metrics["ece"])
                    kept = 1 - judged.unknown.float().mean().item()
                    got.setdefault("known_recall", []).append(kept)
    summary = {
        name: {
            **{k: round(sum(v) / len(v), 4) for k, v in got.items()},
            "known_recall_range": [round(f(got["known_recall"]), 3) for f in (min, max)],
        }
        for name, got in results.items()
    }
    for name, figures in summary.items():
        print(name, figures, flush=True)
    return emit(
        {
            "command": f"python benchmarks/calibration_views.py --preset {args.preset}",
            "date": time.strftime("%Y-%m-%d"),
            **machine(),
            "preset": args.preset,
            "splits": args.splits,
            "calibrated_on": summary,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
