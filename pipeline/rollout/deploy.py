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
  this is the same optimistic concurrency, but only touches one field.) Only
  digest-pinned references are accepted: a tag can move under a running canary.
- **wait**: the phase counts only once the controller has observed the current
  spec (``status.observedGeneration`` == ``metadata.generation``); ``Healthy``
  is success, ``Degraded`` (or ``status.abort``) is failure, ``Paused`` and
  ``Progressing`` keep waiting, with one line per change of step/weight.

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


class DeployUsageError(ValueError):
    """Bad input (image not pinned, unknown container); the message names the flag."""


@dataclass(frozen=True)
class ImageChange:
    namespace: str
    name: str
    container: str
    old_image: str
    new_image: str

    @property
    def changed(self) -> bool:
        return self.old_image != self.new_image


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


def set_image(
    api: CustomObjects, namespace: str, name: str, image: str, container: str = DEFAULT_CONTAINER
) -> ImageChange:
    """Patch one container's image; nothing is sent when it already is ``image``."""
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
    change = ImageChange(namespace, name, container, old, image)
    if change.changed:
        api.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            image_patch(index, container, old, image),
            _content_type=JSON_PATCH,
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


def wait_for_rollout(
    api: CustomObjects,
    namespace: str,
    name: str,
    timeout_s: float,
    poll_s: float,
    report: Callable[[str], None] = print,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> WaitResult:
    """Poll until Healthy or Degraded/Aborted, or ``timeout_s`` passes.

    A missing Rollout or a refused request (401/403/404) ends the wait at once; other
    API errors (a dropped connection) are reported and retried until the deadline.
    """
    start = clock()
    deadline = start + timeout_s
    last_line, state = "", None
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
            if state.verdict != "waiting":
                return WaitResult(state, False, clock() - start)
            line = state.progress()
            if line != last_line:
                report(f"rollout {namespace}/{name}: {line}")
                last_line = line
        remaining = deadline - clock()
        if remaining <= 0:
            return WaitResult(state, True, clock() - start)
        sleep(min(poll_s, remaining))
