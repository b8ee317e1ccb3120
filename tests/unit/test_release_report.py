"""`mlcicd report`: the release report from the files the gates, registry and canary write.

The gate reports are written here by the gates' own writers (``write_quality``,
``write_latency``) from made-up results, so the report reads the real formats.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from mlcicd.cli import main
from pipeline.definition import load_definition
from pipeline.gates.latency import judge_latency
from pipeline.gates.quality import CaseResult, judge_quality
from pipeline.gates.reports import write_latency, write_quality
from pipeline.gates.stats import paired_difference_interval
from pipeline.load.generator import LoadResult, RequestRecord
from pipeline.report.cli import write_report
from pipeline.report.release import collect

DEFINITION = load_definition("builtin")


def _quality(out: Path, failing: int = 1) -> None:
    results = [
        CaseResult(f"case-{i}", ("factual" if i % 2 else "safety",), "pass", "ok")
        for i in range(40)
    ]
    results += [CaseResult(f"bad-{i}", ("factual",), "fail", "no") for i in range(failing)]
    champion = {r.id: True for r in results} | {"case-0": False, "case-2": False}
    q = DEFINITION.quality
    verdict = judge_quality(
        results,
        min_pass_rate=q.min_pass_rate,
        max_regression_vs_champion=q.max_regression_vs_champion,
        champion=champion,
    )
    write_quality(out, verdict, results, {"model": "builtin", "profile": "builtin"})


def _latency(out: Path, ttft_s: float = 0.05) -> None:
    records = tuple(
        RequestRecord(i, True, i * 0.1, 0.2 + i / 1000, ttft_s + i / 10000, (0.005,) * 31, 32)
        for i in range(100)
    )
    result = LoadResult("http://x", "concurrency", 4, None, 10, 32, 12.0, records)
    lat = DEFINITION.latency
    verdict = judge_latency(
        result,
        max_ttft_p99_ms=lat.max_ttft_p99_ms,
        max_e2e_mean_ms=lat.max_e2e_mean_ms,
        max_error_rate=lat.max_error_rate,
    )
    write_latency(out, result, verdict, {"model": "builtin", "profile": "builtin"})


def _canary(out: Path, number: int, weight: int, verdict: str, success: float) -> None:
    ticks = [
        {
            "tick": t,
            "at": 5.0 * t,
            "canary": {
                "requests": 40.0 + t,
                "success-rate": success,
                "error-rate": 1 - success,
                "p99-latency": 0.4,
                "ttft-p99": 0.1,
            },
        }
        for t in (1, 2, 3)
    ]
    data = {
        "verdict": verdict,
        "conditions": {"success-rate": ">= 0.99", "error-rate": "< 0.01", "p99-latency": "< 1.0"},
        "metrics": [],
        "ticks": ticks,
    }
    (out / f"canary-step-{number}-w{weight}.json").write_text(json.dumps(data))


@pytest.fixture
def reports(tmp_path: Path) -> Path:
    root = tmp_path / "reports"
    _quality(root / "quality")
    _latency(root / "latency")
    _canary(root, 1, 10, "successful", 1.0)
    _canary(root, 2, 30, "failed", 0.95)
    release = {
        "format": "mlcicd.release/v1",
        "registered_model": "mlcicd-llm",
        "version": "7",
        "git_sha": "abc123",
        "model": {"kind": "builtin", "ref": "builtin", "revision": "f00d"},
        "image": "127.0.0.1:5000/mlcicd/inference-bundle:abc123",
        "image_digest": "sha256:" + "e" * 64,
    }
    (root / "release.json").write_text(json.dumps(release))
    return root


def test_paired_difference_interval() -> None:
    none = paired_difference_interval(0, 0, 50)
    assert (none.low, none.high) == (0.0, 0.0)
    worse = paired_difference_interval(5, 1, 50)
    assert worse.low < 4 / 50 < worse.high and worse.low > -0.1


def test_collect_reads_every_part(reports: Path) -> None:
    data = collect(reports)
    assert data.quality and data.latency and data.release["version"] == "7"
    assert [(s.number, s.weight, s.verdict) for s in data.canary] == [
        (1, 10, "successful"),
        (2, 30, "failed"),
    ]


def test_markdown_report_holds_the_gates_release_and_canary(reports: Path, tmp_path: Path) -> None:
    files = write_report(reports, tmp_path / "out", {"run_id": "run-1"})
    md = files.markdown.read_text()
    assert md.startswith("# Release report: ❌ FAIL")  # the canary failed at 30%
    # Quality: pass rate with its interval, the champion's rate and the paired difference.
    assert "| pass rate | 40/41 = 97.6% | 87.4% – 99.6% | >= 95.0% | ok |" in md
    assert "| champion pass rate (paired) | 95.1% |" in md
    assert "| paired difference (champion − candidate) | -0.024 (McNemar p=1) |" in md
    assert "newly failing: bad-0; newly passing: case-0, case-2." in md
    # Latency: the three measures' percentiles and every threshold.
    assert "| time to first token | 54.9 | 59.4 | 59.8 | 54.9 | 59.9 |" in md
    assert "| inter-token | 5.0 | 5.0 | 5.0 | 5.0 | 5.0 |" in md
    assert "| ttft_p99_ms |" in md and "| e2e_mean_ms |" in md
    # Release facts, canary steps, plots and links.
    assert "`sha256:" + "e" * 64 + "`" in md and "| model version | `mlcicd-llm v7` |" in md
    assert "| model hash / revision | `f00d` |" in md and "| pipeline run | `run-1` |" in md
    assert "| 2 | 30% | #3 at 15s | 43 | 0.95 | 0.05 | 0.4 | 0.1 | failed |" in md
    assert "![Latency gate](latency-distribution.png)" in md
    assert "![Canary](canary-steps.png)" in md
    assert "- [report.html](report.html)" in md
    assert {p.name for p in files.images} == {"latency-distribution.png", "canary-steps.png"}
    for png in files.images:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_ci_report_links_plots_to_the_artifacts(reports: Path, tmp_path: Path) -> None:
    url = "https://github.com/o/r/actions/runs/1#artifacts"
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    code = main(
        ["report", "--reports", str(reports), "--out", str(tmp_path / "o"),
         "--artifacts-url", url, "--summary", str(summary), "--image-digest", "sha256:ff"]
    )  # fmt: skip
    assert code == 0
    text = summary.read_text()
    assert text.startswith("earlier step\n# Release report")
    assert f"Plot: [latency-distribution.png]({url})" in text and "![" not in text
    assert "`sha256:ff`" in text


def test_a_run_that_stopped_at_a_gate_still_reports(tmp_path: Path) -> None:
    root = tmp_path / "reports"
    _quality(root / "quality", failing=10)
    files = write_report(root, tmp_path / "out")
    md = files.markdown.read_text()
    assert "## Quality gate — ❌ FAIL" in md and "FAILED: pass rate" in md
    assert "## Latency gate — ⏭️ not run" in md and "## Canary — ⏭️ not run" in md
    assert "Nothing was built or registered in this run." in md
    assert files.images == ()


def test_html_is_self_contained(reports: Path, tmp_path: Path) -> None:
    files = write_report(reports, tmp_path / "out")
    page = files.html.read_text()
    assert page.count('src="data:image/png;base64,') == 2
    assert not re.search(r"(src|href)=\"https?://", page)
    assert '<section id="quality-gate" class="verdict-pass">' in page


def test_missing_or_unreadable_reports_are_usage_errors(tmp_path: Path) -> None:
    assert main(["report", "--reports", str(tmp_path / "none"), "--out", str(tmp_path)]) == 2
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "quality.json").write_text("{not json")
    assert main(["report", "--reports", str(tmp_path / "r"), "--out", str(tmp_path / "o")]) == 2
