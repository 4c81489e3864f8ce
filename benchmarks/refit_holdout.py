"""What a refit on train + valid is worth to a preset, on the grouped hold-out.

Usage (from the repository root)::

    python benchmarks/refit_holdout.py --preset best-cpu --seeds 0 1 2
    python benchmarks/refit_holdout.py --preset best-cpu --variant refit=false \\
        --variant refit=true                    # the variants compared, one fit each per seed

The hold-out protocol again, one level down: ``train/`` minus the grouped 15 % hold-out is
the training side; a random stratified 1/9 of it plays ``valid/`` (818 images are 1/9 of
train + valid, and ``valid/`` was split from the same source at random, so it shares
plants with train as the real one does) and the rest plays ``train/``. Each variant (a
``--variant NAME=JSON`` sets one parameter of the preset; repeat the flag for more
variants) is fitted on that pair, saved, loaded again and scored on the hold-out with the
preset's own test-time views. ``valid/`` is not read. Prints the correct images of the
hold-out for each variant and seed, its calibration there (the share of these known
flowers called unknown, which the threshold aims at 1 - ``known_recall``; the expected
calibration error) and each fit's seconds.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from _shared import DEFAULT_DATA, emit, link_holdout, param_override, run_facts

import petalnet


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--preset", default="best-cpu")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument(
        "--variant",
        type=param_override,
        action="append",
        default=[],
        help="NAME=JSON: one variant of the preset (default: refit=false and refit=true)",
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    variants = args.variant or [("refit", False), ("refit", True)]
    tmp = Path(tempfile.mkdtemp(prefix="petalnet-refit-"))
    n_side, n_holdout = link_holdout(args.data, 0.15, tmp / "split", split="grouped")
    n_train, n_valid = link_holdout(tmp / "split", 1 / 9, tmp / "pair")  # at random
    cache = Path(tempfile.mkdtemp(prefix="petalnet-bench-cache-"))
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        for name, value in variants:
            clf = petalnet.FlowerClassifier.from_preset(
                args.preset, cache_dir=cache, random_state=seed, verbose=0, **{name: value}
            )
            start = time.perf_counter()
            clf.fit(tmp / "pair")
            fit_s = time.perf_counter() - start
            saved = tmp / f"{name}-{value}-{seed}.pt"
            clf.save(saved)
            loaded = petalnet.FlowerClassifier.load(saved, cache_dir=cache, verbose=0)
            report = loaded.evaluate(tmp / "split" / "valid")
            rows.append(
                {
                    "variant": f"{name}={value}",
                    "seed": seed,
                    "correct": round(report["accuracy"] * report["n_images"]),
                    "unknown_rate": round(report["unknown_rate"], 4),
                    "ece": round(report["ece"], 4),
                    "fit_s": round(fit_s, 1),
                }
            )
            print(rows[-1], flush=True)
    return emit(
        {
            **run_facts("refit_holdout.py", argv),
            "preset": args.preset,
            "training_side": n_side,
            "played_train": n_train,
            "played_valid": n_valid,
            "holdout_images": n_holdout,
            "results": rows,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
