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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlcicd", description="CI/CD for machine-learning models, as code."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for subsystem in SUBSYSTEMS:
        subsystem.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
