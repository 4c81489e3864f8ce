"""Try accuracy levers on the train hold-out: each variant of a preset, several seeds.

Usage (from the repository root)::

    python benchmarks/levers.py --preset fast-cpu \\
        --variant 'ema={"ema": 0.998}' --variant 'mixup={"mixup": 0.2}' \\
        --variant 'fusion={"backbone": "efficientnet_lite0+efficientnet_lite1"}'

Protocol: every variant is the preset with some parameters changed, fitted on ``train/``
minus the stratified 15 % hold-out (seed 0, as ``benchmarks/presets.py``) with each seed in
``--seeds``, and scored on that hold-out at its last epoch (presets keep it; with ``tta``
the figure is the centre crop, as the training loop reports it). The baseline (the preset
unchanged) runs first unless ``--no-baseline``. ``valid/`` is never read: levers are kept
or dropped on these figures, and a kept one is then measured once on ``valid/`` as a
preset.

Besides each variant's seeds, the seeds' calibrated probabilities are averaged on the
hold-out: the **ensemble** of those models (ensembling as a lever, at the cost of one fit
per member). All fits share one feature cache (``--cache_dir``; default a new folder), so
the variants that keep the backbone's input (head, mixup, EMA, seeds) reuse its features.
``--layer_storage float32`` keeps a fine-tuning run's frozen-layer outputs in float32
instead of the float16 petalnet ships (to measure what that storage costs or saves).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch
from _shared import DEFAULT_DATA, emit, holdout_preset, link_holdout, machine, peak_rss_mib

from petalnet import strategy
from petalnet.images import Unreadable


def _variant(text: str) -> tuple[str, dict[str, Any]]:
    name, _, params = text.partition("=")
    try:
        value = json.loads(params)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"--variant NAME=JSON; {exc}") from None
    if not name or not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--variant NAME=JSON, the JSON an object of parameters")
    return name, value


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--preset", default="fast-cpu")
    ap.add_argument("--variant", type=_variant, action="append", default=[])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--holdout", type=float, default=0.15)
    ap.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the preset unchanged, first (default: yes)",
    )
    ap.add_argument("--cache_dir", type=Path)
    ap.add_argument(
        "--layer_storage",
        choices=["float16", "float32"],
        default=str(strategy.LAYER_OUTPUT_STORAGE).removeprefix("torch."),
        help="dtype a frozen front's layer outputs are kept in (default: what petalnet ships)",
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    strategy.LAYER_OUTPUT_STORAGE = getattr(torch, args.layer_storage)
    cache = args.cache_dir or Path(tempfile.mkdtemp(prefix="petalnet-levers-cache-"))
    variants = [("baseline", {})] * args.baseline + args.variant
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="petalnet-levers-") as tmp:
        root = Path(tmp)
        link_holdout(args.data, args.holdout, root)
        held = sorted((root / "valid").rglob("*.jpg"))
        for name, overrides in variants:
            accuracies, probs, seconds = [], [], []
            labels: torch.Tensor | None = None
            for seed in args.seeds:
                clf = holdout_preset(
                    args.preset, cache_dir=cache, random_state=seed, verbose=0, **overrides
                )
                start = time.perf_counter()
                clf.fit(root)
                seconds.append(time.perf_counter() - start)
                accuracies.append(clf.history_[-1]["valid_accuracy"])
                pipe, model = clf.pipeline_, clf.model_
                got = pipe.features(held, unreadable=Unreadable(), quiet=True)  # cached
                out = model.calibration.outputs(model.head, got.features, pipe.device)
                probs.append(out.log_probs.exp())
                labels = torch.tensor([model.class_to_idx[p.parent.name] for p in held])
            assert labels is not None
            ensemble = float((torch.stack(probs).mean(0).argmax(1) == labels).float().mean())
            results[name] = {
                "params": overrides,
                "holdout_accuracy": [round(a, 4) for a in accuracies],
                "mean": round(sum(accuracies) / len(accuracies), 4),
                "ensemble_of_seeds": round(ensemble, 4),
                "fit_seconds": [round(s, 1) for s in seconds],
            }
            print(name, json.dumps(results[name]), file=sys.stderr, flush=True)
    return emit(
        {
            "date": date.today().isoformat(),
            "torch": torch.__version__,
            **machine(),
            "command": " ".join(["python benchmarks/levers.py", *(argv or sys.argv[1:])]),
            "preset": args.preset,
            "layer_storage": args.layer_storage,
            "holdout_images": len(held),
            "seeds": args.seeds,
            "variants": results,
            "peak_rss_mib": round(peak_rss_mib()),
        },
        args.json,
    )


if __name__ == "__main__":
    main()
