"""A preset's hold-out accuracy under each set of test-time views, over several seeds.

Usage::

    python benchmarks/preset_views.py --preset fast-cpu            # seeds 0, 1, 2
    python benchmarks/preset_views.py --preset balanced-cpu --seeds 0 1
    python benchmarks/preset_views.py --preset balanced-cpu \\
        --param 'backbone="efficientnet_lite1"' --tta False crops   # one parameter changed

For each seed the preset is fitted once (without its refit) on ``train/`` minus the grouped
15 % hold-out, saved, and loaded again with each ``tta`` (``False``, ``True``, ``"crops"``,
``"crops+flip"``) to evaluate the hold-out through ``FlowerClassifier.evaluate``: the
same rows, only the views differ. ``valid/`` is not read. Prints the correct images of
the hold-out for each ``tta`` and seed (docs/benchmarks.md, "The presets timed with new
photos to score"). ``--param NAME=JSON`` changes one of the preset's parameters (repeat it
for more) and ``--tta`` picks the views to score.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from _shared import DEFAULT_DATA, emit, holdout_preset, link_holdout, param_override, run_facts

import petalnet

TTAS: tuple[bool | str, ...] = (False, True, "crops", "crops+flip")


def _tta(text: str) -> bool | str:
    return {"False": False, "True": True}.get(text, text)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--preset", default="fast-cpu")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--param", type=param_override, action="append", default=[])
    ap.add_argument("--tta", type=_tta, nargs="+", default=list(TTAS))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    params = dict(args.param)
    root = Path(tempfile.mkdtemp(prefix="petalnet-holdout-"))
    _, n_holdout = link_holdout(args.data, 0.15, root, split="grouped")
    cache = Path(tempfile.mkdtemp(prefix="petalnet-bench-cache-"))
    correct: dict[str, list[int]] = {str(t): [] for t in args.tta}
    for seed in args.seeds:
        clf = holdout_preset(args.preset, cache_dir=cache, random_state=seed, verbose=0, **params)
        clf.fit(root)
        saved = root / f"seed{seed}.pt"
        clf.save(saved)
        for tta in args.tta:
            loaded = petalnet.FlowerClassifier.load(saved, cache_dir=cache, tta=tta, verbose=0)
            report = loaded.evaluate(root / "valid")
            correct[str(tta)].append(round(report["accuracy"] * report["n_images"]))
        print(seed, {t: c[-1] for t, c in correct.items()}, flush=True)
    return emit(
        {
            **run_facts("preset_views.py", argv),
            "preset": args.preset,
            "params": params,
            "holdout_images": n_holdout,
            "seeds": args.seeds,
            "correct": correct,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
