"""The production stage of the local pipeline: a canary rollout judged by Prometheus.

Why it looks like this: in a cluster, Argo Rollouts shifts traffic step by
step and runs the AnalysisTemplate rendered from the pipeline definition. Here
the same decisions are taken with real parts on one machine:

- the champion (the registry's ``champion`` alias) and the candidate are
  each pulled from the OCI registry by digest and served as ``stable`` and
  ``canary`` processes;
- nginx splits traffic between them with upstream weights taken from the
  definition's ``canary.steps``; the load generator (:class:`BackgroundLoad`) plays the users;
- a real Prometheus scrapes both servers (labels ``version="stable"`` /
  ``"canary"``), and after each step's pause ``mlcicd canary analyze --canary
  canary --stable stable`` judges the canary against the stable in the same
  window, with the definition's thresholds and Argo's limits;
- the traffic rate is sized from the steps, the window and ``min_requests``
  (:func:`traffic_rate`), so that the smallest step reaches its minimum sample
  and a 5 % error fault is seen rather than ending inconclusive;
- all steps successful: the registry's ``champion`` alias moves to the
  candidate; a failed or inconclusive analysis sends all traffic back to
  stable and the candidate is not promoted (the exit code says so).

A Rollout's first deploy in Argo skips the steps; likewise, when the registry
has no champion yet, the candidate takes all traffic and is analysed alone
before it is promoted.

When the candidate is already the champion (the same commit and model released
again: same version, same digest), the stage is a no-op by policy: there is no
second release to compare, so it says so and changes nothing. A rejected
candidate is recorded in the registry (who, when, why) as a promotion is.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pipeline.definition import (
    CanaryGate,
    Stage,
    duration_seconds,
    load_definition,
)
from pipeline.exit_codes import EXIT_FAILED, EXIT_INCONCLUSIVE, EXIT_OK
from pipeline.load.generator import BackgroundLoad
from pipeline.local.context import RunContext, StageFailed
from pipeline.local.image_bundle import PushedImage
from pipeline.local.services import ScrapeTarget, Service, TrafficSplitter, start_prometheus
from pipeline.registry.client import default_actor

# Prometheus' increase() extrapolates and loses a new series' first count, and the
# servers lag the schedule on a busy machine: aim this much above the minimum.
TRAFFIC_HEADROOM = 1.5


def canary_seconds(gate: CanaryGate, step_index: int) -> float:
    """Canary-weighted seconds in the window at the first analysis of a step.

    The window reaches back over this step's pause and, if longer, the earlier
    steps' pauses at their (smaller) weights; time spent in earlier analyses is
    left out, so this errs low.
    """
    budget = float(duration_seconds(gate.window))
    weighted = 0.0
    for step in reversed(gate.steps[: step_index + 1]):
        span = min(budget, float(duration_seconds(step.pause or gate.window)))
        weighted += span * step.set_weight / 100
        budget -= span
        if budget <= 0:
            break
    return weighted


def traffic_rate(gate: CanaryGate) -> float:
    """Requests/s so that every analysed step's first window holds min_requests canary ones."""
    analysed = [i for i, s in enumerate(gate.steps) if s.set_weight < 100]
    if not analysed:
        return TRAFFIC_HEADROOM * gate.min_requests / duration_seconds(gate.window)
    thinnest = min(canary_seconds(gate, i) for i in analysed)
    return TRAFFIC_HEADROOM * gate.min_requests / thinnest


def traffic_plan(gate: CanaryGate, rate: float) -> str:
    """The sizing, said in one line: what the thinnest analysed window will hold."""
    analysed = [i for i, s in enumerate(gate.steps) if s.set_weight < 100]
    thinnest = min(
        (canary_seconds(gate, i) for i in analysed), default=float(duration_seconds(gate.window))
    )
    return (
        f"{rate:.1f} req/s; the thinnest step's window holds ~{rate * thinnest:.0f} canary "
        f"requests (min_requests {gate.min_requests} per {gate.window})"
    )


def champion_image(runner: RunContext) -> tuple[str, PushedImage] | None:
    """The champion's version and its image, read from the model registry."""
    found = runner.registry().champion_image()
    if found is None:
        return None
    version, reference, digest = found
    # The local registry listens on a new port each run but keeps its storage
    # under the state dir, so the champion's image is re-addressed to it.
    current = runner.services["registry"].url.removeprefix("http://")
    path = reference.split("/", 1)[1] if "/" in reference else reference
    return version, PushedImage(reference=f"{current}/{path}", digest=digest)


class CanaryRollout:
    def __init__(self, runner: RunContext, stage: Stage) -> None:
        self.runner = runner
        self.stage = stage
        self.definition = load_definition(
            runner.options.profile, stage.environment, runner.options.definition
        )
        self.canary = self.definition.canary
        self.compare_with_stable = False  # set once the stable and canary are deployed

    # -- registry -------------------------------------------------------------

    def champion(self) -> tuple[str, PushedImage] | None:
        return champion_image(self.runner)

    def promote(self, version: str) -> None:
        reason = f"canary analysis successful (run {self.runner.run_id})"
        with self.runner.step(self.stage.id, f"Promote v{version} to champion") as record:
            actor = default_actor()
            change = self.runner.registry().promote(version, actor, reason)
            record.detail = f"by {actor}; was v{change.previous or 'none'}"

    def reject(self, version: str, verdict: str) -> None:
        """Record the failed release in the registry; a failure here must not hide the verdict."""
        reason = f"canary {verdict} (run {self.runner.run_id})"
        with self.runner.step(self.stage.id, f"Record v{version} as rejected") as record:
            actor = default_actor()
            self.runner.registry().reject(version, actor, reason)
            record.detail = f"by {actor}: {reason}"

    # -- the rollout ----------------------------------------------------------

    def server_args(self, role: str) -> list[str]:
        fault = self.runner.options.canary_fault
        if role != "canary" or fault == "none":
            return ["--environment", "prod"]
        # Fault injection is refused by the prod config by design; the demo canary
        # runs with the dev config so that its injected fault can be caught.
        flags = {
            "errors": ["--fault-error-rate", "0.05"],
            "latency": ["--fault-latency-ms", str(int(self.canary.max_p99_latency_s * 1500))],
        }[fault]
        return ["--environment", "dev", *flags]

    def traffic_rate(self) -> float:
        return traffic_rate(self.canary)

    def run(self) -> None:
        runner = self.runner
        candidate = runner.state.image
        if candidate is None or runner.state.model_version is None:
            raise StageFailed("no registered image to roll out")
        if runner.state.already_champion:
            version = runner.state.model_version
            with runner.step(self.stage.id, "Canary rollout") as record:
                record.status = "skipped"
                record.detail = (
                    f"v{version} ({candidate.digest[:19]}...) is already the champion: "
                    "nothing to roll out (policy: a re-release is a no-op)"
                )
            runner.report.outcome = f"no change: v{version} is already the champion"
            return
        champion = self.champion()
        with runner.step(self.stage.id, "Deploy stable and canary (pull by digest)") as record:
            if champion is None:
                stable = runner.deploy_image("canary", candidate, *self.server_args("canary"))
                canary: Service | None = None
                record.detail = "no champion yet: first release takes all traffic (as in Argo)"
            else:
                stable = runner.deploy_image("stable", champion[1], "--environment", "prod")
                canary = runner.deploy_image("canary", candidate, *self.server_args("canary"))
                record.detail = (
                    f"stable = champion v{champion[0]}, canary = v{runner.state.model_version}"
                )
        prom_dir = runner.run_dir / "prometheus"
        targets = [
            ScrapeTarget(
                stable.url.removeprefix("http://"),
                {"version": "canary" if canary is None else "stable"},
            )
        ]
        if canary is not None:
            targets.append(ScrapeTarget(canary.url.removeprefix("http://"), {"version": "canary"}))
        prometheus = start_prometheus(targets, prom_dir, runner.logs)
        runner.on_exit(prometheus.stop)
        splitter = TrafficSplitter(
            runner.run_dir / "nginx", runner.logs, stable.url.removeprefix("http://")
        )
        runner.on_exit(splitter.stop)
        budget = sum(duration_seconds(s.pause) for s in self.canary.steps if s.pause) + 600
        rate = self.traffic_rate()
        traffic = BackgroundLoad(splitter.url, rate, budget)
        traffic.start()
        runner.console.info(f"traffic: {traffic_plan(self.canary, rate)} through {splitter.url}")
        self.compare_with_stable = canary is not None
        verdict = "successful"
        try:
            steps = self.canary.steps if canary is not None else self.canary.steps[-1:]
            for number, step in enumerate(steps, start=1):
                if canary is not None:
                    splitter.set_weight(canary.url.removeprefix("http://"), step.set_weight)
                if step.set_weight >= 100 and canary is not None:
                    break
                pause = (
                    duration_seconds(step.pause)
                    if step.pause
                    else duration_seconds(self.canary.window)
                )
                verdict = self.analyse(number, step.set_weight, pause, prometheus.url)
                if verdict != "successful":
                    break
        finally:
            outcomes = traffic.stop()
            runner.report.facts["canary traffic (HTTP code: count)"] = outcomes
        if verdict != "successful":
            splitter.set_weight(None, 0)
            runner.report.outcome = f"rolled back: canary {verdict}"
            self.reject(runner.state.model_version, verdict)
            raise StageFailed(f"canary {verdict}: traffic returned to stable, not promoted")
        self.promote(runner.state.model_version)
        runner.report.outcome = f"promoted v{runner.state.model_version} to champion"

    def analyse(self, number: int, weight: int, pause_s: int, prometheus_url: str) -> str:
        name = f"Step {number}: {weight}% canary, pause {pause_s}s, analysis"
        with self.runner.step(self.stage.id, name) as record:
            time.sleep(pause_s)
            # The weight in the name labels the step in the release report.
            out = self.runner.reports / f"canary-step-{number}-w{weight}.json"
            # Against the stable when there is one; a first release is judged alone.
            versions = (
                ["--canary", "canary", "--stable", "stable"]
                if self.compare_with_stable
                else ["--version", "canary"]
            )
            code = self.runner.run_logged(
                record,
                self.runner.mlcicd(
                    "canary",
                    "analyze",
                    "--prometheus-url",
                    prometheus_url,
                    *versions,
                    "--profile",
                    self.runner.options.profile,
                    "--environment",
                    str(self.stage.environment),
                    "--out",
                    str(out),
                ),
                ok_codes=(EXIT_OK, EXIT_FAILED, EXIT_INCONCLUSIVE),
            )
            verdict = {
                EXIT_OK: "successful",
                EXIT_FAILED: "failed",
                EXIT_INCONCLUSIVE: "inconclusive",
            }[code]
            record.detail = verdict if code != EXIT_OK else f"{verdict}: {canary_line(out)}"
            if code != EXIT_OK:
                record.status = "failed" if code == EXIT_FAILED else "inconclusive"
                record.why = canary_line(out)
            return verdict


def canary_line(path: Path) -> str:
    """Each metric's last measurement and phase, on one line, from the analysis JSON.

    e.g. ``success-rate 0.929 Failed, error-rate 0.0707 Failed, p99-latency 0.094 Successful``;
    an inconclusive or errored measurement adds its message (``fewer than 10 requests``).
    """
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return "no analysis written (see the log)"
    parts = []
    for metric in data.get("metrics") or []:
        last = (metric.get("measurements") or [{}])[-1]
        value = last.get("value")
        shown = f"{value:.3g}" if isinstance(value, int | float) else last.get("raw", "n/a")
        note = (
            f" ({last['message']})"
            if metric.get("phase") != "Successful" and last.get("message")
            else ""
        )
        parts.append(f"{metric.get('name')} {shown} {metric.get('phase')}{note}")
    return ", ".join(parts) or str(data.get("verdict", "no measurements"))
