"""Docs and examples match the command line: every `petalnet ...` line in them parses."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from petalnet.cli import build_parser

ROOT = Path(__file__).parents[1]
SOURCES = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    *sorted((ROOT / "examples").rglob("*.md")),
    *sorted((ROOT / "examples").rglob("*.py")),
]


COMMAND_WORDS = "train|predict|evaluate|check|backbones|export|serve|presets|download|--"


def _command_lines() -> list[tuple[str, str]]:
    """``(where, command)`` for each ``petalnet ...`` command line shown in the docs.

    Lines of code blocks (also ``python -m petalnet`` and ``torchrun ... -m petalnet``) and
    inline code spans; spans written as a synopsis (``[--format onnx]``, ``...``) are left
    out.
    """
    found = []
    for path in SOURCES:
        text = path.read_text().replace("\\\n", " ")
        lines = [
            ln
            for b in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
            for ln in b.splitlines()
        ]
        lines += re.findall(r"`(petalnet [^`]+)`", text)
        if path.suffix == ".py":
            lines = re.findall(r"``(petalnet [^`]+)``", text)
        for line in lines:
            match = re.search(rf"(?:^|-m |\$ |# )petalnet ((?:{COMMAND_WORDS})\S*.*)", line.strip())
            if match is None or "[" in match.group(1) or "..." in match.group(1):
                continue
            if len(match.group(1).split()) == 1 and match.group(1) != "--version":
                continue  # the name of a command in prose, not a command line
            command = re.split(r"\s+#", match.group(1))[0]
            found.append((f"{path.relative_to(ROOT)}: {line.strip()[:60]}", command))
    return found


COMMANDS = _command_lines()


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 15


@pytest.mark.parametrize(("where", "command"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_every_documented_command_parses(where, command):
    argv = shlex.split(command)
    if argv[-1] in ("--help", "--version"):  # they print and exit 0
        with pytest.raises(SystemExit, match="^0$"):
            build_parser().parse_args(argv)
        return
    build_parser().parse_args(argv)  # anything unknown: SystemExit(2), a failure here
