"""The model-tests stage's gates as runner steps, and one readable line per verdict.

Why here: the gates run as ``mlcicd gate ...`` child processes (each loads a
model or starts servers, as its workflow job does) and write typed JSON
reports; the runner reads those files, never the gates' console output. When a
gate does not pass, the console prints the one line that says why (the
measurement against its limit), not the tail of a log.

A gate whose inputs (checkout, candidate model, resolved definition, and for
the quality gate the content of the champion's results it is compared with)
are unchanged since it last passed is ``cached``; its reports are restored.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pipeline.definition import Stage
from pipeline.local.context import RunContext, StageFailed
from pipeline.registry.client import CHAMPION
from pipeline.serving import pod_threads


def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def quality_line(path: Path) -> str:
    """``pass rate 80.0% < 0.95; regression +0.050 > 0.02`` from a quality.json."""
    data = _read(path)
    if data is None:
        return "no report written (see the log)"
    overall = data.get("overall") or {}
    rate = overall.get("rate")
    parts = [f"pass rate {rate:.1%}" if isinstance(rate, float) else "pass rate n/a"]
    champion = data.get("champion")
    if isinstance(champion, dict) and isinstance(champion.get("regression"), float):
        parts.append(f"regression vs champion {champion['regression']:+.3f}")
    reasons = data.get("reasons") or []
    return "; ".join(parts + [str(r) for r in reasons])


def latency_line(path: Path) -> str:
    """``ttft_p99_ms 312.0 > 250 FAIL; e2e_mean_ms 140.2 <= 500 ok`` from a latency.json.

    A comparison with the champion that failed leads, since it decided.
    """
    data = _read(path)
    if data is None:
        return "no report written (see the log)"
    slower = [str(r) for r in data.get("reasons") or [] if "than the champion" in str(r)]
    rows = slower
    for row in data.get("thresholds") or []:
        measured = row.get("measured")
        value = "n/a" if measured is None else f"{measured:.4g}"
        verdict = "ok" if row.get("passed") else "FAIL"
        rows.append(f"{row.get('name')} {value} (limit {row.get('threshold'):g}) {verdict}")
    return "; ".join(rows) or "; ".join(str(r) for r in data.get("reasons") or [])


def _model_hash(runner: RunContext) -> str:
    from inference.loader import directory_content_hash
    from pipeline.local.release import candidate_dir

    return directory_content_hash(candidate_dir(runner))


def _inputs(runner: RunContext, *extra: str) -> list[str]:
    return [
        runner.fingerprint(),
        _model_hash(runner),
        runner.definition.model_dump_json(),
        *extra,
    ]


def quality(runner: RunContext, stage: Stage) -> None:
    champion_file = runner.reports / "champion" / "quality.json"
    with runner.step(stage.id, "Fetch the champion's quality results") as record:
        version = runner.registry().download_gate_result(CHAMPION, "quality", champion_file)
        record.detail = f"champion v{version}" if version else "no champion yet"
    compare = ["--champion-results", str(champion_file)] if version else []
    out = runner.reports / "quality"
    with runner.step(stage.id, runner.definition.gate_title("quality")) as record:
        # By content: the champion's results, not its version number, are what is compared.
        compared = hashlib.sha256(champion_file.read_bytes()).hexdigest() if version else "none"
        inputs = _inputs(runner, f"champion-results={compared}")
        if _restored(runner, record, "model-tests/quality", inputs, out):
            return
        code = runner.run_logged(
            record,
            runner.mlcicd(
                "gate", "quality", "--model", runner.options.candidate,
                "--profile", runner.options.profile, "--out", str(out), *compare,
            ),
            ok_codes=(0, 1),
        )  # fmt: skip
        record.detail = f"{quality_line(out / 'quality.json')}; report {out / 'quality.md'}"
        if code != 0:
            record.why = quality_line(out / "quality.json")
            raise StageFailed("quality gate failed")
        runner.cache.store("model-tests/quality", inputs, runner.run_id, out)


def latency(runner: RunContext, stage: Stage) -> None:
    """Paired with the registry's champion when there is one (served from its image).

    Why: the gate judges the candidate against the champion measured on the same
    machine at the same time (pipeline/gates/latency.py), not against a number a
    busy machine alone can break. The champion's image digest is one of the
    cache's inputs, since the verdict depends on it.
    """
    from pipeline.local.canary import champion_image

    out = runner.reports / "latency"
    found = champion_image(runner)
    inputs = _inputs(runner, f"champion={found[1].digest if found else 'none'}")
    with runner.step(stage.id, runner.definition.gate_title("latency")) as record:
        if _restored(runner, record, "model-tests/latency", inputs, out):
            return
        champion, compare = None, []
        if found is not None:  # both servers share the cores: the same share each
            threads = pod_threads(2)
            revision = runner.registry().model_revision(found[0]) or ""
            champion = runner.deploy_image(
                "latency-champion", found[1], "--environment", "prod",
                revision=revision, threads=threads,
            )  # fmt: skip
            compare = ["--champion-url", champion.url, "--threads", str(threads)]
        try:
            code = runner.run_logged(
                record,
                runner.mlcicd(
                    "gate", "latency", "--model", runner.options.candidate,
                    "--profile", runner.options.profile, "--out", str(out), *compare,
                ),
                ok_codes=(0, 1),
            )  # fmt: skip
        finally:
            if champion is not None:
                champion.stop()
        paired = f"paired with champion v{found[0]}" if found else "no champion: absolute limits"
        record.detail = f"{paired}; report {out / 'latency.md'}"
        if code != 0:
            record.why = latency_line(out / "latency.json")
            raise StageFailed("latency gate failed")
        runner.cache.store("model-tests/latency", inputs, runner.run_id, out)


def _restored(runner: RunContext, record: Any, key: str, inputs: list[str], out: Path) -> bool:
    hit = runner.cache.lookup(key, inputs)
    if hit is None:
        return False
    runner.cache.restore(hit, out)
    record.status = "cached"
    record.detail = f"inputs {hit.digest[:12]} unchanged since run {hit.run_id}"
    return True
