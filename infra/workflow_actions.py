"""Third-party actions the rendered workflow uses, pinned to full commit SHAs.

Why pinned: a tag can be moved to malicious code; a commit SHA cannot. The version is
kept beside each SHA so the rendered ``uses:`` line carries a ``# vX.Y.Z`` comment and
an update tool (Dependabot, Renovate) can bump both together.

Left out: actions we can do with a shell step (the changed-paths filter is plain
``git diff``), and ``docker/metadata-action`` (the tag is the commit SHA, nothing else).
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class PinnedAction:
    repo: str
    sha: str
    version: str

    @property
    def uses(self) -> str:
        return f"{self.repo}@{self.sha}"


CHECKOUT = PinnedAction("actions/checkout", "11bd71901bbe5b1630ceea73d27597364c9af683", "v4.2.2")
CACHE = PinnedAction("actions/cache", "1bd1e32a3bdc45362d1e726936510720a7c30a57", "v4.2.0")
UPLOAD_ARTIFACT = PinnedAction(
    "actions/upload-artifact", "b4b15b8c7c6ac21ea08fcf65892d2ee8f75cf882", "v4.4.3"
)
DOWNLOAD_ARTIFACT = PinnedAction(
    "actions/download-artifact", "fa0a91b85d4f404e444e00e005971372dc801d16", "v4.1.8"
)
SETUP_BUILDX = PinnedAction(
    "docker/setup-buildx-action", "c47758b77c9736f4b2ef4073d4d51994fabfe349", "v3.7.1"
)
LOGIN = PinnedAction("docker/login-action", "9780b0c442fbb1117ed29e0efdff1e18412f7567", "v3.3.0")
BUILD_PUSH = PinnedAction(
    "docker/build-push-action", "4f58ea79222b3b9dc2c8bbdd6debcef730109a75", "v6.9.0"
)

SETUP_PYTHON = PinnedAction(
    "actions/setup-python", "a26af69be951a213d495a4c3e4e4022e16d87065", "v5.6.0"
)
# The official Pulumi action, for the live preview of a pull request's infra change.
PULUMI = PinnedAction("pulumi/actions", "8582a9e8cc630786854029b4e09281acd6794b58", "v6.6.1")
# One comment per header, edited in place on each push (not a new comment per push).
STICKY_COMMENT = PinnedAction(
    "marocchino/sticky-pull-request-comment", "773744901bac0e8cbb5a0dc842800d45e9b2b405", "v2.9.4"
)

ALL = (
    CHECKOUT,
    CACHE,
    UPLOAD_ARTIFACT,
    DOWNLOAD_ARTIFACT,
    SETUP_BUILDX,
    LOGIN,
    BUILD_PUSH,
    SETUP_PYTHON,
    PULUMI,
    STICKY_COMMENT,
)
_BY_USES = {action.uses: action for action in ALL}
_USES_LINE = re.compile(r"^(\s*(?:- )?uses: )(\S+)$", re.MULTILINE)


def annotate_versions(text: str) -> str:
    """Add ``# vX`` after every pinned ``uses:`` in dumped YAML (PyYAML emits no comments)."""

    def _comment(match: re.Match[str]) -> str:
        action = _BY_USES.get(match.group(2))
        return match.group(0) if action is None else f"{match.group(0)} # {action.version}"

    return _USES_LINE.sub(_comment, text)
