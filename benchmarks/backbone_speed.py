"""Per-image speed of backbones' forward pass, side by side in one process.

Usage::

    python benchmarks/backbone_speed.py                          # lite0 vs torchvision b0
    python benchmarks/backbone_speed.py --backbones vgg16 --batch-sizes 8

Each backbone runs as ``fit`` runs it: frozen, batch norm folded into the convolutions,
channels-last. Inputs are random tensors (pure compute, no decoding), weights random (the
cost per image does not depend on their values). The backbones are timed in alternating
rounds so that noise from the machine hits all of them alike; the table reports the median
images per second over the rounds and the ratio to the first backbone.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import petalnet
from petalnet.features import prepare_backbone, run_backbone

CPU = torch.device("cpu")


def one_round(runner, batch: torch.Tensor, amp: bool, seconds: float) -> float:
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run_backbone(runner, batch, CPU, amp)
        n += len(batch)
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbones", nargs="+", default=["efficientnet_lite0", "efficientnet_b0"])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 16, 32])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=2.0, help="per round and backbone")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument(
        "--precisions",
        nargs="+",
        default=["fp32"],
        choices=["fp32", "bf16"],
        help="bf16 = bfloat16 autocast; only fast on CPUs with avx512_bf16/AMX",
    )
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    runners = {
        name: prepare_backbone(petalnet.build_backbone(name, weights=None), CPU)
        for name in args.backbones
    }
    columns = " | ".join(f"{n} img/s" for n in runners)
    print(f"| batch | precision | {columns} | first ÷ others |")
    print("|---" * (len(runners) + 3) + "|")
    for bs in args.batch_sizes:
        for precision in args.precisions:
            amp = precision == "bf16"
            batches = {}
            for name, runner in runners.items():
                size = runner.preprocessing.crop_size
                batches[name] = torch.randn(bs, 3, size, size)
                run_backbone(runner, batches[name], CPU, amp)  # warm-up
            rates: dict[str, list[float]] = {n: [] for n in runners}
            for _ in range(args.rounds):
                for name, runner in runners.items():
                    rates[name].append(one_round(runner, batches[name], amp, args.seconds))
            med = {n: statistics.median(r) for n, r in rates.items()}
            first = med[args.backbones[0]]
            cells = " | ".join(f"{m:.1f}" for m in med.values())
            ratios = ", ".join(f"{first / m:.2f}" for m in list(med.values())[1:])
            print(f"| {bs} | {precision} | {cells} | {ratios} |", flush=True)


if __name__ == "__main__":
    main()
