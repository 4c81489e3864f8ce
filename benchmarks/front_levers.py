"""Side by side, one process: three levers on the cost of the frozen front's pass.

Usage::

    python benchmarks/front_levers.py                     # 256 images of DATA/train
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 PETALNET_CPU_BF16=0 \\
        python benchmarks/front_levers.py                 # as on an AVX2-only CPU

On efficientnet_lite0's prepared front (BN folded, channels-last, as ``fit`` runs it), on
the same preprocessed images, one after the other:

* **same padding**: TensorFlow's asymmetric "SAME" padding of the five strided
  convolutions done by padding the input (``F.pad``, a copy of each activation: what
  petalnet did before) against growing the kernel by a zero row and column and letting the
  convolution pad (what petalnet does now, ``lite._SameConv2d``). Images per second at
  batch 8 (``fit``'s extraction batch) and 32, the best of ``--repeats`` alternations,
  and the largest difference of the rows.
* **int8** (only where ``torchao`` is installed): post-training static quantisation of the
  front with ``torchao``'s PT2E flow and ``X86InductorQuantizer`` (calibrated on 128 other
  images), compiled by Inductor, against eager float32: images per second, the time to
  quantise and compile, and how far the rows move (cosine, relative error). Once with
  8-bit activations, once with ``reduce_range``'s 7-bit ones, which CPUs without VNNI
  need: their int8 multiply-add saturates at 16 bits. Beside the compiled graph, the same
  graph as direct oneDNN int8 calls (``petalnet.onednn.lower_int8_graph``, what
  ``quantize="int8"`` runs: no compile).
* **fused activation**: each convolution and its ReLU6 in one oneDNN call
  (``torch.ops.mkldnn._convolution_pointwise``, what Inductor emits) against the plain
  two calls, once with the weight in PyTorch's layout (reordered by oneDNN on every call)
  and once prepacked per input shape: ``petalnet.onednn.pack_convolutions``, what
  ``ImagePipeline.runner`` runs since it measured faster here. In float32, and in
  bfloat16 autocast where the CPU has it.

The figures go to docs/benchmarks.md ("Speed levers"), with the CPU flags printed here.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from _shared import DEFAULT_DATA, emit, machine
from speed_levers import _picked

import petalnet
from petalnet._allocator import keep_cpu_buffers
from petalnet.backbones import lite
from petalnet.features import prepare_backbone
from petalnet.images import read_image
from petalnet.onednn import lower_int8_graph, pack_convolutions
from petalnet.precision import autocast, cpu_has_native_bf16

_CPU = torch.device("cpu")


def _padded_input_forward(self: lite._SameConv2d, x: torch.Tensor) -> torch.Tensor:
    """The strided convolution as petalnet ran it before: pad the input, then convolve."""
    if self.stride[0] == 1:
        return torch.nn.Conv2d.forward(self, x)
    k, s = self.kernel_size[0], self.stride[0]
    (lo_h, hi_h), (lo_w, hi_w) = (lite._same_padding(n, k, s) for n in x.shape[-2:])
    x = F.pad(x, [lo_w, hi_w, lo_h, hi_h])
    return F.conv2d(x, self.weight, self.bias, s, 0, groups=self.groups)


def _inferring(
    module: Any, precision: torch.dtype = torch.float32
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``module`` as a function of a batch: inference mode, autocast to ``precision``."""

    def run(b: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast(_CPU, precision):
            result: torch.Tensor = module(b)
            return result

    return run


def _rate(
    run: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch: int
) -> tuple[float, torch.Tensor]:
    """Images per second of ``run`` over ``images`` in batches, and its rows."""
    batches = list(images.split(batch))
    run(batches[0])  # warm-up
    start = time.perf_counter()
    rows = [run(b) for b in batches]
    return len(images) / (time.perf_counter() - start), torch.cat(rows).float()


def _padding(front: torch.nn.Module, images: torch.Tensor, repeats: int) -> list[dict[str, Any]]:
    precisions = [torch.float32] + ([torch.bfloat16] if cpu_has_native_bf16() else [])
    out = []
    for precision in precisions:
        run = _inferring(front, precision)
        for batch in (8, 32):
            rates: dict[str, list[float]] = {"padded": [], "grown": []}
            rows = {}
            for _ in range(repeats):  # alternated, so that drift hits both alike
                for name in ("padded", "grown"):
                    original = lite._SameConv2d.forward
                    if name == "padded":
                        lite._SameConv2d.forward = _padded_input_forward  # type: ignore[method-assign]
                    try:
                        rate, rows[name] = _rate(run, images, batch)
                    finally:
                        lite._SameConv2d.forward = original  # type: ignore[method-assign]
                    rates[name].append(rate)
            padded, grown = (
                (max(rates["padded"]), rows["padded"]),
                (max(rates["grown"]), rows["grown"]),
            )
            row = {
                "precision": str(precision),
                "batch": batch,
                "padded_input_img_per_s": round(padded[0], 1),
                "grown_kernel_img_per_s": round(grown[0], 1),
                "speedup": round(grown[0] / padded[0], 2),
                "max_row_difference": float((grown[1] - padded[1]).abs().max()),
            }
            print(row, flush=True)
            out.append(row)
    return out


def quantise_int8(front: torch.nn.Module, calibration: torch.Tensor, reduce_range: bool) -> Any:
    """``front`` quantised to int8 by ``torchao``'s PT2E flow (not compiled yet).

    Args:
        front: A prepared front (``prepare_backbone``).
        calibration: Preprocessed, channels-last images the observers see.
        reduce_range: 7-bit activations, which CPUs without VNNI need.

    Returns:
        The quantised graph module; any batch size from 1 to 4096.
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    batch = torch.export.Dim("batch", min=1, max=4096)
    exported = torch.export.export(
        front, (calibration[:8],), dynamic_shapes=({0: batch},), strict=True
    ).module()
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(
        xiq.get_default_x86_inductor_quantization_config(reduce_range=reduce_range)
    )
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for b in calibration.split(32):
            prepared(b)
    return convert_pt2e(prepared)


def _int8(
    front: torch.nn.Module, calibration: torch.Tensor, images: torch.Tensor, reduce_range: bool
) -> Any:
    if importlib.util.find_spec("torchao") is None:
        return "torchao is not installed"

    base_rate, base_rows = _rate(_inferring(front), images, 8)
    start = time.perf_counter()
    quantized = quantise_int8(front, calibration, reduce_range)
    quantise_s = time.perf_counter() - start
    start = time.perf_counter()
    lowered = lower_int8_graph(copy.deepcopy(quantized))  # what petalnet runs
    lower_s = time.perf_counter() - start
    torch._inductor.config.freezing = True
    compiled = torch.compile(quantized)
    start = time.perf_counter()
    with torch.inference_mode():
        compiled(images[:8])
    compile_s = time.perf_counter() - start

    rate, rows = _rate(_inferring(compiled), images, 8)
    direct_rate, direct_rows = _rate(_inferring(lowered), images, 8)
    result = {
        "reduce_range": reduce_range,
        "float32_eager_img_per_s": round(base_rate, 1),
        "int8_compiled_img_per_s": round(rate, 1),
        "int8_onednn_calls_img_per_s": round(direct_rate, 1),
        "speedup": round(rate / base_rate, 2),
        "onednn_calls_speedup": round(direct_rate / base_rate, 2),
        "quantise_s": round(quantise_s, 1),
        "compile_s": round(compile_s, 1),
        "lower_s": round(lower_s, 2),
        "row_cosine": round(float(F.cosine_similarity(rows, base_rows).mean()), 4),
        "row_relative_error": round(float((rows - base_rows).norm() / base_rows.norm()), 4),
        "onednn_calls_row_cosine": round(
            float(F.cosine_similarity(direct_rows, base_rows).mean()), 4
        ),
        "onednn_calls_against_compiled_cosine": round(
            float(F.cosine_similarity(direct_rows, rows).mean()), 4
        ),
    }
    print(result, flush=True)
    return result


class _ConvReLU6(torch.nn.Module):
    """A prepared (BN-folded, frozen) convolution and its ReLU6 in one oneDNN call."""

    def __init__(self, conv: torch.nn.Conv2d) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        weight, padding = c.weight, list(c.padding)  # type: ignore[arg-type]
        if c.stride[0] > 1:  # the grown kernel, as lite._SameConv2d computes it
            (lo_h, hi_h), (lo_w, hi_w) = (
                lite._same_padding(n, c.kernel_size[0], c.stride[0]) for n in x.shape[-2:]
            )
            weight = F.pad(c.weight, [hi_w - lo_w, 0, hi_h - lo_h, 0])
            padding = [hi_h, hi_w]
        out: torch.Tensor = torch.ops.mkldnn._convolution_pointwise(
            x, weight, c.bias, padding, list(c.stride), [1, 1], c.groups, "hardtanh", [0.0, 6.0], ""
        )
        return out


def _fused_activation(front: torch.nn.Module, images: torch.Tensor, repeats: int) -> Any:
    """Plain convolutions against one oneDNN call each, unpacked and prepacked (petalnet's)."""
    fused = copy.deepcopy(front)
    n = 0
    for seq in fused.modules():
        kids = list(seq) if isinstance(seq, torch.nn.Sequential) else []
        pair = len(kids) == 3 and isinstance(kids[0], torch.nn.Conv2d)
        if pair and isinstance(kids[2], torch.nn.ReLU6):
            seq[0], seq[2] = _ConvReLU6(kids[0]), torch.nn.Identity()
            n += 1
    packed = pack_convolutions(copy.deepcopy(front))  # what ImagePipeline.runner runs
    variants = {"two_calls": front, "one_call": fused, "packed": packed}
    precisions = [torch.float32] + ([torch.bfloat16] if cpu_has_native_bf16() else [])
    out = []
    for precision in precisions:
        rates: dict[str, list[float]] = {name: [] for name in variants}
        rows = {}
        for _ in range(repeats):  # alternated, so that drift hits all alike
            for name, module in variants.items():
                rate, rows[name] = _rate(_inferring(module, precision), images, 8)
                rates[name].append(rate)
        best = {name: max(r) for name, r in rates.items()}
        result = {
            "precision": str(precision),
            "fused_pairs": n,
            **{f"{name}_img_per_s": round(rate, 1) for name, rate in best.items()},
            "one_call_speedup": round(best["one_call"] / best["two_calls"], 2),
            "packed_speedup": round(best["packed"] / best["two_calls"], 2),
            "max_row_difference": {
                name: float((rows[name] - rows["two_calls"]).abs().max()) for name in variants
            },
        }
        print(result, flush=True)
        out.append(result)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3, help="alternations (best kept)")
    ap.add_argument("--no-int8", action="store_true", help="skip the int8 lever")
    ap.add_argument("--only", choices=["padding", "fused", "int8"], help="measure this lever alone")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    keep_cpu_buffers()  # as a CPU fit does
    paths = _picked(args.data, args.images + 128)
    backbone = petalnet.build_backbone("efficientnet_lite0")
    pre = backbone.meta.preprocessing
    transform = pre.transform()
    images = torch.stack([transform(read_image(p, pre.resize_size)) for p in paths])
    images = images.contiguous(memory_format=torch.channels_last)
    calibration, images = images[:128], images[128:]
    front = prepare_backbone(backbone, _CPU)
    with torch.inference_mode():  # warm-up: the first pass over the images runs slower
        for b in images.split(8):
            front(b)
    held = {
        k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if k in os.environ
    }
    return emit(
        {
            "command": "python benchmarks/front_levers.py "
            + " ".join(argv if argv is not None else sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d"),
            "torch": torch.__version__,
            **machine(),
            "held_to": held,
            "cpu_bf16": cpu_has_native_bf16(),
            "images": len(images),
            "same_padding": _padding(front, images, args.repeats)
            if args.only in (None, "padding")
            else "skipped",
            "fused_activation": _fused_activation(front, images, args.repeats)
            if args.only in (None, "fused")
            else "skipped",
            "int8": "skipped"
            if args.no_int8 or args.only not in (None, "int8")
            else [_int8(front, calibration, images, r) for r in (False, True)],
        },
        args.json,
    )


if __name__ == "__main__":
    main()
