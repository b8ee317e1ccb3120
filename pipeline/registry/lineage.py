"""What a registered model version records about where it came from.

Why a separate module: lineage is gathered from the local checkout (git), the
build (image reference and digest), the model (Hugging Face id and revision, or
a content hash of a local directory) and the gates' result files, none of which
needs MLflow. Keeping it apart lets the unit tests cover it without a server and
keeps ``pipeline.registry.client`` about the registry alone.

Tag keys are namespaced ``mlcicd.*`` (MLflow reserves ``mlflow.*``). The
idempotency key of a registration is (git sha, model revision): the same code
and the same weights register once, however often the pipeline reruns.

Gate results: each ``mlcicd gate ... --out`` JSON and any ``--gate-result``
file are read into :class:`GateMetric` rows (value, the threshold it was judged
against, and the verdict when the file has one). Left out: guessing thresholds;
a metric without one is recorded as measured, not as judged.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipeline import source

TAG_PREFIX = "mlcicd."
BUILTIN_REFS = ("builtin", "builtin-weak")


class LineageError(ValueError):
    """Bad lineage input (unreadable result file, unknown model); the message names it."""


@dataclass(frozen=True)
class ModelSource:
    """The model being registered: ``kind`` says how ``revision`` was obtained."""

    kind: Literal["builtin", "local", "huggingface"]
    ref: str
    revision: str
    directory: Path | None = None


@dataclass(frozen=True)
class GateMetric:
    gate: str
    name: str
    value: float
    threshold: float | None = None
    op: str | None = None
    passed: bool | None = None

    @property
    def key(self) -> str:
        return f"{self.gate}.{self.name}"


@dataclass(frozen=True)
class Lineage:
    git_sha: str
    git_branch: str
    model: ModelSource
    image: str | None = None
    image_digest: str | None = None
    pipeline_run_id: str | None = None
    git_dirty: bool | None = None
    metrics: tuple[GateMetric, ...] = ()
    gate_files: Mapping[str, Path] = field(default_factory=dict)

    def tags(self) -> dict[str, str]:
        """Every lineage fact as MLflow tags (strings), identical on run and version."""
        tags = {
            f"{TAG_PREFIX}git_sha": self.git_sha,
            f"{TAG_PREFIX}git_branch": self.git_branch,
            f"{TAG_PREFIX}model_kind": self.model.kind,
            f"{TAG_PREFIX}model_ref": self.model.ref,
            f"{TAG_PREFIX}model_revision": self.model.revision,
        }
        optional = {
            "image": self.image,
            "image_digest": self.image_digest,
            "pipeline_run_id": self.pipeline_run_id,
            "git_dirty": None if self.git_dirty is None else str(self.git_dirty).lower(),
        }
        tags.update({f"{TAG_PREFIX}{k}": v for k, v in optional.items() if v})
        for metric in self.metrics:
            base = f"{TAG_PREFIX}gate.{metric.key}"
            tags[base] = _number(metric.value)
            if metric.threshold is not None:
                tags[f"{base}.threshold"] = f"{metric.op or ''} {_number(metric.threshold)}".strip()
            if metric.passed is not None:
                tags[f"{base}.passed"] = str(metric.passed).lower()
        return tags


RELEASE_FORMAT = "mlcicd.release/v1"


def release_facts(lineage: Lineage, registered_model: str, version: str) -> dict[str, Any]:
    """What the release report shows of a registration (``mlcicd registry register --out``)."""
    return {
        "format": RELEASE_FORMAT,
        "registered_model": registered_model,
        "version": version,
        "git_sha": lineage.git_sha,
        "git_branch": lineage.git_branch,
        "model": {
            "kind": lineage.model.kind,
            "ref": lineage.model.ref,
            "revision": lineage.model.revision,
        },
        "image": lineage.image,
        "image_digest": lineage.image_digest,
        "run_id": lineage.pipeline_run_id,
    }


def _number(value: float) -> str:
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def resolve_model_source(
    ref: str, revision: str | None = None, model_dir: str | Path | None = None
) -> ModelSource:
    """``builtin``/``builtin-weak``, a local directory, or a Hugging Face id with a revision.

    With ``model_dir`` the files are taken from there (the pipeline has them
    already) and ``ref`` only says where they came from; the revision is then
    the directory's content hash unless a Hugging Face revision is given.
    """
    # Imported here: the loader pulls in torch/transformers, which `show` and
    # `promote` never need.
    from inference.loader import directory_content_hash

    if model_dir is not None:
        directory = Path(model_dir)
        if not directory.is_dir():
            raise LineageError(f"--model-dir {model_dir}: not a directory")
        kind: Literal["builtin", "local", "huggingface"] = (
            "builtin" if ref in BUILTIN_REFS else "local" if Path(ref).is_dir() else "huggingface"
        )
        return ModelSource(kind, ref, revision or directory_content_hash(directory), directory)
    if ref in BUILTIN_REFS:
        from inference.builtin_model import ensure_builtin_model

        directory = ensure_builtin_model("weak" if ref == "builtin-weak" else "default")
        return ModelSource("builtin", ref, directory_content_hash(directory), directory)
    path = Path(ref)
    if path.is_dir():
        return ModelSource("local", str(path.resolve()), directory_content_hash(path), path)
    if path.exists() or ref.startswith((".", "/")):
        raise LineageError(f"--model {ref}: not a model directory")
    if not revision:
        raise LineageError(
            f"--model {ref}: a Hugging Face id needs --model-revision (a commit sha), "
            "so that the registered version names exactly one set of weights"
        )
    return ModelSource("huggingface", ref, revision)


def _metric_rows(gate: str, metrics: Mapping[str, Any], source: Path) -> Iterable[GateMetric]:
    for name, entry in metrics.items():
        if isinstance(entry, bool) or not isinstance(entry, int | float | Mapping):
            raise LineageError(f"{source}: metrics.{name}: expected a number or an object")
        if isinstance(entry, Mapping):
            if not isinstance(entry.get("value"), int | float) or isinstance(
                entry.get("value"), bool
            ):
                raise LineageError(f"{source}: metrics.{name}.value: expected a number")
            threshold = entry.get("threshold")
            if threshold is not None and not isinstance(threshold, int | float):
                raise LineageError(f"{source}: metrics.{name}.threshold: expected a number")
            passed = entry.get("passed")
            op = entry.get("op")
            yield GateMetric(
                gate,
                str(name),
                float(entry["value"]),
                None if threshold is None else float(threshold),
                str(op) if op is not None else None,
                bool(passed) if isinstance(passed, bool) else None,
            )
        else:
            yield GateMetric(gate, str(name), float(entry))


def _opt_float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _quality_rows(data: Mapping[str, Any], source: Path) -> list[GateMetric]:
    """``mlcicd.quality/v1``: the pass rate, and the paired regression when a champion ran."""
    thresholds = data.get("thresholds") or {}
    overall = data.get("overall") or {}
    rate = overall.get("rate")
    if not isinstance(rate, int | float):
        raise LineageError(f"{source}: overall.rate: expected a number")
    minimum = _opt_float(thresholds.get("min_pass_rate"))
    rows = [
        GateMetric(
            "quality",
            "pass_rate",
            float(rate),
            minimum,
            ">=",
            None if minimum is None else rate >= minimum,
        )
    ]
    champion = data.get("champion")
    if isinstance(champion, Mapping) and isinstance(champion.get("regression"), int | float):
        regression = float(champion["regression"])
        limit = _opt_float(thresholds.get("max_regression_vs_champion"))
        rows.append(
            GateMetric(
                "quality",
                "regression_vs_champion",
                regression,
                limit,
                "<=",
                None if limit is None else regression <= limit,
            )
        )
    return rows


def _latency_rows(data: Mapping[str, Any], source: Path) -> list[GateMetric]:
    """``mlcicd.latency/v1``: one row per threshold; an unmeasured one is left out."""
    rows = []
    for index, row in enumerate(data.get("thresholds") or []):
        if not isinstance(row, Mapping) or not isinstance(row.get("name"), str):
            raise LineageError(f"{source}: thresholds[{index}]: expected {{name, measured, ...}}")
        if isinstance(row.get("measured"), int | float):
            passed = row.get("passed")
            rows.append(
                GateMetric(
                    "latency",
                    row["name"],
                    float(row["measured"]),
                    _opt_float(row.get("threshold")),
                    "<=",
                    passed if isinstance(passed, bool) else None,
                )
            )
    return rows


def read_metrics_file(path: Path, default_gate: str = "metrics") -> tuple[str, list[GateMetric]]:
    """Read a gate result or a generic metrics JSON; returns (gate name, rows).

    Accepted: what ``mlcicd gate quality|latency --out`` writes (``format``
    ``mlcicd.quality/v1`` or ``mlcicd.latency/v1``); ``{"gate": NAME, "metrics":
    {name: number | {value, threshold?, op?, passed?}}}``; or a flat ``{name:
    number | {...}}``. NaN and infinite values are refused: MLflow would store
    them, but no threshold can judge them.
    """
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise LineageError(f"{path}: metrics file not found") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise LineageError(f"{path}: not readable JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise LineageError(f"{path}: expected a JSON object")
    fmt = str(data.get("format", ""))
    if fmt.startswith("mlcicd.quality/"):
        gate, rows = "quality", _quality_rows(data, path)
    elif fmt.startswith("mlcicd.latency/"):
        gate, rows = "latency", _latency_rows(data, path)
    else:
        gate = data.get("gate", default_gate)
        if not isinstance(gate, str) or not gate:
            raise LineageError(f"{path}: gate: expected a non-empty string")
        metrics = data.get("metrics", data if "gate" not in data else None)
        if not isinstance(metrics, dict):
            raise LineageError(f"{path}: metrics: expected an object of name -> value")
        rows = list(_metric_rows(gate, metrics, path))
    for row in rows:
        if not math.isfinite(row.value):
            raise LineageError(f"{path}: metrics.{row.name}: not a finite number")
    return gate, rows


def is_gate_result(gate: str) -> bool:
    """Gate results are stored whole (``gates/<gate>.json``); plain metrics files are not."""
    return gate != "metrics"


def build_lineage(
    *,
    model: str,
    model_dir: str | Path | None = None,
    model_revision: str | None = None,
    git_sha: str | None = None,
    git_branch: str | None = None,
    image: str | None = None,
    image_digest: str | None = None,
    pipeline_run_id: str | None = None,
    gate_results: Sequence[Path] = (),
) -> Lineage:
    """A release's lineage; git facts default to this checkout (or GitHub's env)."""
    sha = git_sha or source.git_sha()
    branch = git_branch or source.git_branch()
    if not sha or not branch:
        raise LineageError("cannot tell the git sha/branch here: pass --git-sha and --git-branch")
    metrics = []
    gate_files: dict[str, Path] = {}
    for path in gate_results:
        gate, rows = read_metrics_file(path)
        metrics.extend(rows)
        if is_gate_result(gate):
            gate_files[gate] = path
    return Lineage(
        git_sha=sha,
        git_branch=branch,
        model=resolve_model_source(
            model, model_revision, None if model_dir is None else str(model_dir)
        ),
        image=image,
        image_digest=image_digest,
        pipeline_run_id=pipeline_run_id,
        git_dirty=None if git_sha else source.git_dirty(),
        metrics=tuple(metrics),
        gate_files=gate_files,
    )
