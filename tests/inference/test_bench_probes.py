"""``python -m pipeline.bench.probes``: the engine probes run and report what they measured.

The built-in model and the two engine probes keep this to seconds; the
transformers ``generate_batch`` probes take about a minute even on the tiny model
and are exercised by the recorded run (docs/bench/probes.txt), not here.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support import run_python


def _probe(*args: str) -> subprocess.CompletedProcess[str]:
    return run_python("-m", "pipeline.bench.probes", *args)


def _probe_results(probes: str) -> dict[str, Any]:
    """Each probe's JSON by name, from a run on the built-in model that must succeed."""
    done = _probe("--model", "builtin", "--probes", probes)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()[2:]
    return {line.split()[0]: json.loads(line.split(maxsplit=1)[1]) for line in lines}


@pytest.mark.slow
@pytest.mark.usefixtures("builtin_model_dir")
def test_step_and_engine_probes_report_what_they_measured(tmp_path: Path) -> None:
    out = tmp_path / "probes.txt"
    chosen = "steps,engine,engine-second-pool"
    done = _probe("--model", "builtin", "--probes", chosen, "--out", str(out))
    assert done.returncode == 0, done.stderr[-2000:]
    report = out.read_text()
    assert report == done.stdout
    lines = report.splitlines()
    assert lines[0] == f"python -m pipeline.bench.probes --model builtin --probes {chosen}"
    results = {line.split()[0]: json.loads(line.split(maxsplit=1)[1]) for line in lines[2:]}
    assert list(results) == chosen.split(",")
    steps = results.pop("steps")
    assert steps["prompt_tokens"] > 16
    assert steps["engine_cut_forwards"] >= 1
    for key in ("decode_b1_ms", "decode_b16_ms", "prefill_one_forward_ms", "prefill_engine_cut_ms"):
        assert steps[f"eager_{key}"] > 0 and steps[f"packed_{key}"] > 0
    for result in results.values():
        assert result["tokens"] == 16 * 3 * 32  # min = max new tokens: nothing stops early
        assert result["tokens_per_s"] > 0
        assert result["decode_forward_ms_p50"] > 0


@pytest.mark.slow
@pytest.mark.usefixtures("builtin_model_dir")
def test_breakdown_probes_say_where_a_step_and_memory_go() -> None:
    results = _probe_results("step-profile,memory-c64,output-layer")
    profile = results["step-profile"]
    assert profile["decode_b1_ms_p50"] > 0 and 0 < profile["matmul_share"] <= 1
    assert profile["decode_b16_ms_p50"] > 0 and 0 < profile["matmul_share_b16"] <= 1
    output = results["output-layer"]
    assert all(output[f"dense_{rows}_ms"] > 0 for rows in (1, 16, 64))
    assert output["dense_1_row_gb_per_s"] > 0
    memory = results["memory-c64"]
    assert 0 < memory["rss_imported_gib"] <= memory["rss_loaded_gib"]
    assert memory["rss_peak_c64_gib"] >= memory["rss_started_gib"]
    assert memory["kv_cache_max_gib"] > 0  # 64 clients' cache was measured, not assumed


def test_an_unknown_probe_is_a_usage_error_naming_it() -> None:
    done = _probe("--probes", "engine,warp-drive")
    assert done.returncode == 2
    assert "warp-drive is not a probe" in done.stderr


@pytest.mark.slow
@pytest.mark.usefixtures("builtin_model_dir")
def test_layout_and_lean_step_probes_report_each_layout_and_both_steps() -> None:
    results = _probe_results("layer-layouts,lean-step,attention-query")
    layouts = results["layer-layouts"]
    for rows in (1, 16, 64):  # the built-in model's layers are too small to pack
        assert layouts[f"dense_{rows}_rows_ms"] > 0 and layouts[f"weight-first_{rows}_rows_ms"] > 0
    lean = results["lean-step"]
    for step in ("plain", "transformers"):
        assert 0 < lean[f"{step}_b1_ms_min"] <= lean[f"{step}_b1_ms_p50"]
    attention = results["attention-query"]
    for rows in (1, 16, 64):
        assert attention[f"strided_{rows}_rows_ms"] > 0
        assert attention[f"contiguous_{rows}_rows_ms"] > 0
        # the plain step's query always reaches the fused kernel
        assert attention[f"kernels_{rows}_rows"]["contiguous"] == "flash_attention_for_cpu"
