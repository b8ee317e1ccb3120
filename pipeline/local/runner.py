"""`mlcicd run`: the whole pipeline on one machine, against real local services.

Why: nobody should need a cluster and a GitHub organisation to see the
pipeline decide. The runner walks the stages of the one pipeline definition in
order and, for each, runs the stage's commands, judges its gates and performs
its action, exactly as the rendered workflow does in GitHub Actions:

- commands: the definition's shell commands (ruff, mypy, pytest ...);
- gates: ``mlcicd gate quality`` / ``mlcicd gate latency`` (the same CLI the
  workflow calls), thresholds from the definition; they run as child processes
  because each loads a model or starts servers, as its workflow job does; the
  runner reads their typed JSON results, never their console output;
- ``build-and-register``, ``deploy``: see release.py;
- ``canary-rollout``: see canary.py.

MLflow's database and the registry's storage persist under ``--state-dir`` so
a second run finds the first run's champion; everything else lives in a fresh
run directory under ``<state-dir>/runs/`` with one log per step. The first
stage that fails stops the run (exit 1). However the run ends (a failure,
Ctrl-C, SIGTERM, SIGHUP, even SIGKILL), nothing it started is left running and,
short of SIGKILL, its summary is written (lifecycle.py says how). One run at a
time holds a state directory (lock.py).

A step whose inputs are unchanged since it last passed in this state directory
is reported ``cached`` with the hash it matched (cache.py), unless ``--no-cache``.

Deliberately not done here: running the GitHub-hosted parts (checkout, caches,
environment approvals); the GPU profile's numbers (no GPU on this machine).
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path

from pipeline import source
from pipeline.definition import Command, PipelineDefinition, Stage, load_definition
from pipeline.exit_codes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from pipeline.local import gate_steps, release
from pipeline.local.cache import StepCache, source_fingerprint
from pipeline.local.context import RunOptions, RunState, StageFailed
from pipeline.local.lifecycle import Reaper, signals_interrupt
from pipeline.local.lock import StateLocked, acquire
from pipeline.local.report import Console, RunReport, StepRecord
from pipeline.local.services import Service, start_mlflow, start_registry
from pipeline.local.side_by_side import LiveGroups, run_side_by_side
from pipeline.processes import run_to_log
from pipeline.registry.client import ModelRegistry
from pipeline.source import REPO_ROOT


class LocalRunner:
    def __init__(self, options: RunOptions, console: Console | None = None) -> None:
        self.options = options
        self.console = console or Console()
        self.definition: PipelineDefinition = load_definition(
            options.profile, None, options.definition
        )
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.git_sha = source.git_sha() or "unknown"
        self.branch = source.git_branch() or "unknown"
        self.run_id = f"{stamp}-{self.git_sha[:8]}"
        self.run_dir = options.state_dir / "runs" / self.run_id
        self.logs = self.run_dir / "logs"
        self.reports = self.run_dir / "reports"
        self.report = RunReport(self.run_id, options.profile, options.candidate, self.git_sha)
        self.state = RunState()
        self.services: dict[str, Service] = {}
        self.cache = StepCache(options.state_dir / "state" / "cache", enabled=options.use_cache)
        self._fingerprint: str | None = None
        self._exit = ExitStack()
        self._live = LiveGroups()  # commands running side by side
        self._log_numbers = itertools.count(1)

    # -- plumbing -------------------------------------------------------------

    def on_exit(self, callback: Callable[[], object]) -> None:
        """Run ``callback`` when the run ends, in reverse order of registration."""
        self._exit.callback(callback)

    def env(self, **extra: str) -> dict[str, str]:
        bin_dir = str(Path(sys.executable).parent)
        env = dict(os.environ, PATH=f"{bin_dir}:{os.environ.get('PATH', '')}")
        env.update(MLCICD_GIT_SHA=self.git_sha, MLCICD_PIPELINE_RUN_ID=self.run_id)
        if "mlflow" in self.services:
            env["MLFLOW_TRACKING_URI"] = self.services["mlflow"].url
        env.update(extra)
        return env

    def mlcicd(self, *args: str) -> list[str]:
        definition = (
            ["--definition", str(self.options.definition)] if self.options.definition else []
        )
        return [sys.executable, "-m", "mlcicd", *args, *definition]

    def registry(self) -> ModelRegistry:
        """The run's MLflow model registry, in process."""
        return ModelRegistry(self.services["mlflow"].url, self.definition.pipeline.registered_model)

    def fingerprint(self) -> str:
        """The checkout's content (tracked and untracked, not ignored files): a cache input."""
        if self._fingerprint is None:
            self._fingerprint = source_fingerprint(REPO_ROOT)
        return self._fingerprint

    @contextmanager
    def step(self, stage: str, name: str) -> Iterator[StepRecord]:
        """One step: its console lines, a heartbeat while it runs, its record in the report.

        A ``KeyboardInterrupt`` (Ctrl-C, SIGTERM, SIGHUP) marks it ``interrupted``,
        never ``passed``; any other exception fails it and stops the stage.
        """
        record = StepRecord(stage, name, "passed", 0.0)
        self.console.start(name)
        started = time.monotonic()
        try:
            with self.console.heartbeat(name, started):
                yield record
        except KeyboardInterrupt:
            record.status = "interrupted"
            raise
        except StageFailed as exc:
            record.status = "failed"
            record.detail = record.detail or str(exc)
            raise
        except Exception as exc:  # a step's own bug or a service failure: report, stop
            record.status = "failed"
            record.detail = f"{type(exc).__name__}: {exc}"
            raise StageFailed(record.detail) from exc
        finally:
            record.seconds = time.monotonic() - started
            self.report.steps.append(record)
            self.console.done(record)
            if record.status in ("failed", "inconclusive"):
                self.console.why(record, self.run_dir)

    def run_logged(
        self,
        record: StepRecord,
        argv: Sequence[str] | str,
        ok_codes: Sequence[int] = (0,),
        **env: str,
    ) -> int:
        """Run a command with its output in the step's log; fail the step on a bad exit.

        The command runs in its own session; if the run is interrupted, its whole
        process tree is stopped before the interruption goes on.
        """
        index = next(self._log_numbers)
        slug = re.sub(r"[^a-z0-9]+", "-", record.name.lower()).strip("-")[:40]
        log = self.logs / f"{index:02d}-{record.stage}-{slug}.log"
        record.log = str(log)
        code = run_to_log(argv, log, env=self.env(**env), cwd=REPO_ROOT, live=self._live)
        self._live.check()
        if code not in ok_codes:
            raise StageFailed(f"exit {code}")
        return code

    def cached(self, record: StepRecord, key: str, inputs: Sequence[str]) -> bool:
        """True (and the step marked ``cached``) if these inputs already passed here."""
        hit = self.cache.lookup(key, inputs)
        if hit is None:
            return False
        record.status = "cached"
        record.detail = f"inputs {hit.digest[:12]} unchanged since run {hit.run_id}"
        return True

    # -- the pipeline ---------------------------------------------------------

    def run(self) -> int:
        """Lock the state directory, run the stages, always write the summary."""
        try:
            lock = acquire(self.options.state_dir)
        except StateLocked as exc:
            self.console.error(f"mlcicd run: {exc}")
            return EXIT_USAGE
        try:
            if lock.stale_owner:
                self.console.info(f"took over a stale lock left by {lock.stale_owner}")
            return self._run_locked()
        finally:
            lock.release()

    def _run_locked(self) -> int:
        self.logs.mkdir(parents=True, exist_ok=True)
        stages = self.definition.stages
        reaper = Reaper(str(self.run_dir))
        self.console.info(
            f"run {self.run_id}: profile {self.options.profile}, candidate "
            f"{self.options.candidate}, {len(stages)} stages, logs in {self.logs}"
        )
        outcome, code = "passed", EXIT_OK
        try:
            with signals_interrupt(self.console.info) as guard:
                try:
                    with self._exit:
                        try:
                            self._walk(stages)
                        finally:
                            guard.disarm()  # stopping services must not be cut short
                    outcome = self.report.outcome if self.report.outcome != "running" else "passed"
                except StageFailed as exc:
                    outcome, code = f"failed: {exc}", EXIT_FAILED
                except KeyboardInterrupt as exc:
                    outcome, code = f"interrupted ({exc or 'SIGINT'})", EXIT_INTERRUPTED
                self.report.outcome = outcome
                self.report.seconds = self.console.elapsed_s()
                self.report.not_run = self._not_run(stages)
                summary = self.report.write(self.run_dir)
        finally:
            reaper.close()
        self.console.info(f"outcome: {outcome}")
        self.console.info(f"summary: {summary}")
        self.cache.prune_runs(self.options.state_dir / "runs", self.options.keep_runs)
        self.write_release_report()
        return code

    def write_release_report(self) -> None:
        """The report CI writes to the job summary (``mlcicd report``), as report.md/.html."""
        from pipeline.report.cli import write_report

        try:
            facts = {"run_id": self.run_id, "git_sha": self.git_sha}
            files = write_report(self.reports, self.run_dir, facts)
        except Exception as exc:  # the run's outcome stands; say why the report is missing
            self.console.info(f"release report not written: {type(exc).__name__}: {exc}")
            return
        self.console.info(f"release report: {files.markdown}, {files.html}")

    def _walk(self, stages: Sequence[Stage]) -> None:
        for index, stage in enumerate(stages, start=1):
            self.console.stage(index, len(stages), stage.id, stage.title)
            why = self.why_skipped(stage)
            if why:
                self.skip(stage, why)
                continue
            self.run_stage(stage)

    def why_skipped(self, stage: Stage) -> str | None:
        if stage.id in self.options.skip_stages:
            return "skipped by --skip"
        last = self.options.environment
        if last == "staging" and stage.environment == "prod":
            return "not deployed: --environment staging stops before prod"
        return None

    def _not_run(self, stages: Sequence[Stage]) -> list[str]:
        seen = {step.stage for step in self.report.steps}
        return [stage.id for stage in stages if stage.id not in seen]

    def skip(self, stage: Stage, why: str) -> None:
        record = StepRecord(stage.id, stage.title, "skipped", 0.0, why)
        self.report.steps.append(record)
        self.console.done(record)

    def run_stage(self, stage: Stage) -> None:
        if stage.gates or stage.action is not None:
            self.ensure_services()
        if stage.action != "deploy":  # a deploy stage's commands test the deployed endpoint
            commands = self.commands(stage)
            together = [c for c in commands if not c.alone] if stage.independent_commands else []
            if together:
                self.fingerprint()  # computed once, before the threads need it
                tasks = [functools.partial(self.run_command, stage, c) for c in together]
                run_side_by_side(tasks, self._live)
            in_order = [c for c in commands if c.alone] if together else commands
            for command in in_order:
                self.run_command(stage, command)
        for gate in stage.gates:
            if gate == "quality":
                gate_steps.quality(self, stage)
            elif gate == "latency":
                gate_steps.latency(self, stage)
        if stage.action == "build-and-register":
            release.build_and_register(self, stage)
        elif stage.action == "deploy":
            release.deploy_staging(self, stage)
        elif stage.action == "canary-rollout":
            from pipeline.local.canary import CanaryRollout

            CanaryRollout(self, stage).run()

    def run_command(self, stage: Stage, command: Command, **env: str) -> None:
        """A shell command of the definition; cached when the checkout and command are unchanged."""
        with self.step(stage.id, command.name) as record:
            inputs = [self.fingerprint(), command.run, *(f"{k}={v}" for k, v in env.items())]
            key = f"{stage.id}/{command.name}"
            if self.cached(record, key, inputs):
                return
            self.run_logged(record, command.run, (0,), **env)
            self.cache.store(key, inputs, self.run_id)

    def commands(self, stage: Stage) -> tuple[Command, ...]:
        if self.options.skip_commands and stage.commands and stage.action is None:
            names = ", ".join(c.name for c in stage.commands)
            self.report.steps.append(StepRecord(stage.id, names, "skipped", 0.0, "--skip-commands"))
            self.console.done(self.report.steps[-1])
            return ()
        return stage.commands

    def ensure_services(self) -> None:
        state = self.options.state_dir / "state"
        if "mlflow" not in self.services:
            with self.step("services", "Start MLflow (sqlite)") as record:
                service = start_mlflow(state / "mlflow", self.logs)
                self.on_exit(service.stop)
                self.services["mlflow"] = service
                record.detail = service.url
        if "registry" not in self.services:
            with self.step("services", "Start OCI registry") as record:
                service = start_registry(state / "registry", self.logs)
                self.on_exit(service.stop)
                self.services["registry"] = service
                record.detail = service.url

    def deploy_image(
        self,
        name: str,
        image: release.PushedImage,
        *extra_args: str,
        revision: str,
        threads: int | None = None,
    ) -> Service:
        return release.deploy_image(
            self, name, image, *extra_args, revision=revision, threads=threads
        )
