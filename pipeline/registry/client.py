"""The model registry: MLflow registered-model versions, aliases and their history.

Why MLflow aliases: ``challenger`` (the last registered candidate) and
``champion`` (what production serves) are names the deploy and the quality
gate resolve at run time, so promoting or rolling back moves a pointer and
never copies a model.

Registration is idempotent and restartable. The key is (git sha, model
revision): a rerun first looks for a version with those tags and, if found,
only (re)sets the ``challenger`` alias. Otherwise it reuses a finished run with
the same key (artifacts already uploaded) or logs a new one, then creates the
version with every lineage tag in one call, then sets the alias. A failure at
any step leaves either nothing the key can find or a complete version, so a
retry completes the registration and never duplicates it. A run orphaned by a
failure before its upload finished stays ``RUNNING``/unmarked and is ignored.

The model artifact: the model directory's files are logged under ``model/`` in
the run and the version's source is ``runs:/<run>/model``; no MLflow flavor
(``mlflow.transformers`` would re-serialise the model) is involved. A Hugging
Face model logs only ``model/mlcicd_model.json`` naming id and revision: the
Hub is its store.

Champion history: the registered model's ``mlcicd.champion_stack`` tag is the
intent (versions, oldest first) and the ``champion`` alias follows its top. A
promotion pushes, a rollback pops; each writes the stack first and then moves
the alias, so a change interrupted in between is completed by the next promote
or rollback. ``mlcicd.champion_events`` keeps the last events (who, when, why).
Left out: concurrent writers (the pipeline serialises deploys per model).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.registry.lineage import TAG_PREFIX, Lineage

CHALLENGER = "challenger"
CHAMPION = "champion"
STACK_TAG = f"{TAG_PREFIX}champion_stack"
EVENTS_TAG = f"{TAG_PREFIX}champion_events"
COMPLETE_TAG = f"{TAG_PREFIX}artifacts_complete"
MAX_EVENTS = 20
MAX_STACK = 50
# Short client-side retries: a registry that is down should fail the step in
# seconds with a clear message, not hang the pipeline for minutes. And no
# "View run" banner on stdout, which belongs to our output. Explicit
# environment settings win.
_CLIENT_ENV = {
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}


class RegistryError(RuntimeError):
    """A registry operation could not be done; the message says why."""


class RegistryUnreachable(RegistryError):
    """The tracking server did not answer; nothing was half-done that a retry cannot finish."""


@dataclass(frozen=True)
class Registration:
    version: str
    run_id: str
    created: bool


@dataclass(frozen=True)
class ChampionChange:
    previous: str | None
    current: str
    changed: bool


def now_utc() -> str:
    return dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()


def local_tracking_uri(state_dir: Path) -> str | None:
    """The MLflow store ``mlcicd run`` keeps under ``state_dir``, read directly (sqlite),
    so the local pipeline's registry can be inspected after a run without a server.
    None when no run has written one there."""
    db = state_dir / "state" / "mlflow" / "mlflow.db"
    return f"sqlite:///{db}" if db.is_file() else None


def default_actor() -> str:
    """Who acts: ``$GITHUB_ACTOR`` in a workflow, else the OS user (``$USER`` may be unset)."""
    import getpass

    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry for this uid (some containers)
        user = ""
    return os.environ.get("GITHUB_ACTOR") or os.environ.get("USER") or user or "unknown"


def _is_unreachable(exc: BaseException) -> bool:
    import requests
    from mlflow.exceptions import MlflowException

    if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
        return True
    text = str(exc)
    return isinstance(exc, MlflowException) and (
        "failed with exception" in text or "Max retries exceeded" in text
    )


class ModelRegistry:
    """One registered model in one MLflow tracking server."""

    def __init__(self, tracking_uri: str, model_name: str, experiment: str | None = None) -> None:
        for key, value in _CLIENT_ENV.items():
            os.environ.setdefault(key, value)
        from mlflow import MlflowClient

        # MLflow's INFO lines ("Waiting up to 300 seconds ...") are noise in a CI log.
        logging.getLogger("mlflow").setLevel(logging.WARNING)

        self.uri = tracking_uri
        self.name = model_name
        self.experiment = experiment or model_name
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """Turn MLflow and HTTP failures into one-line errors naming the server."""
        from mlflow.exceptions import MlflowException

        try:
            yield
        except RegistryError:
            raise
        except Exception as exc:
            if _is_unreachable(exc):
                raise RegistryUnreachable(
                    f"MLflow tracking server {self.uri} is unreachable while {doing}; "
                    "rerun the same command once it is back (a rerun completes what is undone)"
                ) from exc
            if isinstance(exc, MlflowException):
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise RegistryError(f"MLflow at {self.uri} refused {doing}: {first}") from exc
            raise

    # --- registration ------------------------------------------------------

    def find_version(self, git_sha: str, model_revision: str) -> Any | None:
        with self._errors("searching model versions"):
            found = self.client.search_model_versions(
                f"name = '{self.name}' and tags.`{TAG_PREFIX}git_sha` = '{git_sha}'"
            )
        for version in found:
            if version.tags.get(f"{TAG_PREFIX}model_revision") == model_revision:
                return version
        return None

    def _experiment_id(self) -> str:
        experiment = self.client.get_experiment_by_name(self.experiment)
        if experiment is not None:
            return str(experiment.experiment_id)
        return str(self.client.create_experiment(self.experiment))

    def _finished_run(self, experiment_id: str, lineage: Lineage) -> str | None:
        runs = self.client.search_runs(
            [experiment_id],
            filter_string=(
                f"tags.`{TAG_PREFIX}git_sha` = '{lineage.git_sha}' and "
                f"tags.`{TAG_PREFIX}model_revision` = '{lineage.model.revision}' and "
                f"tags.`{COMPLETE_TAG}` = 'true'"
            ),
            max_results=1,
        )
        return str(runs[0].info.run_id) if runs else None

    def _log_run(self, experiment_id: str, lineage: Lineage) -> str:
        from mlflow.entities import Metric, Param

        run = self.client.create_run(
            experiment_id, tags=lineage.tags(), run_name=f"register-{lineage.git_sha[:12]}"
        )
        run_id = str(run.info.run_id)
        stamp = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
        metrics = [Metric(m.key, m.value, stamp, 0) for m in lineage.metrics]
        params = [
            Param(f"{m.key}.threshold", f"{m.op or ''} {m.threshold}".strip())
            for m in lineage.metrics
            if m.threshold is not None
        ]
        self.client.log_batch(run_id, metrics=metrics, params=params)
        if lineage.model.directory is not None:
            self.client.log_artifacts(run_id, str(lineage.model.directory), "model")
        with tempfile.TemporaryDirectory() as tmp:
            card = Path(tmp) / "mlcicd_model.json"
            card.write_text(json.dumps(lineage.tags(), indent=2, sort_keys=True))
            self.client.log_artifact(run_id, str(card), "model")
        for gate, path in lineage.gate_files.items():
            with tempfile.TemporaryDirectory() as tmp:
                copy = Path(tmp) / f"{gate}.json"
                copy.write_bytes(path.read_bytes())
                self.client.log_artifact(run_id, str(copy), "gates")
        # Only now may a retry reuse this run: its artifacts are all there.
        self.client.set_tag(run_id, COMPLETE_TAG, "true")
        self.client.set_terminated(run_id, "FINISHED")
        return run_id

    def _ensure_registered_model(self) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(self.name)
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            self.client.create_registered_model(
                self.name, description="Registered by mlcicd; see tags for lineage."
            )

    def register(self, lineage: Lineage) -> Registration:
        """Register (or find) the version for this lineage and make it the challenger."""
        existing = self.find_version(lineage.git_sha, lineage.model.revision)
        with self._errors("registering a model version"):
            if existing is not None:
                version, run_id, created = str(existing.version), str(existing.run_id), False
            else:
                experiment_id = self._experiment_id()
                run_id = self._finished_run(experiment_id, lineage) or self._log_run(
                    experiment_id, lineage
                )
                self._ensure_registered_model()
                tags = {**lineage.tags(), f"{TAG_PREFIX}registered_at": now_utc()}
                made = self.client.create_model_version(
                    self.name, f"runs:/{run_id}/model", run_id=run_id, tags=tags
                )
                version, created = str(made.version), True
            self.client.set_registered_model_alias(self.name, CHALLENGER, version)
        return Registration(version, run_id, created)

    # --- champion ----------------------------------------------------------

    def alias_version(self, alias: str) -> str | None:
        """The aliased version; None when there is no such alias or no such model yet."""
        from mlflow.exceptions import MlflowException

        with self._errors(f"reading alias {alias!r}"):
            try:
                model = self.client.get_registered_model(self.name)
            except MlflowException as exc:
                if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                    return None
                raise
        found = (model.aliases or {}).get(alias)
        return None if found is None else str(found)  # the sqlite store gives ints

    @staticmethod
    def _history(model: Any) -> tuple[list[str], list[dict[str, str]]]:
        """(champion stack, events) kept in the registered model's tags."""
        stack = json.loads(model.tags.get(STACK_TAG, "[]"))
        events = json.loads(model.tags.get(EVENTS_TAG, "[]"))
        return [str(v) for v in stack], events

    def _write_history(self, stack: list[str], events: list[dict[str, str]]) -> None:
        self.client.set_registered_model_tag(self.name, STACK_TAG, json.dumps(stack[-MAX_STACK:]))
        self.client.set_registered_model_tag(
            self.name, EVENTS_TAG, json.dumps(events[-MAX_EVENTS:], separators=(",", ":"))
        )

    def _record(self, version: str, action: str, actor: str, reason: str, when: str) -> None:
        for key, value in (("by", actor), ("at", when), ("reason", reason)):
            self.client.set_model_version_tag(
                self.name, version, f"{TAG_PREFIX}{action}_{key}", value
            )

    def promote(self, version: str | None, actor: str, reason: str) -> ChampionChange:
        """Point ``champion`` at ``version`` (default: the challenger) and record it."""
        with self._errors("promoting"):
            model = self.client.get_registered_model(self.name)
            aliases = _aliases(model)
            target = version or aliases.get(CHALLENGER)
            if target is None:
                raise RegistryError(f"{self.name}: no challenger to promote; pass --version")
            self.client.get_model_version(self.name, target)  # refuses unknown versions
            current = aliases.get(CHAMPION)
            stack, events = self._history(model)
            if not stack and current is not None:
                stack = [current]  # a champion set before mlcicd kept history
            if current == target and stack and stack[-1] == target:
                return ChampionChange(current, target, changed=False)
            when = now_utc()
            if not stack or stack[-1] != target:
                stack.append(target)
                events.append(_event("promote", target, current, actor, when, reason))
                self._write_history(stack, events)
            self.client.set_registered_model_alias(self.name, CHAMPION, target)
            self._record(target, "promoted", actor, reason, when)
        return ChampionChange(current, target, changed=True)

    def rollback(self, actor: str, reason: str) -> ChampionChange:
        """Move ``champion`` back to the previous champion and record who, when and why."""
        with self._errors("rolling back"):
            model = self.client.get_registered_model(self.name)
            current = _aliases(model).get(CHAMPION)
            stack, events = self._history(model)
            if stack and current != stack[-1]:
                # An earlier promote/rollback wrote its intent but not the alias.
                target = stack[-1]
            else:
                if len(stack) < 2:
                    raise RegistryError(
                        f"{self.name}: no previous champion to roll back to "
                        f"(champion history: {stack or 'empty'})"
                    )
                when = now_utc()
                stack.pop()
                target = stack[-1]
                events.append(_event("rollback", target, current, actor, when, reason))
                self._write_history(stack, events)
                if current is not None:
                    self._record(current, "rolled_back", actor, reason, when)
            self.client.set_registered_model_alias(self.name, CHAMPION, target)
            self._record(target, "restored", actor, reason, now_utc())
        return ChampionChange(current, target, changed=current != target)

    def reject(self, version: str, actor: str, reason: str) -> None:
        """Record that ``version`` was not released (a failed canary): on the version and in
        the champion events, so a failed release is as visible as a promotion."""
        with self._errors("recording a rejected release"):
            model = self.client.get_registered_model(self.name)
            stack, events = self._history(model)
            when = now_utc()
            current = _aliases(model).get(CHAMPION)
            events.append(_event("reject", version, current, actor, when, reason))
            self._write_history(stack, events)
            self._record(version, "rejected", actor, reason, when)

    # --- reading -----------------------------------------------------------

    def show(self) -> dict[str, Any]:
        """Aliases, champion history and every version with its lineage tags."""
        with self._errors("reading the registered model"):
            model = self.client.get_registered_model(self.name)
            stack, events = self._history(model)
            versions = self.client.search_model_versions(f"name = '{self.name}'")
        rows = [
            {
                "version": str(v.version),
                "run_id": v.run_id,
                "source": v.source,
                "aliases": sorted(v.aliases or []),
                "tags": dict(sorted(v.tags.items())),
            }
            for v in sorted(versions, key=lambda v: int(v.version))
        ]
        return {
            "name": self.name,
            "tracking_uri": self.uri,
            "aliases": dict(sorted(_aliases(model).items())),
            "champion_history": stack,
            "events": events,
            "versions": rows,
        }

    def champion_image(self) -> tuple[str, str, str] | None:
        """(version, image reference, digest) of the champion; None without one or an image."""
        version = self.alias_version(CHAMPION)
        if version is None:
            return None
        with self._errors("reading the champion"):
            tags = self.client.get_model_version(self.name, version).tags
        image, digest = tags.get(f"{TAG_PREFIX}image"), tags.get(f"{TAG_PREFIX}image_digest")
        return (version, image, digest) if image and digest else None

    def download_gate_result(self, alias: str, gate: str, out: Path) -> str | None:
        """Copy ``gates/<gate>.json`` of the aliased version's run to ``out``; None if no alias."""
        version = self.alias_version(alias)
        if version is None:
            return None
        with self._errors(f"downloading the {alias}'s {gate} results"):
            run_id = self.client.get_model_version(self.name, version).run_id
            if run_id is None:
                raise RegistryError(f"{self.name} v{version}: has no run")
            with tempfile.TemporaryDirectory() as tmp:
                local = self.client.download_artifacts(run_id, f"gates/{gate}.json", tmp)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(Path(local).read_bytes())
        return version


def _aliases(model: Any) -> dict[str, str]:
    """alias -> version, versions as strings whatever the store (sqlite gives ints)."""
    return {str(k): str(v) for k, v in (model.aliases or {}).items()}


def _event(
    action: str, version: str, previous: str | None, actor: str, when: str, reason: str
) -> dict[str, str]:
    """One entry of the champion history kept in the registered model's tags."""
    return {
        "action": action,
        "version": version,
        "from": previous or "",
        "by": actor,
        "at": when,
        "reason": reason,
    }
