"""The classifier's parameters, declared once: name, type, default, allowed values, doc.

:class:`ClassifierParams` is a dataclass whose fields are the parameters of
:class:`~petalnet.FlowerClassifier`. Everything else is derived from it: the constructor
(which only stores values, scikit-learn style), validation (:meth:`validate`),
``get_params``/``set_params`` (so ``sklearn.base.clone`` works), and the ``petalnet train``
and benchmark flags, which :mod:`petalnet.flags` renders from :func:`param_specs`. Allowed
values of a choice come from its ``Literal`` type, so they are written once too.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Literal, Union, get_args, get_origin

from typing_extensions import Self

from petalnet._types import (
    Amp,
    Augmentation,
    ClassWeight,
    Monitor,
    NoveltyScore,
    Quantize,
    Schedule,
    Split,
    Strategy,
    TestViews,
    WeightsArg,
)
from petalnet.callbacks import Callback

if typing.TYPE_CHECKING:
    import torch

__all__ = [
    "ClassWeight",
    "ClassifierParams",
    "ParamSpec",
    "members",
    "param_specs",
    "params_docstring",
]

_Check = Callable[[Any, "ClassifierParams"], bool]


def _param(
    default: Any,
    doc: str,
    *,
    check: _Check | None = None,
    rule: str = "",
    flag: str | None = "",
    none_words: tuple[str, ...] = ("none",),
) -> Any:
    """A parameter field: its default, one-line doc, range check and command-line flag.

    Args:
        default: The default value.
        doc: One line on what it does.
        check: ``check(value, params)`` is true for valid values (beyond the type).
        rule: What ``check`` demands, for the error message.
        flag: The command-line flag (``""``: ``--<name>``; ``None``: not on the command line).
        none_words: Command-line words that mean ``None``.

    Returns:
        A dataclass field carrying that metadata.
    """
    meta = {"doc": doc, "check": check, "rule": rule, "flag": flag, "none_words": none_words}
    return field(default=default, metadata=meta)


def _positive(v: Any, _: ClassifierParams) -> bool:
    return bool(v > 0)


def _at_least_one(v: Any, _: ClassifierParams) -> bool:
    return v is None or bool(v >= 1)


def _non_negative(v: Any, _: ClassifierParams) -> bool:
    return bool(v >= 0)


def _fraction(v: Any, _: ClassifierParams) -> bool:
    return bool(0.0 <= v < 1.0)


def _within_epochs(v: Any, p: ClassifierParams) -> bool:
    return v is None or 0 <= v <= p.epochs


def _hidden(v: Any, _: ClassifierParams) -> bool:
    widths = [v] if isinstance(v, int) else list(v or [])
    return v == 0 or all(isinstance(w, int) and not isinstance(w, bool) and w > 0 for w in widths)


@dataclass(eq=False, repr=False)
class ClassifierParams:
    """The parameters of :class:`~petalnet.FlowerClassifier` (see :func:`param_specs`)."""

    backbone: str = _param(
        "vgg16", "registered backbone name (see `petalnet backbones`)", flag="--arch"
    )
    _: KW_ONLY
    weights: WeightsArg = _param(
        "DEFAULT", "DEFAULT (ImageNet), another named weights set, a local file, or none"
    )
    hidden_units: int | Sequence[int] | None = _param(
        512,
        "hidden-layer width of the classifier; comma-separated for several; none: linear",
        check=_hidden,
        rule="a positive integer, a list of them, or None",
    )
    dropout: float = _param(
        0.2, "dropout probability in the classifier", check=_fraction, rule="in [0, 1)"
    )
    learning_rate: float = _param(
        1e-3, "Adam's (peak) learning rate", check=_positive, rule="positive"
    )
    epochs: int = _param(
        10, "passes over the training images", check=_at_least_one, rule="at least 1"
    )
    batch_size: int = _param(
        64, "feature vectors (or images) per training step", check=_at_least_one, rule="at least 1"
    )
    device: str | torch.device = _param(
        "auto", "auto (cuda, then mps, then cpu), or a device such as cpu or cuda:1", flag=None
    )
    category_names: str | os.PathLike[str] | Mapping[str, str] | None = _param(
        None,
        "JSON file of class folder -> flower name (default: the data folder's cat_to_name.json)",
    )
    random_state: int | None = _param(
        None, "seed of the split, initialisation, batch order and augmentation", flag="--seed"
    )
    valid_fraction: float = _param(
        0.2,
        "share of each class held out for validation when there is no valid/ folder",
        check=_fraction,
        rule="in [0, 1)",
    )
    split: Split = _param(
        "grouped",
        "how that share is carved: 'grouped' keeps each group of copies and other shots of one "
        "plant (found as petalnet check --deep finds them, with efficientnet_lite0) on one side, "
        "so validation never scores a near-copy of a training photo; 'stratified' picks images "
        "at random per class",
    )
    extract_batch_size: int | None = _param(
        None,
        "images per backbone pass (default: 8 on a CPU, 64 on a GPU)",
        check=_at_least_one,
        rule="at least 1 or None",
    )
    num_workers: int | None = _param(
        None,
        "image-decoding worker processes (default: 0 on two cores or fewer)",
        check=lambda v, _: v is None or v >= 0,
        rule="0 or more, or None",
    )
    amp: Amp = _param(
        "auto", "mixed precision: auto (fp16 on CUDA, bf16 on CPUs that have it), true or false"
    )
    quantize: Quantize | None = _param(
        None,
        "int8: run the frozen backbone (with freeze_unfreeze: its frozen front) quantised to "
        "8-bit integers on the CPU, calibrated on "
        "64 training images (needs torchao: pip install 'petalnet[int8]'); the backbone 1.9x "
        "faster on AVX2-only CPUs, 1.2x against bfloat16, after ~8 s of calibrating; auto: "
        "int8 where the CPU has oneDNN's int8 kernels and torchao is installed, for the "
        "backbones measured to keep their accuracy in int8 (lite0; as a fused part or the "
        "frozen front of freeze_unfreeze where the CPU has no bfloat16), else float",
        check=lambda v, p: v in (None, "auto") or p.strategy in ("freeze", "freeze_unfreeze"),
        rule="None or 'auto' with strategy 'full' (only what stays frozen is quantised)",
    )
    augment_views: int = _param(
        0,
        "cached randomly augmented views of each training image, one per epoch in turn",
        check=_non_negative,
        rule="0 or more",
    )
    augmentation: Augmentation = _param(
        "classic", "augmentation of those views (and of every epoch of strategy full)"
    )
    cache: bool = _param(True, "keep backbone features on disk for later runs on the same files")
    cache_dir: str | os.PathLike[str] | None = _param(
        None, "feature cache folder (default: $PETALNET_CACHE_DIR or ~/.cache/petalnet)"
    )
    weight_decay: float = _param(
        0.0,
        "decoupled weight decay (AdamW); 0 is the classic Adam",
        check=_non_negative,
        rule="0 or more",
    )
    label_smoothing: float = _param(
        0.0,
        "share of each target's probability spread over all classes",
        check=_fraction,
        rule="in [0, 1)",
    )
    lr_schedule: Schedule = _param("constant", "learning-rate schedule")
    warmup_epochs: int = _param(
        0, "linear learning-rate warm-up epochs", check=_within_epochs, rule="in [0, epochs]"
    )
    early_stopping: int | None = _param(
        None,
        "stop after this many epochs without a lower validation loss",
        check=_at_least_one,
        rule="at least 1 or None",
    )
    class_weight: ClassWeight | None = _param(
        None, "balanced: weigh each class's loss by 1/its frequency"
    )
    monitor: Monitor = _param(
        "valid_loss", "what picks the kept epoch (last: the last one; validation only reports)"
    )
    strategy: Strategy = _param(
        "freeze",
        "what trains: head (freeze), head then last blocks (freeze_unfreeze), everything (full)",
    )
    unfreeze_blocks: int | None = _param(
        2,
        "backbone blocks freeze_unfreeze trains, from the end (all: the whole backbone); of a "
        "fused backbone a+b, a's last blocks, b staying frozen",
        check=_at_least_one,
        rule="at least 1, or None for every block",
        none_words=("none", "all"),
    )
    freeze_epochs: int | None = _param(
        None,
        "head-only epochs before unfreezing (default: half of epochs; 0 for full)",
        check=_within_epochs,
        rule="in [0, epochs] or None",
    )
    backbone_lr_scale: float = _param(
        0.1,
        "fine-tuned backbone layers learn at learning_rate times this",
        check=_positive,
        rule="positive",
    )
    ema: float | None = _param(
        None,
        "decay per step of an exponential moving average of the trained weights (e.g. "
        "0.998); validation, the kept epoch and the saved model use the average",
        check=lambda v, _: v is None or 0 < v < 1,
        rule="in (0, 1) or None",
    )
    mixup: float = _param(
        0.0,
        "mixup alpha: each training batch is blended with a shuffled copy of itself (rows: "
        "features or cached layer outputs), the weight drawn from Beta(alpha, alpha); 0: off",
        check=_non_negative,
        rule="0 or more",
    )
    refit: bool = _param(
        False,
        "after the validation split picks the kept epoch, train again on train + valid "
        "for that many epochs (the last one kept)",
    )
    calibrate: bool = _param(
        True,
        "fit a temperature on the validation split so that probabilities are calibrated",
    )
    novelty: NoveltyScore = _param(
        "combined", "how novelty_score measures that a photo is unlike every known flower"
    )
    known_recall: float | None = _param(
        0.95,
        "share of known validation photos kept below the unknown-flower threshold "
        "(none: never say unknown)",
        check=lambda v, _: v is None or 0 < v <= 1,
        rule="in (0, 1] or None",
    )
    callbacks: Sequence[Callback] | None = _param(
        None, "extra Callback objects called during training", flag=None
    )
    tta: bool | TestViews = _param(
        False,
        "test-time augmentation in evaluate and predict: average the centre crop and its "
        "mirror (on, or flip), it and the crops at both ends of the longer side (crops), or "
        "those and their mirrors (crops+flip)",
    )
    strict: bool = _param(False, "stop at the first unreadable image instead of skipping it")
    verbose: int | bool = _param(
        1, "0 or False silent, 1 or True progress and one line per epoch", flag=None
    )

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """Return the parameters as a dict (scikit-learn style).

        Args:
            deep: Accepted for scikit-learn; there are no nested estimators.

        Returns:
            Parameter name to value.
        """
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> Self:
        """A new estimator with a named recipe's parameters (``petalnet presets`` lists them).

        Args:
            name: The preset, e.g. ``"fast-cpu"`` or ``"best-cpu"``.
            **overrides: Parameters that replace the preset's (or add to it).

        Returns:
            The unfitted estimator.

        Raises:
            ValueError: No preset has that name (the message lists those that exist).
        """
        from petalnet.presets import get_preset

        return cls(**{**get_preset(name).params, **overrides})

    def set_params(self, **params: Any) -> Self:
        """Set parameters by name (scikit-learn style); fitted state is left as it is.

        Args:
            **params: Parameter names and values.

        Returns:
            ``self``.

        Raises:
            ValueError: A name is not a parameter (the message lists them).
        """
        names = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(params) - names)
        if unknown:
            raise ValueError(
                f"Unknown parameter(s) {', '.join(unknown)} of {type(self).__name__}; "
                f"valid: {', '.join(sorted(names))}."
            )
        for name, value in params.items():
            setattr(self, name, value)
        return self

    def validate(self) -> None:
        """Check every parameter's type and range.

        Raises:
            ValueError: A parameter is out of range or of the wrong type; the message names
                it, the rule and the value.
        """
        for spec in param_specs():
            value = getattr(self, spec.name)
            if not _matches(value, spec.annotation):
                raise ValueError(f"{spec.name} must be {spec.describe()}; got {value!r}.")
            if spec.check is not None and not spec.check(value, self):
                raise ValueError(f"{spec.name} must be {spec.rule}; got {value!r}.")

    def __repr__(self) -> str:
        changed = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != f.default
        ]
        return f"{type(self).__name__}({', '.join(changed)})"


@dataclass(frozen=True)
class ParamSpec:
    """One parameter as data.

    Attributes:
        name: The keyword.
        annotation: Its type (``Literal`` types carry the allowed values).
        default: Its default.
        doc: One line on what it does.
        check: Range check beyond the type, ``check(value, params)``.
        rule: What ``check`` demands.
        flag: Its command-line flag, ``None`` when it has none.
        none_words: Command-line words meaning ``None``.
    """

    name: str
    annotation: Any
    default: Any
    doc: str
    check: _Check | None
    rule: str
    flag: str | None
    none_words: tuple[str, ...]

    @property
    def choices(self) -> tuple[Any, ...]:
        """Allowed values of a ``Literal`` parameter (``None`` too where it is optional)."""
        return tuple(
            v
            for t in members(self.annotation)
            for v in (get_args(t) if get_origin(t) is Literal else ())
        )

    def describe(self) -> str:
        """The type in words, for messages."""
        words = []
        for t in members(self.annotation):
            if get_origin(t) is Literal:
                words.append(" or ".join(repr(v) for v in get_args(t)))
            elif t is type(None):
                words.append("None")
            elif t is _TorchDevice:
                words.append("torch.device")
            else:
                words.append(getattr(t, "__name__", str(t)))
        return " or ".join(words)

    def parse(self, text: str) -> Any:
        """Turn a command-line word into a value of this parameter's type.

        Args:
            text: The word.

        Returns:
            The value.

        Raises:
            ValueError: ``text`` fits none of the parameter's types.
        """
        kinds = members(self.annotation)
        word = text.strip()
        if type(None) in kinds and word.lower() in self.none_words:
            return None
        for t in kinds:
            value = _parse_as(word, t)
            if value is not _NO:
                return value
        raise ValueError(f"invalid {self.describe()}: {text!r}")


_NO = object()


def members(annotation: Any) -> tuple[Any, ...]:
    """The types a (possibly nested) union annotation allows, in order."""
    if get_origin(annotation) in (Union, types.UnionType):
        return tuple(m for a in get_args(annotation) for m in members(a))
    return (annotation,)


def _parse_as(word: str, t: Any) -> Any:
    """``word`` as a value of type ``t``, or ``_NO``."""
    origin = get_origin(t)
    low = word.lower()
    if origin is Literal:
        for v in get_args(t):
            if low == str(v).lower():
                return v
        return _NO
    if t is bool:
        return {
            "true": True,
            "on": True,
            "yes": True,
            "1": True,
            "false": False,
            "off": False,
            "no": False,
            "0": False,
        }.get(low, _NO)
    if t in (int, float):
        try:
            return t(word)
        except ValueError:
            return _NO
    if origin in (Sequence, list, tuple) or t is Sequence:
        parts = [p for p in word.replace(" ", ",").split(",") if p]
        item = get_args(t)[0] if get_args(t) else str
        values = [_parse_as(p, item) for p in parts]
        return _NO if not values or _NO in values else values
    if t is str or t is os.PathLike or origin is os.PathLike:
        return word
    return _NO


def _matches(value: Any, annotation: Any) -> bool:
    """Whether ``value`` fits ``annotation`` (ints count as floats; bools are not ints)."""
    for t in members(annotation):
        origin = get_origin(t)
        if t is type(None) and value is None:
            return True
        if origin is Literal and any(value == v and type(value) is type(v) for v in get_args(t)):
            return True
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if t is bool and isinstance(value, bool):
            return True
        if t is str and isinstance(value, str):
            return True
        if (t is os.PathLike or origin is os.PathLike) and isinstance(value, os.PathLike):
            return True
        if (
            origin in (Sequence, Mapping)
            and isinstance(value, (origin,))
            and not isinstance(value, str)
        ):
            return True
        if (
            t is _TorchDevice
            and type(value).__module__ == "torch"
            and type(value).__name__ == "device"
        ):
            return True
    return False


_SPECS: tuple[ParamSpec, ...] | None = None


class _TorchDevice:
    """Stands for ``torch.device`` when the annotations are read.

    torch is not imported for them, so ``petalnet --help`` starts fast; :func:`_matches`
    recognises a device by its type's name.
    """


class _TorchNames:
    device = _TorchDevice


def params_docstring() -> str:
    """The ``Args:`` section documenting every parameter, for the estimator's docstring."""
    lines = ["", "    Args:"]
    for spec in param_specs():
        default = "None" if spec.default is None else repr(spec.default)
        lines.append(
            f"        {spec.name}: {spec.doc[0].upper()}{spec.doc[1:]} (default {default})."
        )
    return "\n".join(lines) + "\n"


def param_specs() -> tuple[ParamSpec, ...]:
    """Every parameter of :class:`ClassifierParams`, in order, as :class:`ParamSpec`.

    Returns:
        The specs.
    """
    global _SPECS
    if _SPECS is None:
        hints = typing.get_type_hints(ClassifierParams, localns={"torch": _TorchNames})
        _SPECS = tuple(
            ParamSpec(
                name=f.name,
                annotation=hints[f.name],
                default=f.default,
                doc=f.metadata["doc"],
                check=f.metadata["check"],
                rule=f.metadata["rule"],
                flag=(f.metadata["flag"] or f"--{f.name}")
                if f.metadata["flag"] is not None
                else None,
                none_words=f.metadata["none_words"],
            )
            for f in dataclasses.fields(ClassifierParams)
        )
    return _SPECS
