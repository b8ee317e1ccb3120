"""``secrets.provider``: pulumi and external-secrets give the pods the same Secrets.

With ``external-secrets`` the External Secrets Operator fills each Secret from Vault, so
no secret value may reach any Kubernetes resource Pulumi declares, wrapped or not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from infra.charts import EXTERNAL_SECRETS
from infra.render import write_render

from . import contracts as c
from .conftest import MARKERS

pytestmark = pytest.mark.slow
STORE = "kubernetes:external-secrets.io/v1:ClusterSecretStore"


def _shape(recording: dict[str, Any]) -> dict[tuple[str, str], tuple[frozenset[str], str]]:
    return {k: (v.keys, v.type) for k, v in c.provided_secrets(recording).items()}


def test_both_modes_provide_the_same_secret_names_keys_and_types(
    recordings: dict[str, Any], external_secrets_recording: dict[str, Any]
) -> None:
    assert _shape(external_secrets_recording) == _shape(recordings["staging"])
    assert not c.of_type(external_secrets_recording, c.SECRET)
    assert not c.of_type(recordings["staging"], c.EXTERNAL_SECRET)


@pytest.mark.parametrize("mode", ["pulumi", "external-secrets"])
def test_every_secret_a_pod_reads_is_provided(
    recordings: dict[str, Any], external_secrets_recording: dict[str, Any], mode: str
) -> None:
    recording = recordings["staging"] if mode == "pulumi" else external_secrets_recording
    provided = c.provided_secrets(recording)
    for namespace, name, key in c.referenced_secrets(recording):
        assert (namespace, name) in provided, f"{namespace}/{name} is read but never provided"
        if key is not None:
            assert key in provided[namespace, name].keys, f"{namespace}/{name} has no {key}"
    # The pods read the same references in both modes.
    assert c.referenced_secrets(recording) == c.referenced_secrets(recordings["staging"])


def _planted(value: Any) -> bool:
    return any(marker in str(value) for marker in MARKERS.values())


def test_no_secret_value_reaches_the_cluster_with_external_secrets(
    external_secrets_recording: dict[str, Any], tmp_path: Path
) -> None:
    for res in external_secrets_recording["resources"]:
        if res["type"].startswith("kubernetes:"):
            assert not _planted(res["inputs"]), f"{res['type']}/{res['name']} holds a secret"
    # ... nor the render (where the planted values would otherwise be masked as ***).
    recording = {**external_secrets_recording, "secrets": {}}
    write_render(recording, tmp_path / "render")
    for path in (tmp_path / "render" / "kubernetes").rglob("*"):
        assert not _planted(path.read_text()), path


def test_the_operator_is_pinned_and_comes_before_its_custom_resources(
    external_secrets_recording: dict[str, Any],
) -> None:
    recording = external_secrets_recording
    by_urn = {r["urn"]: r for r in recording["resources"]}
    (release,) = [
        r for r in c.of_type(recording, c.RELEASE) if r["inputs"]["chart"] == EXTERNAL_SECRETS.chart
    ]
    assert release["inputs"]["version"] == EXTERNAL_SECRETS.version
    (store,) = c.of_type(recording, STORE)
    assert release["urn"] in store["dependsOn"]
    externals = c.of_type(recording, c.EXTERNAL_SECRET)
    assert len(externals) >= 5
    for external in externals:
        assert {release["urn"], store["urn"]} <= set(external["dependsOn"])
        spec = external["inputs"]["spec"]
        assert spec["secretStoreRef"] == {
            "kind": "ClusterSecretStore",
            "name": store["inputs"]["metadata"]["name"],
        }
        assert {by_urn[d]["type"] for d in external["dependsOn"]} >= {c.RELEASE, STORE}
