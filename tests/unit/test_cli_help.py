"""Every command's ``--help``: one CLI style across subsystems.

Walks the parser built by :func:`mlcicd.cli.build_parser` through every
subcommand and checks what a reader relies on: a description, ``--environment``
as a choice, ``--out`` as a directory, durations written as ``30s``/``5m``, no
two spellings of one flag, and one ``--profile`` rule.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from collections.abc import Iterator

import pytest

from mlcicd.cli import build_parser
from pipeline.cli_args import PROFILE_HELP, stage_ids

# The server's own flags are declared in inference/ and mirror its MLCICD_* env names.
SERVER_FLAGS = {"mlcicd serve"}


def commands(
    parser: argparse.ArgumentParser, path: str = "mlcicd"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, f"{path} {name}")


ALL = list(commands(build_parser()))


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.dest != "help"]


@pytest.mark.parametrize(("path", "parser"), ALL, ids=[path for path, _ in ALL])
def test_every_command_has_a_description_and_a_help_that_renders(
    path: str, parser: argparse.ArgumentParser
) -> None:
    assert parser.description, f"{path}: no description"
    with contextlib.redirect_stdout(io.StringIO()) as out, pytest.raises(SystemExit) as done:
        build_parser().parse_args([*path.split()[1:], "--help"])
    assert done.value.code == 0 and "usage:" in out.getvalue()


@pytest.mark.parametrize(("path", "parser"), ALL, ids=[path for path, _ in ALL])
def test_shared_flags_read_the_same_everywhere(path: str, parser: argparse.ArgumentParser) -> None:
    for action in _options(parser):
        longs = [s for s in action.option_strings if s.startswith("--")]
        assert len(longs) == 1, f"{path}: one flag, several spellings: {longs}"
        flag = longs[0]
        if flag == "--environment":
            assert action.choices, f"{path}: --environment must be a choice"
        if flag == "--out":
            assert action.metavar == "DIR", f"{path}: --out is a directory"
        if flag == "--profile" and path not in ("mlcicd bench", *SERVER_FLAGS):
            assert action.help == PROFILE_HELP, f"{path}: --profile has its own default rule"
        if path not in SERVER_FLAGS:
            assert not flag.endswith("-s"), f"{path}: {flag}: write durations as 30s, 5m"


def test_the_root_help_gives_the_order_of_use() -> None:
    text = build_parser().format_help()
    assert "order of use:" in text
    assert text.index("mlcicd hello") < text.index("mlcicd run") < text.index("mlcicd status")


def test_run_skip_lists_the_stage_ids_and_says_it_repeats() -> None:
    (run,) = [parser for path, parser in ALL if path == "mlcicd run"]
    (skip,) = [a for a in run._actions if "--skip" in a.option_strings]
    assert skip.help is not None and "repeat" in skip.help
    for stage in stage_ids():
        assert stage in skip.help
    flags = {s for a in run._actions for s in a.option_strings}
    assert {"--definition", "--environment", "--profile", "--no-cache"} <= flags
