"""Commands of the rollout subsystem: ``mlcicd deploy`` and ``mlcicd rollback``."""

from __future__ import annotations

import argparse
from typing import Any

from pipeline.rollout import deploy_cli, rollback_cli


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    deploy_cli.register(subparsers)
    rollback_cli.register(subparsers)
