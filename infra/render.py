"""Write a mock-runtime recording as reviewable files, and diff two such renders.

Layout of a render directory:

- ``index.yaml``: every resource (type, name, parent, dependsOn, provider, import id,
  protect, ignoreChanges, customTimeouts);
- ``kubernetes/<kind>-<pulumi name>.yaml``: each Kubernetes object as a manifest;
- ``helm/<release>.yaml``: chart, repository, version, namespace and values;
- ``github/settings.yaml``: repository, environments, secrets (masked), variables,
  the branch ruleset; ``github/workflows/ml-cicd.yml`` and ``github/actionlint.yaml``;
- ``docker/images.yaml``, ``providers.yaml``, ``outputs.yaml``.

Every secret is masked as ``***``: values wrapped as secrets by the Pulumi runtime, and
any string containing a planted secret placeholder. A render is deterministic, so two
renders of the same code are byte-identical and diff cleanly (``mlcicd infra diff``,
:mod:`infra.render_diff`).

Left out: Helm chart templating (values are shown, not the chart's expanded output).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

MASK = "***"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _short(urn: str | None) -> str | None:
    """``type::name`` of a URN (the readable tail)."""
    if not urn:
        return None
    parts = urn.split("::")
    return f"{parts[-2].split('$')[-1]}::{parts[-1]}"


def mask(value: Any, secrets: Iterable[str]) -> Any:
    """``value`` with secret wrappers and planted secret strings replaced by ``***``."""
    planted = [s for s in secrets if s]

    def walk(item: Any, inside_secret: bool) -> Any:
        if isinstance(item, dict):
            if set(item) == {"__secret__"}:
                return walk(item["__secret__"], True)
            return {k: walk(v, inside_secret) for k, v in item.items()}
        if isinstance(item, list):
            return [walk(v, inside_secret) for v in item]
        if inside_secret and item is not None:
            return MASK
        if isinstance(item, str):
            for secret in planted:
                item = item.replace(secret, MASK)
        return item

    return walk(value, False)


def _dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=True, width=100, allow_unicode=True)


def _file_name(*parts: str) -> str:
    return _SAFE.sub("_", "-".join(p for p in parts if p)) + ".yaml"


def _identity(entry: Mapping[str, Any]) -> tuple[str, str]:
    return str(entry.get("type", "")), str(entry.get("name", ""))


def write_render(recording: Mapping[str, Any], out: Path) -> list[Path]:
    """Write ``recording`` (from :func:`infra.mock_runtime.record`) under ``out``."""
    secrets = list(recording["secrets"].values())
    if out.exists():
        shutil.rmtree(out)
    files: dict[str, str] = {}
    index, github_settings, images, providers = [], [], [], []
    for res in recording["resources"]:
        inputs = mask(res["inputs"], secrets)
        index.append(
            {
                "type": res["type"],
                "name": res["name"],
                "parent": _short(res["parent"]),
                "dependsOn": sorted(str(_short(d)) for d in res["dependsOn"]),
                "provider": _short(res["provider"].rsplit("::", 1)[0]) if res["provider"] else None,
                "import": res["importId"],
                "protect": res["protect"],
                "ignoreChanges": res.get("ignoreChanges", []),
                "customTimeouts": res.get("customTimeouts", {}),
            }
        )
        kind = res["type"]
        if kind == "kubernetes:helm.sh/v3:Release":
            files[f"helm/{_file_name(res['name'])}"] = _dump(
                {
                    "chart": inputs.get("chart"),
                    "version": inputs.get("version"),
                    "repository": (inputs.get("repositoryOpts") or {}).get("repo"),
                    "namespace": inputs.get("namespace"),
                    "values": inputs.get("values", {}),
                }
            )
        elif kind.startswith("kubernetes:"):
            # Pulumi's name is unique per type in a stack, and the same across stacks,
            # so renders of staging and prod diff file by file.
            name = _file_name(inputs.get("kind", "object"), res["name"])
            files[f"kubernetes/{name}"] = _dump(inputs)
        elif kind.startswith("github:"):
            if kind.endswith(":RepositoryFile"):
                inputs = {**inputs, "content": f"<{len(inputs.get('content', ''))} characters>"}
            github_settings.append({"type": kind.split(":")[-1], "name": res["name"], **inputs})
        elif kind.startswith("docker:"):
            images.append({"name": res["name"], **inputs})
        elif kind.startswith("pulumi:providers:"):
            providers.append({"type": kind, "name": res["name"], "inputs": inputs})
    # The engine registers resources concurrently, so recording order varies between
    # runs; sorted lists keep two renders of the same code byte-identical.
    files["index.yaml"] = _dump(sorted(index, key=_identity))
    files["github/settings.yaml"] = _dump(sorted(github_settings, key=_identity))
    files["github/workflows/ml-cicd.yml"] = mask(recording["workflow"], secrets)
    files["github/actionlint.yaml"] = recording["actionlint"]
    files["docker/images.yaml"] = _dump(sorted(images, key=_identity))
    files["providers.yaml"] = _dump(sorted(providers, key=_identity))
    files["outputs.yaml"] = _dump(mask(recording["outputs"], secrets))
    written = []
    for relative, text in sorted(files.items()):
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written
