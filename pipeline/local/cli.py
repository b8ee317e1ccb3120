"""Commands of the local subsystem: ``mlcicd hello`` (try the server), ``mlcicd run``
and ``mlcicd status`` (what the local state holds)."""

from __future__ import annotations

import argparse
from typing import Any

from pipeline.local import hello_cli, run_cli, status_cli


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    hello_cli.register(subparsers)
    run_cli.register(subparsers)
    status_cli.register(subparsers)
