"""The checkout this code runs from: its root, and the git facts a release records.

Why one place: the local runner, the registry's lineage, the Pulumi program and
the tests all need the repository root and the commit; each used to find them
its own way. The ``GITHUB_*`` variables win inside a workflow, where the
checkout may be shallow or detached.

Left out: the server's own commit, which it reads from ``MLCICD_GIT_SHA`` only
(an image carries no ``.git``).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def git(*args: str, cwd: Path = REPO_ROOT) -> str | None:
    """``git ARGS`` in the checkout: its trimmed output, or None if git failed or said nothing."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    out = done.stdout.strip()
    return out if done.returncode == 0 and out else None


def git_sha(cwd: Path = REPO_ROOT) -> str | None:
    return os.environ.get("GITHUB_SHA") or git("rev-parse", "HEAD", cwd=cwd)


def git_branch(cwd: Path = REPO_ROOT) -> str | None:
    return os.environ.get("GITHUB_REF_NAME") or git("rev-parse", "--abbrev-ref", "HEAD", cwd=cwd)


def git_dirty(cwd: Path = REPO_ROOT) -> bool | None:
    """Uncommitted changes to tracked files; None when git cannot tell."""
    try:
        done = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd, capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return bool(done.stdout.strip()) if done.returncode == 0 else None


def git_commit_time(cwd: Path = REPO_ROOT) -> int | None:
    """The checked-out commit's time (seconds since the epoch): a reproducible build's clock."""
    if os.environ.get("SOURCE_DATE_EPOCH", "").isdigit():
        return int(os.environ["SOURCE_DATE_EPOCH"])
    out = git("log", "-1", "--format=%ct", cwd=cwd)
    return int(out) if out and out.isdigit() else None
