"""The ``petalnet`` command line: train, predict, evaluate, check backbones, download data.

Errors are printed as one ``petalnet: error: ...`` line and exit with status 1 (2 for bad
usage); no traceback is shown.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import textwrap
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn, cast, get_args

from petalnet._types import ExportFormat
from petalnet._version import __version__
from petalnet.errors import ExportOptionsError, PetalnetError
from petalnet.flags import add_arguments, add_switch, word_parser
from petalnet.params import param_specs

if TYPE_CHECKING:  # torch loads only when a command needs it: --help stays fast
    from petalnet.classifier import FlowerClassifier
    from petalnet.results import TopK

__all__ = ["UsageError", "build_parser", "main"]

_PREDICT_CHUNK = 64  # images per predict() call when streaming to --output


class UsageError(PetalnetError):
    """A flag has a value the command cannot use (exit status 2)."""


def _device(args: argparse.Namespace) -> str:
    if args.device:
        return str(args.device)
    if args.gpu:
        import torch

        mps = getattr(torch.backends, "mps", None)
        if not torch.cuda.is_available() and not (mps is not None and mps.is_available()):
            print("petalnet: notice: --gpu, but this machine has no CUDA or MPS GPU: using cpu")
            return "cpu"
        return "auto"
    return "cpu"


def _load(args: argparse.Namespace, verbose: int = 0) -> FlowerClassifier:
    """The checkpoint, with its saved ``tta``, ``amp`` and device unless a flag says otherwise."""
    from petalnet.classifier import FlowerClassifier

    chosen = {name: getattr(args, name) for name in ("tta", "amp")}
    device = _device(args) if args.gpu or args.device else None
    return FlowerClassifier.load(
        args.checkpoint,
        device=device,
        verbose=verbose,
        **{name: value for name, value in chosen.items() if value is not None},
    )


def _tta_said(clf: FlowerClassifier) -> str:
    from petalnet.pipeline import describe_tta

    return describe_tta(clf.tta)


def _verbose(args: argparse.Namespace) -> int:
    return 0 if getattr(args, "quiet", False) else 1


def _plots_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ModuleNotFoundError:
        return False
    return True


def _classifier_params(args: argparse.Namespace) -> dict[str, Any]:
    """The ``FlowerClassifier`` keywords the ``train`` flags set (see :mod:`petalnet.params`)."""
    from petalnet.params import param_specs

    params = {s.name: getattr(args, s.name) for s in param_specs() if hasattr(args, s.name)}
    params["device"] = _device(args)
    params["verbose"] = _verbose(args)
    return params


def _cmd_train(args: argparse.Namespace) -> int:
    from petalnet.classifier import FlowerClassifier

    clf = FlowerClassifier(**_classifier_params(args))
    try:
        clf.validate()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    save_dir = Path(args.save_dir)
    try:
        clf.fit(args.data_dir, resume_from=args.resume)
    except Exception as exc:
        if not getattr(clf, "best_epoch_", 0):  # nothing trained yet: nothing to keep
            raise
        partial = clf.save(save_dir / f"{Path(args.checkpoint_name).stem}.partial.pt")
        raise PetalnetError(
            f"training stopped in epoch {len(clf.history_)}: {exc} The best weights so far "
            f"(epoch {clf.best_epoch_}) are saved in {partial}."
        ) from None
    path = clf.save(save_dir / args.checkpoint_name)
    from petalnet import distributed

    if not distributed.is_main():  # under torchrun, rank 0 reports and plots
        return 0
    best = clf.model_.validated_history[clf.best_epoch_ - 1]
    which = "last epoch" if clf.monitor == "last" or not clf.n_valid_ else "best epoch"
    kept = f"the {which} ({clf.best_epoch_}): valid accuracy {best['valid_accuracy']:.2%}"
    if clf.model_.selection_history:  # refitted
        print(
            f"refitted on every labelled image for {clf.best_epoch_} epochs, as many as the "
            f"run with a validation split kept ({kept}; the refit has no validation of its own)"
        )
    else:
        print(f"kept {kept}")
    if clf.tta:
        print(
            "(accuracies during training are of the centre crop; evaluate and predict run "
            f"with {_tta_said(clf)}, so their figures differ a little)"
        )
    print(f"saved {path}")
    if clf.model_.training.interrupted:
        command = f"petalnet train {args.data_dir} --resume {path} --save_dir {args.save_dir}"
        print(
            f"petalnet: interrupted after {len(clf.history_)} epoch(s); the best epoch "
            f"({clf.best_epoch_}) is saved in {path}. It is not calibrated yet (no "
            "temperature, never 'unknown'): calibration runs when training completes. "
            f"To go on where it stopped, with the same settings: {command}",
            file=sys.stderr,
        )
        return 130
    if _plots_available():
        from petalnet import plot

        curves = save_dir / f"{Path(args.checkpoint_name).stem}_curves.png"
        plot.training_curves(clf.history_, kept=clf.best_epoch_, path=curves)
        print(f"training curves: {curves}")
    return 0


def _expand_images(inputs: Sequence[str]) -> list[Path]:
    from petalnet.data import IMG_EXTENSIONS

    images: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            images += sorted(
                f
                for f in p.rglob("*")
                if f.suffix.lower() in IMG_EXTENSIONS and not f.name.startswith(".")
            )
        elif p.exists():
            images.append(p)
        else:
            raise PetalnetError(f"{item!r} does not exist; pass image files or folders.")
    return images


def _chunks(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


class _Writer:
    """Writes one row per input image as CSV or JSON lines, flushed per chunk.

    An unreadable image gets its row too, empty but for ``error`` (empty when fine), so the
    output joins back to the list of inputs.
    """

    def __init__(self, stream: IO[str], fmt: str, topk: int) -> None:
        self.stream, self.fmt, self.topk = stream, fmt, topk
        if fmt == "csv":
            self.csv = csv.writer(stream)
            header = ["image", "unknown", "novelty"]
            for k in range(1, topk + 1):
                header += [f"label_{k}", f"class_id_{k}", f"probability_{k}"]
            self.csv.writerow([*header, "error"])

    def write(self, image: Path, top: TopK | None, error: str | None = None) -> None:
        if self.fmt != "csv":
            self.stream.write(json.dumps(_record(image, top, error)) + "\n")
            return
        if top is None:
            self.csv.writerow([str(image), "", "", *[""] * (3 * self.topk), error or ""])
            return
        row: list[Any] = [str(image), int(top.unknown), f"{top.novelty:.6f}"]
        for p in top:
            row += [p.label, p.class_id, f"{p.probability:.6f}"]
        row += [""] * (3 * (self.topk - len(top)))
        self.csv.writerow([*row, ""])


def _record(image: Path, top: TopK | None, error: str | None = None) -> dict[str, Any]:
    """One image's JSON line: its top-k and whether it is unknown, or why it is unreadable."""
    if top is None:
        return {"image": str(image), "unknown": None, "novelty": None, "top": [], "error": error}
    return {
        "image": str(image),
        "unknown": top.unknown,
        "novelty": top.novelty,
        "top": [p.to_dict() for p in top],
        "error": None,
    }


def _cmd_predict(args: argparse.Namespace) -> int:
    from petalnet.data import load_category_names
    from petalnet.results import check_topk

    try:
        check_topk(args.top_k)
    except ValueError as exc:
        raise UsageError(f"--top_k: {exc}") from None
    clf = _load(args)
    if args.category_names:
        clf.category_names_ = load_category_names(args.category_names)
    images = _expand_images(args.images)
    if not images:
        raise PetalnetError(f"No images found in {', '.join(args.images)}.")
    out_path = Path(args.output) if args.output else None
    fmt = "jsonl" if args.json or (out_path and out_path.suffix in (".jsonl", ".json")) else "csv"
    stream = out_path.open("w", newline="", encoding="utf-8") if out_path else None
    writer = _Writer(stream, fmt, args.top_k) if stream else None
    first: tuple[Path, TopK] | None = None
    written, bad = 0, 0
    try:
        for n, result in enumerate(
            clf.iter_predictions(images, args.top_k, chunk_size=_PREDICT_CHUNK), 1
        ):
            image, top = images[n - 1], cast("TopK", result.predictions)  # file as a Path
            if result.error is not None:
                bad += 1
                print(f"petalnet: skipped: {result.error}", file=sys.stderr)
                if writer is not None:
                    writer.write(image, None, result.error)
                elif args.json:
                    print(json.dumps(_record(image, None, result.error)))
                if args.strict:
                    raise PetalnetError(f"stopped at an unreadable image (--strict): {image}")
                continue
            first = first or (image, top)
            written += 1
            if writer is not None:
                writer.write(image, top)
            elif args.json:
                print(json.dumps(_record(image, top)))
            else:
                print(image)
                if top.unknown:
                    print(
                        f"  unknown flower — not one of the {len(clf.classes_)} it knows "
                        f"(closest: {top[0].label}; novelty {top.novelty:.3f})"
                    )
                for rank, p in enumerate(top, 1):
                    print(f"  {rank}. {p.label:<32} {p.probability:7.2%}  (class {p.class_id})")
            if stream is not None and n % _PREDICT_CHUNK == 0:
                stream.flush()
    finally:
        if stream is not None:
            stream.close()
    if out_path:
        failed = f" and {bad} error row(s)" if bad else ""
        print(f"wrote {written} predictions{failed} to {out_path}")
    if bad and not written:
        raise PetalnetError(f"none of the {bad} image(s) could be read (named above).")
    if bad:
        print(f"petalnet: {bad} unreadable image(s) skipped (named above)", file=sys.stderr)
    if args.plot and first is not None:
        from petalnet import plot

        plot.prediction(first[0], first[1], path=args.plot)
        print(f"chart: {args.plot}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    clf = _load(args, _verbose(args))
    report = clf.evaluate(args.data_dir)
    if report["held_out"]:
        print(
            f"note: the model was fitted on {report['folder']}: these are the "
            f"{report['n_images']} images it held out for validation, not the ones it trained "
            "on; that split also picked the kept epoch.",
            file=sys.stderr,
        )
    elif Path(report["folder"]).name in ("valid", "val"):
        if clf.model_.selection_history:  # refitted on train + valid
            note = (
                f"the model was refitted on train + {report['folder']} (refit=True), so it "
                "trained on these images: this figure says nothing about new photos; evaluate "
                "a test/ folder instead."
            )
        else:
            note = (
                f"{args.data_dir} has no test/ split, so this is {report['folder']}, the split "
                "that picked the kept epoch: expect untouched photos to score a little lower."
            )
        print(f"note: {note}", file=sys.stderr)
    if args.json:
        shown = {k: v for k, v in report.items() if k != "confusion_matrix"}
        print(json.dumps({**shown, "tta": clf.tta}))
    else:
        print(
            f"{report['folder']}: accuracy {report['accuracy']:.2%}, top-5 "
            f"{report['top5_accuracy']:.2%}, loss {report['loss']:.4f}, "
            f"ECE {report['ece']:.2%} on {report['n_images']} images; "
            f"{report['unknown_rate']:.1%} of them called unknown; {_tta_said(clf)}"
        )
        worst = sorted(report["per_class_accuracy"].items(), key=lambda kv: kv[1])[:5]
        names, counts = clf.category_names_ or {}, report["per_class_count"]
        print(
            "weakest classes: "
            + ", ".join(
                f"{names.get(c, c)} {a:.0%} ({round(a * counts[c])}/{counts[c]})" for c, a in worst
            )
        )
    if args.plots:
        from petalnet import plot

        labels = [(clf.category_names_ or {}).get(c, c) for c in clf.classes_]
        target = Path(args.plots) / "confusion_matrix.png"
        plot.confusion_matrix(
            report["confusion_matrix"], labels, class_ids=clf.classes_, path=target
        )
        print(f"confusion matrix: {target}")
        grid = Path(args.plots) / "misclassified.png"
        plot.misclassified(report["misclassified"], clf.category_names_, path=grid)
        print(f"misclassified images: {grid}")
        curve = Path(args.plots) / "reliability.png"
        plot.reliability(report["reliability"], ece=report["ece"], path=curve)
        print(f"reliability diagram: {curve}")
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    from petalnet.presets import UNTOUCHED_NOTE, list_presets

    presets = list_presets()
    width = max(len(p.name) for p in presets)
    for preset in presets:
        print(f"{preset.name:<{width}} {preset.summary}")
        print(f"{'':<{width}} {preset.describe()}")
        flags = " ".join(
            f"--{k} {','.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
            if not isinstance(v, bool)
            else f"--{k}"
            for k, v in preset.params.items()
        )
        print(f"{'':<{width}} = {flags}")
    print(textwrap.fill(UNTOUCHED_NOTE, width=100))
    print("use: petalnet train DATA_DIR --preset NAME  (later flags override the preset)")
    return 0


def _cmd_backbones(args: argparse.Namespace) -> int:
    from petalnet.backbones.fusion import SEPARATOR
    from petalnet.backbones.info import backbone_info
    from petalnet.backbones.registry import get_backbone, list_backbones

    pattern = args.pattern or None
    if pattern and SEPARATOR in pattern:  # a fused name ("a+b") is not listed but is described
        get_backbone(pattern)  # an unknown part is named, with the available ones
        names = [pattern]
    else:
        names = list_backbones(pattern)
    if not names:
        raise PetalnetError(f"No backbone matches {args.pattern!r}; try `petalnet backbones`.")
    print(f"{'name':<22} {'features':>8} {'params':>9} {'blocks':>6}  weights offline")
    for name in names:
        info = backbone_info(name)
        params = f"{info['parameters'] / 1e6:.1f}M" if info["parameters"] else "?"
        dim = info["feature_dim"] or "?"
        blocks = len(info["blocks"]) if info["blocks"] is not None else "?"
        print(f"{name:<22} {dim:>8} {params:>9} {blocks:>6}  {info['offline']}")
        if len(names) == 1 and info["blocks"]:
            print(
                f"blocks, first to last (unfreeze_blocks counts from the end): "
                f"{', '.join(info['blocks'])}"
            )
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from petalnet.check import check_dataset

    near = args.near_threshold
    if near is not None and not 0 < near <= 1:
        raise UsageError(f"--near_threshold must be in (0, 1]; got {near}.")
    if args.copy_distance is not None and not 0 <= args.copy_distance <= 64:
        raise UsageError(f"--copy_distance must be in [0, 64] bits; got {args.copy_distance}.")
    report = check_dataset(args.data_dir, decode=not args.quick and not args.deep)
    print(report.summary())
    if not report.ok or not args.deep:
        return 0 if report.ok else 1
    from petalnet.deep_check import deep_check

    deep = deep_check(
        args.data_dir,
        backbone=args.arch,
        near_threshold=near,
        copy_distance=args.copy_distance,
        device=_device(args),
        verbose=_verbose(args),
    )
    print(deep.summary())
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(deep.to_dict(), indent=1) + "\n")
        print(f"report: {args.output}")
    if args.plots:
        from petalnet import plot

        pairs = Path(args.plots) / "duplicates.png"
        plot.duplicate_pairs(deep.duplicates, path=pairs)
        doubtful = Path(args.plots) / "mislabels.png"
        plot.misclassified(
            [
                {
                    "image": m.file,
                    "true": m.given,
                    "predicted": m.suggested,
                    "probability": m.suggested_probability,
                }
                for m in deep.mislabels
            ],
            deep.names,
            words=("filed as", "looks like"),
            path=doubtful,
        )
        print(f"copies and siblings: {pairs}\nlikely mislabels: {doubtful}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from petalnet.classifier import FlowerClassifier

    clf = FlowerClassifier.load(args.checkpoint, device="cpu")
    try:
        path = clf.export(args.output, format=args.format, amp=args.amp)
    except ExportOptionsError as exc:
        raise UsageError(str(exc)) from None
    print(f"exported {path} (+ {path.name}.json with classes, names and preprocessing)")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from petalnet import serve

    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be in 1..65535; got {args.port}.")
    if args.max_upload_mb <= 0:
        raise UsageError(f"--max_upload_mb must be positive; got {args.max_upload_mb}.")
    clf = _load(args)
    limit = int(args.max_upload_mb * 1024 * 1024)
    serve.run(clf, args.host, args.port, max_upload_bytes=limit)
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    from petalnet.datasets import download_flowers102

    out = download_flowers102(args.dir)
    counts = {s: sum(1 for _ in (out / s).rglob("*.jpg")) for s in ("train", "valid", "test")}
    print(f"Flowers-102 in {out}: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return 0


def _device_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--gpu",
        action="store_true",
        help="use a GPU (cuda or mps); without one, the CPU with a notice",
    )
    p.add_argument("--device", help="explicit device, e.g. cpu or cuda:1 (overrides --gpu)")


def _saved_flags(p: argparse.ArgumentParser) -> None:
    """Device, ``--tta/--no-tta`` and ``--amp`` of a command that loads a checkpoint.

    Each overrides what the checkpoint was saved with only when given.
    """
    _device_flags(p)
    add_switch(
        p,
        next(s for s in param_specs() if s.name == "tta"),
        ["--tta"],
        default=None,  # as saved
        metavar="flip|crops|crops+flip",
        help="average the image and its mirror (--tta or --tta flip), it and the crops at "
        "both ends of its longer side (crops), or those and their mirrors (crops+flip) "
        "(default: as the checkpoint was trained)",
    )
    _amp_flag(p, default=None, help="computing precision (default: as the checkpoint was saved)")


def _amp_flag(p: argparse.ArgumentParser, *, default: Any, help: str) -> None:
    """``--amp auto|on|off``, parsed like train's (from the parameter spec)."""
    spec = next(s for s in param_specs() if s.name == "amp")
    p.add_argument(
        "--amp", type=word_parser(spec), default=default, metavar="auto|on|off", help=help
    )


class _Parser(argparse.ArgumentParser):
    """Reports a usage error as one ``petalnet: error: ...`` line, exit status 2."""

    def error(self, message: str) -> NoReturn:
        """Print ``message`` on one line and exit with status 2."""
        self.exit(2, f"petalnet: error: {message} (see `{self.prog} --help`)\n")


def build_parser(
    preset: str | None = None, saved: Mapping[str, Any] | None = None
) -> argparse.ArgumentParser:
    """Build the argument parser.

    Args:
        preset: A preset whose parameters become the ``train`` defaults (explicit flags
            still win).
        saved: The parameters of a checkpoint ``train --resume`` continues: defaults over
            the preset's (explicit flags still win).

    Returns:
        The parser of every command; the ``train`` flags come from the parameter spec.

    Raises:
        ValueError: ``preset`` names no preset.
    """
    from petalnet.presets import get_preset, list_presets

    parser = _Parser(prog="petalnet", description="Train and use flower-photo classifiers.")
    parser.add_argument("--version", action="version", version=f"petalnet {__version__}")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )

    t = sub.add_parser("train", help="train a classifier on an image folder")
    t.add_argument("data_dir", help="root with train/ valid/ class folders, or one class folder")
    t.add_argument("--save_dir", default=".", help="folder for the checkpoint (default: .)")
    t.add_argument("--checkpoint_name", default="checkpoint.pt")
    t.add_argument(
        "--preset",
        choices=[p.name for p in list_presets()],
        default=preset,
        help="start from a named recipe (`petalnet presets`); other flags override it",
    )
    add_arguments(t, defaults={**(get_preset(preset).params if preset else {}), **(saved or {})})
    t.add_argument("--resume", metavar="CHECKPOINT", help="continue a run saved earlier")
    t.add_argument("--quiet", action="store_true", help="no progress output")
    _device_flags(t)  # train has --amp from the parameter spec
    t.set_defaults(func=_cmd_train)

    p = sub.add_parser("predict", help="top-k flower names for images")
    p.add_argument("images", nargs="+", help="image files or folders")
    p.add_argument("checkpoint")
    p.add_argument("--top_k", type=int, default=5)
    p.add_argument("--category_names", help="JSON mapping class folders to flower names")
    p.add_argument("--output", help="write predictions to a .csv or .jsonl file")
    p.add_argument("--json", action="store_true", help="JSON lines instead of text")
    p.add_argument("--plot", help="PNG of the (first) image beside its top-k chart")
    p.add_argument("--strict", action="store_true", help="stop at the first unreadable image")
    _saved_flags(p)
    p.set_defaults(func=_cmd_predict)

    e = sub.add_parser("evaluate", help="accuracy of a checkpoint on a labelled folder")
    e.add_argument("data_dir", help="class folders, or a root with test/ or valid/")
    e.add_argument("checkpoint")
    e.add_argument("--json", action="store_true", help="print the report as JSON")
    e.add_argument(
        "--plots",
        help="folder for confusion_matrix.png, misclassified.png and reliability.png",
    )
    e.add_argument("--quiet", action="store_true")
    _saved_flags(e)
    e.set_defaults(func=_cmd_evaluate)

    r = sub.add_parser("presets", help="list the named recipes and what they measured")
    r.set_defaults(func=_cmd_presets)

    b = sub.add_parser("backbones", help="list the available backbones")
    b.add_argument("pattern", nargs="?", help="wildcard filter, e.g. 'vgg*'")
    b.set_defaults(func=_cmd_backbones)

    c = sub.add_parser("check", help="scan a data folder for problems before training")
    c.add_argument("data_dir")
    c.add_argument("--quick", action="store_true", help="do not decode the images")
    c.add_argument(
        "--deep",
        action="store_true",
        help="also find duplicates, leaks across splits and likely mislabels (backbone features)",
    )
    c.add_argument("--plots", help="with --deep: folder for duplicates.png and mislabels.png")
    c.add_argument("--output", help="with --deep: write the findings to this JSON file")
    c.add_argument(
        "--arch",
        default="efficientnet_lite0",
        help="with --deep: backbone that compares images (default: %(default)s)",
    )
    c.add_argument(
        "--near_threshold",
        type=float,
        help="with --deep: cosine similarity of siblings, other shots of one plant (default: "
        "petalnet.deep_check.NEAR_THRESHOLD; see docs/data-doctor.md)",
    )
    c.add_argument(
        "--copy_distance",
        type=int,
        help="with --deep: perceptual-hash bits (of 64) within which two images are copies "
        "(default: the calibrated petalnet.hashes.COPY_DISTANCE; see docs/data-doctor.md)",
    )
    c.add_argument("--quiet", action="store_true", help="no progress output")
    _device_flags(c)
    c.set_defaults(func=_cmd_check)

    x = sub.add_parser("export", help="export a checkpoint to a torch.export program or ONNX")
    x.add_argument("checkpoint")
    x.add_argument("output", help="model file to write (.pt2 or .onnx)")
    formats = get_args(ExportFormat)
    x.add_argument("--format", choices=formats, default=formats[0], help="(default: %(default)s)")
    _amp_flag(
        x,
        default=False,
        help="on: a pt2 program computing in bfloat16; auto: so on a CPU with native "
        "bfloat16; off: float32 (default: off)",
    )
    x.set_defaults(func=_cmd_export)

    v = sub.add_parser("serve", help="serve a checkpoint: JSON API and a web page")
    v.add_argument("checkpoint")
    v.add_argument("--host", default="127.0.0.1", help="interface (default: %(default)s)")
    v.add_argument("--port", type=int, default=8000, help="TCP port (default: %(default)s)")
    v.add_argument(
        "--max_upload_mb", type=float, default=20, help="upload limit (default: %(default)s MB)"
    )
    _saved_flags(v)
    v.set_defaults(func=_cmd_serve)

    d = sub.add_parser("download", help="download a data set in the train/valid/test layout")
    d.add_argument("dataset", choices=["flowers102"])
    d.add_argument("dir", help="destination folder")
    d.set_defaults(func=_cmd_download)
    return parser


def _one_line_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: IO[str] | None = None,
    line: str | None = None,
) -> None:
    """Warnings as ``petalnet: warning: ...`` lines, without a source line."""
    print(f"petalnet: warning: {message}", file=sys.stderr)


def _preset_in(argv: Sequence[str]) -> str | None:
    """The ``--preset`` of ``train`` when it names one (an unknown name is argparse's error)."""
    from petalnet.presets import list_presets

    if not argv or argv[0] != "train":
        return None
    words = [w.split("=", 1)[1] for w in argv if w.startswith("--preset=")]
    words += [argv[i + 1] for i, w in enumerate(argv[:-1]) if w == "--preset"]
    known = {p.name for p in list_presets()}
    return next((w for w in reversed(words) if w in known), None)


def _resumed_params(argv: Sequence[str]) -> dict[str, Any] | None:
    """The parameters of the checkpoint ``train --resume`` names: the run's own defaults."""
    if not argv or argv[0] != "train":
        return None
    named = [w.split("=", 1)[1] for w in argv if w.startswith("--resume=")]
    named += [argv[i + 1] for i, w in enumerate(argv[:-1]) if w == "--resume"]
    if not named:
        return None
    from petalnet.checkpoint import read_checkpoint
    from petalnet.fitting import RESUME_KEEPS

    saved = dict(read_checkpoint(named[-1]).get("params", {}))
    return {k: v for k, v in saved.items() if k not in RESUME_KEEPS}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line.

    Args:
        argv: Arguments without the program name; ``sys.argv[1:]`` when ``None``.

    Returns:
        The exit status: 0 on success, 1 on an error, 130 when interrupted.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        saved = _resumed_params(argv)
    except PetalnetError as exc:
        print(f"petalnet: error: {exc}", file=sys.stderr)
        return 1
    args = build_parser(preset=_preset_in(argv), saved=saved).parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warning
            return int(args.func(args))
    except UsageError as exc:
        print(f"petalnet: error: {exc}", file=sys.stderr)
        return 2
    except PetalnetError as exc:
        print(f"petalnet: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # disk full, permission denied, ...
        print(f"petalnet: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("petalnet: interrupted", file=sys.stderr)
        return 130
