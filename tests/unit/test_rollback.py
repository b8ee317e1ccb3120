"""Rollback's Kubernetes calls, against a fake client: exactly what is sent, and when."""

from __future__ import annotations

import argparse

import pytest

from pipeline.rollout.rollback import RolloutError, roll_back
from pipeline.rollout.rollback_cli import add_arguments, run_rollback
from tests.unit.fake_kubernetes import (
    FakeAppsV1Api,
    FakeCustomObjectsApi,
    replica_set,
    rollout,
    template,
)

ARGO = ("argoproj.io", "v1alpha1", "prod", "rollouts", "inference-server")
HISTORY = [
    replica_set(1, "reg/inference:v1"),
    replica_set(3, "reg/inference:v3"),
    replica_set(2, "reg/inference:v2"),
    replica_set(9, "reg/other:v9", owner_uid="someone-else"),  # not this rollout's
    replica_set(None, "reg/inference:unnumbered"),
]


def cli_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(["--namespace", "prod", "--reason", "test", *argv])


def test_auto_aborts_a_canary_in_progress_on_the_status_subresource() -> None:
    api = FakeCustomObjectsApi(
        rollout("reg/inference:v3", {"currentPodHash": "hash3", "stableRS": "hash2"})
    )
    result = roll_back(api, FakeAppsV1Api(HISTORY), "prod", "inference-server")
    assert result.action == "abort"
    patches = [c for c in api.calls if c.method.startswith("patch")]
    assert len(patches) == 1
    assert patches[0].method == "patch_status"
    assert patches[0].args == ARGO
    assert patches[0].body == {"status": {"abort": True}}
    assert patches[0].content_type == "application/merge-patch+json"


def test_abort_falls_back_to_the_main_resource_without_a_status_subresource() -> None:
    api = FakeCustomObjectsApi(rollout("reg/inference:v3"), status_subresource=False)
    roll_back(api, FakeAppsV1Api([]), "prod", "inference-server", action="abort")
    methods = [c.method for c in api.calls]
    assert methods == ["get", "patch_status", "patch"]
    assert api.calls[-1].body == {"status": {"abort": True}}
    assert api.stored is not None and api.stored["status"]["abort"] is True


def test_undo_restores_the_previous_revision_template_as_a_json_patch() -> None:
    api = FakeCustomObjectsApi(
        rollout("reg/inference:v3", {"currentPodHash": "hash3", "stableRS": "hash3"})
    )
    apps = FakeAppsV1Api(HISTORY)
    result = roll_back(api, apps, "prod", "inference-server")
    assert result.action == "undo" and result.detail == "restored revision 2"
    assert apps.selectors == [("prod", "app=inference-server")]
    patch = api.calls[-1]
    assert patch.method == "patch" and patch.args == ARGO
    assert patch.content_type == "application/json-patch+json"
    # The ReplicaSet's template, minus the pod-template-hash label, and nothing else.
    assert patch.body == [
        {"op": "replace", "path": "/spec/template", "value": template("reg/inference:v2")}
    ]


def test_undo_to_a_revision_is_a_no_op_once_it_matches() -> None:
    api = FakeCustomObjectsApi(rollout("reg/inference:v3"))
    apps = FakeAppsV1Api(HISTORY)
    first = roll_back(api, apps, "prod", "inference-server", action="undo", to_revision=1)
    assert first.changed and first.detail == "restored revision 1"
    patches = len([c for c in api.calls if c.method == "patch"])
    second = roll_back(api, apps, "prod", "inference-server", action="undo", to_revision=1)
    assert not second.changed and "already matches revision 1" in second.detail
    assert len([c for c in api.calls if c.method == "patch"]) == patches


def test_undo_without_history_or_unknown_revision_is_refused() -> None:
    api = FakeCustomObjectsApi(rollout("reg/inference:v1"))
    with pytest.raises(RolloutError, match="no previous revision"):
        roll_back(api, FakeAppsV1Api(HISTORY[:1]), "prod", "inference-server", action="undo")
    with pytest.raises(RolloutError, match="revision 7 not found"):
        roll_back(api, FakeAppsV1Api(HISTORY), "prod", "inference-server", "undo", 7)
    assert not [c for c in api.calls if c.method.startswith("patch")]


def test_cli_reports_a_missing_rollout_and_api_refusals_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    missing = FakeCustomObjectsApi(None)
    assert run_rollback(cli_args("--registry", "no"), missing, FakeAppsV1Api([])) == 1
    assert "rollout prod/inference-server not found" in capsys.readouterr().err

    forbidden = FakeCustomObjectsApi(
        rollout("reg/inference:v3", {"currentPodHash": "a", "stableRS": "b"}),
        fail_patch_with=403,
    )
    assert run_rollback(cli_args(), forbidden, FakeAppsV1Api([])) == 1
    err = capsys.readouterr().err
    assert (
        err.strip()
        == "mlcicd rollback: prod/inference-server: Kubernetes API answered 403 Forbidden"
    )


def test_cli_abort_leaves_the_registry_alone(capsys: pytest.CaptureFixture[str]) -> None:
    api = FakeCustomObjectsApi(
        rollout("reg/inference:v3", {"currentPodHash": "a", "stableRS": "b"})
    )
    # No tracking URI is needed: after an abort the champion is not touched.
    assert run_rollback(cli_args(), api, FakeAppsV1Api([])) == 0
    out = capsys.readouterr().out
    assert "abort: status.abort=true" in out and "champion left as it is" in out
