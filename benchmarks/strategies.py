"""Each fine-tuning strategy on real flowers, one after the other: accuracy and wall time.

Usage (from the repository root)::

    python benchmarks/strategies.py                     # all three, cold caches, ~55 min
    python benchmarks/strategies.py --only freeze_unfreeze --json out.json

Every run starts from JPEG files with an empty feature cache (a new temporary folder), and
its wall time covers ``fit`` plus the ``evaluate`` that reports the accuracy (with TTA), so
it is the end-to-end time a user waits. The recipes are those in docs/benchmarks.md:

* ``freeze``: the best frozen recipe (cached augmented views, label smoothing, cosine).
* ``freeze_unfreeze``: the head for 3 epochs on the cached output of efficientnet_lite0's
  first seven blocks (stem .. stage6), then ``stage7`` and ``head`` too, at 0.3 times the
  head's learning rate, for 11 more: the documented best-on-CPU recipe.
* ``full``: the whole backbone from the first epoch, on images augmented afresh each epoch;
  2 epochs, which is all a 2-core CPU affords (~9 minutes per epoch).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import fit_flowers
from _shared import DEFAULT_DATA

COMMON = ["--label-smoothing", "0.1", "--weight-decay", "0.01", "--lr-schedule", "cosine"]
COMMON += ["--hidden-units", "1024", "--dropout", "0.3", "--tta", "--monitor", "valid_accuracy"]
COMMON += ["--fits", "1"]

RECIPES: dict[str, list[str]] = {
    "freeze": ["--strategy", "freeze", "--augment-views", "2", "--epochs", "24"],
    "freeze_unfreeze": [
        *("--strategy", "freeze_unfreeze", "--unfreeze-blocks", "2", "--freeze-epochs", "3"),
        *("--backbone-lr-scale", "0.3", "--augment-views", "2", "--epochs", "14"),
    ],
    "full": ["--strategy", "full", "--epochs", "2", "--learning-rate", "1e-3"],
}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--only", nargs="*", choices=list(RECIPES), default=list(RECIPES))
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    rows = []
    for name in args.only:
        start = time.perf_counter()
        result = fit_flowers.main(["--data", str(args.data), *RECIPES[name], *COMMON])
        result["end_to_end_seconds"] = round(time.perf_counter() - start, 1)
        rows.append(result)
        if args.json:  # after every run: a long benchmark keeps what it measured
            args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print("\n| strategy | valid accuracy (TTA) | top-5 | kept epoch | fit | end to end |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['strategy']} | {r['evaluate_accuracy']:.2%} | "
            f"{r['evaluate_top5_accuracy']:.2%} | {r['best_epoch']} | {r['fit_seconds'][0]} s | "
            f"{r['end_to_end_seconds']} s |"
        )
    return rows


if __name__ == "__main__":
    main()
