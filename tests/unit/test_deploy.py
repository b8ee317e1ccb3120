"""``mlcicd deploy`` against a fake Kubernetes API: exactly what is sent, and the exit codes."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from mlcicd.cli import build_parser, main
from pipeline.rollout.deploy import read_state
from pipeline.rollout.deploy_cli import run_set_image, run_wait
from tests.unit.fake_kubernetes import FakeCustomObjectsApi, rollout

ARGO = ("argoproj.io", "v1alpha1", "prod", "rollouts", "inference-server")
OLD = "reg.example/inference@sha256:" + "a" * 64
NEW = "reg.example/inference@sha256:" + "b" * 64
STEPS = [{"setWeight": 10}, {"pause": {"duration": "2m"}}, {"setWeight": 50}, {"pause": {}}]


def args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["deploy", *argv, "--namespace", "prod"])


def set_image_args(image: str = NEW, *extra: str) -> argparse.Namespace:
    return args("set-image", "--rollout", "inference-server", "--image", image, *extra)


def wait_args(timeout_s: float = 2.0) -> argparse.Namespace:
    return args(
        "wait", "--rollout", "inference-server", "--timeout", f"{timeout_s}s", "--poll", "1ms"
    )


def canary_rollout(generation: int = 2) -> dict[str, Any]:
    stored = rollout(OLD, generation=generation)
    stored["spec"]["strategy"] = {"canary": {"steps": STEPS}}
    stored["spec"]["template"]["spec"]["containers"].insert(0, {"name": "sidecar", "image": "s:1"})
    return stored


def status(phase: str, observed: int = 2, **extra: Any) -> dict[str, Any]:
    return {"phase": phase, "observedGeneration": str(observed), **extra}


def test_set_image_sends_a_guarded_json_patch_and_prints_the_change(
    capsys: pytest.CaptureFixture[str],
) -> None:
    api = FakeCustomObjectsApi(canary_rollout())
    assert run_set_image(set_image_args(), api) == 0
    patch = api.calls[-1]
    assert patch.method == "patch" and patch.args == ARGO
    assert patch.content_type == "application/json-patch+json"
    # Index 1: the sidecar comes first; the patch is refused if name or image moved since.
    assert patch.body == [
        {"op": "test", "path": "/spec/template/spec/containers/1/name", "value": "inference"},
        {"op": "test", "path": "/spec/template/spec/containers/1/image", "value": OLD},
        {"op": "replace", "path": "/spec/template/spec/containers/1/image", "value": NEW},
    ]
    assert api.stored is not None
    containers = api.stored["spec"]["template"]["spec"]["containers"]
    assert [c["image"] for c in containers] == ["s:1", NEW]
    out = capsys.readouterr().out
    assert out.strip() == f"rollout prod/inference-server container inference: {OLD} -> {NEW}"


def test_set_image_to_the_current_image_sends_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    api = FakeCustomObjectsApi(canary_rollout())
    assert run_set_image(set_image_args(OLD), api) == 0
    assert [c.method for c in api.calls] == ["get"]
    assert "nothing sent" in capsys.readouterr().out


@pytest.mark.parametrize(
    "image",
    [
        "reg.example/inference:v2",
        "reg.example/inference@sha256:" + "b" * 63,
        "reg.example/inference@sha256:" + "B" * 64,
        "reg.example/inference:v2@sha512:" + "b" * 64,
    ],
)
def test_an_image_not_pinned_by_digest_is_a_usage_error(
    image: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Through main(): refused before any Kubernetes configuration is looked for.
    argv = ["deploy", "set-image", "--namespace", "prod", "--rollout", "r", "--image", image]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--image must be pinned by digest" in err and "Traceback" not in err


def test_an_unknown_container_names_the_ones_that_exist(
    capsys: pytest.CaptureFixture[str],
) -> None:
    api = FakeCustomObjectsApi(canary_rollout())
    assert run_set_image(set_image_args(NEW, "--container", "server"), api) == 2
    err = capsys.readouterr().err
    assert "--container 'server'" in err and "(containers: sidecar, inference)" in err
    assert not [c for c in api.calls if c.method == "patch"]


def test_set_image_reports_missing_rollouts_and_refusals_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run_set_image(set_image_args(), FakeCustomObjectsApi(None)) == 1
    assert "rollout prod/inference-server not found" in capsys.readouterr().err
    forbidden = FakeCustomObjectsApi(canary_rollout(), fail_patch_with=403)
    assert run_set_image(set_image_args(), forbidden) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        "mlcicd deploy set-image: prod/inference-server: Kubernetes API answered 403 Forbidden"
    )


def test_a_concurrent_image_change_is_refused_not_overwritten(
    capsys: pytest.CaptureFixture[str],
) -> None:
    api = FakeCustomObjectsApi(canary_rollout())
    moved = canary_rollout()
    moved["spec"]["template"]["spec"]["containers"][1]["image"] = "someone/else@sha256:" + "c" * 64

    class Racing(FakeCustomObjectsApi):
        def get_namespaced_custom_object(self, *a: Any, **kw: Any) -> Any:
            seen = super().get_namespaced_custom_object(*a, **kw)
            self.stored = moved  # another deploy lands between our read and our patch
            return seen

    racing = Racing(api.stored)
    assert run_set_image(set_image_args(), racing) == 1
    assert "422" in capsys.readouterr().err
    assert moved["spec"]["template"]["spec"]["containers"][1]["image"].startswith("someone/")


def test_wait_follows_the_canary_steps_until_healthy(capsys: pytest.CaptureFixture[str]) -> None:
    api = FakeCustomObjectsApi(canary_rollout(generation=3))
    api.statuses = [
        status("Healthy", observed=2),  # the controller has not seen the new spec yet
        status("Paused", 3, currentStepIndex=1, message="CanaryPauseStep"),
        status("Paused", 3, currentStepIndex=1, message="CanaryPauseStep"),
        status("Progressing", 3, currentStepIndex=2),
        status("Paused", 3, currentStepIndex=3, message="CanaryPauseStep"),
        status("Healthy", 3, currentStepIndex=4),
    ]
    assert run_wait(wait_args(), api) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    prefix = "rollout prod/inference-server: "
    assert lines[:-1] == [
        prefix + "Progressing (canary weight 10%): waiting for rollout spec update to be observed",
        prefix + "Paused (step 1/4, canary weight 10%): CanaryPauseStep",
        prefix + "Progressing (step 2/4, canary weight 50%)",
        prefix + "Paused (step 3/4, canary weight 50%): CanaryPauseStep",
    ]  # one line per change, not per poll
    assert lines[-1].startswith(prefix + "Healthy after")
    assert {c.method for c in api.calls} == {"get"}


@pytest.mark.parametrize(
    ("final", "shown"),
    [
        (status("Degraded", message="RolloutAborted: metric error-rate failed"), "Degraded"),
        (status("Paused", abort=True, message="aborted by mlcicd rollback"), "Aborted"),
    ],
)
def test_wait_fails_on_degraded_or_aborted_with_the_controllers_message(
    final: dict[str, Any], shown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    api = FakeCustomObjectsApi(canary_rollout())
    api.statuses = [status("Paused", currentStepIndex=1), final]
    assert run_wait(wait_args(), api) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"mlcicd deploy wait: prod/inference-server: {shown}: {final['message']}"


def test_wait_gives_up_after_the_timeout_and_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    api = FakeCustomObjectsApi(canary_rollout())
    api.statuses = [status("Paused", currentStepIndex=1, message="CanaryPauseStep")]
    assert run_wait(wait_args(timeout_s=0.05), api) == 1
    err = capsys.readouterr().err
    assert "timed out after 0.05 s" in err
    assert "last seen: Paused (step 1/4, canary weight 10%): CanaryPauseStep" in err
    assert len(api.calls) >= 2  # it kept polling until the deadline


def test_wait_retries_transient_api_errors_but_not_a_missing_rollout(
    capsys: pytest.CaptureFixture[str],
) -> None:
    api = FakeCustomObjectsApi(canary_rollout(), fail_get_with=[503, 503])
    api.statuses = [status("Healthy")]
    assert run_wait(wait_args(), api) == 0
    assert capsys.readouterr().out.count("poll failed (ApiException); retrying") == 2
    assert run_wait(wait_args(), FakeCustomObjectsApi(None)) == 1
    assert "rollout prod/inference-server not found" in capsys.readouterr().err


def test_weight_follows_argo_get_current_set_weight() -> None:
    def weight(**extra: Any) -> int | None:
        stored = canary_rollout()
        stored["status"] = status("Paused", **extra)
        return read_state(stored).weight

    assert weight() == 10  # no index yet: step 0
    assert weight(currentStepIndex=4) == 100  # past the last step: fully promoted
    assert weight(currentStepIndex=2, abort=True) == 0
    assert weight(canary={"weights": {"canary": {"weight": 33}}}) == 33  # traffic routing
    plain = rollout(OLD)
    plain["status"] = status("Healthy")
    assert read_state(plain).weight is None  # no canary strategy: no weight shown


def test_no_kubernetes_configuration_is_a_one_line_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert main(["deploy", "wait", "--namespace", "prod", "--rollout", "r"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mlcicd deploy wait: no Kubernetes configuration found")
    assert len(err.strip().splitlines()) == 1
    good = ["deploy", "set-image", "--namespace", "prod", "--rollout", "r", "--image", NEW]
    assert main(good) == 2
    assert "no Kubernetes configuration found" in capsys.readouterr().err
