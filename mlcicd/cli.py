"""The ``mlcicd`` command line: wiring only.

Each subsystem owns its commands in its own ``cli.py`` with ``register(subparsers)``,
as mlflow registers ``mlflow/<subsystem>/cli.py`` on its root command. This module
sits above ``infra``, ``pipeline`` and ``inference`` and imports them plainly;
none of them imports it back (exit codes live in ``pipeline.exit_codes``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import cast

import infra.cli
import pipeline.bench.cli
import pipeline.canary.cli
import pipeline.gates.cli
import pipeline.local.cli
import pipeline.registry.cli
import pipeline.rollout.cli
import pipeline.serving

# In the order of use: try it, run the pipeline, then its parts, then the cloud path.
SUBSYSTEMS = (
    pipeline.local.cli,
    pipeline.serving,
    pipeline.gates.cli,
    pipeline.registry.cli,
    pipeline.canary.cli,
    pipeline.rollout.cli,
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
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
