"""The production stage of the local pipeline: a canary rollout judged as Argo judges it.

Why it looks like this: in a cluster, Argo Rollouts moves pods step by step (the basic
canary: weights are pod ratios behind one user-facing Service) and runs the
AnalysisTemplate rendered from the pipeline definition at each step, Prometheus
metrics and golden prompts; the deploy job follows it within a budget derived from the
definition and then promotes in the one registry. Here the same decisions are taken
with real parts on one machine:

- the champion (the registry's ``champion`` alias) and the candidate are each pulled
  from the OCI registry by digest and served as ``stable`` and ``canary`` processes,
  each pinned to its registered model revision (checked on ``/v1/models``), plus a
  ``baseline`` of the champion at the canary's share, which the canary is compared
  with (:mod:`pipeline.local.fleet` says why);
- nginx stands in for the user-facing Service, with upstream weights taken from the
  definition's ``canary.steps``; the load generator (:class:`BackgroundLoad`) plays
  the users, and each step records what nginx served each server (``traffic.json``);
- after each step's pause, ``mlcicd canary analyze`` judges the canary from a real
  Prometheus and ``mlcicd canary golden`` sends it the golden prompts, as the
  AnalysisTemplate's Prometheus and web metrics do;
- the release budget (:mod:`pipeline.rollout.budget`) is computed and printed, and a
  canary that overruns it fails like a ``deploy wait`` that times out;
- a failed or inconclusive analysis is a failed rollout: all traffic goes back to
  stable and nothing is promoted. A healthy canary is promoted in the registry with
  retries; a promote that still fails leaves traffic on the canary (healthy pods are
  never undone for a registry hiccup) and reports the release as not promoted.

A Rollout's first deploy in Argo skips the steps; likewise, when the registry has no
champion yet, the candidate takes all traffic and is analysed alone before it is
promoted.

When the candidate is already the champion (the same commit and model released
again: same version, same digest), the stage is a no-op by policy: there is no
second release to compare, so it says so and changes nothing. A rejected
candidate is recorded in the registry (who, when, why) as a promotion is.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pipeline.canary.analysis import VERDICT_FILE, step_dir_name
from pipeline.canary.golden import GOLDEN_FILE, GoldenResult, run_golden
from pipeline.definition import (
    CanaryGate,
    Stage,
    duration_seconds,
    load_definition,
)
from pipeline.exit_codes import EXIT_FAILED, EXIT_INCONCLUSIVE, EXIT_OK
from pipeline.load.generator import BackgroundLoad
from pipeline.local.context import RunContext, StageFailed
from pipeline.local.fleet import Fleet, address
from pipeline.local.image_bundle import PushedImage
from pipeline.local.report import StepRecord
from pipeline.local.services import Service, TrafficSplitter, start_prometheus
from pipeline.registry.client import ModelRegistry, RegistryError, default_actor
from pipeline.rollout.budget import release_budget
from pipeline.serving import pod_threads

# Where a promote is sent when the run injects a registry fault: nothing listens there.
UNREACHABLE_REGISTRY = "http://127.0.0.1:9"

# What nginx served each server during a step's pause, beside the step's canary.json.
TRAFFIC_FILE = "traffic.json"

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
        self.budget = release_budget(self.definition)

    # -- registry -------------------------------------------------------------

    def champion(self) -> tuple[str, PushedImage, str] | None:
        """The champion's version, its image and its model revision, from the registry."""
        found = champion_image(self.runner)
        if found is None:
            return None
        version, image = found
        return version, image, self.runner.registry().model_revision(version) or ""

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

    def deploy(self) -> Fleet:
        """The servers: the candidate alone on a first release, else stable, canary, baseline."""
        runner, candidate = self.runner, self.runner.state.image
        revision = runner.state.model_revision
        if candidate is None or runner.state.model_version is None or revision is None:
            raise StageFailed("no registered image to roll out")
        champion = self.champion()
        canary_args = self.server_args("canary")
        with runner.step(self.stage.id, "Deploy stable and canary (pull by digest)") as record:
            if champion is None:
                alone = runner.deploy_image(
                    "canary", candidate, *canary_args, revision=revision, threads=pod_threads(1)
                )
                record.detail = "no champion yet: first release takes all traffic (as in Argo)"
                return Fleet(alone)
            version, image, champion_revision = champion
            champion_args = ("--environment", "prod")
            threads = pod_threads(3)
            stable = runner.deploy_image(
                "stable", image, *champion_args, revision=champion_revision, threads=threads
            )
            canary = runner.deploy_image(
                "canary", candidate, *canary_args, revision=revision, threads=threads
            )
            baseline = runner.deploy_image(
                "baseline", image, *champion_args, revision=champion_revision, threads=threads
            )
            record.detail = (
                f"stable and baseline = champion v{version} (model {champion_revision[:12]}), "
                f"canary = v{runner.state.model_version} (model {revision[:12]})"
            )
            return Fleet(stable, canary, baseline)

    def run(self) -> None:
        runner = self.runner
        if runner.state.already_champion and runner.state.image is not None:
            version = runner.state.model_version
            with runner.step(self.stage.id, "Canary rollout") as record:
                record.status = "skipped"
                record.detail = (
                    f"v{version} ({runner.state.image.digest[:19]}...) is already the champion: "
                    "nothing to roll out (policy: a re-release is a no-op)"
                )
            runner.report.outcome = f"no change: v{version} is already the champion"
            return
        runner.console.info(f"release budget ({self.stage.environment}): {self.budget.describe()}")
        runner.report.facts["release budget"] = self.budget.describe()
        started = time.monotonic()
        self.fleet = fleet = self.deploy()
        prometheus = start_prometheus(
            fleet.scrape_targets(), runner.run_dir / "prometheus", runner.logs
        )
        runner.on_exit(prometheus.stop)
        splitter = TrafficSplitter(runner.run_dir / "nginx", runner.logs, address(fleet.stable))
        runner.on_exit(splitter.stop)
        traffic = BackgroundLoad(splitter.url, self.traffic_rate(), self.budget.wait_timeout_s)
        traffic.start()
        runner.console.info(
            f"traffic: {traffic_plan(self.canary, self.traffic_rate())} through {splitter.url}"
        )
        try:
            verdict = self.walk_steps(splitter, prometheus.url, started)
        finally:
            runner.report.facts["canary traffic (HTTP code: count)"] = traffic.stop()
        if verdict != "successful":
            splitter.set_weights(fleet.weights(0))
            runner.report.outcome = f"rolled back: canary {verdict}"
            self.reject(str(runner.state.model_version), verdict)
            raise StageFailed(f"canary {verdict}: traffic returned to stable, not promoted")
        self.promote()

    def walk_steps(self, splitter: TrafficSplitter, prometheus_url: str, started: float) -> str:
        first_release = self.fleet.canary is None
        steps = self.canary.steps[-1:] if first_release else self.canary.steps
        for number, step in enumerate(steps, start=1):
            if not first_release:
                splitter.set_weights(self.fleet.weights(step.set_weight))
            if step.set_weight >= 100 and not first_release:
                break
            pause = duration_seconds(step.pause or self.canary.window)
            verdict = self.analyse(number, step.set_weight, pause, prometheus_url, splitter)
            if verdict != "successful":
                return verdict
            if time.monotonic() - started > self.budget.wait_timeout_s:
                return f"over its budget of {self.budget.wait_timeout_s} s"
        return "successful"

    def promote(self) -> None:
        """Promote with retries; on failure keep the healthy canary serving and say so."""
        runner = self.runner
        version = str(runner.state.model_version)
        attempts = self.definition.deploy.promote_attempts
        registry = (
            ModelRegistry(UNREACHABLE_REGISTRY, self.definition.pipeline.registered_model)
            if runner.options.promote_fault
            else runner.registry()
        )
        reason = f"canary analysis successful (run {runner.run_id})"
        try:
            with runner.step(self.stage.id, f"Promote v{version} to champion") as record:
                actor = default_actor()
                for attempt in range(1, attempts + 1):
                    try:
                        change = registry.promote(version, actor, reason)
                        break
                    except RegistryError as exc:
                        record.detail = f"attempt {attempt}/{attempts}: {exc}"
                        if attempt == attempts:
                            raise StageFailed(record.detail) from exc
                        time.sleep(attempt)
                was = f"v{change.previous}" if change.previous else "no champion"
                record.detail = f"by {actor}; was {was}"
        except StageFailed:
            runner.report.outcome = (
                f"not promoted: v{version} is healthy and serves all traffic, but the registry "
                f"promote failed; no rollback (rerun: mlcicd registry promote --version {version})"
            )
            raise StageFailed(runner.report.outcome) from None
        runner.report.outcome = f"promoted v{version} to champion"

    def analyse(
        self, number: int, weight: int, pause_s: int, prometheus_url: str, splitter: TrafficSplitter
    ) -> str:
        name = f"Step {number}: {weight}% canary, pause {pause_s}s, analysis"
        with self.runner.step(self.stage.id, name) as record:
            paused_at = time.time()
            time.sleep(pause_s)
            # The weight in the name labels the step in the release report.
            out = self.runner.reports / step_dir_name(number, weight)
            verdict = self.prometheus_verdict(record, out, prometheus_url)
            served = self.served(out, splitter, paused_at)
            golden = self.golden(out, self.fleet.judged)
            if verdict == "successful" and not golden.passed:
                verdict = "failed"
            line = canary_line(out / VERDICT_FILE)
            record.detail = f"{verdict}: {line}; {golden.summary()}; {served}"
            if verdict != "successful":
                record.status = "failed" if verdict == "failed" else "inconclusive"
                record.why = f"{line}; {golden.summary()}"
            return verdict

    def versions(self) -> list[str]:
        """Against the baseline when there is one; a first release is judged alone."""
        reference = self.fleet.reference_label
        if reference is not None:
            return ["--canary", "canary", "--stable", reference]
        return ["--version", "canary"]

    def served(self, step_dir: Path, splitter: TrafficSplitter, since: float) -> str:
        """What nginx actually sent each server during the step's pause: traffic.json."""
        roles = self.fleet.names()
        counts = {roles.get(a, a): n for a, n in splitter.served_since(since).items()}
        step_dir.mkdir(parents=True, exist_ok=True)
        (step_dir / TRAFFIC_FILE).write_text(json.dumps(counts, indent=2) + "\n")
        total = sum(counts.values()) or 1
        shares = ", ".join(f"{role} {n / total:.1%}" for role, n in sorted(counts.items()))
        return f"served {shares} of {total}"

    def prometheus_verdict(self, record: StepRecord, out: Path, prometheus_url: str) -> str:
        code = self.runner.run_logged(
            record,
            self.runner.mlcicd(
                "canary", "analyze", "--prometheus-url", prometheus_url, *self.versions(),
                "--profile", self.runner.options.profile,
                "--environment", str(self.stage.environment), "--out", str(out),
            ),
            ok_codes=(EXIT_OK, EXIT_FAILED, EXIT_INCONCLUSIVE),
        )  # fmt: skip
        return {EXIT_OK: "successful", EXIT_FAILED: "failed", EXIT_INCONCLUSIVE: "inconclusive"}[
            code
        ]

    def golden(self, step_dir: Path, judged: Service) -> GoldenResult:
        """The AnalysisTemplate's golden-prompt web metrics, run against the canary alone."""
        result = run_golden(self.definition, judged.url, self.runner.state.model_revision)
        step_dir.mkdir(parents=True, exist_ok=True)
        (step_dir / GOLDEN_FILE).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        return result


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
