"""``mlcicd report``: the release report of one run, from that run's report files.

Why one command: the workflow's report job and the local runner (``mlcicd run``)
both call :func:`write_report`, so a reviewer reads the same tables in the job
summary, the pull request's sticky comment and the local ``report.md``/``report.html``.

It never fails a run: the gates did that already. Exit 0 with a report written,
2 when the reports directory is missing or a report file is unreadable.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.exit_codes import EXIT_OK, EXIT_USAGE
from pipeline.report.plots import CANARY_PNG, LATENCY_PNG, canary_plot, latency_plot
from pipeline.report.release import ReleaseData, ReportInputError, collect
from pipeline.report.render import html_page, markdown
from pipeline.report.sections import Link, build_sections, overall

TITLE = "Release report"


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    html: Path
    images: tuple[Path, ...]
    verdict: str


def _local_links(data: ReleaseData, out: Path) -> list[Link]:
    files = [out / "report.html", *data.sources.values(), *(s.source for s in data.canary)]
    for source in list(data.sources.values()):
        files += [p for p in (source.with_suffix(".md"),) if p.is_file()]
    return [
        Link(path.name, os.path.relpath(path, out))
        for path in dict.fromkeys(files)
        if path.is_file() or path.name == "report.html"
    ]


def write_report(
    reports: Path,
    out: Path,
    release: dict[str, Any] | None = None,
    artifacts_url: str | None = None,
    title: str = TITLE,
) -> ReportFiles:
    """Write ``report.md``, ``report.html`` and the plots under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    data = collect(reports, release)
    images: dict[str, str] = {}
    drawn = []
    if data.latency and (png := latency_plot(data.latency, out / LATENCY_PNG)):
        images["latency"] = png.name
        drawn.append(png)
    if data.canary and (png := canary_plot(data.canary, out / CANARY_PNG)):
        images["canary"] = png.name
        drawn.append(png)
    links = (
        [Link("Run artifacts: release-report (report.html, plots), gate-reports", artifacts_url)]
        if artifacts_url
        else _local_links(data, out)
    )
    sections = build_sections(data, images, links)
    verdict = overall(sections)
    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text(markdown(title, verdict, sections, artifacts_url))
    html_path.write_text(html_page(title, verdict, sections, out))
    return ReportFiles(md_path, html_path, tuple(drawn), verdict)


def _report(args: argparse.Namespace) -> int:
    if not args.reports.is_dir():
        print(f"mlcicd report: {args.reports}: not a directory", file=sys.stderr)
        return EXIT_USAGE
    release = {
        "image": args.image,
        "image_digest": args.image_digest,
        "git_sha": args.git_sha,
        "run_id": args.run_id,
    }
    try:
        files = write_report(args.reports, args.out, release, args.artifacts_url, args.title)
    except ReportInputError as exc:
        print(f"mlcicd report: {exc}", file=sys.stderr)
        return EXIT_USAGE
    text = files.markdown.read_text()
    if args.summary:
        with Path(args.summary).open("a") as handle:
            handle.write(text + "\n")
    print(f"{files.verdict}: {files.markdown}, {files.html}" + "".join(
        f", {p}" for p in files.images))  # fmt: skip
    return EXIT_OK


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write the release report (Markdown, HTML, plots) from a run's reports",
        description="Reads quality.json, latency.json, release.json and canary*.json under "
        "--reports (any depth) and writes report.md, report.html and PNG plots to --out.",
    )
    parser.add_argument("--reports", type=Path, required=True, help="the run's report files")
    parser.add_argument(
        "--out", type=Path, required=True, metavar="DIR", help="directory for the report"
    )
    parser.add_argument("--title", default=TITLE)
    parser.add_argument(
        "--artifacts-url", help="the run's artifacts page; plots are linked there, not inlined"
    )
    parser.add_argument(
        "--summary", help='also append the Markdown here (e.g. "$GITHUB_STEP_SUMMARY")'
    )
    parser.add_argument("--image", help="image reference (overrides release.json)")
    parser.add_argument("--image-digest", help="sha256:... (overrides release.json)")
    parser.add_argument("--git-sha", help="the commit (overrides release.json)")
    parser.add_argument("--run-id", help="the pipeline run (overrides release.json)")
    parser.set_defaults(handler=_report)
