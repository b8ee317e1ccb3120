"""The flags every ``mlcicd`` command shares, declared once so they read the same everywhere.

Why: ``--profile`` used to default three ways (``builtin`` for ``run``, the
file's default for the gates, by model for ``serve``), ``--environment`` was a
free string in some commands and a choice in others. Here:

- ``--profile``: one rule, :func:`profile_for`: the profile named, else
  ``builtin`` when the model is a built-in one, else the definition's
  ``pipeline.default_profile``;
- ``--environment``: a choice of the definition's environments;
- ``--definition``: a path, default ``pipeline.toml``;
- ``--out``: always a directory.

Durations on the command line are written as in the definition (``30s``, ``5m``).
Left out: the server's own flags, which ``inference/`` declares.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from inference.settings import BUILTIN_MODELS
from pipeline.definition import DEFAULT_DEFINITION, DefinitionError, environments, read_raw

PROFILE_HELP = (
    "definition profile (default: builtin for the built-in models, else the "
    "definition's pipeline.default_profile)"
)


def profile_for(profile: str | None, model: str | None = None) -> str | None:
    """The one default-profile rule; None means the definition's default_profile."""
    if profile:
        return profile
    return "builtin" if model in BUILTIN_MODELS else None


def known_environments() -> list[str]:
    try:
        return environments() or ["staging", "prod"]
    except DefinitionError:
        return ["staging", "prod"]


def stage_ids(path: Path = DEFAULT_DEFINITION) -> list[str]:
    try:
        stages = read_raw(path).get("stages", [])
    except DefinitionError:
        return []
    return [str(s.get("id")) for s in stages if isinstance(s, dict)]


def add_profile(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", help=PROFILE_HELP)


def add_environment(parser: argparse.ArgumentParser, help_text: str | None = None) -> None:
    choices = known_environments()
    parser.add_argument(
        "--environment",
        choices=choices,
        help=help_text or f"definition environment whose overrides apply ({', '.join(choices)})",
    )


def add_definition(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--definition",
        type=Path,
        metavar="FILE",
        help="pipeline definition file (default: pipeline.toml)",
    )


def add_out_dir(parser: argparse.ArgumentParser, default: Path | None, what: str) -> None:
    default_text = f" (default: {default})" if default else ""
    help_text = f"directory for {what}{default_text}"
    parser.add_argument("--out", type=Path, default=default, metavar="DIR", help=help_text)


_CLI_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_CLI_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_arg(text: str) -> float:
    """A command-line duration (``500ms``, ``30s``, ``5m``, ``1h``) in seconds, > 0."""
    match = _CLI_DURATION.match(text.strip())
    if match is None or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"not a duration > 0 (use e.g. 30s, 5m): {text!r}")
    return float(match.group(1)) * _CLI_UNITS[match.group(2)]
