"""The command-line flags of the parameters, rendered from their one declaration.

:func:`add_arguments` gives ``petalnet train`` and the benchmarks one flag per parameter of
:class:`~petalnet.params.ClassifierParams`; the names, types, defaults, choices and help
come from :func:`~petalnet.params.param_specs`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping, Sequence
from typing import Any, get_origin

from petalnet.params import ParamSpec, members, param_specs

__all__ = ["add_arguments", "add_switch", "word_parser"]


def word_parser(spec: ParamSpec) -> Callable[[str], Any]:
    """An argparse ``type`` for ``spec``: its parse, with argparse's kind of error."""

    def parse(text: str) -> Any:
        try:
            return spec.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def add_arguments(
    parser: argparse.ArgumentParser, *, defaults: Mapping[str, Any] | None = None
) -> None:
    """Add one flag per parameter to ``parser`` (dest = the parameter's name).

    A flag is spelled ``--name`` (also ``--name-with-dashes``), and the classic recipe's
    ``--arch`` and ``--seed`` for ``backbone`` and ``random_state``. Booleans are switches:
    ``--strict`` for one that is off by default, ``--no_cache`` for one that is on. A
    parameter that is off by default or one of some words is a switch that may take one of
    them (``--tta`` or ``--tta crops``; ``--no_tta`` turns it off). Every other flag takes
    one word parsed by the parameter's type; the word ``none`` means ``None`` where allowed.

    Args:
        parser: The parser (or argument group) to extend.
        defaults: Other defaults than the parameters' own, by parameter name.
    """
    defaults = dict(defaults or {})
    for spec in param_specs():
        if spec.flag is None:
            continue
        default = defaults.get(spec.name, spec.default)
        names = [spec.flag] if spec.flag == f"--{spec.name}" else [spec.flag, f"--{spec.name}"]
        if spec.annotation is bool:
            if default:
                names = [f"--no_{spec.name}", f"--no-{spec.name.replace('_', '-')}"]
                parser.add_argument(
                    *names, dest=spec.name, action="store_false", help=f"do not: {spec.doc}"
                )
            else:
                names += [n.replace("_", "-") for n in names if "_" in n]
                parser.add_argument(*names, dest=spec.name, action="store_true", help=spec.doc)
            continue
        names += [n.replace("_", "-") for n in names if "_" in n]
        choices = [str(c) for c in spec.choices]
        if choices and bool in members(spec.annotation):
            choices += ["on", "off"]  # true/false/yes/no/1/0 parse too
        metavar = "|".join(choices) if choices else spec.name.upper()
        if choices and type(None) in members(spec.annotation):
            metavar += "|none"
        shown = "none" if default is None else default
        several = any(get_origin(t) is Sequence for t in members(spec.annotation))
        if spec.default is False and bool in members(spec.annotation):  # off, or some words
            add_switch(
                parser,
                spec,
                names,
                default=default,
                metavar=metavar,
                help=f"{spec.doc} (default: {shown})",
            )
            continue
        parser.add_argument(
            *names,
            dest=spec.name,
            type=word_parser(spec) if not several else str,
            nargs="+" if several else None,
            action=_Joined if several else "store",
            default=default,
            metavar=metavar,
            help=f"{spec.doc} (default: {shown})",
        )


def add_switch(
    parser: argparse.ArgumentParser,
    spec: ParamSpec,
    names: Sequence[str],
    *,
    default: Any,
    metavar: str,
    help: str,
) -> None:
    """A parameter that is off or one of some words: ``--name [WORD]`` and ``--no_name``.

    ``--name`` alone turns it on (``True``), ``--name WORD`` picks a word, ``--no_name``
    (also ``--no-name``) turns it off, e.g. a preset's.

    Args:
        parser: The parser (or argument group) to extend.
        spec: The parameter.
        names: Its flag spellings.
        default: The value when no flag is given (``None``: "as saved").
        metavar: How help shows the words.
        help: What the flag does.
    """
    parser.add_argument(
        *names,
        dest=spec.name,
        type=word_parser(spec),
        nargs="?",
        const=True,
        default=default,
        metavar=metavar,
        help=help,
    )
    off = [f"--no_{spec.name}", f"--no-{spec.name.replace('_', '-')}"]
    parser.add_argument(
        *off, dest=spec.name, action="store_false", default=default, help=f"no {spec.name}"
    )


class _Joined(argparse.Action):
    """A list flag: ``--hidden_units 512 256`` and ``--hidden_units 512,256`` alike."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        words = [values] if isinstance(values, str) else [str(v) for v in values or []]
        spec = next(s for s in param_specs() if s.name == self.dest)
        try:
            value = spec.parse(",".join(words))
        except ValueError as exc:
            parser.error(f"argument {option_string}: {exc}")
        setattr(namespace, self.dest, value)
