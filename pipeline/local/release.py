"""The build and staging stages of the local pipeline: build, push, register, deploy.

- ``build-and-register``: a bundle image built with buildah, reproducibly (the
  same commit and model give the same digest, image_bundle.py says how), pushed
  to a real OCI registry, then the model version registered in a real MLflow
  with its lineage;
- ``deploy``: the image pulled back by digest and served as the staging
  endpoint, pinned to the registered model revision (``MLCICD_MODEL_REVISION``:
  the server refuses other weights, and ``/v1/models`` must report it), which
  the stage's smoke tests then hit.

Re-releasing the same commit and model: the registry already holds that
version (registration is idempotent by git sha and model revision). The run
says so, and pairs the version with the digest the registry recorded for it,
never with one it does not hold. When that version is already the champion,
the canary stage is a no-op by policy (canary.py): there is nothing to roll
out, and the staging stage still re-verifies the image unless its inputs are
unchanged since it last passed (then it is ``cached``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from pipeline import source
from pipeline.canary.golden import served_revision
from pipeline.definition import Stage, load_definition
from pipeline.local.context import RunContext, StageFailed
from pipeline.local.image_bundle import PushedImage, build_and_push, pull_and_unpack
from pipeline.local.services import Service
from pipeline.registry.client import CHAMPION
from pipeline.registry.lineage import TAG_PREFIX, build_lineage, release_facts
from pipeline.serving import start_server
from pipeline.source import REPO_ROOT

BUNDLE_REPOSITORY = "mlcicd/inference-bundle"

__all__ = ["PushedImage", "build_and_register", "candidate_dir", "deploy_image", "deploy_staging"]


def candidate_dir(runner: RunContext) -> Path:
    ref = runner.options.candidate
    if ref in ("builtin", "builtin-weak"):
        from inference.builtin_model import ensure_builtin_model

        return ensure_builtin_model("weak" if ref == "builtin-weak" else "default")
    path = Path(ref)
    if not path.is_dir():
        raise StageFailed(f"--model {ref}: the local pipeline ships local models only")
    return path


def build_and_register(runner: RunContext, stage: Stage) -> None:
    registry_host = runner.services["registry"].url.removeprefix("http://")
    model_dir = candidate_dir(runner)
    from inference.loader import directory_content_hash

    model_hash = directory_content_hash(model_dir)
    with runner.step(stage.id, "Build and push image (buildah, reproducible)") as record:
        image = build_and_push(
            model_dir=model_dir,
            source_root=REPO_ROOT,
            registry_host=registry_host,
            repository=BUNDLE_REPOSITORY,
            tag=runner.git_sha[:12],
            labels={
                "org.opencontainers.image.revision": runner.git_sha,
                "io.mlcicd.model.hash": model_hash,
            },
            storage=runner.options.state_dir / "state" / "buildah",
            workdir=runner.run_dir / "build",
            timestamp=source.git_commit_time() or 0,
        )
        runner.state.image = image
        record.detail = image.pinned
    with runner.step(stage.id, "Register model version (MLflow)") as record:
        gate_results = [
            runner.reports / "quality" / "quality.json",
            runner.reports / "latency" / "latency.json",
        ]
        lineage = build_lineage(
            model=runner.options.candidate,
            model_dir=model_dir,
            git_sha=runner.git_sha,
            git_branch=runner.branch,
            image=image.reference,
            image_digest=image.digest,
            pipeline_run_id=runner.run_id,
            gate_results=[path for path in gate_results if path.exists()],
        )
        registry = runner.registry()
        done = registry.register(lineage)
        version = str(done.version)
        runner.state.model_version = version
        runner.state.model_revision = lineage.model.revision
        record.detail = f"version {version}" + ("" if done.created else " (already registered)")
        if not done.created:
            runner.state.image = _registered_image(runner, version, image)
            record.detail += _same_or_other(image, runner.state.image)
        facts = release_facts(lineage, registry.name, version)
        runner.reports.mkdir(parents=True, exist_ok=True)
        (runner.reports / "release.json").write_text(json.dumps(facts, indent=2) + "\n")
        if registry.alias_version(CHAMPION) == version:
            runner.state.already_champion = True
            record.detail += f"; v{version} is already the champion"
    image = runner.state.image
    runner.report.facts["image"] = image.pinned
    runner.report.facts["model version"] = f"v{version} ({image.digest})"


def _registered_image(runner: RunContext, version: str, built: PushedImage) -> PushedImage:
    """The image the registry recorded for ``version`` (re-addressed to this run's registry)."""
    tags = (
        runner.registry()
        .client.get_model_version(runner.definition.pipeline.registered_model, version)
        .tags
    )
    digest = tags.get(f"{TAG_PREFIX}image_digest")
    if not digest or digest == built.digest:
        return built
    return PushedImage(reference=built.reference, digest=digest)


def _same_or_other(built: PushedImage, registered: PushedImage) -> str:
    if built.digest == registered.digest:
        return ", same image digest"
    return (
        f"; this build gave {built.digest[:19]}..., the registry keeps "
        f"{registered.digest[:19]}... for it (that image is deployed)"
    )


def deploy_image(
    runner: RunContext,
    name: str,
    image: PushedImage,
    *extra_args: str,
    revision: str,
    threads: int | None = None,
) -> Service:
    """Pull ``image`` by digest, unpack it and serve it as the image would; stopped at exit.

    The unpacked image holds ``inference/`` alone, started as its command is, with the
    definition's serving limits for the environment passed in as env (as the Rollout does)
    and the model pinned to ``revision`` (``MLCICD_MODEL_REVISION``, as ``deploy
    set-image`` pins it): the server refuses other weights, and ``/v1/models`` must
    report the revision before the service counts as deployed. ``threads`` caps its
    torch threads (``OMP_NUM_THREADS``), as a pod's CPU request does in the cluster,
    when several servers share this machine's cores.
    """
    dest = runner.run_dir / "deploy" / name
    pull_and_unpack(image, dest, runner.run_dir / "deploy" / f"{name}-pull")
    environment = _flag_value(extra_args, "--environment")
    definition_env = environment if environment in ("staging", "prod") else None
    limits = load_definition(
        runner.options.profile, definition_env, runner.options.definition
    ).serving
    env = runner.env(
        PYTHONPATH=str(dest / "app"), MLCICD_GIT_SHA=runner.git_sha, MLCICD_MODEL_REVISION=revision
    )
    server = start_server(
        f"server-{name}", str(dest / "model"), runner.logs, limits,
        args=extra_args, env=env, cwd=dest / "app", ready_timeout_s=180, threads=threads,
    )  # fmt: skip
    runner.on_exit(server.stop)
    served = served_revision(server.url)
    if revision and served != revision:
        raise StageFailed(f"{name} serves model revision {served}, expected {revision}")
    runner.console.info(f"{name} serves model {served}")
    runner.report.facts[f"model served by {name}"] = served
    return Service(server.process, server.url)


def deploy_staging(runner: RunContext, stage: Stage) -> None:
    image, revision = runner.state.image, runner.state.model_revision
    if image is None or revision is None:
        raise StageFailed("no image was built and registered in this run")
    key = f"{stage.id}/deploy-and-smoke"
    inputs = [runner.fingerprint(), image.digest, runner.definition.model_dump_json()]
    with runner.step(stage.id, "Deploy to staging (pull by digest, serve)") as record:
        if runner.cached(record, key, inputs):
            record.detail += " (smoke tests passed on this image then)"
            return
        service = deploy_image(
            runner, "staging", image, "--environment", "staging", revision=revision
        )
        record.detail = f"{service.url}, model {revision[:12]}"
    for command in stage.commands:
        with runner.step(stage.id, command.name) as record:
            runner.run_logged(record, command.run, MLCICD_ENDPOINT=service.url)
    runner.cache.store(key, inputs, runner.run_id)


def _flag_value(args: Sequence[str], flag: str) -> str | None:
    return next((args[i + 1] for i, a in enumerate(args[:-1]) if a == flag), None)
