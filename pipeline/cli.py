"""The ``mlcicd`` command line.

Each command group lives in its own module and exposes ``register(subparsers)``;
this file only wires them together, so adding a command never touches another.
Exit codes are shared by every command: 0 success, 1 a gate or check failed,
2 usage or configuration error, 3 inconclusive (canary analysis).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from typing import cast

# Modules that add sub-commands; each has ``register(subparsers) -> None``.
COMMAND_MODULES: tuple[str, ...] = (
    "inference.serve_cli",
    "pipeline.run_cli",
    "pipeline.hello_cli",
    "pipeline.gates_cli",
    "pipeline.registry_cli",
    "pipeline.canary_cli",
    "pipeline.rollback_cli",
    "pipeline.deploy_cli",
    "pipeline.bench_cli",
    "infra.cli",
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INCONCLUSIVE = 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlcicd", description="CI/CD for machine-learning models, as code."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        module = importlib.import_module(module_name)
        register = cast(
            "Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None]", module.register
        )
        register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = cast(Callable[[argparse.Namespace], int], args.handler)
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
