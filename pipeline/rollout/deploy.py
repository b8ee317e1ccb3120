"""Point an Argo Rollout at a new image and wait for the controller's verdict.

Why not ``kubectl argo rollouts set image`` / ``status``: the plugin is one more
binary in the runner image, and both are small API calls we can test exactly
against a fake client (there is no cluster here). The logic follows argo-rollouts
``pkg/kubectl-argo-rollouts/cmd/set/set_image.go`` and ``cmd/status/status.go``
with ``utils/rollout/rolloututil.go`` (``GetRolloutPhase``):

- **set image**: read the Rollout, find the container by name in
  ``spec.template.spec.containers`` and send a JSON patch that ``test``s the
  container's name and current image before it ``replace``s the image, so a
  concurrent change makes the API server refuse (422) instead of being
  overwritten. (The plugin does a read-modify-``Update`` with the resourceVersion;
  this is the same optimistic concurrency, but only touches what it changes.) Only
  digest-pinned references are accepted: a tag can move under a running canary.
  With a :class:`ModelPin` the same patch sets the model the pods load
  (``MLCICD_MODEL``/``MLCICD_MODEL_REVISION``) and the Rollout's revision annotation
  the AnalysisTemplate compares ``/v1/models`` with: image and model change in one
  new ReplicaSet, never one without the other.
- **wait**: the phase counts only once the controller has observed the current
  spec (``status.observedGeneration`` == ``metadata.generation``); ``Healthy``
  is success, ``Degraded`` (or ``status.abort``) is failure, ``Paused`` and
  ``Progressing`` keep waiting, with one line per change of step/weight. With an
  expected revision, the new pods' ``/v1/models`` is read as soon as they answer:
  another revision fails the wait at once, and Healthy without a match is no success.

Left out: init and ephemeral containers (the inference Rollout has neither), the
plugin's ``*`` wildcard, and the pre-1.0 client-side phase calculation.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pipeline.rollout.rollback import (
    GROUP,
    JSON_PATCH,
    PLURAL,
    VERSION,
    CustomObjects,
    RolloutError,
    get_rollout,
)

DIGEST_REF = re.compile(r"^[^\s@]+@sha256:[0-9a-f]{64}$")
DEFAULT_CONTAINER = "inference"
# Kept equal to infra.rollouts.MODEL_ENV and infra.analysis.MODEL_REVISION_ANNOTATION
# (tests/unit/test_deploy.py checks; pipeline may not import infra).
MODEL_ENV = ("MLCICD_MODEL", "MLCICD_MODEL_REVISION")
MODEL_REVISION_ANNOTATION = "mlcicd.io/model-revision"


@dataclass(frozen=True)
class ModelPin:
    """The model a release serves: a reference and its exact revision."""

    ref: str
    revision: str


class DeployUsageError(ValueError):
    """Bad input (image not pinned, unknown container); the message names the flag."""


@dataclass(frozen=True)
class ImageChange:
    namespace: str
    name: str
    container: str
    old_image: str
    new_image: str
    old_model: ModelPin | None = None
    new_model: ModelPin | None = None

    @property
    def changed(self) -> bool:
        return self.old_image != self.new_image or (
            self.new_model is not None and self.old_model != self.new_model
        )


def check_pinned(image: str) -> None:
    if not DIGEST_REF.match(image):
        raise DeployUsageError(
            f"--image must be pinned by digest (NAME@sha256:<64 hex digits>), got {image!r}"
        )


def _containers(rollout: dict[str, Any]) -> list[dict[str, Any]]:
    spec = (((rollout.get("spec") or {}).get("template") or {}).get("spec")) or {}
    containers: list[dict[str, Any]] = spec.get("containers") or []
    return containers


def image_patch(index: int, container: str, old: str, new: str) -> list[dict[str, Any]]:
    path = f"/spec/template/spec/containers/{index}"
    return [
        {"op": "test", "path": f"{path}/name", "value": container},
        {"op": "test", "path": f"{path}/image", "value": old},
        {"op": "replace", "path": f"{path}/image", "value": new},
    ]


def _env_value(container: dict[str, Any], name: str) -> str | None:
    for entry in container.get("env") or []:
        if entry.get("name") == name:
            return str(entry.get("value") or "")
    return None


def model_patch(
    rollout: dict[str, Any], index: int, container: dict[str, Any], model: ModelPin
) -> list[dict[str, Any]]:
    """Guarded replace of the model env entries (added if absent) and the annotation."""
    base = f"/spec/template/spec/containers/{index}/env"
    env = container.get("env") or []
    ops: list[dict[str, Any]] = [] if env else [{"op": "add", "path": base, "value": []}]
    for name, value in zip(MODEL_ENV, (model.ref, model.revision), strict=True):
        position = next((i for i, e in enumerate(env) if e.get("name") == name), None)
        if position is None:
            ops.append({"op": "add", "path": f"{base}/-", "value": {"name": name, "value": value}})
        else:
            path = f"{base}/{position}"
            ops += [
                {"op": "test", "path": f"{path}/name", "value": name},
                {"op": "replace", "path": f"{path}/value", "value": value},
            ]
    key = MODEL_REVISION_ANNOTATION.replace("~", "~0").replace("/", "~1")
    if (rollout.get("metadata") or {}).get("annotations") is None:
        annotations = {MODEL_REVISION_ANNOTATION: model.revision}
        ops.append({"op": "add", "path": "/metadata/annotations", "value": annotations})
    else:
        ops.append({"op": "add", "path": f"/metadata/annotations/{key}", "value": model.revision})
    return ops


def set_image(
    api: CustomObjects,
    namespace: str,
    name: str,
    image: str,
    container: str = DEFAULT_CONTAINER,
    model: ModelPin | None = None,
) -> ImageChange:
    """Patch one container's image (and the model); nothing is sent when nothing changes."""
    check_pinned(image)
    rollout = get_rollout(api, namespace, name)
    containers = _containers(rollout)
    names = [str(c.get("name")) for c in containers]
    if container not in names:
        known = ", ".join(names) or "none"
        raise DeployUsageError(
            f"--container {container!r} is not in rollout {namespace}/{name} (containers: {known})"
        )
    index = names.index(container)
    old = str(containers[index].get("image") or "")
    current = containers[index]
    old_ref, old_revision = (_env_value(current, env) for env in MODEL_ENV)
    old_model = None if old_ref is None else ModelPin(old_ref, old_revision or "")
    change = ImageChange(namespace, name, container, old, image, old_model, model)
    if change.changed:
        patch = image_patch(index, container, old, image)
        if model is not None:
            patch += model_patch(rollout, index, current, model)
        api.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name, patch, _content_type=JSON_PATCH
        )
    return change


Verdict = Literal["healthy", "degraded", "waiting"]


@dataclass(frozen=True)
class RolloutState:
    """One poll's reading of the Rollout, as the plugin's status command sees it."""

    phase: str
    message: str
    verdict: Verdict
    step: int | None
    steps: int
    weight: int | None

    def progress(self) -> str:
        """``Paused (step 1/4, canary weight 10%): CanaryPauseStep``"""
        details = []
        if self.step is not None and self.steps:
            details.append(f"step {self.step}/{self.steps}")
        if self.weight is not None:
            details.append(f"canary weight {self.weight}%")
        text = self.phase or "Unknown"
        text += f" ({', '.join(details)})" if details else ""
        return text + (f": {self.message}" if self.message else "")


def _generation_observed(rollout: dict[str, Any]) -> bool:
    """rolloututil.isGenerationObserved: observedGeneration is a string in Argo's status."""
    generation = (rollout.get("metadata") or {}).get("generation")
    observed = (rollout.get("status") or {}).get("observedGeneration")
    try:
        observed_int = int(str(observed))
    except ValueError:
        return True  # pre-1.0 hash, or not set by the fake: nothing to compare
    return generation is None or observed_int >= int(generation)


def _canary_weight(rollout: dict[str, Any], steps: list[dict[str, Any]], step: int) -> int:
    """replicasetutil.GetCurrentSetWeight, or the routed weight the controller reports."""
    status = rollout.get("status") or {}
    weights = (status.get("canary") or {}).get("weights") or {}
    if "canary" in weights:  # traffic routing: the controller reports the real weight
        return int((weights["canary"] or {}).get("weight") or 0)
    if status.get("abort"):
        return 0
    if step >= len(steps):
        return 100
    for index in range(step, -1, -1):
        if "setWeight" in steps[index]:
            return int(steps[index]["setWeight"])
    return 0


def read_state(rollout: dict[str, Any]) -> RolloutState:
    status = rollout.get("status") or {}
    strategy = (rollout.get("spec") or {}).get("strategy") or {}
    steps: list[dict[str, Any]] = (strategy.get("canary") or {}).get("steps") or []
    raw_step = status.get("currentStepIndex")
    step = int(raw_step) if raw_step is not None else None
    phase, message = str(status.get("phase") or ""), str(status.get("message") or "")
    verdict: Verdict = "waiting"
    if not _generation_observed(rollout):
        phase, message = "Progressing", "waiting for rollout spec update to be observed"
    elif status.get("abort") or phase == "Degraded":
        phase = phase if phase == "Degraded" else "Aborted"
        verdict = "degraded"
    elif phase == "Healthy":
        verdict = "healthy"
    weight = _canary_weight(rollout, steps, step or 0) if steps else None
    return RolloutState(phase, message, verdict, step, len(steps), weight)


@dataclass(frozen=True)
class WaitResult:
    state: RolloutState | None
    timed_out: bool
    waited_s: float
    # With an expected revision: what the pods served last, and whether it matched.
    served_revision: str | None = None
    model_ok: bool = True


# Reads the revision the new pods serve (``/v1/models``); None while they do not answer.
ModelProbe = Callable[[], str | None]


def _probe(probe: ModelProbe, report: Callable[[str], None]) -> str | None:
    try:
        return probe()
    except Exception as exc:  # not serving yet, DNS, refused: ask again next poll
        report(f"model check: no answer yet ({type(exc).__name__})")
        return None


def wait_for_rollout(
    api: CustomObjects,
    namespace: str,
    name: str,
    timeout_s: float,
    poll_s: float,
    report: Callable[[str], None] = print,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    expected_revision: str | None = None,
    model_probe: ModelProbe | None = None,
) -> WaitResult:
    """Poll until Healthy or Degraded/Aborted, or ``timeout_s`` passes.

    A missing Rollout or a refused request (401/403/404) ends the wait at once; other
    API errors (a dropped connection) are reported and retried until the deadline.
    With ``expected_revision`` and ``model_probe`` the served revision is read each
    poll; until the new pods answer, the canary Service may still reach old ones, so
    a mismatch only fails once the Rollout is Healthy (every pod new). Argo's own
    analysis fails earlier through its ``model-revision`` metric.
    """
    start = clock()
    deadline = start + timeout_s
    last_line, state = "", None
    served: str | None = None
    checking = expected_revision is not None and model_probe is not None
    while True:
        try:
            state = read_state(get_rollout(api, namespace, name))
        except RolloutError:
            raise
        except Exception as exc:
            if getattr(exc, "status", None) in (401, 403):
                raise
            report(f"rollout {namespace}/{name}: poll failed ({type(exc).__name__}); retrying")
        else:
            if checking and state.verdict != "degraded":
                assert model_probe is not None
                seen = _probe(model_probe, report)
                if seen is not None and seen != served:
                    served = seen
                    match = "as expected" if seen == expected_revision else "not yet expected"
                    report(f"model check: pods serve revision {seen} ({match})")
            if state.verdict != "waiting":
                ok = not checking or served == expected_revision
                return WaitResult(state, False, clock() - start, served, ok)
            line = state.progress()
            if line != last_line:
                report(f"rollout {namespace}/{name}: {line}")
                last_line = line
        remaining = deadline - clock()
        if remaining <= 0:
            return WaitResult(state, True, clock() - start, served, served == expected_revision)
        sleep(min(poll_s, remaining))
