"""The local runner's bookkeeping: interrupted steps, the state lock, the step cache,
the summary and the one-line verdicts. Real processes and files, no services."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline.cli_args import stage_ids
from pipeline.definition import Stage
from pipeline.local.cache import StepCache, source_fingerprint
from pipeline.local.canary import CanaryRollout, canary_line
from pipeline.local.context import RunOptions, StageFailed
from pipeline.local.gate_steps import latency_line, quality_line
from pipeline.local.lifecycle import Interrupted, signals_interrupt
from pipeline.local.lock import StateLocked, acquire
from pipeline.local.report import Console, RunReport, StepRecord
from pipeline.local.runner import LocalRunner
from pipeline.source import REPO_ROOT


class _Quiet(Console):
    def __init__(self) -> None:
        import io

        super().__init__(io.StringIO(), heartbeat_s=0.05)

    def text(self) -> str:
        return self.stream.getvalue()  # type: ignore[attr-defined]


def _runner(tmp_path: Path) -> LocalRunner:
    runner = LocalRunner(RunOptions(state_dir=tmp_path), console=_Quiet())
    runner.logs.mkdir(parents=True)
    return runner


def test_a_signal_during_a_command_step_marks_it_interrupted_and_stops_it(tmp_path: Path) -> None:
    runner = _runner(tmp_path)
    pid_file = tmp_path / "child.pid"
    threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
    with (
        pytest.raises(Interrupted),
        signals_interrupt(print),
        runner.step("code-quality", "Sleepy") as record,
    ):
        runner.run_logged(record, f"echo $$ > {pid_file}; exec sleep 60")
    assert runner.report.steps[-1].status == "interrupted"
    child = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(child, 0)  # the command's group was stopped


@pytest.mark.parametrize(
    "name",
    [
        "Quality gate (pass rate >= 0.95, regression vs champion <= 0.02)",
        "Step 1: 10% canary, pause 10s, analysis",
    ],
)
def test_an_interrupted_gate_or_canary_step_is_never_passed(tmp_path: Path, name: str) -> None:
    runner = _runner(tmp_path)
    with pytest.raises(KeyboardInterrupt), runner.step("model-tests", name):
        raise KeyboardInterrupt
    assert runner.report.steps[-1].status == "interrupted"
    assert "INT " + name in runner.console.text()  # type: ignore[attr-defined]


def test_the_canary_analysis_step_interrupted_in_its_pause(tmp_path: Path) -> None:
    runner = _runner(tmp_path)
    stage = runner.definition.stage("deploy-production")
    canary = CanaryRollout(runner, stage)
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
    with pytest.raises(Interrupted), signals_interrupt(print):
        canary.analyse(1, 10, 30, "http://127.0.0.1:9", None)  # type: ignore[arg-type]
    (record,) = runner.report.steps
    assert record.status == "interrupted" and record.name.startswith("Step 1")


def test_an_alone_command_runs_after_the_side_by_side_ones_have_ended(tmp_path: Path) -> None:
    """A test that counts the machine's load must not share it with mypy: `alone` runs
    after the stage's side-by-side commands have ended."""
    runner = _runner(tmp_path)
    stamps = tmp_path / "stamps"

    def marks(name: str, seconds: float = 1.0) -> str:
        stamp = f"$(date +%s.%N) >> {stamps}"
        return f"echo {name}-start {stamp}; sleep {seconds}; echo {name}-end {stamp}"

    stage = Stage.model_validate(
        {
            "id": "code-quality",
            "title": "Code quality",
            "runner": "cpu",
            "independent_commands": True,
            "commands": [
                {"name": "A", "run": marks("a")},
                {"name": "B", "run": marks("b", 2.0)},  # a worker is free before B ends
                {"name": "Serial", "run": marks("serial"), "alone": True},
            ],
        }
    )
    runner.run_stage(stage)
    times = {k: float(v) for k, v in (line.split() for line in stamps.read_text().splitlines())}
    if (os.cpu_count() or 1) > 1:  # side by side needs a second core
        assert max(times["a-start"], times["b-start"]) < min(times["a-end"], times["b-end"])
    assert times["serial-start"] >= max(times["a-end"], times["b-end"])
    assert runner.report.steps[-1].name == "Serial"
    assert {s.status for s in runner.report.steps} == {"passed"}


def test_a_second_run_on_the_same_state_fails_at_once_naming_the_first(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from pathlib import Path; from pipeline.local.lock import acquire; "
         f"lock = acquire(Path({str(tmp_path)!r})); print('locked', flush=True); time.sleep(60)"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        started = time.monotonic()
        skip_all = [arg for stage in stage_ids() for arg in ("--skip", stage)]
        done = subprocess.run(
            [sys.executable, "-m", "mlcicd", "run", "--state-dir", str(tmp_path), *skip_all],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        assert f"PID {holder.pid} (started 20" in done.stderr
        assert time.monotonic() - started < 30
        assert not (tmp_path / "runs").exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    (tmp_path / "lock").write_text("pid=999999999\nstarted=2020-01-01T00:00:00Z\n")
    lock = acquire(tmp_path)
    try:
        assert lock.stale_owner == "PID 999999999 (started 2020-01-01T00:00:00Z)"
        assert f"pid={os.getpid()}" in (tmp_path / "lock").read_text()
        with pytest.raises(StateLocked, match=f"PID {os.getpid()}"):
            acquire(tmp_path)
    finally:
        lock.release()
    acquire(tmp_path).release()


def test_the_cache_hits_only_on_the_same_inputs_and_restores_outputs(tmp_path: Path) -> None:
    cache = StepCache(tmp_path / "cache")
    out = tmp_path / "out"
    out.mkdir()
    (out / "quality.json").write_text("{}")
    cache.store("model-tests/quality", ["a", "b"], "run-1", out)
    assert cache.lookup("model-tests/quality", ["a", "c"]) is None
    hit = cache.lookup("model-tests/quality", ["a", "b"])
    assert hit is not None and hit.run_id == "run-1"
    cache.restore(hit, tmp_path / "restored")
    assert (tmp_path / "restored" / "quality.json").read_text() == "{}"
    assert (
        StepCache(tmp_path / "cache", enabled=False).lookup("model-tests/quality", ["a", "b"])
        is None
    )


def test_the_source_fingerprint_follows_file_content(tmp_path: Path) -> None:
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "a.py").write_text("x = 1\n")
    first = source_fingerprint(tmp_path)
    assert source_fingerprint(tmp_path) == first
    (tmp_path / "a.py").write_text("x = 2\n")
    assert source_fingerprint(tmp_path) != first


def test_old_runs_are_pruned(tmp_path: Path) -> None:
    for name in ("20260101T000000Z-a", "20260102T000000Z-b", "20260103T000000Z-c"):
        (tmp_path / name).mkdir()
    StepCache.prune_runs(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "20260102T000000Z-b",
        "20260103T000000Z-c",
    ]


def test_the_summary_lists_stages_not_run_relative_logs_and_total_time(tmp_path: Path) -> None:
    report = RunReport("r1", "builtin", "builtin", "abc")
    log = tmp_path / "logs" / "01-model-tests-quality.log"
    report.steps.append(
        StepRecord("model-tests", "Quality gate", "failed", 3.0, "x", str(log), "pass rate 80.0%")
    )
    report.outcome, report.seconds, report.not_run = "failed", 125.0, ["build", "deploy-staging"]
    text = report.write(tmp_path).read_text()
    assert "- total time: 2m 05s" in text
    assert "- stages not run: build, deploy-staging" in text
    assert "[01-model-tests-quality.log](logs/01-model-tests-quality.log)" in text
    assert "pass rate 80.0%" in text and str(tmp_path) not in text


def test_a_long_step_shows_a_heartbeat(tmp_path: Path) -> None:
    runner = _runner(tmp_path)
    with runner.step("build", "Slow"):
        time.sleep(0.2)
    assert "still running: Slow" in runner.console.text()  # type: ignore[attr-defined]


def test_verdict_lines_are_one_readable_line(tmp_path: Path) -> None:
    quality = tmp_path / "quality.json"
    quality.write_text(
        json.dumps({"overall": {"rate": 0.8}, "reasons": ["pass rate 0.800 < 0.95"]})
    )
    assert quality_line(quality) == "pass rate 80.0%; pass rate 0.800 < 0.95"
    latency = tmp_path / "latency.json"
    row = {"name": "ttft_p99_ms", "measured": 312.0, "threshold": 250.0, "passed": False}
    latency.write_text(json.dumps({"thresholds": [row]}))
    assert latency_line(latency) == "ttft_p99_ms 312 (limit 250) FAIL"
    row["measured"] = 1010.3
    latency.write_text(json.dumps({"thresholds": [row]}))
    assert latency_line(latency) == "ttft_p99_ms 1010 (limit 250) FAIL"
    canary = tmp_path / "canary.json"
    failed = {"value": 0.0707, "message": "above 0.01"}
    metrics = [
        {"name": "error-rate", "phase": "Failed", "measurements": [failed]},
        {"name": "p99-latency", "phase": "Successful", "measurements": [{"value": 0.094}]},
    ]
    canary.write_text(json.dumps({"verdict": "failed", "metrics": metrics}))
    line = canary_line(canary)
    assert line == "error-rate 0.0707 Failed (above 0.01), p99-latency 0.094 Successful"
    assert "\n" not in line


def test_a_failed_step_prints_why_not_the_log(tmp_path: Path) -> None:
    runner = _runner(tmp_path)
    log = runner.logs / "x.log"
    log.write_text("\n".join(f"json line {i}" for i in range(40)))
    stage = Stage(id="model-tests", title="t", runner="cpu")
    with pytest.raises(StageFailed), runner.step(stage.id, "Latency gate") as record:
        record.log, record.why = str(log), "ttft_p99_ms 312 (limit 250) FAIL"
        raise StageFailed("latency gate failed")
    text = runner.console.text()  # type: ignore[attr-defined]
    assert "why: ttft_p99_ms 312 (limit 250) FAIL" in text and "json line" not in text


def test_environment_staging_stops_before_prod_and_skip_names_stages(tmp_path: Path) -> None:
    options = RunOptions(state_dir=tmp_path, environment="staging", skip_stages=("build",))
    runner = LocalRunner(options, console=_Quiet())
    why = {stage.id: runner.why_skipped(stage) for stage in runner.definition.stages}
    assert why["deploy-production"] == "not deployed: --environment staging stops before prod"
    assert why["build"] == "skipped by --skip"
    assert why["deploy-staging"] is None and why["code-quality"] is None
