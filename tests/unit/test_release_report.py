"""`mlcicd report`: the release report from the files the gates, registry and canary write.

The gate reports are written by the gates' own writers from made-up results
(tests/fixtures/release_reports.py), so the report reads the real formats.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mlcicd.cli import main
from pipeline.gates.stats import paired_difference_interval
from pipeline.report.cli import write_report
from pipeline.report.release import collect
from tests.fixtures.release_reports import write_quality_report, write_sample_reports


@pytest.fixture
def reports(tmp_path: Path) -> Path:
    return write_sample_reports(tmp_path / "reports")


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
    write_quality_report(root / "quality", failing=10)
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


def test_a_paired_latency_gate_shows_the_champion_beside_the_candidate(tmp_path: Path) -> None:
    from pipeline.definition import load_definition
    from pipeline.gates.reports import write_latency
    from pipeline.gates.verdicts import latency_verdict
    from pipeline.load.generator import LoadResult, RequestRecord

    def run(ttft_s: float) -> LoadResult:
        records = tuple(
            RequestRecord(i, True, i * 0.1, ttft_s + 0.1 + i / 1000, ttft_s + i / 10000,
                          (0.005,) * 9, 10)
            for i in range(60)
        )  # fmt: skip
        return LoadResult("http://x", "concurrency", 4, None, 0, 10, 6.0, records)

    candidate, champion = run(0.35), run(0.05)  # 300 ms slower to the first token
    verdict = latency_verdict(load_definition("builtin"), candidate, champion)
    root = tmp_path / "reports"
    write_latency(root / "latency", candidate, verdict, {"model": "builtin"}, champion)
    md = write_report(root, tmp_path / "out").markdown.read_text()
    assert "## Latency gate — ❌ FAIL" in md
    assert "Judged by: paired with the champion (http://x)" in md
    assert "| vs champion | p50 ms (cand / champ) | p95 ms | Mann-Whitney p | result |" in md
    assert "| ttft | 352.9 / 53.0 | 355.6 / 55.6 | 0 | FAIL |" in md
    assert "| itl | 5.0 / 5.0 | 5.0 / 5.0 | 1 | ok |" in md
    assert "FAILED: ttft slower than the champion" in md
