"""``mlcicd bench --quick`` end to end: both servers as real processes, real load, the peer.

What this proves: the command starts our server and the naive baseline on
loopback ports, drives both with the latency gate's load generator, stops them,
times the peer (CTranslate2, the optional ``peer`` extra) on the same tiny
model converted to fp32 and int8 at the same batch sizes, and writes a JSON
record, a markdown table and a PNG plot whose figures come from those runs. It
does not judge speed (the quick shape is too small and the machine is shared);
the full run in docs/performance.md does.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.support import REPO_ROOT


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_quick_bench_measures_both_servers_and_the_peer(tmp_path: Path) -> None:
    pytest.importorskip("ctranslate2", reason="the optional peer extra is not installed")
    out = tmp_path / "bench"
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    done = subprocess.run(
        [sys.executable, "-m", "mlcicd.cli", "bench", "--quick", "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=230,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[builtin/ours] c=4" in done.stderr  # progress goes to stderr

    document = json.loads((out / "bench.json").read_text())
    cells = {(c["server"], c["concurrency"]): c for c in document["cells"]}
    assert set(cells) == {("ours", 1), ("ours", 4), ("baseline", 1), ("baseline", 4)}
    for (server, _), cell in cells.items():
        assert cell["skipped"] is None
        assert cell["ok"] == cell["requests"] > 0, cell["errors"]
        assert cell["server_errors"] == 0
        assert cell["tokens_per_s"] > 0 and cell["requests_per_s"] > 0
        assert cell["peak_rss_bytes"] > document["weights_bytes"]["builtin"]
        # min = max new tokens: every request did the same work.
        assert cell["tokens_per_s"] == pytest.approx(
            cell["requests_per_s"] * document["config"]["max_new_tokens"], rel=1e-6
        )
        if server == "ours":
            assert cell["itl_ms"]["count"] > 0  # streamed token by token
        else:
            assert cell["itl_ms"] is None  # the pipeline returns one chunk
            assert cell["ttft_ms"]["p50_ms"] == pytest.approx(cell["e2e_ms"]["p50_ms"], rel=0.05)
    assert document["machine"]["nproc"] >= 1
    assert document["machine"]["isa"] in ("AVX2", "AVX-512", "AMX")
    assert document["machine"]["onednn"] and document["machine"]["ctranslate2"]
    peers = {(p["quantization"], p["batch"]): p for p in document["peers"]}
    assert set(peers) == {(q, b) for q in ("float32", "int8") for b in (1, 4)}
    for peer in peers.values():
        assert peer["skipped"] is None and peer["runs"] >= 1
        assert peer["tokens_per_s"] > 0 and peer["step_ms"] > 0 and peer["first_token_ms"] > 0
    floor = document["model_floors"]["builtin"]
    assert set(floor["decode_step_ms"]) == {"1", "16"} and floor["matmul_gflops"] > 0
    statuses = {t["id"]: t["status"] for t in document["targets"]}
    assert statuses and set(statuses.values()) == {"NOT MEASURED"}  # quick mode skips c=16

    markdown = (out / "bench.md").read_text()
    assert "| builtin | baseline | 4 |" in markdown
    assert "| builtin | int8 | 4 |" in markdown and "vs peer fp32" in markdown
    assert (out / "bench.png").read_bytes()[:4] == b"\x89PNG"
    # Both servers were stopped.
    after = {p.pid for p in psutil.Process().children(recursive=True)}
    assert after <= before
