"""Both gates against a REAL ``mlcicd serve`` process with the built-in model.

Runs are kept short (``--requests 40``); the command's default stays the
definition's. Failing runs are real failures: a server with injected faults, and
a definition whose bound no server can meet.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from mlcicd.cli import main
from pipeline.definition import DEFAULT_DEFINITION, load_definition
from pipeline.processes import free_port
from tests.fixtures.inference_server import StartServer

DEFINITION = load_definition("builtin")
SHORT = ["--profile", "builtin", "--requests", "40"]


def _latency(out: Path, *args: str) -> tuple[int, dict[str, Any]]:
    code = main(["gate", "latency", *SHORT, "--out", str(out), *args])
    return code, json.loads((out / "latency.json").read_text())


@pytest.mark.slow
def test_latency_gate_passes_against_the_real_server(
    inference_server: StartServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    server = inference_server(reuse=True)
    code, report = _latency(tmp_path, "--url", server.url)
    text = capsys.readouterr().out
    # The definition's bounds hold with wide headroom on an idle 2-core machine; a
    # failure here on a busy one is the gate doing its job, and the text says why.
    assert code == 0, text
    assert report["passed"] is True
    assert report["requests"] == 40 and report["error_count"] == 0
    assert report["concurrency"] == DEFINITION.latency.concurrency
    rows = {row["name"]: row for row in report["thresholds"]}
    assert rows["ttft_p99_ms"]["threshold"] == DEFINITION.latency.max_ttft_p99_ms
    assert rows["ttft_p99_ms"]["measured"] == pytest.approx(report["ttft"]["p99_ms"])
    assert rows["e2e_mean_ms"]["measured"] == pytest.approx(report["e2e"]["mean_ms"])
    # Every measured request streamed tokens: TTFT and ITL exist and are ordered.
    for record in report["records"]:
        # The gate asks for exactly max_new_tokens (min_tokens) and the server honours it.
        assert record["ok"] and record["tokens"] == DEFINITION.latency.max_new_tokens
        assert 0 < record["ttft_s"] <= record["e2e_s"]
    assert report["itl"]["count"] > 0
    assert report["throughput_rps"] > 0 and report["tokens_per_s"] > report["throughput_rps"]
    assert "ttft_p99_ms" in text and "Latency gate: PASS" in text
    assert (tmp_path / "latency.png").stat().st_size > 0


@pytest.mark.slow
def test_latency_gate_fails_on_injected_errors(
    inference_server: StartServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    faulty = inference_server("--fault-error-rate", "0.2")
    try:
        code, report = _latency(tmp_path, "--url", faulty.url)
    finally:
        faulty.stop()
    assert code == 1
    assert report["passed"] is False
    assert report["error_rate"] > DEFINITION.latency.max_error_rate
    assert report["error_count"] >= 1
    assert all(kind.startswith("http_5") for kind in report["errors"])
    assert any(r.startswith("error_rate") for r in report["reasons"])
    assert "FAILED: error_rate" in capsys.readouterr().out


@pytest.mark.slow
def test_latency_gate_fails_a_bound_no_server_meets(
    inference_server: StartServer, tmp_path: Path
) -> None:
    server = inference_server(reuse=True)
    tight = tmp_path / "pipeline.toml"
    tight.write_text(
        DEFAULT_DEFINITION.read_text()
        + "\n[profiles.tight]\n[profiles.tight.latency]\nmax_e2e_mean_ms = 0.001\n"
    )
    code, report = _latency(
        tmp_path / "out", "--url", server.url, "--definition", str(tight),
        "--profile", "tight", "--rate", "20", "--no-fixed-tokens",
    )  # fmt: skip
    assert code == 1
    assert report["mode"] == "rate" and report["error_count"] == 0
    assert report["fixed_tokens"] is False
    assert [r for r in report["reasons"] if r.startswith("e2e_mean_ms")]
    assert report["definition"] == str(tight)


@pytest.mark.slow
def test_latency_gate_starts_its_own_server(builtin_model_dir: Path, tmp_path: Path) -> None:
    code, report = _latency(tmp_path, "--model", "builtin", "--requests", "20")
    # What this test is about is the server's life cycle, not this machine's speed: the
    # verdict is the gate's to give (the test above asserts a pass on a warm server).
    assert code == (0 if report["passed"] else 1)
    assert report["requests"] == 20 and report["error_count"] == 0
    assert report["url"].startswith("http://127.0.0.1:")
    assert (tmp_path / "server.log").exists()


@pytest.mark.slow
def test_servers_that_share_the_cores_get_a_share_of_the_threads_each(tmp_path: Path) -> None:
    """Champion and candidate on all cores each spin at barriers when a core is busy
    elsewhere: the paired gate and the calibration start them with their share."""
    from pipeline.serving import pod_threads, running_server

    serving = load_definition("builtin").serving
    with running_server("shared", "builtin", tmp_path, serving, threads=pod_threads(2)) as server:
        environ = Path(f"/proc/{server.process.pid}/environ").read_bytes().split(b"\0")
    assert f"OMP_NUM_THREADS={pod_threads(2)}".encode() in environ
    assert pod_threads(2) < max(2, os.cpu_count() or 1)  # a share, not every core


@pytest.mark.slow
def test_a_pair_on_unequal_threads_is_refused_naming_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A champion on every core beside a one-thread candidate spins whenever a core is
    busy elsewhere and makes any candidate look fast: the gate compares equals only."""
    from pipeline.serving import running_server

    serving = load_definition("builtin").serving
    with (
        running_server("candidate", "builtin", tmp_path, serving, threads=1) as candidate,
        running_server("champion", "builtin", tmp_path, serving, threads=2) as champion,
    ):
        models = httpx.get(f"{champion.url}/v1/models").json()["data"][0]
        code = main(["gate", "latency", *SHORT, "--out", str(tmp_path / "gate"),
                     "--url", candidate.url, "--champion-url", champion.url])  # fmt: skip
    assert models["threads"] == 2
    assert code == 2
    err = capsys.readouterr().err
    assert "candidate computes on 1 torch threads and the champion on 2" in err, err
    assert not (tmp_path / "gate" / "latency.json").exists()  # nothing was measured


def test_threads_must_be_positive(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gate", "latency", *SHORT, "--out", str(tmp_path), "--model", "builtin",
                 "--threads", "0"]) == 2  # fmt: skip
    assert "--threads must be >= 1, got 0" in capsys.readouterr().err


@pytest.mark.slow
def test_quality_gate_over_http_matches_in_process(
    inference_server: StartServer, tmp_path: Path
) -> None:
    server = inference_server(reuse=True)
    base = ["gate", "quality", "--profile", "builtin"]
    assert main([*base, "--url", server.url, "--out", str(tmp_path / "http")]) == 0
    assert main([*base, "--model", "builtin", "--out", str(tmp_path / "local")]) == 0
    http = json.loads((tmp_path / "http" / "quality.json").read_text())
    local = json.loads((tmp_path / "local" / "quality.json").read_text())
    assert http["overall"] == local["overall"]
    # Greedy decoding through the server is the same model as in-process.
    assert {c["id"]: c["text"] for c in http["cases"]} == {
        c["id"]: c["text"] for c in local["cases"]
    }


@pytest.mark.slow
def test_paired_gate_fails_a_candidate_300_ms_slower_than_its_champion(
    inference_server: StartServer, tmp_path: Path
) -> None:
    """The same model and machine, one side delayed 300 ms: the comparison, not a
    ceiling, rejects it; the same pairing without the delay passes the comparison."""
    champion = inference_server(reuse=True)
    slow = inference_server("--fault-latency-ms", "300")
    try:
        code, report = _latency(
            tmp_path / "slow", "--url", slow.url, "--champion-url", champion.url,
            "--requests", "16", "--warmup", "2",
        )  # fmt: skip
        same_code, same = _latency(
            tmp_path / "same", "--url", champion.url, "--champion-url", champion.url,
            "--requests", "16", "--warmup", "2",
        )  # fmt: skip
    finally:
        slow.stop()
    assert code == 1
    assert report["judged_by"].startswith("paired with the champion")
    rows = {row["name"]: row for row in report["vs_champion"]}
    assert not rows["ttft"]["passed"] and rows["ttft"]["ratio_p50"] > 1.1
    # On a busy machine a ceiling may fire too; the comparison must be among the reasons.
    assert any(r.startswith("ttft slower than the champion") for r in report["reasons"])
    assert report["champion_load"]["requests"] == 16
    assert all(row["passed"] for row in same["vs_champion"]), same["reasons"]
    assert same_code == (0 if same["passed"] else 1)


def test_latency_gate_against_a_dead_url_says_cannot_connect(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    done = subprocess.run(
        [sys.executable, "-m", "mlcicd", "gate", "latency", "--profile", "builtin",
         "--url", f"http://127.0.0.1:{port}", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "cannot connect" in done.stderr
    assert not (tmp_path / "latency.json").exists()  # no gate verdict was written
