"""`mlcicd run`: the whole pipeline on one machine, against real local services.

Why: nobody should need a cluster and a GitHub organisation to see the
pipeline decide. The runner walks the stages of the one pipeline definition in
order and, for each, runs the stage's commands, judges its gates and performs
its action, exactly as the rendered workflow does in GitHub Actions:

- commands: the definition's shell commands (ruff, mypy, pytest ...);
- gates: ``mlcicd gate quality`` / ``mlcicd gate latency`` (the same CLI the
  workflow calls), thresholds from the definition; they run as child processes
  because each loads a model or starts servers, as its workflow job does;
- ``build-and-register``: a bundle image built with buildah and pushed to a
  real OCI registry, then the model version registered in a real MLflow with
  its lineage (see image_bundle.py for why it is a bundle image);
- ``deploy``: the image pulled back by digest and served as the staging
  endpoint, which the stage's smoke tests then hit;
- ``canary-rollout``: see local_canary.py.

MLflow's database and the registry's storage persist under ``--state-dir`` so
a second run finds the first run's champion; everything else lives in a fresh
run directory under ``<state-dir>/runs/`` with one log per step. The first
stage that fails stops the run (exit 1), and nothing started is left running.

Deliberately not done here: running the GitHub-hosted parts (checkout, caches,
environment approvals); the GPU profile's numbers (no GPU on this machine).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path

from pipeline import source
from pipeline.definition import Command, PipelineDefinition, Stage, load_definition
from pipeline.local.context import RunOptions, RunState, StageFailed
from pipeline.local.image_bundle import PushedImage, build_and_push, pull_and_unpack
from pipeline.local.report import Console, RunReport, StepRecord
from pipeline.local.services import Service, start_mlflow, start_registry
from pipeline.registry.client import ModelRegistry
from pipeline.registry.lineage import build_lineage
from pipeline.serving import start_server
from pipeline.source import REPO_ROOT

BUNDLE_REPOSITORY = "mlcicd/inference-bundle"


class LocalRunner:
    def __init__(self, options: RunOptions, console: Console | None = None) -> None:
        self.options = options
        self.console = console or Console()
        self.definition: PipelineDefinition = load_definition(options.profile)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.git_sha = source.git_sha() or "unknown"
        self.branch = source.git_branch() or "unknown"
        self.run_id = f"{stamp}-{self.git_sha[:8]}"
        self.run_dir = options.state_dir / "runs" / self.run_id
        self.logs = self.run_dir / "logs"
        self.reports = self.run_dir / "reports"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.report = RunReport(self.run_id, options.profile, options.candidate, self.git_sha)
        self.state = RunState()
        self.services: dict[str, Service] = {}
        self._exit = ExitStack()

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
        return [sys.executable, "-m", "mlcicd", *args]

    @contextmanager
    def step(self, stage: str, name: str) -> Iterator[StepRecord]:
        record = StepRecord(stage, name, "passed", 0.0)
        self.console.start(name)
        started = time.monotonic()
        try:
            yield record
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
            if record.status == "failed" and record.log:
                self.console.failure_log(Path(record.log))

    def run_logged(
        self,
        record: StepRecord,
        argv: Sequence[str] | str,
        ok_codes: Sequence[int] = (0,),
        **env: str,
    ) -> int:
        """Run a command with its output in the step's log; fail the step on a bad exit."""
        index = len(self.report.steps) + 1
        slug = re.sub(r"[^a-z0-9]+", "-", record.name.lower()).strip("-")[:40]
        log = self.logs / f"{index:02d}-{record.stage}-{slug}.log"
        record.log = str(log)
        with log.open("wb") as handle:
            done = subprocess.run(
                argv,
                shell=isinstance(argv, str),
                cwd=REPO_ROOT,
                env=self.env(**env),
                stdout=handle,
                stderr=subprocess.STDOUT,
                check=False,
            )
        if done.returncode not in ok_codes:
            raise StageFailed(f"exit {done.returncode}")
        return done.returncode

    # -- the pipeline ---------------------------------------------------------

    def run(self) -> int:
        stages = self.definition.stages
        self.console.info(
            f"run {self.run_id}: profile {self.options.profile}, candidate "
            f"{self.options.candidate}, {len(stages)} stages, logs in {self.logs}"
        )
        outcome, code = "passed", 0
        try:
            with self._exit:
                for index, stage in enumerate(stages, start=1):
                    self.console.stage(index, len(stages), stage.id, stage.title)
                    if stage.id in self.options.skip_stages:
                        self.skip(stage, "skipped by --skip")
                        continue
                    self.run_stage(stage)
                outcome = self.report.outcome if self.report.outcome != "running" else "passed"
        except StageFailed as exc:
            outcome, code = f"failed: {exc}", 1
        except KeyboardInterrupt:
            outcome, code = "interrupted", 130
        self.report.outcome = outcome
        summary = self.report.write(self.run_dir)
        self.console.info(f"outcome: {outcome}")
        self.console.info(f"summary: {summary}")
        return code

    def skip(self, stage: Stage, why: str) -> None:
        record = StepRecord(stage.id, stage.title, "skipped", 0.0, why)
        self.report.steps.append(record)
        self.console.done(record)

    def run_stage(self, stage: Stage) -> None:
        if stage.gates or stage.action is not None:
            self.ensure_services()
        if stage.action != "deploy":  # a deploy stage's commands test the deployed endpoint
            for command in self.commands(stage):
                with self.step(stage.id, command.name) as record:
                    self.run_logged(record, command.run)
        for gate in stage.gates:
            if gate == "quality":
                self.gate_quality(stage)
            elif gate == "latency":
                self.gate_latency(stage)
        if stage.action == "build-and-register":
            self.build_and_register(stage)
        elif stage.action == "deploy":
            self.deploy_staging(stage)
        elif stage.action == "canary-rollout":
            from pipeline.local.canary import CanaryRollout

            CanaryRollout(self, stage).run()

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

    # -- gates ----------------------------------------------------------------

    def gate_quality(self, stage: Stage) -> None:
        champion = self.reports / "champion-quality.json"
        with self.step(stage.id, "Fetch the champion's quality results") as record:
            self.run_logged(
                record,
                self.mlcicd(
                    "registry", "champion-results", "--out", str(champion),
                    "--profile", self.options.profile, "--allow-missing",
                ),
            )  # fmt: skip
            record.detail = "found" if champion.exists() else "no champion yet"
        compare = ["--champion-results", str(champion)] if champion.exists() else []
        with self.step(stage.id, self.definition.gate_title("quality")) as record:
            out = self.reports / "quality"
            code = self.run_logged(
                record,
                self.mlcicd(
                    "gate", "quality", "--model", self.options.candidate,
                    "--profile", self.options.profile, "--out", str(out), *compare,
                ),
                ok_codes=(0, 1),
            )  # fmt: skip
            record.detail = f"report {out / 'quality.md'}"
            if code != 0:
                raise StageFailed("quality gate failed")

    def gate_latency(self, stage: Stage) -> None:
        champion = self.champion_for_latency(stage)
        compare = ["--champion-url", champion.url] if champion is not None else []
        name = self.definition.gate_title("latency")
        with self.step(stage.id, name) as record:
            out = self.reports / "latency"
            code = self.run_logged(
                record,
                self.mlcicd(
                    "gate",
                    "latency",
                    "--model",
                    self.options.candidate,
                    "--profile",
                    self.options.profile,
                    "--out",
                    str(out),
                    *compare,
                ),
                ok_codes=(0, 1),
            )
            record.detail = f"report {out / 'latency.md'}"
            if code != 0:
                raise StageFailed("latency gate failed")
        if champion is not None:
            champion.stop()

    def champion_for_latency(self, stage: Stage) -> Service | None:
        """The registry's champion, served from its image beside the candidate, or None.

        Why: the latency gate judges the candidate against the champion measured on
        the same machine at the same time (pipeline/gates/latency.py), not against a
        number that a busy machine alone can break.
        """
        from pipeline.local.canary import champion_image

        with self.step(stage.id, "Serve the champion for the paired latency gate") as record:
            found = champion_image(self, self.definition)
            if found is None:
                record.detail = "no champion yet: the absolute limits judge alone"
                return None
            version, image = found
            service = self.deploy_image("latency-champion", image, "--environment", "prod")
            record.detail = f"champion v{version} at {service.url}"
            return service

    # -- actions --------------------------------------------------------------

    def candidate_dir(self) -> Path:
        ref = self.options.candidate
        if ref in ("builtin", "builtin-weak"):
            from inference.builtin_model import ensure_builtin_model

            return ensure_builtin_model("weak" if ref == "builtin-weak" else "default")
        path = Path(ref)
        if not path.is_dir():
            raise StageFailed(f"--model {ref}: the local pipeline ships local models only")
        return path

    def build_and_register(self, stage: Stage) -> None:
        registry_host = self.services["registry"].url.removeprefix("http://")
        model_dir = self.candidate_dir()
        from inference.loader import directory_content_hash

        model_hash = directory_content_hash(model_dir)
        with self.step(stage.id, "Build and push image (buildah)") as record:
            image = build_and_push(
                model_dir=model_dir,
                source_root=REPO_ROOT,
                registry_host=registry_host,
                repository=BUNDLE_REPOSITORY,
                tag=self.git_sha[:12],
                labels={
                    "org.opencontainers.image.revision": self.git_sha,
                    "io.mlcicd.model.hash": model_hash,
                    "io.mlcicd.pipeline.run": self.run_id,
                },
                storage=self.options.state_dir / "state" / "buildah",
                workdir=self.run_dir / "build",
            )
            self.state.image = image
            record.detail = image.pinned
        with self.step(stage.id, "Register model version (MLflow)") as record:
            gate_results = [
                self.reports / "quality" / "quality.json",
                self.reports / "latency" / "latency.json",
            ]
            lineage = build_lineage(
                model=self.options.candidate,
                model_dir=model_dir,
                git_sha=self.git_sha,
                git_branch=self.branch,
                image=image.reference,
                image_digest=image.digest,
                pipeline_run_id=self.run_id,
                gate_results=[path for path in gate_results if path.exists()],
            )
            registry = ModelRegistry(
                self.services["mlflow"].url, self.definition.pipeline.registered_model
            )
            done = registry.register(lineage)
            self.state.model_version = str(done.version)
            record.detail = f"version {done.version}" + ("" if done.created else " (already)")
        self.report.facts["image"] = image.pinned
        self.report.facts["model version"] = str(self.state.model_version)

    def deploy_image(self, name: str, image: PushedImage, *extra_args: str) -> Service:
        """Pull ``image`` by digest, unpack it and serve it as the image would; stopped at exit.

        The unpacked image holds ``inference/`` alone, started as its command is, with the
        definition's serving limits for the environment passed in as env (as the Rollout does).
        """
        dest = self.run_dir / "deploy" / name
        pull_and_unpack(image, dest, self.run_dir / "deploy" / f"{name}-pull")
        environment = _flag_value(extra_args, "--environment")
        definition_env = environment if environment in ("staging", "prod") else None
        limits = load_definition(self.options.profile, definition_env).serving
        env = self.env(PYTHONPATH=str(dest / "app"), MLCICD_GIT_SHA=self.git_sha)
        server = start_server(
            f"server-{name}", str(dest / "model"), self.logs, limits,
            args=extra_args, env=env, cwd=dest / "app", ready_timeout_s=180,
        )  # fmt: skip
        self.on_exit(server.stop)
        return Service(server.process, server.url)

    def deploy_staging(self, stage: Stage) -> None:
        if self.state.image is None:
            raise StageFailed("no image was built in this run")
        with self.step(stage.id, "Deploy to staging (pull by digest, serve)") as record:
            service = self.deploy_image("staging", self.state.image, "--environment", "staging")
            self.state.staging_url = service.url
            record.detail = service.url
        for command in self.commands(stage):
            with self.step(stage.id, command.name) as record:
                self.run_logged(record, command.run, MLCICD_ENDPOINT=service.url)


def _flag_value(args: Sequence[str], flag: str) -> str | None:
    return next((args[i + 1] for i, a in enumerate(args[:-1]) if a == flag), None)
