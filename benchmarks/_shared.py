"""What the benchmark scripts share: the data's place, the recipe flags and the report."""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from petalnet.data import load_training_data
from petalnet.flags import add_arguments
from petalnet.params import param_specs

# ../shared/data/flowers102 beside the repository: train/ (6552) and valid/ (818) images
DEFAULT_DATA = (
    Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "flowers102"
).resolve()


def param_override(text: str) -> tuple[str, Any]:
    """``--param NAME=JSON`` as ``(name, value)``: one preset parameter changed."""
    name, _, value = text.partition("=")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"--param NAME=JSON; {exc}") from None


def holdout_preset(name: str, **overrides: Any) -> Any:
    """A preset as a hold-out protocol fits it: without its refit, which would train on the
    hold-out (``root/valid``) before it is scored."""
    import petalnet

    return petalnet.FlowerClassifier.from_preset(name, **{**overrides, "refit": False})


def recipe_parser(description: str) -> argparse.ArgumentParser:
    """--data, --device, --json, and every FlowerClassifier parameter from its one spec."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", type=Path, help="also write the results here")
    add_arguments(ap, defaults={"backbone": "efficientnet_lite0", "random_state": 0})
    return ap


def recipe(args: argparse.Namespace) -> dict[str, Any]:
    """The FlowerClassifier keywords of the parsed flags; a new, empty cache unless given."""
    params = {s.name: getattr(args, s.name) for s in param_specs() if hasattr(args, s.name)}
    params["device"] = args.device
    if params["cache_dir"] is None:  # a new empty folder, so the first fit is cold
        params["cache_dir"] = Path(tempfile.mkdtemp(prefix="petalnet-bench-cache-"))
    return params


def emit(result: Any, path: Path | None) -> Any:
    """Print the result as JSON and, given a path, write it there too."""
    print(json.dumps(result, indent=2))
    if path:
        path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def link(source: Path, target: Path) -> None:
    """A symbolic link ``target`` -> ``source`` (feature-cache keys follow it to the file)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(source.resolve())


def link_holdout(
    data: Path,
    holdout: float,
    root: Path,
    skip_classes: frozenset[str] = frozenset(),
    split: str = "random",
) -> tuple[int, int]:
    """Symbolic links: root/train (train minus a stratified hold-out), root/valid (the hold-out).

    The hold-out is ``holdout`` of each class of ``data/train`` (seed 0); ``data/valid`` is
    not used, so it stays the split that is reported once. Classes in ``skip_classes`` are
    left out of both. ``split="grouped"`` keeps the data doctor's groups of copies and
    siblings on one side (as ``fit(split="grouped")`` does).

    Returns:
        The number of images in root/train and in root/valid.
    """
    groups = None
    if split == "grouped":
        from petalnet.deep_check import near_duplicate_groups

        groups = near_duplicate_groups
    split_data = load_training_data(data / "train", valid_fraction=holdout, seed=0, groups=groups)
    counts = {"train": 0, "valid": 0}
    for name, samples in (("train", split_data.train), ("valid", split_data.valid)):
        for path, label in samples:
            if split_data.classes[label] not in skip_classes:
                link(path, root / name / split_data.classes[label] / path.name)
                counts[name] += 1
    names = data / "cat_to_name.json"
    if names.is_file():
        link(names, root / "cat_to_name.json")
    return counts["train"], counts["valid"]


def labelled_images(folder: Path, classes: list[str]) -> tuple[list[str], list[int]]:
    """The images of ``folder/<class>/`` for each of ``classes``, sorted, and their labels.

    Args:
        folder: A split's folder of class folders (e.g. a hold-out's ``valid/``).
        classes: The fitted classifier's ``classes_``; a label is the class's index there.

    Returns:
        The image paths and one label per path.
    """
    samples = sorted((p, c) for c in classes for p in (folder / c).iterdir())
    return [str(p) for p, _ in samples], [classes.index(c) for _, c in samples]


def peak_rss_mib() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_facts(script: str, argv: list[str] | None) -> dict[str, Any]:
    """What a result says of its run: the command that repeats it, the date, the machine.

    Args:
        script: The script's file name, e.g. ``"preset_views.py"``.
        argv: The arguments ``main`` was called with; ``None``: the command line's.

    Returns:
        ``command``, ``date`` and :func:`machine`'s keys.
    """
    args = argv if argv is not None else sys.argv[1:]
    return {
        "command": " ".join(["python", f"benchmarks/{script}", *args]),
        "date": time.strftime("%Y-%m-%d"),
        **machine(),
    }


def machine() -> dict[str, Any]:
    """The CPU model, core count and the vector flags that decide CPU speed and precision."""
    model, flags = platform.processor() or "?", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
    return {
        "cpu": model,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_flags": [f for f in wanted if f in flags],
    }
