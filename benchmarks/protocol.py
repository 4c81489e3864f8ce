"""The honest protocol: choose on a hold-out carved from train, report valid once.

Usage (from the repository root)::

    python benchmarks/protocol.py                         # the default recipe, efficientnet_lite0
    python benchmarks/protocol.py --epochs 24 --augment-views 2 --label-smoothing 0.1 ...

1. A stratified hold-out (``--holdout``, 15 % of each class, seed 0) is carved from
   ``train/``; a temporary root of symbolic links holds the rest as ``train/`` and the
   hold-out as ``valid/``.
2. **Selection**: the recipe is fitted there; the hold-out picks the kept epoch ``e*`` (the
   recipe's ``monitor``) and gives the accuracy the choice was made on.
3. **Final**: the recipe is fitted on the whole ``train/`` for ``e*`` epochs with
   ``monitor="last"``, so ``valid/`` picks nothing; ``valid/`` is evaluated once.

Both fits share one feature cache (keys follow symbolic links to the image files), so the
final fit's training features come from the selection fit. A schedule that spans the run
(cosine, one-cycle) is shorter in the final fit when ``e*`` is below ``--epochs``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
from _shared import emit, link_holdout, recipe, recipe_parser

import petalnet
from petalnet.precision import cpu_has_native_bf16


def main(argv: list[str] | None = None) -> dict:
    ap = recipe_parser(__doc__.splitlines()[0])
    ap.add_argument("--holdout", type=float, default=0.15, help="share of train held out")
    args = ap.parse_args(argv)
    if not (args.data / "train").is_dir() or not (args.data / "valid").is_dir():
        sys.exit(f"No train/ and valid/ under {args.data}; pass --data DIR.")
    params = recipe(args)  # one new cache for both fits: cold, then shared

    with tempfile.TemporaryDirectory(prefix="petalnet-holdout-") as tmp:
        root = Path(tmp)
        n_fit, n_holdout = link_holdout(args.data, args.holdout, root)
        start = time.perf_counter()
        selection = petalnet.FlowerClassifier(**params).fit(root)
        selection_s = time.perf_counter() - start
        chosen = selection.best_epoch_
        holdout_acc = selection.history_[chosen - 1]["valid_accuracy"]

    start = time.perf_counter()
    final_params = {**params, "epochs": chosen, "monitor": "last"}
    for name in ("freeze_epochs", "warmup_epochs"):  # they must fit in the shorter run
        if final_params[name] is not None:
            final_params[name] = min(final_params[name], chosen)
    final = petalnet.FlowerClassifier(**final_params)
    final.fit(args.data)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    report = final.evaluate(args.data / "valid")
    eval_s = time.perf_counter() - start
    result = {
        "date": date.today().isoformat(),
        "torch": torch.__version__,
        "cpu_bf16": cpu_has_native_bf16(),
        "precision": str(final.pipeline_.precision),
        "command": " ".join(["python benchmarks/protocol.py", *(argv or sys.argv[1:])]),
        "backbone": final.backbone,
        "holdout_images": n_holdout,
        "selection_train_images": n_fit,
        "selection_history": [round(r["valid_accuracy"], 4) for r in selection.history_],
        "chosen_epochs": chosen,
        "holdout_accuracy": holdout_acc,
        "final_train_images": final.n_train_,
        "valid_accuracy": report["accuracy"],
        "valid_top5_accuracy": report["top5_accuracy"],
        "valid_images": report["n_images"],
        "selection_seconds": round(selection_s, 1),
        "final_fit_seconds": round(fit_s, 1),
        "evaluate_seconds": round(eval_s, 1),
    }
    return emit(result, args.json)


if __name__ == "__main__":
    main()
