"""Fit + evaluate a FlowerClassifier on a Udacity-layout folder; report accuracy, time, memory.

Usage (from the repository root)::

    python benchmarks/fit_flowers.py                       # efficientnet_lite0, the classic recipe
    python benchmarks/fit_flowers.py --data DIR --arch vgg16 --epochs 5

Every ``FlowerClassifier`` parameter is a flag, spelled as in ``petalnet train`` (dashes
work too): ``--hidden-units 1024 --strategy freeze_unfreeze --amp false`` ...

The default data is ``../shared/data/flowers102`` (Flowers-102 train 6552 / valid 818).
It has no ``test/`` split, so ``evaluate`` runs on ``valid/``, the split that also picks the
best epoch: the figure is the classic recipe's "valid accuracy", not an untouched test score.
"""

from __future__ import annotations

import platform
import sys
import time
from datetime import date

import torch
from _shared import emit, peak_rss_mib, recipe, recipe_parser

import petalnet
from petalnet.precision import cpu_has_native_bf16


def main(argv: list[str] | None = None) -> dict:
    ap = recipe_parser(__doc__.splitlines()[0])
    ap.add_argument("--fits", type=int, default=2, help="fits in a row (2nd+ use the cache)")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        sys.exit(f"No data at {args.data}; pass --data DIR (train/ valid/ <class>/*.jpg).")
    params = recipe(args)
    fit_seconds, fit_accuracies = [], []
    for _ in range(args.fits):
        clf = petalnet.FlowerClassifier(**params)
        t0 = time.perf_counter()
        clf.fit(args.data)
        fit_seconds.append(round(time.perf_counter() - t0, 1))
        fit_accuracies.append(max(r["valid_accuracy"] for r in clf.history_))
    t0 = time.perf_counter()
    report = clf.evaluate(args.data)
    eval_s = time.perf_counter() - t0
    best = max(r["valid_accuracy"] for r in clf.history_)
    result = {
        "date": date.today().isoformat(),
        "machine": f"{platform.machine()} {platform.processor() or ''} "
        f"{torch.get_num_threads()} threads, device {clf.device_}".strip(),
        "torch": torch.__version__,
        "command": " ".join(["python benchmarks/fit_flowers.py", *(argv or sys.argv[1:])]),
        "backbone": clf.backbone,
        "n_train": clf.n_train_,
        "n_valid": clf.n_valid_,
        "strategy": clf.strategy,
        "best_epoch": clf.best_epoch_,
        "history": [{k: round(v, 4) for k, v in r.items()} for r in clf.history_],
        "best_valid_accuracy": best,
        "evaluate_accuracy": report["accuracy"],
        "evaluate_top5_accuracy": report["top5_accuracy"],
        "evaluate_folder": report["folder"],
        "precision": str(clf.pipeline_.precision),
        "cpu_bf16": cpu_has_native_bf16(),
        "fit_seconds": fit_seconds,
        "fit_best_valid_accuracies": fit_accuracies,
        "evaluate_seconds": round(eval_s, 1),
        "peak_rss_mib": round(peak_rss_mib()),
    }
    return emit(result, args.json)


if __name__ == "__main__":
    main()
