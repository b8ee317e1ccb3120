"""Session fixtures: the Pulumi program recorded under mocks, once per stack.

Each stack runs in its own interpreter (Pulumi's runtime is process-global); both run in
parallel. Every secret config key gets a planted marker value, so tests can prove the
markers only ever appear inside Pulumi secret wrappers and never in rendered files.
"""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from infra.config import SECRET_KEYS
from infra.mock_runtime import record
from infra.render import write_render

REPO = Path(__file__).resolve().parents[2]
STACKS = ("staging", "prod")
MARKERS = {key: f"PLANTED-{key}-c0ffee" for key in SECRET_KEYS}


@pytest.fixture(scope="session")
def recordings() -> dict[str, dict[str, Any]]:
    with ThreadPoolExecutor(max_workers=len(STACKS)) as pool:
        futures = {stack: pool.submit(record, stack, secrets=MARKERS) for stack in STACKS}
        return {stack: future.result() for stack, future in futures.items()}


@pytest.fixture(scope="session")
def external_secrets_recording(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Staging with ``secrets.provider = external-secrets`` (same planted secrets)."""
    stack = yaml.safe_load((REPO / "Pulumi.staging.yaml").read_text())
    stack["config"]["mlcicd:secrets.provider"] = "external-secrets"
    stack["config"]["mlcicd:externalSecrets.vaultServer"] = "https://vault.example:8200"
    path = tmp_path_factory.mktemp("eso") / "Pulumi.staging.yaml"
    path.write_text(yaml.safe_dump(stack))
    return record("staging", stack_file=path, secrets=MARKERS)


@pytest.fixture(scope="session")
def renders(
    recordings: dict[str, dict[str, Any]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("renders")
    out = {}
    for stack, recording in recordings.items():
        out[stack] = root / stack
        write_render(recording, out[stack])
    return out


def resources(recording: dict[str, Any], type_: str) -> list[dict[str, Any]]:
    return [r for r in recording["resources"] if r["type"] == type_]


def one(recording: dict[str, Any], type_: str, name: str) -> dict[str, Any]:
    found = [r for r in resources(recording, type_) if r["name"] == name]
    assert len(found) == 1, f"expected one {type_} named {name}, found {len(found)}"
    return found[0]


REPO = Path(__file__).resolve().parents[2]
# What `mlcicd infra render` needs of a checkout.
CODE = (
    "infra", "pipeline", "inference", "mlcicd", "pipeline.toml", "requirements.lock",
    "Pulumi.yaml", "Pulumi.staging.yaml", "Pulumi.prod.yaml",
)  # fmt: skip


def copy_code(dest: Path, min_success_rate: str | None = None) -> Path:
    """A copy of the code a render reads; optionally with ``[canary] min_success_rate``
    changed (the one-threshold change a reviewer should see in the diff)."""
    for name in CODE:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, dest / name)
    if min_success_rate is not None:
        toml = dest / "pipeline.toml"
        text = toml.read_text()
        assert "\nmin_success_rate = 0.99\n" in text
        toml.write_text(
            text.replace(
                "\nmin_success_rate = 0.99\n", f"\nmin_success_rate = {min_success_rate}\n"
            )
        )
    return dest
