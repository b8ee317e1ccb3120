"""The ``mlcicd`` command line: wiring only.

Each subsystem owns its commands in its own ``cli.py`` with ``register(subparsers)``,
as mlflow registers ``mlflow/<subsystem>/cli.py`` on its root command. This module
sits above ``infra``, ``pipeline`` and ``inference`` and imports them plainly;
none of them imports it back (exit codes live in ``pipeline.exit_codes``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import cast

import infra.cli
import pipeline.bench.cli
import pipeline.canary.cli
import pipeline.gates.cli
import pipeline.local.cli
import pipeline.registry.cli
import pipeline.report.cli
import pipeline.rollout.cli
import pipeline.serving

EXIT_BROKEN_PIPE = 141  # what a shell reports for a process killed by SIGPIPE

# In the order of use: try it, run the pipeline, then its parts, then the cloud path.
SUBSYSTEMS = (
    pipeline.local.cli,
    pipeline.serving,
    pipeline.gates.cli,
    pipeline.registry.cli,
    pipeline.canary.cli,
    pipeline.rollout.cli,
    pipeline.report.cli,
    pipeline.bench.cli,
    infra.cli,
)


ORDER_OF_USE = """order of use:
  1. mlcicd hello                 try the server: one request, one answer
  2. mlcicd run                   the whole pipeline on this machine
  3. mlcicd status                what the local run left: champion, runs, outcomes
  4. mlcicd gate | registry | canary | serve
                                  the pipeline's parts, one at a time
  5. mlcicd infra | deploy | rollback | bench
                                  the cloud path, and the benchmark

Run `mlcicd COMMAND --help` for a command's flags. Exit codes: 0 done or passed,
1 failed, 2 usage or configuration error, 3 inconclusive, 130 interrupted."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlcicd",
        description="CI/CD for machine-learning models, as code.",
        epilog=ORDER_OF_USE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for subsystem in SUBSYSTEMS:
        subsystem.register(subparsers)
    _describe_from_help(parser)
    return parser


def _describe_from_help(parser: argparse.ArgumentParser) -> None:
    """A command registered without a description (infra's) gets its help line as one."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help for choice in action._choices_actions}
        for name, sub in action.choices.items():
            if not sub.description and helps.get(name):
                text = str(helps[name])
                sub.description = text[0].upper() + text[1:] + "."
            _describe_from_help(sub)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # Whether this process was started to run this command (its own command line),
    # not called with an argument list by a caller that must keep its process.
    args.own_process = argv is None
    handler = cast(Callable[[argparse.Namespace], int], args.handler)
    try:
        code = handler(args)
        sys.stdout.flush()  # inside the try: a small output is only written here
        return code
    except BrokenPipeError:
        # `mlcicd infra diff ... | head`: the reader left, which is not an error of ours.
        # Point stdout at /dev/null so the interpreter's final flush stays quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
