"""best-cpu's fine-tuning step side by side: eager against ``torch.compile``, float32 and bf16.

Usage (from the repository root)::

    python benchmarks/train_step_levers.py                 # batch 64, 30 timed steps
    python benchmarks/train_step_levers.py --json out.json

best-cpu fine-tunes efficientnet_lite0's last 2 blocks with its head on the frozen front's
cached layer outputs; those training steps (forward, backward, AdamW) are most of its fit.
This script builds exactly that trainable part (``FeatureExtractor.split(2)`` and a
1024-unit head), feeds it random layer outputs of the real shape, and times a step:

* **eager** float32 (what petalnet does),
* **compiled**: ``torch.compile`` (Inductor) of the back + head, float32; the first steps
  pay the compile (forward and backward graphs), reported apart,
* the same two under bfloat16 autocast, where the CPU has native bfloat16;
* **optimizer**: AdamW's default for-each step against its fused kernel (``fused=True``,
  what petalnet uses on cpu and cuda), eager float32, for fast-cpu's head on cached
  feature vectors and for best-cpu's back + head.

Steps per second after warm-up, and the compile time a fit would pay once; a fit of 11
fine-tuning epochs over 6552 images at batch 64 takes ~1130 steps.
"""

from __future__ import annotations

import argparse
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch
from _shared import emit, machine
from torch import nn

import petalnet
from petalnet.precision import autocast, cpu_has_native_bf16


def _model() -> tuple[nn.Module, tuple[int, ...]]:
    backbone = petalnet.build_backbone("efficientnet_lite0")
    front, back = backbone.split(2)
    with torch.no_grad():
        size = backbone.preprocessing.crop_size
        rows = front.eval()(torch.zeros(1, 3, size, size))
    head = nn.Sequential(
        nn.Linear(backbone.feature_dim, 1024),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(1024, 102),
        nn.LogSoftmax(dim=1),
    )
    return nn.Sequential(back, head).train(), tuple(rows.shape[1:])


def _head(features: int) -> nn.Module:
    """fast-cpu's head, trained alone on cached feature vectors."""
    return nn.Sequential(
        nn.Dropout(0.3),
        nn.Linear(features, 1024),
        nn.ReLU(),
        nn.Dropout(0.3),
        nn.Linear(1024, 102),
        nn.LogSoftmax(dim=1),
    ).train()


def _time(
    model: nn.Module,
    row_shape: tuple[int, ...],
    batch: int,
    steps: int,
    dtype: torch.dtype,
    fused: bool | None = None,
) -> dict[str, float]:
    device = torch.device("cpu")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, fused=fused)
    loss_fn = nn.NLLLoss()
    x = torch.randn(batch, *row_shape)
    y = torch.randint(0, 102, (batch,))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast(device, dtype):
            out = model(x)
        loss = loss_fn(out.float(), y)
        loss.backward()
        opt.step()

    start = time.perf_counter()
    for _ in range(3):  # warm-up (and, compiled, the compile)
        step()
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step()
    per_step = (time.perf_counter() - start) / steps
    return {"warmup_s": round(first, 1), "step_ms": round(per_step * 1000, 1)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    dtypes = [torch.float32] + ([torch.bfloat16] if cpu_has_native_bf16() else [])
    rows = []
    for dtype in dtypes:
        for compiled in (False, True):
            torch.manual_seed(0)
            model, row_shape = _model()
            run = torch.compile(model) if compiled else model
            got = _time(run, row_shape, args.batch, args.steps, dtype)
            rows.append({"dtype": str(dtype).removeprefix("torch."), "compiled": compiled, **got})
            print(rows[-1], flush=True)
    optimizers = []  # eager float32, AdamW's for-each step against its fused kernel
    for part in ("head on feature vectors", "last 2 blocks + head"):
        for fused in (None, True):
            torch.manual_seed(0)
            model, row_shape = _model() if part.startswith("last") else (_head(1280), (1280,))
            got = _time(model, row_shape, args.batch, args.steps * 4, torch.float32, fused)
            optimizers.append({"part": part, "adamw": "fused" if fused else "for-each", **got})
            print(optimizers[-1], flush=True)
    result = {
        "command": f"python benchmarks/train_step_levers.py --batch {args.batch}",
        "date": date.today().isoformat(),
        "torch": torch.__version__,
        **machine(),
        "threads": torch.get_num_threads(),
        "rows": rows,
        "optimizers": optimizers,
    }
    return emit(result, args.json)


if __name__ == "__main__":
    main()
