"""What the benchmark scripts share: the data's place, the recipe flags and the report."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from petalnet.params import add_arguments, param_specs

# ../shared/data/flowers102 beside the repository: train/ (6552) and valid/ (818) images
DEFAULT_DATA = (
    Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "flowers102"
).resolve()


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


def emit(result: dict[str, Any], path: Path | None) -> dict[str, Any]:
    """Print the result as JSON and, given a path, write it there too."""
    print(json.dumps(result, indent=2))
    if path:
        path.write_text(json.dumps(result, indent=2) + "\n")
    return result
