"""The backbone registry: names to builder functions, from code and from installed plugins.

Backbones come from two places:

* code, with the :func:`register_backbone` decorator;
* other installed packages, through the ``petalnet.backbones`` entry-point group. Entry
  points are discovered lazily (the first time a name is not found or the list is asked
  for), once per process; a plugin that fails to import is a warning, never a crash.

A builder is a callable ``builder(weights="DEFAULT") -> FeatureExtractor``. A registration
may also say where the builder's default weights come from (:data:`WeightsStatus`), so that
``petalnet backbones`` can tell without building anything, whether int8 was measured to
keep the backbone's accuracy (``auto_int8``: what ``quantize="auto"`` quantises), and which
of its first blocks stay in float32 when it is quantised (``int8_float``).
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from importlib.metadata import EntryPoint, entry_points
from typing import Protocol, TypeVar

from petalnet.backbones.base import FeatureExtractor, WeightsArg
from petalnet.backbones.fusion import SEPARATOR, fuse, part_weights
from petalnet.errors import BackboneNotFoundError, PetalnetError, PetalnetWarning

__all__ = [
    "ENTRY_POINT_GROUP",
    "BackboneBuilder",
    "WeightsStatus",
    "auto_int8",
    "build_backbone",
    "get_backbone",
    "int8_float",
    "list_backbones",
    "register_backbone",
    "registered",
    "weights_status",
]

ENTRY_POINT_GROUP = "petalnet.backbones"


class BackboneBuilder(Protocol):
    """A function building a backbone: ``builder(weights="DEFAULT") -> FeatureExtractor``."""

    def __call__(self, weights: WeightsArg = ...) -> FeatureExtractor:
        """Build the backbone with ``weights`` (a named set, a file path, or ``None``)."""
        ...


WeightsStatus = Callable[[], str]
"""Tells, without building anything, where a backbone's default weights would come from:
``"bundled"``, ``"cached"``, ``"download"`` or an install hint."""

B = TypeVar("B", bound=BackboneBuilder)

_REGISTRY: dict[str, BackboneBuilder] = {}
_WEIGHTS_STATUS: dict[str, WeightsStatus] = {}
_AUTO_INT8: set[str] = set()
_INT8_FLOAT: dict[str, tuple[str, ...]] = {}
_PLUGINS: dict[str, EntryPoint] | None = None  # discovered, not yet loaded


def register_backbone(
    name: str | None = None,
    *,
    overwrite: bool = False,
    weights_status: WeightsStatus | None = None,
    auto_int8: bool = False,
    int8_float: Sequence[str] = (),
) -> Callable[[B], B]:
    """Register a backbone builder under ``name`` (a decorator).

    Example::

        @register_backbone("tiny_cnn")
        def tiny_cnn(weights="DEFAULT") -> FeatureExtractor:
            ...

    Args:
        name: Registry name; defaults to the function's ``__name__``.
        overwrite: Replace an existing registration of the same name instead of failing.
        weights_status: Where the default weights come from (see :data:`WeightsStatus`);
            ``petalnet backbones`` shows ``"unknown"`` without it.
        auto_int8: Whether ``quantize="auto"`` quantises this backbone to int8 where the
            CPU runs int8 kernels: set it only where int8 features were measured to keep
            the classifier's accuracy (efficientnet_lite0, and lite1 with ``int8_float``).
            ``quantize="int8"`` quantises any backbone.
        int8_float: Children of the built backbone's ``body`` (e.g. ``("stem", "stage1")``)
            that stay in float32 whenever it is quantised: where int8 was measured to cost
            its accuracy there (efficientnet_lite1's first block; docs/benchmarks.md).

    Returns:
        A decorator that registers its argument and returns it unchanged.

    Raises:
        PetalnetError: ``name`` is taken and ``overwrite`` is false.
    """

    def decorator(builder: B) -> B:
        key: str = name or str(getattr(builder, "__name__", ""))
        if key in _REGISTRY and _REGISTRY[key] is not builder and not overwrite:
            raise PetalnetError(
                f"A backbone named {key!r} is already registered; choose another name "
                "or pass register_backbone(..., overwrite=True)."
            )
        _REGISTRY[key] = builder
        if weights_status is not None:
            _WEIGHTS_STATUS[key] = weights_status
        else:
            _WEIGHTS_STATUS.pop(key, None)
        if auto_int8:
            _AUTO_INT8.add(key)
        else:
            _AUTO_INT8.discard(key)
        _INT8_FLOAT[key] = tuple(int8_float)
        return builder

    return decorator


@contextmanager
def registered(name: str, builder: BackboneBuilder) -> Iterator[BackboneBuilder]:
    """Register ``builder`` under ``name`` for the duration of a ``with`` block.

    Whatever was registered under ``name`` before comes back afterwards, so tests and
    notebooks can try a backbone without leaving it in the process-wide registry.

    Args:
        name: The registry name.
        builder: The builder.

    Yields:
        ``builder``.
    """
    before, status = _REGISTRY.get(name), _WEIGHTS_STATUS.get(name)
    auto, floats = name in _AUTO_INT8, _INT8_FLOAT.pop(name, ())
    _AUTO_INT8.discard(name)  # the builder tried is not the one int8 was measured on
    _REGISTRY[name] = builder
    try:
        yield builder
    finally:
        if before is None:
            _REGISTRY.pop(name, None)
        else:
            _REGISTRY[name] = before
        if status is not None:
            _WEIGHTS_STATUS[name] = status
        if auto:
            _AUTO_INT8.add(name)
        if floats:
            _INT8_FLOAT[name] = floats


def weights_status(name: str) -> str:
    """Where the default weights of backbone ``name`` would come from, without building it.

    Args:
        name: A registered backbone name.

    Returns:
        What its registration's :data:`WeightsStatus` says, or ``"unknown"``.
    """
    if len(parts := _parts(name)) > 1:  # a fused backbone: each part's
        return SEPARATOR.join(weights_status(part) for part in parts)
    status = _WEIGHTS_STATUS.get(name)
    return status() if status is not None else "unknown"


def auto_int8(name: str) -> tuple[bool, ...]:
    """Whether ``quantize="auto"`` may quantise each part of backbone ``name``.

    One flag per part (one part, or those of a fused name): its registration's
    ``auto_int8``.

    Args:
        name: A backbone name, e.g. ``"efficientnet_lite0+efficientnet_lite1"``.

    Returns:
        One flag per part, in order.
    """
    return tuple(part in _AUTO_INT8 for part in _parts(name))


def int8_float(name: str) -> tuple[tuple[str, ...], ...]:
    """The children of each part's ``body`` that stay in float32 when backbone ``name`` is int8.

    Args:
        name: A backbone name, e.g. ``"efficientnet_lite0+efficientnet_lite1"``.

    Returns:
        One tuple of child names per part, in order: its registration's ``int8_float``.
    """
    return tuple(_INT8_FLOAT.get(part, ()) for part in _parts(name))


def _parts(name: str) -> list[str]:
    """The registered names a backbone name is made of (itself, or a fused name's parts)."""
    return [name] if name in _REGISTRY or SEPARATOR not in name else name.split(SEPARATOR)


def _discover_plugins() -> dict[str, EntryPoint]:
    """Return the entry points of the plugin group, read once and cached."""
    global _PLUGINS
    if _PLUGINS is None:
        found: dict[str, EntryPoint] = {}
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if ep.name in found:
                warnings.warn(
                    f"Two installed packages register the backbone {ep.name!r}; "
                    f"keeping {found[ep.name].value!r}, ignoring {ep.value!r}.",
                    PetalnetWarning,
                    stacklevel=3,
                )
                continue
            found[ep.name] = ep
        _PLUGINS = found
    return _PLUGINS


def _load_plugin(name: str) -> BackboneBuilder | None:
    """Import one plugin entry point; warn and return ``None`` when it is broken."""
    ep = _discover_plugins().pop(name, None)
    if ep is None:
        return _REGISTRY.get(name)
    if name in _REGISTRY:
        warnings.warn(
            f"Backbone plugin {ep.value!r} uses the name {name!r}, which petalnet already "
            "has; the plugin is ignored. Rename its entry point.",
            PetalnetWarning,
            stacklevel=3,
        )
        return _REGISTRY[name]
    try:
        obj = ep.load()
    except Exception as exc:  # a broken plugin must not break petalnet
        warnings.warn(
            f"Backbone plugin {name!r} ({ep.value}) failed to load and is skipped: "
            f"{type(exc).__name__}: {exc}",
            PetalnetWarning,
            stacklevel=3,
        )
        return None
    # An entry point may name the builder itself, or a module whose import registers it.
    if name not in _REGISTRY:
        if not callable(obj):
            warnings.warn(
                f"Backbone plugin {name!r} ({ep.value}) is neither a builder function nor a "
                "module that registers one; it is skipped.",
                PetalnetWarning,
                stacklevel=3,
            )
            return None
        _REGISTRY[name] = obj
    return _REGISTRY[name]


def _load_all_plugins() -> None:
    for name in list(_discover_plugins()):
        _load_plugin(name)


def get_backbone(name: str) -> BackboneBuilder:
    """Return the builder registered under ``name``.

    Args:
        name: A registered name, e.g. ``"vgg16"`` or ``"efficientnet_lite0"``; names joined
            with ``+`` (``"efficientnet_lite0+efficientnet_lite1"``) fuse those backbones:
            their features are concatenated (see :mod:`petalnet.backbones.fusion`).

    Returns:
        The builder: ``builder(weights="DEFAULT") -> FeatureExtractor``.

    Raises:
        BackboneNotFoundError: No such backbone; the message lists close and available names
            and how to add one.
    """
    builder = _REGISTRY.get(name)
    if len(parts := _parts(name)) > 1:  # several backbones side by side
        for part in parts:
            get_backbone(part)  # an unknown part is named, with the available ones
        return functools.partial(_build_fused, parts)
    if builder is None and name in _discover_plugins():
        builder = _load_plugin(name)
    if builder is None:
        available = list_backbones()
        close = difflib.get_close_matches(name.lower(), available, n=5, cutoff=0.6)
        close += [n for n in available if name.lower() in n and n not in close]
        hint = f" Did you mean {', '.join(close[:5])}?" if close else ""
        raise BackboneNotFoundError(
            f"Unknown backbone {name!r}.{hint} `petalnet backbones` lists all "
            f"{len(available)} (petalnet.list_backbones() in Python). "
            "To add one, decorate a builder with @petalnet.register_backbone('name') or "
            f"expose it from an installed package under the {ENTRY_POINT_GROUP!r} entry-point "
            "group (see docs/backbones.md)."
        )
    return builder


def _build_fused(names: list[str], weights: WeightsArg = "DEFAULT") -> FeatureExtractor:
    """Build the parts ``names`` and fuse them (see :mod:`petalnet.backbones.fusion`)."""
    per_part = part_weights(weights, names)
    return fuse([build_backbone(n, w) for n, w in zip(names, per_part, strict=True)])


def build_backbone(name: str, weights: WeightsArg = "DEFAULT") -> FeatureExtractor:
    """Build the backbone registered under ``name``.

    Args:
        name: A registered name.
        weights: ``"DEFAULT"``, another named weights set, a local file path, or ``None``
            for a random initialisation.

    Returns:
        The feature extractor; its :attr:`~FeatureExtractor.meta` names ``name``.

    Raises:
        BackboneNotFoundError: ``name`` is not registered.
        PetalnetError: The builder did not return a :class:`FeatureExtractor`.
    """
    extractor: object = get_backbone(name)(weights=weights)
    if not isinstance(extractor, FeatureExtractor):
        raise PetalnetError(
            f"Backbone builder {name!r} returned {type(extractor).__name__}; "
            "it must return a petalnet.FeatureExtractor."
        )
    return extractor.derive(name=name)


def list_backbones(
    include: str | Iterable[str] | None = None, exclude: str | Iterable[str] | None = None
) -> list[str]:
    """List registered backbone names, built-in and from plugins, sorted.

    Args:
        include: Wildcard pattern(s) a name must match (``"vgg*"``); all names if omitted.
        exclude: Wildcard pattern(s) that drop a name.

    Returns:
        The sorted names.
    """
    _load_all_plugins()
    names = sorted(_REGISTRY)

    def patterns(p: str | Iterable[str] | None) -> list[str]:
        return [p] if isinstance(p, str) else list(p or [])

    if include is not None:
        inc = patterns(include)
        names = [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in inc)]
    exc = patterns(exclude)
    return [n for n in names if not any(fnmatch.fnmatchcase(n, p) for p in exc)]
