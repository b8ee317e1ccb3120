"""Rendered files pass real validators (the diff is tested in test_render_diff.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from infra.mock_runtime import record
from infra.render import write_render

from .conftest import MARKERS, STACKS, resources

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = REPO / ".venv" / "bin"
K8S_VERSION = "1.30.0"
CUSTOM_KINDS = {"Rollout", "AnalysisTemplate", "PodMonitor", "PrometheusRule"}

pytestmark = pytest.mark.slow

# kubernetes-validate ships no schemas for these CRDs; these pin the fields we rely on.
_METRIC = {
    "type": "object",
    "required": [
        "name",
        "interval",
        "count",
        "failureLimit",
        "inconclusiveLimit",
        "consecutiveErrorLimit",
        "successCondition",
        "failureCondition",
        "provider",
    ],
    "properties": {
        "provider": {
            "type": "object",
            "required": ["prometheus"],
            "properties": {"prometheus": {"type": "object", "required": ["address", "query"]}},
        },
        "count": {"type": "integer", "minimum": 1},
    },
}
CRD_SCHEMAS: dict[str, dict[str, Any]] = {
    "Rollout": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "spec": {
                "type": "object",
                "required": ["replicas", "selector", "template", "strategy"],
                "properties": {
                    "strategy": {
                        "type": "object",
                        "required": ["canary"],
                        "properties": {
                            "canary": {
                                "type": "object",
                                "required": ["stableService", "canaryService", "steps"],
                                "properties": {
                                    "steps": {
                                        "type": "array",
                                        "minItems": 1,
                                        "items": {
                                            "type": "object",
                                            "minProperties": 1,
                                            "maxProperties": 1,
                                            "propertyNames": {
                                                "enum": ["setWeight", "pause", "analysis"]
                                            },
                                        },
                                    }
                                },
                            }
                        },
                    }
                },
            }
        },
    },
    "AnalysisTemplate": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "spec": {
                "type": "object",
                "required": ["metrics", "args"],
                "properties": {"metrics": {"type": "array", "minItems": 1, "items": _METRIC}},
            }
        },
    },
    "PodMonitor": {
        "type": "object",
        "required": ["spec"],
        "properties": {"spec": {"type": "object", "required": ["selector", "podMetricsEndpoints"]}},
    },
    "PrometheusRule": {
        "type": "object",
        "required": ["spec"],
        "properties": {"spec": {"type": "object", "required": ["groups"]}},
    },
}


@pytest.mark.parametrize("stack", STACKS)
def test_kubernetes_manifests_validate(renders: dict[str, Path], stack: str) -> None:
    manifests = sorted((renders[stack] / "kubernetes").glob("*.yaml"))
    assert len(manifests) > 15
    kinds = set()
    for path in manifests:
        data = yaml.safe_load(path.read_text())
        kinds.add(data["kind"])
        if data["kind"] in CUSTOM_KINDS:
            jsonschema.validate(data, CRD_SCHEMAS[data["kind"]])
            if data["kind"] == "Rollout":
                # The Rollout's pod template is a core PodTemplateSpec: validate it strictly.
                spec = data["spec"]
                as_deployment = {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": data["metadata"],
                    "spec": {k: spec[k] for k in ("replicas", "selector", "template")},
                }
                kubernetes_validate.validate(as_deployment, K8S_VERSION, strict=True)
        else:
            kubernetes_validate.validate(data, K8S_VERSION, strict=True)
    assert kinds >= CUSTOM_KINDS
    assert {"Deployment", "StatefulSet", "Service", "Secret"} <= kinds


@pytest.mark.parametrize("stack", STACKS)
def test_render_layout(renders: dict[str, Path], stack: str) -> None:
    root = renders[stack]
    index = yaml.safe_load((root / "index.yaml").read_text())
    assert len(index) > 30
    rollout = next(r for r in index if r["type"].endswith(":Rollout"))
    assert "kubernetes:helm.sh/v3:Release::argo-rollouts" in rollout["dependsOn"]
    helm = yaml.safe_load((root / "helm" / "argo-rollouts.yaml").read_text())
    assert helm["values"]["installCRDs"] is True and helm["version"]
    secret = yaml.safe_load((root / "kubernetes" / "Secret-runners-github-config.yaml").read_text())
    assert secret["stringData"] == {"github_token": "***"}
    assert (root / "github" / "workflows" / "ml-cicd.yml").read_text().startswith("# Generated")


def test_rendered_workflow_passes_actionlint(renders: dict[str, Path], tmp_path: Path) -> None:
    github = tmp_path / ".github"
    shutil.copytree(renders["prod"] / "github", github)
    done = subprocess.run(
        [
            str(VENV_BIN / "actionlint"),
            "-config-file",
            ".github/actionlint.yaml",
            ".github/workflows/ml-cicd.yml",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_images_and_in_cluster_registry_when_configured(tmp_path: Path) -> None:
    stack = yaml.safe_load((REPO / "Pulumi.staging.yaml").read_text())
    stack["config"].update(
        {
            "mlcicd:images.build": True,
            "mlcicd:images.push": True,
            "mlcicd:images.tag": "abc123",
            "mlcicd:registry.kind": "in-cluster",
            "mlcicd:registry.host": "registry.example:5000",
            "mlcicd:mlflow.artifactStore": "s3",
            "mlcicd:mlflow.artifactBucket": "s3://b/mlflow",
        }
    )
    path = tmp_path / "Pulumi.custom.yaml"
    path.write_text(yaml.safe_dump(stack))
    recording = record("staging", stack_file=path, secrets=MARKERS)
    images = resources(recording, "docker:index/image:Image")
    assert {i["name"] for i in images} == {"inference-server", "actions-runner"}
    for image in images:
        assert image["inputs"]["imageName"].endswith(":abc123")
        assert image["inputs"]["skipPush"] is False
        assert "__secret__" in str(image["inputs"]["registry"])
    assert "@sha256:" in recording["outputs"]["inferenceImage"]
    assert resources(recording, "kubernetes:core/v1:PersistentVolumeClaim")
    registry = [
        r for r in resources(recording, "kubernetes:apps/v1:Deployment") if r["name"] == "registry"
    ]
    assert registry and "REGISTRY_AUTH" in str(registry[0]["inputs"])
    out = tmp_path / "render"
    write_render(recording, out)
    text = "\n".join(p.read_text() for p in out.rglob("*") if p.is_file())
    assert not any(m in text for m in MARKERS.values())


def test_runner_image_lints() -> None:
    hadolint = subprocess.run(
        [str(VENV_BIN / "hadolint"), str(REPO / "runner_image" / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert hadolint.returncode == 0, hadolint.stdout
    shellcheck = subprocess.run(
        ["shellcheck", str(REPO / "runner_image" / "entrypoint.sh")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert shellcheck.returncode == 0, shellcheck.stdout
