"""Measure each preset under the honest protocol: hold-out accuracy, valid once, time, memory.

Usage (from the repository root)::

    python benchmarks/presets.py                      # every preset
    python benchmarks/presets.py --only fast-cpu --json out.json
    python benchmarks/presets.py --holdout-only --split random   # the hold-out as before
    python benchmarks/presets.py --only best-cpu --holdout-only --seed 1   # another seed
    python benchmarks/presets.py --only fast-cpu --param 'quantize="int8"'   # one change

For each preset, two child processes, each with a new, empty feature cache:

1. **hold-out**: the preset is fitted on ``train/`` minus a stratified 15 % hold-out (by
   default grouped: the data doctor's groups of copies and siblings stay on one side) and
   evaluated on the hold-out (the preset's own epochs, ``monitor="last"``: nothing is picked
   there either; this is the figure recipes were compared on). A preset that refits on
   train + valid is scored here without its refit (the refit would train on the hold-out).
2. **final**: the preset is fitted on the whole ``train/`` from the JPEG files and
   ``valid/`` is evaluated once, by the saved model loaded with a second empty cache: the
   fit's calibration has stored the rows of ``valid/``'s test-time views, and a test set
   of new photos would find none. The fit's time plus that evaluation's is the end-to-end
   time (what fitting and then scoring 818 new photos costs), its peak RSS the memory
   figure. A preset that refits has trained on ``valid/`` by then: its accuracy there is
   not a figure (``null``), but the evaluation is still timed.

Each phase runs in its own process so that its peak RSS and its cold cache are its own.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch
from _shared import (
    DEFAULT_DATA,
    emit,
    holdout_preset,
    link_holdout,
    machine,
    param_override,
    peak_rss_mib,
)

import petalnet
from petalnet.precision import cpu_has_native_bf16
from petalnet.presets import get_preset, list_presets


def _phase(
    name: str,
    phase: str,
    data: Path,
    holdout: float,
    split: str,
    seed: int = 0,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run one phase in this process (a child of :func:`main`)."""
    cache = Path(tempfile.mkdtemp(prefix="petalnet-preset-cache-"))
    with tempfile.TemporaryDirectory(prefix="petalnet-holdout-") as tmp:
        root, report_on = data, data / "valid"
        if phase == "holdout":
            root = Path(tmp)
            link_holdout(data, holdout, root, split=split)
            report_on = root / "valid"
        start = time.perf_counter()
        refits = bool(get_preset(name).params.get("refit"))
        make = holdout_preset if phase == "holdout" else petalnet.FlowerClassifier.from_preset
        clf = make(name, cache_dir=cache, random_state=seed, **(params or {}))
        clf.fit(root)
        fit_s = time.perf_counter() - start
        scorer = clf
        if phase == "final":  # new photos: none of their rows are stored (not timed)
            saved = Path(tmp) / "model.pt"
            clf.save(saved)
            cold = Path(tempfile.mkdtemp(prefix="petalnet-preset-cache-"))
            scorer = petalnet.FlowerClassifier.load(saved, cache_dir=cold)
        start = time.perf_counter()
        report = scorer.evaluate(report_on)
        evaluate_s = time.perf_counter() - start
    trained_on = refits and phase == "final"  # valid/ was trained on: no figure
    return {
        "accuracy": None if trained_on else report["accuracy"],
        "top5_accuracy": None if trained_on else report["top5_accuracy"],
        "refit": refits and phase == "final",
        "images": report["n_images"],
        "train_images": clf.n_train_,
        "history": [round(r["valid_accuracy"], 4) for r in clf.model_.validated_history],
        "precision": str(clf.pipeline_.precision),
        "fit_seconds": round(fit_s, 1),
        "evaluate_seconds": round(evaluate_s, 1),
        "seconds": round(fit_s + evaluate_s, 1),
        "peak_rss_mib": round(peak_rss_mib()),
    }


def _child(name: str, phase: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [sys.executable, __file__, "--only", name, "--phase", phase]
        cmd += ["--data", str(args.data), "--holdout", str(args.holdout), "--json", out.name]
        cmd += ["--split", args.split, "--seed", str(args.seed)]
        cmd += [f"--param={k}={json.dumps(v)}" for k, v in args.param]
        # an empty Inductor cache: a quantize="int8" fit pays its first compile, as on a new
        # machine (a float fit compiles nothing)
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": tempfile.mkdtemp(prefix="inductor-")}
        subprocess.run(cmd, check=True, env=env)
        return json.loads(Path(out.name).read_text())


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--only", nargs="+", help="preset names (default: all)")
    ap.add_argument("--holdout", type=float, default=0.15, help="share of train held out")
    ap.add_argument(
        "--split",
        choices=["grouped", "random"],
        default="grouped",
        help="hold-out keeps the data doctor's groups of copies and siblings on one side "
        "(grouped, the default) or picks images per class at random",
    )
    ap.add_argument("--holdout-only", action="store_true", help="measure the hold-out phase only")
    ap.add_argument("--seed", type=int, default=0, help="random_state of the fits (default 0)")
    ap.add_argument(
        "--param",
        type=param_override,
        action="append",
        default=[],
        help="NAME=JSON: change one of the preset's parameters (repeat for more)",
    )
    ap.add_argument("--phase", choices=["holdout", "final"], help=argparse.SUPPRESS)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    if not (args.data / "train").is_dir() or not (args.data / "valid").is_dir():
        sys.exit(f"No train/ and valid/ under {args.data}; pass --data DIR.")
    names = args.only or [p.name for p in list_presets()]
    if args.phase:  # a child: one phase of one preset
        emit(
            _phase(
                names[0],
                args.phase,
                args.data,
                args.holdout,
                args.split,
                args.seed,
                dict(args.param),
            ),
            args.json,
        )
        return []
    results = []
    for name in names:
        held = _child(name, "holdout", args)
        final = None if args.holdout_only else _child(name, "final", args)
        results.append(
            {
                "preset": name,
                "params": {**get_preset(name).params, **dict(args.param)},
                "date": date.today().isoformat(),
                "torch": torch.__version__,
                **machine(),
                "cpu_bf16": cpu_has_native_bf16(),
                "command": f"python benchmarks/presets.py --only {name} --split {args.split}"
                f" --seed {args.seed}",
                "holdout": held,
                "final": final,
            }
        )
    emit(results, args.json)
    return results


if __name__ == "__main__":
    main()
